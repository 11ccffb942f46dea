"""The OpenAI-compatible server with the real ``openai`` client: tool-call round trip, n, streaming, batching of
concurrent requests, the real sampler end to end on a tiny checkpoint, and hardening (200 concurrent clients, stalled
bodies, deep / huge / malformed bodies, lone surrogates, the prompt limit)."""
import concurrent.futures
import http.client
import json
import socket
import threading
import time
import urllib.parse

import openai
import pytest

from launch import openai_server
from rods_jax.envs import parsing
from rods_jax.models import hf_loader
from rods_jax.rods.synthesis.backends.openai import OpenAIClientConfig, chat_completion
from rods_jax.rollout.render import ChatRenderer
from rods_jax.rollout.sampling import SamplingParams
from rods_jax.serving import app as app_lib
from rods_jax.serving.generator import GeneratorConfig
from rods_jax.serving.protocol import ProtocolConfig
from rods_jax.serving.scheduler import BatchScheduler, SchedulerConfig

import server_factories as sf

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def script(messages, tools, choice):
  last = messages[-1]
  if last["role"] == "tool":
    return f"It is {json.loads(last['content'])['temp']} degrees in Paris."
  if tools and "weather" in last["content"]:
    return "Let me check. " + CALL
  return f"answer {choice} to {last['content'][:20]}"


def _server(tok, generate, server_cfg, scheduler_cfg):
  scheduler = BatchScheduler(generate, scheduler_cfg)
  handle = app_lib.serve_in_thread(app_lib.build_app(ChatRenderer(tok), scheduler, server_cfg))
  return handle, scheduler


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return sf.tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def scripted(tok):
  gen = sf.ScriptedGenerator(tok, script)
  cfg = app_lib.ServerConfig(model_name="tiny", capacity=256, read_timeout_s=1.0,
                             protocol=ProtocolConfig(max_body_bytes=256 << 10, max_tokens=64))
  handle, scheduler = _server(tok, gen, cfg, SchedulerConfig(max_queue=256, batch_window_s=0.02, max_batch_rows=64))
  yield handle, gen, scheduler
  handle.close()
  scheduler.close()


def _client(url):
  return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def _post(url, body: bytes, headers=None, timeout=30):
  """Raw POST /v1/chat/completions: (status, parsed JSON body)."""
  u = urllib.parse.urlsplit(url)
  conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
  try:
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json",
                                                                       **(headers or {})})
    resp = conn.getresponse()
    return resp.status, resp.read()
  finally:
    conn.close()


def _hi(**kw):
  return json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **kw}).encode()


def test_tool_call_round_trip(scripted, tok):
  handle, gen, _ = scripted
  client = _client(handle.url)
  user = {"role": "user", "content": "what is the weather in Paris"}
  first = client.chat.completions.create(model="tiny", messages=[user], tools=sf.TOOLS)
  choice = first.choices[0]
  assert choice.finish_reason == "tool_calls"
  (call,) = choice.message.tool_calls
  assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
  assert json.loads(call.function.arguments) == {"city": "Paris"}
  assert choice.message.content == "Let me check."
  # The tools went through the model's chat template into the prompt the generator got, and usage counts are true.
  req = gen.requests[-1]
  prompt_text = tok.decode(list(req.prompt_ids), skip_special_tokens=False)
  assert "tools:get_weather(city)" in prompt_text and prompt_text.endswith("<|im_start|>assistant\n")
  assert first.usage.prompt_tokens == len(req.prompt_ids)
  assert first.usage.completion_tokens == len(tok.encode("Let me check. " + CALL, add_special_tokens=False)) + 1
  history = [user, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
             {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
  final = client.chat.completions.create(model="tiny", messages=history, tools=sf.TOOLS)
  assert final.choices[0].finish_reason == "stop" and final.choices[0].message.tool_calls is None
  assert final.choices[0].message.content == "It is 21 degrees in Paris."
  # The assistant's call is rendered in the project's tool-call format, the text its parser reads back.
  assert gen.requests[-1].messages[1] == {"role": "assistant", "content": parsing.format_call(
      {"name": "get_weather", "arguments": {"city": "Paris"}})}
  none = client.chat.completions.create(model="tiny", messages=[user], tools=sf.TOOLS, tool_choice="none")
  assert none.choices[0].message.tool_calls is None and CALL in none.choices[0].message.content


def test_n_choices_usage_and_models(scripted):
  handle, gen, _ = scripted
  client = _client(handle.url)
  out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], n=3)
  assert [c.message.content for c in out.choices] == [f"answer {i} to hello" for i in range(3)]
  assert [c.index for c in out.choices] == [0, 1, 2]
  assert gen.requests[-1].n == 3
  assert out.usage.completion_tokens == sum(
      len(gen.tok.encode(f"answer {i} to hello", add_special_tokens=False)) + 1
      for i in range(3))
  assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
  assert [m.id for m in client.models.list().data] == ["tiny"]
  client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], temperature=0.3,
                                 top_p=0.5, stop=["x", "yz"], seed=11)
  req = gen.requests[-1]
  assert (req.sampling, req.stop, req.seed) == (SamplingParams(0.3, 0.5), ("x", "yz"), 11)
  short = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=2)
  assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
  assert gen.requests[-1].max_tokens == 2


