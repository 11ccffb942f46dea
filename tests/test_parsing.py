"""Tool-call parser, per-turn checks, R_P and the generic episode driver.

The driver is tested on a tiny in-test key-value world (independent of toolworld), and the parser is fuzzed with
hypothesis: arbitrary text and hostile payloads must never raise, never run code (canary file) and never change state.
"""
import copy
import json
import os
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rods_jax.envs import parsing, protocol, reward
from rods_jax.envs.task import Task

TOOLS = [
    {"type": "function", "function": {"name": "put", "description": "store", "parameters": {
        "type": "object", "properties": {"key": {"type": "string"}, "value": {"type": "integer"}},
        "required": ["key", "value"]}}},
    {"type": "function", "function": {"name": "get", "parameters": {
        "type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}},
    {"type": "function", "function": {"name": "tag", "parameters": {
        "type": "object", "properties": {"keys": {"type": "array", "items": {"type": "string"}},
                                         "weight": {"type": "number"}, "flag": {"type": "boolean"}},
        "required": ["keys"]}}},
]
LIMITS = parsing.Limits()


class KVWorld:
  """A minimal World for driver tests: a dict; put mutates, get reads."""

  def __init__(self, state):
    self.state = copy.deepcopy(state)

  def execute(self, name, arguments):
    if name == "put":
      self.state[arguments["key"]] = arguments["value"]
      return protocol.ExecResult(json.dumps({"ok": arguments["key"]}), True)
    if name == "get":
      if arguments["key"] not in self.state:
        return protocol.ExecResult(json.dumps({"error": "no such key"}), False)
      return protocol.ExecResult(json.dumps({"value": self.state[arguments["key"]]}), True)
    if name == "tag":
      return protocol.ExecResult(json.dumps({"n": len(arguments["keys"])}), True)
    return protocol.ExecResult("Error: unknown", False)

  def same_state(self, other):
    return self.state == other.state


def kv_task(gt_calls, missing=None):
  n = len(gt_calls)
  return Task(id="kv-0", env="toolworld", category="base", classes=("KV",), initial_state={"KV": {"a": 1}},
              turns=tuple(f"turn {i}" for i in range(n)), gt_calls=tuple(tuple(t) for t in gt_calls),
              missing_functions=missing or {})


def kv_episode(task, hints=False):
  def tools_at(turn):
    held = {f for t, fs in task.missing_functions.items() if int(t) > turn for f in fs}
    return [t for t in TOOLS if parsing.tool_name(t) not in held]
  return protocol.TurnEpisode(task, lambda tk: KVWorld(tk.initial_state["KV"]), tools_at, LIMITS, hints)


def call(name, **arguments):
  return {"name": name, "arguments": arguments}


# --- parser -------------------------------------------------------------------------------------------------------

def test_parse_answer_and_multiple_calls():
  p = parsing.parse_assistant("All done, the value is 3.", TOOLS, LIMITS)
  assert p.answer == "All done, the value is 3." and p.calls == () and p.errors == ()
  text = ('thinking... <tool_call>{"name": "put", "arguments": {"key": "x", "value": 5}}</tool_call>\n'
          '<tool_call>{"name": "get", "arguments": {"key": "x"}}</tool_call>')
  p = parsing.parse_assistant(text, TOOLS, LIMITS)
  assert p.answer is None and p.errors == ()
  assert p.calls == (parsing.ToolCall("put", {"key": "x", "value": 5}), parsing.ToolCall("get", {"key": "x"}))
  assert p.n_attempted == 2


def test_format_call_roundtrip():
  rng = random.Random(0)
  for _ in range(50):
    c = call("tag", keys=[rng.choice("abcxyz") * rng.randint(1, 5) for _ in range(rng.randint(0, 5))],
             weight=rng.uniform(-1e3, 1e3), flag=rng.random() < 0.5)
    p = parsing.parse_assistant(parsing.format_call(c), TOOLS, LIMITS)
    assert p.errors == () and p.calls[0].as_dict() == c


@pytest.mark.parametrize("payload,needle", [
    ('{"name": "put", "arguments": {"key": "x", "value": 5}', "invalid JSON"),
    ('{"name": "put", "arguments": {"key": "x", "value": NaN}}', "invalid JSON"),
    ('{"name": "tag", "arguments": {"keys": [], "weight": 1e999}}', "invalid JSON"),
    ('{"name": "put", "arguments": {"key": "x", "key": "y", "value": 1}}', "invalid JSON"),
    ('{"name": "rm", "arguments": {}}', "unknown tool"),
    ('{"name": "__import__", "arguments": {}}', "unknown tool"),
    ('{"name": "put", "arguments": {"key": "x"}}', "missing required argument 'value'"),
    ('{"name": "put", "arguments": {"key": "x", "value": "5"}}', "value must be of type integer"),
    ('{"name": "put", "arguments": {"key": "x", "value": true}}', "value must be of type integer"),
    ('{"name": "put", "arguments": {"key": "x", "value": 1.5}}', "value must be of type integer"),
    ('{"name": "put", "arguments": {"key": "x", "value": 1, "extra": 2}}', "unexpected argument"),
    ('{"name": "put", "arguments": "{\\"key\\": \\"x\\"}"}', "'arguments' must be an object"),
    ('{"name": "get", "arguments": {"key": "' + "a" * 201 + '"}}', "longer than 200"),
    ('{"name": "tag", "arguments": {"keys": ["a", "b", "c", "d", "e", "f"]}}', "more than 5 items"),
    ('{"name": "tag", "arguments": {"keys": [1]}}', "keys[0] must be of type string"),
    ('{"name": "get", "arguments": {"key": "__import__(\'os\').system(\'touch x\')"}}', "dunder"),
    ('{"name": "get", "arguments": {"key": "{0.__class__.__mro__}"}}', "key contains"),
    ('{"name": "get", "arguments": {"key": "{k[0]}"}}', "format field"),
    ('{"name": "get", "arguments": {"key": "a {{ cfg.x }} b"}}', "format field"),
    ('{"name": "get", "arguments": {"key": "{}"}}', "format field"),
    ('{"name": "get", "arguments": {"key": "a\\u0000b"}}', "control characters"),
    ('["put"]', "must be a JSON object"),
    ('{"name": "get", "arguments": {"key": "x"}, "id": 3}', "unexpected key"),
    ('[' * 3000 + ']' * 3000, "invalid JSON"),
])
def test_parse_rejections(payload, needle):
  p = parsing.parse_assistant(f"<tool_call>{payload}</tool_call>", TOOLS, parsing.Limits(max_message_chars=10_000))
  assert p.calls == () and p.answer is None and len(p.errors) == 1, p
  assert needle in p.errors[0], p.errors[0]
  assert p.errors[0].startswith("Error:")


def test_message_level_limits_and_tags():
  one = '<tool_call>{"name": "get", "arguments": {"key": "x"}}</tool_call>'
  p = parsing.parse_assistant(one * 6, TOOLS, LIMITS)
  assert len(p.calls) == 4 and len(p.errors) == 2 and "too many calls" in p.errors[0]
  p = parsing.parse_assistant(one + "x" * 3000, TOOLS, LIMITS)
  assert p.calls == () and "longer than 2048" in p.errors[0] and p.n_attempted == 1
  p = parsing.parse_assistant('<tool_call>{"name": "get"', TOOLS, LIMITS)
  assert p.calls == () and "unbalanced" in p.errors[0] and p.n_attempted == 1
  p = parsing.parse_assistant(one + "</tool_call>", TOOLS, LIMITS)
  assert len(p.calls) == 1 and "unbalanced" in p.errors[0]
  assert parsing.parse_assistant(None, TOOLS, LIMITS).errors


def test_hints_are_actionable():
  p = parsing.parse_assistant('<tool_call>{"name": "pt", "arguments": {}}</tool_call>', TOOLS, LIMITS, hints=True)
  assert "Available: get, put, tag" in p.errors[0]
  p = parsing.parse_assistant('<tool_call>{"name": "put", "arguments": {"key": "x"}}</tool_call>', TOOLS, LIMITS,
                              hints=True)
  assert "Signature: put(key: string, value: integer)" in p.errors[0]
  p = parsing.parse_assistant('<tool_call>{"name": put}</tool_call>', TOOLS, LIMITS, hints=True)
  assert "Format: <tool_call>" in p.errors[0]
  p_plain = parsing.parse_assistant('<tool_call>{"name": "pt", "arguments": {}}</tool_call>', TOOLS, LIMITS)
  assert "Available" not in p_plain.errors[0]


def test_limits_from_config():
  from configs.base import get_config
  cfg = get_config().env
  lim = parsing.Limits.from_config(cfg)
  assert lim.max_string_len == cfg.max_string_len and lim.max_calls_per_message == cfg.max_calls_per_message
  bad = get_config().env
  bad.max_string_len = 0
  with pytest.raises(ValueError, match="config.env.max_string_len"):
    parsing.Limits.from_config(bad)


# --- reward -------------------------------------------------------------------------------------------------------

def test_multiset_contains_matches_counter_reference():
  rng = random.Random(1)
  for _ in range(500):
    needed = [rng.choice("abcd") for _ in range(rng.randint(0, 4))]
    pool = [rng.choice("abcde") for _ in range(rng.randint(0, 6))]
    expect = not (Counter(needed) - Counter(pool))
    assert reward.multiset_contains(needed, pool) == expect


def test_progress_reward_fixed_denominator():
  rng = random.Random(2)
  for _ in range(200):
    n = rng.randint(1, 6)
    closed = rng.randint(0, n)
    s = [rng.random() < 0.7 for _ in range(closed)]
    e = [rng.random() < 0.7 for _ in range(closed)]
    ref = sum(float(a and b) for a, b in zip(s, e)) / n
    assert reward.progress_reward(s, e, n) == pytest.approx(ref, abs=0)
  with pytest.raises(ValueError):
    reward.progress_reward([True, True], [True, True], 1)


# --- driver -------------------------------------------------------------------------------------------------------

GT = [[call("put", key="b", value=7)], [call("get", key="b"), call("put", key="c", value=8)], []]


def run_turns(ep, messages_per_turn):
  for msgs in messages_per_turn:
    for m in msgs:
      ep.step(m)
    if not ep.done:
      ep.step("ok")
  return ep.result()


def msgs(calls):
  return ["".join(parsing.format_call(c) for c in calls)] if calls else []


def test_gold_scores_one():
  ep = kv_episode(kv_task(GT))
  assert ep.user_message() == "turn 0"
  r = run_turns(ep, [msgs(t) for t in GT])
  assert r.progress == 1.0 and r.success and r.turn_state == [True] * 3 and r.turn_exec == [True] * 3
  assert ep.done and r.n_calls == 3 and r.n_errors == 0 and r.turns_closed == 3


def test_perturbations_fail_the_right_turns():
  task = kv_task(GT)
  # drop the read in turn 1: state fine, response missing
  r = run_turns(kv_episode(task), [msgs(GT[0]), msgs(GT[1][1:]), []])
  assert r.turn_state == [True, True, True] and r.turn_exec == [True, False, True]
  assert r.progress == pytest.approx(2 / 3) and not r.success
  # wrong value in turn 0: state differs from then on
  r = run_turns(kv_episode(task), [msgs([call("put", key="b", value=9)]), msgs(GT[1]), []])
  assert r.turn_state[:2] == [False, False] and r.progress == pytest.approx(1 / 3)
  # a call in the empty-GT turn fails it (BFCL irrelevance), even an invalid one
  r = run_turns(kv_episode(task), [msgs(GT[0]), msgs(GT[1]), msgs([call("get", key="b")])])
  assert r.turn_exec == [True, True, False]
  r = run_turns(kv_episode(task), [msgs(GT[0]), msgs(GT[1]), ['<tool_call>{"name": "nope"}</tool_call>']])
  assert r.turn_exec == [True, True, False] and r.n_parse_errors == 1
  # clearing a turn with GT calls fails it (no call made)
  r = run_turns(kv_episode(task), [msgs(GT[0]), [], []])
  assert r.turn_exec == [True, False, True]
  # truncation: unfinished turns count 0 with the fixed denominator
  ep = kv_episode(task)
  ep.step(msgs(GT[0])[0])
  ep.force_close_turn()
  r = ep.result()
  assert r.turns_closed == 1 and r.progress == pytest.approx(1 / 3) and not ep.done


def test_response_check_is_cumulative_multiset():
  # turn 1 GT reads key a; the model read it already in turn 0 -> contained in the cumulative results
  task = kv_task([[call("get", key="a")], [call("get", key="a"), call("get", key="a")]])
  r = run_turns(kv_episode(task), [msgs([call("get", key="a")]), msgs([call("get", key="a")])])
  assert r.success
  task = kv_task([[call("put", key="a", value=2)], [call("get", key="a"), call("get", key="a")]])
  r = run_turns(kv_episode(task), [msgs([call("put", key="a", value=2)]), msgs([call("get", key="a")])])
  assert r.turn_exec == [True, False]  # one read cannot cover two identical GT results


def test_missing_function_offered_only_from_its_turn():
  task = kv_task([[], [call("put", key="b", value=1)]], missing={"1": ("put",)})
  ep = kv_episode(task)
  assert "put" not in {parsing.tool_name(t) for t in ep.system_tools()}
  res = ep.step(parsing.format_call(call("put", key="b", value=1)))
  assert res.kind == "error" and "unknown tool" in res.observations[0]
  ep.step("I cannot do that yet.")
  assert "put" in {parsing.tool_name(t) for t in ep.system_tools()}
  res = ep.step(parsing.format_call(call("put", key="b", value=1)))
  assert res.kind == "tool" and not res.turn_closed
  res = ep.step("done")
  assert res.kind == "answer" and res.turn_closed and res.done
  r = ep.result()
  assert r.turn_exec == [False, True] and r.n_parse_errors == 1


def test_score_calls_offline():
  task = kv_task(GT)
  assert protocol.score_calls(kv_episode(task), [[c for c in t] for t in GT]).success
  r = protocol.score_calls(kv_episode(task), [GT[0], GT[1] + [call("unknown_tool")], []])
  assert r.n_parse_errors == 1 and r.success  # an extra rejected call does not change state or results
  with pytest.raises(ValueError, match="calls_per_turn has 4 turns"):
    protocol.score_calls(kv_episode(task), [[], [], [], []])


def test_episodes_are_independent():
  task = kv_task(GT)
  eps = [kv_episode(task) for _ in range(50)]
  for i, ep in enumerate(eps):
    ep.step(parsing.format_call(call("put", key="b", value=i % 3 + 6)))
  assert [e._model.state["b"] for e in eps] == [i % 3 + 6 for i in range(50)]
  assert task.initial_state["KV"] == {"a": 1}


# --- fuzzing ------------------------------------------------------------------------------------------------------

# Rejected outright (dunder, format/template field, control character) ...
HOSTILE = [
    "__import__('os').system('touch {canary}')",
    "{0.__class__.__mro__[1].__subclasses__()}",
    "{canary}\x00",
    "${{7*7}} {{{{config}}}} %s%n",
    "x{}y",
]
# ... or accepted as inert data (stored verbatim, never evaluated).
INERT = [
    "open('{canary}', 'w').write('x')",
    "eval(compile('open(\"{canary}\",\"w\")','x','exec'))",
    "exec(\"import os; os.system('touch {canary}')\")",
    "'; DROP TABLE users; --",
    "{experiment: run 1.5} notes",
]
_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=False,
                          allow_infinity=False), st.text(max_size=300))
_json_values = st.recursive(_json_scalars, lambda ch: st.one_of(st.lists(ch, max_size=8),
                                                                 st.dictionaries(st.text(max_size=12), ch, max_size=6)),
                            max_leaves=20)


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
  return str(tmp_path_factory.mktemp("canary") / "pwned")


def _assert_safe(ep, before, text, canary):
  res = ep.step(text)
  assert isinstance(res, protocol.StepResult) and res.kind in protocol.KINDS
  assert all(isinstance(o, str) for o in res.observations)
  assert not os.path.exists(canary)
  if res.kind != "tool":
    assert ep._model.state == before


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=400))
def test_fuzz_arbitrary_text(text, canary):
  ep = kv_episode(kv_task(GT))
  _assert_safe(ep, dict(ep._model.state), text, canary)
  _assert_safe(ep, dict(ep._model.state), f"<tool_call>{text}</tool_call>", canary)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.sampled_from(["put", "get", "tag", "__import__", "eval", "put.__globals__"]), st.text(
    max_size=20)), args=st.dictionaries(st.sampled_from(["key", "value", "keys", "weight", "flag", "x"]), _json_values,
                                        max_size=4), hostile=st.sampled_from(HOSTILE), slot=st.integers(0, 3))
def test_fuzz_payloads(name, args, hostile, slot, canary):
  hostile = hostile.replace("{canary}", canary)
  ep = kv_episode(kv_task(GT))
  before = dict(ep._model.state)
  if slot == 0:
    args = dict(args, key=hostile)
  elif slot == 1:
    args = dict(args, keys=[hostile])
  payload = json.dumps({"name": name, "arguments": args}) if slot < 3 else hostile
  res = ep.step(f"<tool_call>{payload}</tool_call>")
  assert res.kind in protocol.KINDS and not os.path.exists(canary)
  if slot in (0, 1, 3):
    assert res.kind == "error" and ep._model.state == before
  r = ep.result()
  assert r.n_calls == 1 and r.n_errors >= (1 if res.kind == "error" else 0)


@pytest.mark.parametrize("text", INERT)
def test_inert_strings_are_data(text, canary):
  text = text.replace("{canary}", canary)
  ep = kv_episode(kv_task(GT))
  res = ep.step(parsing.format_call(call("put", key=text, value=3)))
  assert res.kind == "tool" and ep._model.state[text] == 3 and not os.path.exists(canary)
