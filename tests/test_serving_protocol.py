"""The server's pure parts against independent references: JSON depth, request validation, message conversion, tool
calls out of the output, the streamed deltas, and the batching queue."""
import json
import threading
import time

import hypothesis
import hypothesis.strategies as st
import pytest

from rods_jax.envs import parsing
from rods_jax.rollout.sampling import SamplingParams
from rods_jax.serving import protocol, responses
from rods_jax.serving.protocol import ProtocolConfig, ProtocolError
from rods_jax.serving.scheduler import BatchScheduler, Completion, GenRequest, QueueFull, SchedulerConfig

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}]

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab[]{}"\\\n é'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='k[]{"\\', max_size=3), inner,
                                                                max_size=3),
    max_leaves=30)


def _depth_reference(v):
  """Nesting depth of a decoded JSON value, by recursion (the values here are shallow)."""
  if isinstance(v, list):
    return 1 + max((_depth_reference(x) for x in v), default=0)
  if isinstance(v, dict):
    return 1 + max((_depth_reference(x) for x in v.values()), default=0)
  return 0


@hypothesis.given(_json, st.booleans())
@hypothesis.settings(max_examples=300, deadline=None)
def test_json_depth_equals_recursive_reference(value, ascii_only):
  raw = json.dumps(value, ensure_ascii=ascii_only).encode()
  assert protocol.json_depth(raw) == _depth_reference(value)


def test_deep_nesting_is_refused_without_recursion():
  deep = b"[" * 200_000 + b"]" * 200_000
  assert protocol.json_depth(deep) == 200_000
  with pytest.raises(ProtocolError, match="nested 200000 levels"):
    protocol.loads_limited(deep, 64, "request body")
  nested = "x"
  for _ in range(50_000):  # built directly: no JSON parser could produce it
    nested = [nested]
  nested = [nested, {"k": "\udc80"}]
  assert protocol.find_surrogate(nested) == "body[1].k"
  assert protocol.find_surrogate({"a": ["ok", {"\ud800": 1}]}) == "body.a[1] (a key)"
  assert protocol.find_surrogate({"a": ["fine \U0001F600"]}) is None


def _body(**kw):
  return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}).encode()


def test_parse_request_defaults_and_bounds():
  cfg = ProtocolConfig(max_tokens=100, temperature=0.7, top_p=0.9, max_n=4)
  req = protocol.parse_request(_body(), cfg)
  assert (req.n, req.temperature, req.top_p, req.max_tokens, req.stop, req.seed, req.stream) == (
      1, 0.7, 0.9, 100, (), None, False)
  assert req.tools is None and req.parse_tools
  req = protocol.parse_request(_body(n=3, temperature=0, top_p=0.5, max_tokens=7, stop="END", seed=-3, stream=True,
                                     stream_options={"include_usage": True}, tools=TOOLS, user="ignored"), cfg)
  assert (req.n, req.temperature, req.top_p, req.max_tokens, req.stop, req.seed, req.stream, req.include_usage) == (
      3, 0.0, 0.5, 7, ("END",), -3, True, True)
  assert req.tools == tuple(TOOLS)
  assert protocol.parse_request(_body(max_completion_tokens=5), cfg).max_tokens == 5
  for bad, words in [(dict(n=5), "'n'"), (dict(max_tokens=101), "max_tokens"),
                     (dict(temperature=True), "temperature"), (dict(top_p=0), "top_p"), (dict(stop=["a"] * 5), "stop"),
                     (dict(stop=[""]), "stop"), (dict(seed=1.5), "seed"), (dict(stream="yes"), "stream"),
                     (dict(tools=[{"type": "x"}]), r"tools\[0\]"), (dict(tools={"a": 1}), "tools"),
                     (dict(model=3), "model"), (dict(logit_bias={"1": 2}), "logit_bias"),
                     (dict(tool_choice={"type": "function", "function": {"name": "f"}}), "tool_choice")]:
    with pytest.raises(ProtocolError, match=words) as e:
      protocol.parse_request(_body(**bad), cfg)
    assert e.value.status == 400 and "\n" not in e.value.message
  with pytest.raises(ProtocolError) as e:
    protocol.parse_request(b" " * 2000, ProtocolConfig(max_body_bytes=1000))
  assert e.value.status == 413