def test_streaming_content_and_tool_calls(scripted):
  handle, _, _ = scripted
  client = _client(handle.url)
  messages = [{"role": "user", "content": "stream me"}]
  chunks = list(client.chat.completions.create(model="tiny", messages=messages, stream=True,
                                               stream_options={"include_usage": True}))
  text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
  assert text == "answer 0 to stream me"
  assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) >= 2  # streamed in pieces
  assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
  assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices
  calls = list(client.chat.completions.create(
      model="tiny", messages=[{"role": "user", "content": "weather please"}], tools=sf.TOOLS, stream=True))
  content = "".join(c.choices[0].delta.content or "" for c in calls)
  deltas = [t for c in calls for t in (c.choices[0].delta.tool_calls or [])]
  assert "<tool_call" not in content and content.strip() == "Let me check."
  assert len(deltas) == 1 and deltas[0].function.name == "get_weather"
  assert json.loads(deltas[0].function.arguments) == {"city": "Paris"}
  assert calls[-1].choices[0].finish_reason == "tool_calls"
  two = list(client.chat.completions.create(model="tiny", messages=messages, stream=True, n=2))
  for i in range(2):
    assert "".join(c.choices[0].delta.content or "" for c in two if c.choices[0].index == i) == (
        f"answer {i} to stream me")
  status, raw = _post(handle.url, _hi(stream=True))
  assert status == 200 and raw.endswith(b"data: [DONE]\n\n") and raw.count(b"data: ") >= 4


def test_concurrent_requests_are_batched(scripted):
  handle, gen, scheduler = scripted
  client = _client(handle.url)
  calls_before, batches_before = gen.calls, len(scheduler.batches)

  def ask(i):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"q{i}"}])

  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    outs = list(pool.map(ask, range(16)))
  assert [o.choices[0].message.content for o in outs] == [f"answer 0 to q{i}" for i in range(16)]
  assert gen.calls - calls_before < 16 and max(list(scheduler.batches)[batches_before:]) > 1