def test_messages_become_template_conversation():
  call = {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                           "arguments": '{"city": "Paris", "days": 2}'}}
  conv = protocol.to_conversation([
      {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
      {"role": "user", "content": "weather?"},
      {"role": "assistant", "content": None, "tool_calls": [call, call]},
      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
      {"role": "assistant", "content": "Sunny."}], 64)
  text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}</tool_call>'
  assert conv == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "weather?"},
                  {"role": "assistant", "content": text * 2}, {"role": "tool", "content": "sunny"},
                  {"role": "assistant", "content": "Sunny."})
  # what the conversion writes, the project's parser reads back as the same calls
  assert parsing.parse_assistant(conv[2]["content"], TOOLS).calls == (
      parsing.ToolCall("get_weather", {"city": "Paris", "days": 2}),) * 2
  for bad, words in [([{"role": "user", "content": None}], "content"),
                     ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "text parts"),
                     ([{"role": "assistant", "content": None, "tool_calls": []}], "non-empty"),
                     ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}],
                      "JSON object"),
                     ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}],
                      "not valid JSON"),
                     ([{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}], "arguments"),
                     ("hello", "non-empty list")]:
    with pytest.raises(ProtocolError, match=words):
      protocol.to_conversation(bad, 64)


def test_tool_calls_out_of_the_output():
  call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "days": 3}}</tool_call>'
  content, calls = responses.split_tool_calls("Checking. " + call + call, TOOLS)
  assert content == "Checking." and len(calls) == 2 and calls[0]["id"] != calls[1]["id"]
  assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Rome", "days": 3}] * 2
  assert all(c["type"] == "function" and c["function"]["name"] == "get_weather" for c in calls)
  assert responses.split_tool_calls(call, TOOLS)[0] is None
  # Anything that does not parse completely stays text: unknown tool, bad JSON, a bad argument, no markup.
  for text in ['<tool_call>{"name": "nope", "arguments": {}}</tool_call>', "<tool_call>{oops</tool_call>",
               call + '<tool_call>{"name": "get_weather", "arguments": {"city": 5}}</tool_call>',
               "plain answer", "<tool_call>unclosed"]:
    assert responses.split_tool_calls(text, TOOLS) == (text, ())
  choice = responses.make_choice(call, "stop", TOOLS, True)
  assert choice.finish_reason == "tool_calls" and choice.content is None
  assert responses.make_choice(call, "stop", TOOLS, False) == responses.Choice(call, (), "stop")
  assert responses.make_choice(call, "length", None, True).finish_reason == "length"


@hypothesis.given(st.text(alphabet="ab<tool_cl>/ ", max_size=60), st.lists(st.integers(0, 60), max_size=8),
                  st.booleans())
@hypothesis.settings(max_examples=300, deadline=None)
def test_delta_stream_sends_exactly_the_final_content(text, cuts, hold):
  stream = responses.DeltaStream(hold)
  sent = "".join(stream.push(text[:c]) for c in sorted(cuts))
  choice = responses.Choice(text, (), "stop")  # no call parsed: the whole text is content
  sent += "".join(d["content"] for d in stream.finish(choice, text))
  assert sent == text
  if hold:  # nothing from a <tool_call> on (nor a partial "<tool_c" at the end) went out before the end
    stream = responses.DeltaStream(True)
    early = "".join(stream.push(text[:c]) for c in sorted(cuts))
    assert parsing.OPEN not in early
    first = text.find(parsing.OPEN)
    assert first < 0 or len(early) <= first


def test_responses_encode_anything():
  body = responses.dumps(responses.completion("id", 1, "\udc80", [responses.Choice("caf\udc80", (), "stop")],
                                              responses.usage(3, 4)))
  assert body.isascii() and json.loads(body)["usage"] == {"prompt_tokens": 3, "completion_tokens": 4,
                                                          "total_tokens": 7}


def _req(n=1):
  return GenRequest(({"role": "user", "content": "x"},), None, (1, 2), n, SamplingParams(), 4, (), None, False)


def test_scheduler_batches_bounds_and_errors():
  gate, seen = threading.Event(), []

  def generate(requests, emit):
    gate.wait(10)
    seen.append(len(requests))
    for i, r in enumerate(requests):
      emit(i, 0, "partial")
    return [[Completion((5,), "t", "stop")] * r.n for r in requests]

  sched = BatchScheduler(generate, SchedulerConfig(max_queue=6, batch_window_s=0.05, max_batch_rows=4))
  texts = []
  first = sched.submit(_req(), lambda c, t: texts.append(t))  # taken by the worker, which waits on the gate
  time.sleep(0.2)
  waiting = [sched.submit(_req(n=2)) for _ in range(6)]
  with pytest.raises(QueueFull, match="max_queue"):
    sched.submit(_req())
  with pytest.raises(ValueError, match="max_batch_rows"):
    sched.submit(_req(n=5))
  gate.set()
  assert first.result(10) == [Completion((5,), "t", "stop")] and texts == ["partial"]
  assert all(len(f.result(10)) == 2 for f in waiting)
  assert seen == [1, 2, 2, 2]  # 6 requests of 2 rows, 4 rows a batch
  sched.close()

  def broken(requests, emit):
    raise RuntimeError("device lost")

  sched = BatchScheduler(broken, SchedulerConfig())
  with pytest.raises(RuntimeError, match="device lost"):
    sched.submit(_req()).result(10)
  sched.close()
  with pytest.raises(QueueFull):
    sched.submit(_req())


def test_configs_refuse_bad_values_and_flags_map_to_configs():
  import types
  from launch import openai_server
  from rods_jax.serving.app import ServerConfig
  from rods_jax.serving.generator import GeneratorConfig
  for make, words in [(lambda: ProtocolConfig(max_n=0), "max_n=0"), (lambda: ProtocolConfig(top_p=0.0), "top_p"),
                      (lambda: ProtocolConfig(temperature=float("nan")), "temperature"),
                      (lambda: ServerConfig(capacity=100, protocol=ProtocolConfig(max_tokens=100)), "capacity=100"),
                      (lambda: ServerConfig(read_timeout_s=0), "read_timeout_s"),
                      (lambda: SchedulerConfig(max_queue=0), "max_queue"),
                      (lambda: GeneratorConfig(segment_tokens=0), "segment_tokens")]:
    with pytest.raises(ValueError, match=words):
      make()
  flags = types.SimpleNamespace(max_body_bytes=1000, max_n=4, max_new_tokens=32, temperature=0.5, top_p=0.9,
                                model_name="m", capacity=64, read_timeout_s=2.0, max_queue=3, batch_window_ms=7.0,
                                max_batch_rows=8, segment_tokens=5)
  server, sched, gen = openai_server.configs_from_flags(flags)
  assert (server.model_name, server.capacity, server.read_timeout_s) == ("m", 64, 2.0)
  assert server.protocol == ProtocolConfig(max_body_bytes=1000, max_n=4, max_tokens=32, temperature=0.5, top_p=0.9)
  assert sched == SchedulerConfig(max_queue=3, batch_window_s=0.007, max_batch_rows=8)
  assert gen == GeneratorConfig(segment_tokens=5)
  with pytest.raises(ValueError, match="max_batch_rows"):
    openai_server.configs_from_flags(types.SimpleNamespace(**{**vars(flags), "max_n": 9}))