def test_real_sampler_end_to_end(tmp_path, tok):
  ckpt = sf.tiny_checkpoint(tmp_path, tok)
  model, mcfg = hf_loader.load_hf_checkpoint(ckpt)
  tok = hf_loader.load_tokenizer(ckpt)
  assert tok.chat_template and "<tool_call>" in tok.get_vocab()
  cfg = app_lib.ServerConfig(model_name="tiny", capacity=128, protocol=ProtocolConfig(max_tokens=12))
  app, scheduler, gen = openai_server.build_server(
      model, mcfg, tok, cfg, SchedulerConfig(batch_window_s=0.05, max_batch_rows=8),
      GeneratorConfig(bucket=64, segment_tokens=4, min_rows=8), seed=0)
  handle = app_lib.serve_in_thread(app)
  try:
    client = _client(handle.url)
    ask = dict(model="tiny", messages=[{"role": "user", "content": "what is the weather in Paris"}], tools=sf.TOOLS,
               temperature=1.0, top_p=1.0, max_tokens=12, seed=7, n=2)
    t0 = time.monotonic()
    a = client.chat.completions.create(**ask)
    print(f"first request (compiles) {time.monotonic() - t0:.1f} s")
    b = client.chat.completions.create(**ask)
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices] and len(a.choices) == 2  # same seed, same completions
    assert 0 < a.usage.completion_tokens <= 24 and a.usage.prompt_tokens > 10
    streamed = list(client.chat.completions.create(**ask, stream=True))  # segment by segment, same completions
    assert ["".join(c.choices[0].delta.content or "" for c in streamed if c.choices[0].index == i)
            for i in range(2)] == texts
    assert sum(bool(c.choices[0].delta.content) for c in streamed) > 2
    long = max(texts, key=len)
    assert len(long) >= 4, texts
    stop = long[2:4]  # a stop string cuts the same completion where it first occurs
    cut = client.chat.completions.create(**{**ask, "stop": [stop]})
    assert long[:long.find(stop)] in [c.message.content for c in cut.choices]
    assert all(stop not in c.message.content for c in cut.choices)
    # The synthesis pipeline's OpenAI backend uses this server as it uses vLLM.
    synth_cfg = OpenAIClientConfig(endpoint=handle.url, model="tiny", temperature=1.0, top_p=1.0, max_tokens=12,
                                   retries=0)
    assert isinstance(chat_completion(synth_cfg, [{"role": "user", "content": "plan a scenario"}]), str)
    # Concurrent greedy requests share sampler batches, and each equals greedy decoding by full forward passes.
    calls = gen.calls
    questions = ["q", "what is the weather", "hello there", "Paris 21 degrees please"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      outs = list(pool.map(lambda q: client.chat.completions.create(
          model="tiny", messages=[{"role": "user", "content": q}], temperature=0.0, max_tokens=6), questions))
    assert gen.calls - calls < 4
    stop_ids = {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    for q, out in zip(questions, outs):
      ids = _greedy_reference(model, ChatRenderer(tok).start([{"role": "user", "content": q}], None)[1], 6, stop_ids)
      body = ids[:-1] if ids[-1] in stop_ids else ids
      assert out.choices[0].message.content == tok.decode(body, skip_special_tokens=False)
      assert out.usage.completion_tokens == len(ids)
      assert out.choices[0].finish_reason == ("stop" if ids[-1] in stop_ids else "length")
  finally:
    handle.close()
    scheduler.close()


def _greedy_reference(model, prompt, max_new, stop_ids, width=64):
  """Greedy continuation by a full forward pass over the whole sequence per token (no KV cache; right-padded to a
  fixed width, so one compilation)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from rods_jax.models import forward_fn
  graphdef, params = nnx.split(model)
  forward = jax.jit(forward_fn, static_argnums=0)
  ids = list(prompt)
  for _ in range(max_new):
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :len(ids)] = ids
    logits = forward(graphdef, params, jnp.asarray(tokens), jnp.arange(width)[None],
                     jnp.asarray(np.arange(width) < len(ids))[None])
    ids.append(int(jnp.argmax(logits[0, len(ids) - 1])))
    if ids[-1] in stop_ids:
      break
  return ids[len(prompt):]


# ---------------------------------------------------------------------------------------------------- hardening


def test_200_concurrent_requests_all_answered(scripted, tok):
  handle, _, _ = scripted
  with concurrent.futures.ThreadPoolExecutor(200) as pool:
    results = list(pool.map(lambda i: _post(handle.url, _hi(), timeout=60), range(200)))
  assert [s for s, _ in results] == [200] * 200
  # A small queue: every request is answered, either 200 or 503 with a message, none is reset.
  slow = sf.ScriptedGenerator(tok, lambda m, t, c: (time.sleep(0.01), "ok")[1])
  cfg = app_lib.ServerConfig(model_name="tiny", capacity=256, protocol=ProtocolConfig(max_tokens=16))
  small, scheduler = _server(tok, slow, cfg, SchedulerConfig(max_queue=4, batch_window_s=0.0, max_batch_rows=2))
  try:
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
      results = list(pool.map(lambda i: _post(small.url, _hi(), timeout=60), range(200)))
  finally:
    small.close()
    scheduler.close()
  statuses = [s for s, _ in results]
  assert set(statuses) == {200, 503} and len(statuses) == 200
  assert all("max_queue" in json.loads(b)["error"]["message"] for s, b in results if s == 503)


def test_stalled_clients_time_out(scripted):
  handle, _, _ = scripted
  u = urllib.parse.urlsplit(handle.url)
  stalled = []
  for _ in range(20):  # each promises a body and never sends it
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n")
    stalled.append(s)
  t0 = time.monotonic()
  assert _post(handle.url, _hi())[0] == 200  # others are served meanwhile
  silent = []
  for request_start in (b"", b"POST /v1/chat/compl"):  # never finish their headers
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    s.sendall(request_start)
    silent.append(s)
  replies = []
  for s in stalled:
    replies.append(s.recv(4096))
    s.close()
  assert all(r.startswith(b"HTTP/1.1 408") for r in replies), replies[0][:80]
  assert [s.recv(4096) for s in silent] == [b"", b""]  # closed by the server
  for s in silent:
    s.close()
  assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("body,status,words", [
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested"),
    (b'{"messages": [{"role": "user", "content": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}", 400, "nested"),
    (b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (300 << 10) + b'"}]}', 413, "bytes"),
    (b'{"model": "x", "messages": [', 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b'"just a string"', 400, "JSON object"),
    (b'{"messages": []}', 400, "non-empty"),
    (b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "role"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, "not valid JSON"),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": 99}', 400, "'n'"),
    (b'{"messages": [{"role": "user", "content": "x"}], "logprobs": true}', 400, "not supported"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}', 400, "not supported"),
    (b'{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": '
     b'{"name": "f", "arguments": "' + b"[" * 5000 + b'"}}]}]}', 400, "nested"),
    (b'{"model": "\\udc80", "messages": [{"role": "user", "content": "x"}]}', 400, "surrogate"),
    (b'{"messages": [{"role": "user", "content": "caf\\ud83d"}]}', 400, "surrogate"),
])
def test_bad_bodies_get_a_4xx_with_a_message(scripted, body, status, words):
  handle, _, _ = scripted
  got, raw = _post(handle.url, body)
  assert got == status, raw[:200]
  error = json.loads(raw)["error"]
  assert words in error["message"] and "\n" not in error["message"] and error["code"] == status
  assert _post(handle.url, _hi())[0] == 200  # and the server keeps serving


def test_prompt_limit_and_routes(scripted):
  handle, _, _ = scripted
  long = json.dumps({"messages": [{"role": "user", "content": "word " * 2000}]}).encode()
  status, raw = _post(handle.url, long)
  assert status == 400 and "KV slots" in json.loads(raw)["error"]["message"]
  # far too long for the capacity: refused from its length, before tokenizing it
  huge = json.dumps({"messages": [{"role": "user", "content": "a" * (200 << 10)}]}).encode()
  status, raw = _post(handle.url, huge)
  assert status == 400 and "characters, more than fit" in json.loads(raw)["error"]["message"]
  status, raw = _post(handle.url, b"0" * 10, headers={"Content-Length": "99999999"})
  assert status == 413
  u = urllib.parse.urlsplit(handle.url)
  conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
  conn.request("GET", "/v1/nope")
  resp = conn.getresponse()
  assert resp.status == 404 and "no route" in json.loads(resp.read())["error"]["message"]
  conn.request("GET", "/v1/chat/completions")
  resp = conn.getresponse()
  assert resp.status == 405 and "no route GET" in json.loads(resp.read())["error"]["message"]
  conn.close()
  assert threading.active_count() < 100  # no thread per connection left behind
