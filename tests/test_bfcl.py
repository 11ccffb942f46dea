"""BFCL multi-turn: loading, split, schemas, scoring, official-checker parity, live episodes, safety, synth helpers."""
import copy
import decimal
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from configs import base as base_config
from rods_jax.envs import make_env, parsing, protocol
from rods_jax.envs.bfcl import backends, data, env, execution, parity, split
from rods_jax.envs.task import CATEGORIES, Task

from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import response_checker, state_checker


@pytest.fixture(scope="module")
def all_tasks():
  return {c: data.load_all_tasks(c) for c in CATEGORIES}


def _by_id(all_tasks, tid):
  return next(t for ts in all_tasks.values() for t in ts if t.id == tid)


# --- loading, split, schemas ---------------------------------------------------------------------------------------

def test_load_counts_ids_and_json_round_trip(all_tasks):
  for c, tasks in all_tasks.items():
    assert [t.meta["scenario"] for t in tasks] == list(range(200))
    assert {t.id for t in tasks} == {f"multi_turn_{c}_{i}" for i in range(200)}
    for t in tasks[::37]:
      assert Task.from_json(t.to_json()) == t
      assert Task.from_record(t.to_record()) == t
  # miss_func: the held-out turn carries BFCL's message, its previous turn has empty GT.
  mf = all_tasks["miss_func"][3]
  assert mf.missing_functions == {"1": ("find", "ls")}
  assert mf.turns[1] == data.MISS_FUNC_MESSAGE and mf.gt_calls[0] == ()
  assert all(t.meta["long_context"] for t in all_tasks["long_context"])
  assert not any(t.meta["long_context"] for t in all_tasks["base"])


def test_miss_func_message_is_bfcl_constant():
  from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC
  assert data.MISS_FUNC_MESSAGE == DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC


def test_gt_calls_parsed_as_literals_with_positional_names(all_tasks):
  gts = data.raw_ground_truth("base")
  t0 = all_tasks["base"][0]
  assert gts[t0.id][2] == ["sort('final_report.pdf')"]
  assert t0.gt_calls[2] == ({"name": "sort", "arguments": {"file_name": "final_report.pdf"}},)
  # every parsed call re-renders to a string whose AST equals the wheel's call with positional args named
  import ast
  rng = np.random.default_rng(1)
  for c in CATEGORIES:
    gts = data.raw_ground_truth(c)
    for t in [all_tasks[c][i] for i in rng.choice(200, 20, replace=False)]:
      for raw_turn, turn in zip(gts[t.id], t.gt_calls):
        assert len(raw_turn) == len(turn)
        for raw, call in zip(raw_turn, turn):
          node = ast.parse(raw, mode="eval").body
          values = [ast.literal_eval(a) for a in node.args] + [ast.literal_eval(k.value) for k in node.keywords]
          assert node.func.id == call["name"]
          assert json.loads(json.dumps(values)) == list(call["arguments"].values())
  for t in all_tasks["long_context"][::10]:  # rendering for the official checker round-trips through our loader
    pnames = data._param_names(t.classes)  # pylint: disable=protected-access
    for turn in t.gt_calls:
      for call in turn:
        assert data.parse_call_string(parity.call_string(call), pnames) == call
  with pytest.raises(ValueError, match="not a plain function call"):
    data.parse_call_string("os.system('x')", {"system": []})
  with pytest.raises(ValueError):
    data.parse_call_string("ls(a=__import__('os'))", {"ls": ["a"]})


def test_split_is_fixed_by_scenario_and_documented():
  train, test = split.split_indices("train"), split.split_indices("test")
  assert len(train) == len(test) == 100 and not set(train) & set(test) and set(train) | set(test) == set(range(200))
  assert {"train": list(train), "test": list(test)} == split.make_split(split.SPLIT_SEED)
  for block in range(4):  # stratified over the 4 domain blocks of 50
    assert sum(block * 50 <= i < block * 50 + 50 for i in train) == 25
  for c in CATEGORIES:
    tr, te = env.load_tasks(c, "train"), env.load_tasks(c, "test")
    assert [t.meta["scenario"] for t in tr] == list(train) and [t.meta["scenario"] for t in te] == list(test)
    assert {t.lineage.origin for t in tr} == {"seed"} and {t.lineage.origin for t in te} == {"test"}
  with pytest.raises(ValueError, match="split"):
    split.split_indices("valid")
  with pytest.raises(ValueError, match="category"):
    env.load_tasks("composite", "train")


def _types(schema):
  if isinstance(schema, dict):
    for k, v in schema.items():
      if k == "type":
        yield v
      else:
        yield from _types(v)
  elif isinstance(schema, list):
    for v in schema:
      yield from _types(v)


def test_openai_schemas_recursive_type_mapping(all_tasks):
  from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
  tools = env.tools_at(all_tasks["base"][0], 0)
  assert len(tools) == 32  # TwitterAPI 14 + GorillaFileSystem 18
  for cls in data.MULTI_TURN_CLASSES:
    docs = data.function_docs(cls)
    for doc in docs:
      tool = data.openai_tool(doc)
      assert tool["type"] == "function" and tool["function"]["name"] == doc["name"]
      assert set(_types(tool["function"])) <= {"object", "string", "integer", "number", "boolean", "array"}
      assert tool["function"]["parameters"]["type"] == "object"
      for name, prop in doc["parameters"].get("properties", {}).items():
        got = tool["function"]["parameters"]["properties"][name]
        assert got["type"] == GORILLA_TO_OPENAPI[prop["type"]]
        if "items" in prop and "type" in prop["items"]:
          assert got["items"]["type"] == GORILLA_TO_OPENAPI[prop["items"]["type"]]
  # miss_func: held-out functions appear exactly at their release turn
  mf = all_tasks["miss_func"][3]
  names = lambda turn: {parsing.tool_name(s) for s in env.tools_at(mf, turn)}
  assert not {"find", "ls"} & names(0) and {"find", "ls"} <= names(1) and {"find", "ls"} <= names(2)


def test_miss_func_erratum_only_task_49(all_tasks):
  with_errata = [t.id for ts in all_tasks.values() for t in ts if t.meta["errata"]]
  assert with_errata == ["multi_turn_miss_func_49"]
  t = _by_id(all_tasks, "multi_turn_miss_func_49")
  assert t.missing_functions == {"3": ("wc", "cat")}


# --- scoring --------------------------------------------------------------------------------------------------------

def test_every_ground_truth_scores_full(all_tasks):
  for tasks in all_tasks.values():
    for t in tasks:
      r = env.score(t, [list(turn) for turn in t.gt_calls])
      assert r.success and r.progress == 1.0 and all(r.turn_state) and all(r.turn_exec), t.id
      assert r.n_calls == sum(len(turn) for turn in t.gt_calls) and r.turns_closed == t.num_turns
      assert r.n_parse_errors == 0
  assert multi_turn_utils_instances() == []


def multi_turn_utils_instances():
  return [k for k in vars(multi_turn_utils) if k.endswith("_instance")]


def _reference_turns(task, calls_per_turn):
  """Independent per-turn reference: bfcl's own executor on call strings + its state/response checkers, every turn."""
  gt_strings = data.raw_ground_truth(task.category)[task.id]
  name = f"reftest_{np.random.default_rng().integers(1 << 62)}"
  lc = task.category == "long_context"
  state, execd, all_model = [], [], []
  try:
    for t, gt_turn in enumerate(gt_strings):
      calls = calls_per_turn[t]
      res, m_inst = multi_turn_utils.execute_multi_turn_func_call(
          [parity.call_string(c) for c in calls], task.initial_state, list(task.classes), name, task.id, lc)
      all_model += res
      g_res, g_inst = multi_turn_utils.execute_multi_turn_func_call(
          gt_turn, task.initial_state, list(task.classes), name + "_gt", task.id, lc)
      if not gt_turn:
        state.append(not calls)
        execd.append(not calls)
        continue
      state.append(state_checker(m_inst, g_inst)["valid"])
      execd.append(bool(calls) and response_checker(all_model, g_res, t)["valid"])
  finally:
    for k in [k for k in vars(multi_turn_utils) if k.startswith(name)]:
      del vars(multi_turn_utils)[k]
  return state, execd


def test_per_turn_results_and_progress_match_reference(all_tasks):
  rng = np.random.default_rng(7)
  for c in CATEGORIES:
    for i in rng.choice(200, 8, replace=False):
      task = all_tasks[c][i]
      for kind in rng.permutation(parity.KINDS)[:3]:
        calls = parity.perturb(task, str(kind), rng)
        if calls is None:
          continue
        r = env.score(task, calls)
        ref_state, ref_exec = _reference_turns(task, calls)
        assert r.turn_state == ref_state and r.turn_exec == ref_exec, (task.id, kind)
        want = sum(s and e for s, e in zip(ref_state, ref_exec)) / task.num_turns
        assert r.progress == pytest.approx(want) and r.success == (want == 1.0)


def test_fixed_denominator_and_unfinished_turns(all_tasks):
  task = next(t for t in all_tasks["base"] if t.num_turns >= 4 and all(t.gt_calls))
  n = task.num_turns
  full = [list(turn) for turn in task.gt_calls]
  r = env.score(task, full[:2])  # two turns finished, the rest unfinished -> count 0
  assert r.turns_closed == 2 and r.progress == pytest.approx(2 / n) and not r.success
  silent = env.score(task, [[] for _ in range(n)])
  assert silent.progress == 0.0 and not any(silent.turn_exec)
  with pytest.raises(ValueError, match="calls_per_turn"):
    env.score(task, full + [[]])
  with pytest.raises(ValueError, match=r"calls_per_turn\[1\]"):
    env.score(task, [full[0], None])
  with pytest.raises(ValueError, match="env"):
    env.score(task.replace(env="toolworld"), full)


def test_stratified_parity_with_official_checker(all_tasks):
  """40 tasks per category x (GT + 5 perturbations): success == official multi_turn_checker + irrelevance verdict."""
  rng = np.random.default_rng(2026)
  tasks = [all_tasks[c][i] for c in CATEGORIES for i in sorted(rng.choice(200, 40, replace=False))]
  before = multi_turn_utils_instances()
  rep = parity.run_parity(tasks, kinds_per_task=5, seed=int(rng.integers(1 << 30)))
  assert rep.gt_full == len(tasks)
  assert rep.checked >= len(tasks) * 6 - 10
  assert rep.agree == rep.checked, rep.disagreements
  assert 0 < rep.official_pass < rep.checked  # the perturbations really do fail some and pass some
  assert multi_turn_utils_instances() == before  # the reference cleaned its bfcl globals


def test_official_reference_refuses_untrusted_calls(all_tasks, tmp_path):
  task = all_tasks["base"][0]
  canary = tmp_path / "CANARY"
  # rendering task.gt_calls gives the same verdicts as the wheel's strings
  gt = [list(t) for t in task.gt_calls]
  assert parity.official_verdict(task, None, gt) is True
  assert parity.official_verdict(task, None, [[]] + gt[1:]) is False
  for bad in [{"name": "execute_multi_turn_func_call", "arguments": {}},
              {"name": "open", "arguments": {"file": str(canary), "mode": "w"}},
              {"name": "ls", "arguments": {"a": f"__import__('os').system('touch {canary}')"}},
              {"name": "ls", "arguments": {"a": b"x"}}, "ls()"]:
    with pytest.raises(ValueError):
      parity.official_verdict(task, None, [[bad]] + gt[1:])
  assert not canary.exists() and multi_turn_utils_instances() == []


def test_perturbations_keep_calls_offered(all_tasks):
  rng = np.random.default_rng(3)
  for task in all_tasks["miss_func"][:60]:
    for kind in parity.KINDS:
      calls = parity.perturb(task, kind, rng)
      if calls is None:
        continue
      assert len(calls) == task.num_turns
      for t, turn in enumerate(calls):
        for c in turn:
          assert c["name"] == parity.UNKNOWN_TOOL or c["name"] in env.offered_names(task, t)
  with pytest.raises(ValueError, match="perturbation kind"):
    parity.perturb(all_tasks["base"][0], "nope", rng)


# --- live episodes --------------------------------------------------------------------------------------------------

# The live parser (rods_jax/envs/parsing.py) is stricter than BFCL: it rejects {..:..} "format fields" in strings
# (multi_turn_*_30 posts '{experiment: Apollo Test, ...}') and type-checks against the docs (multi_turn_*_173 passes
# ticket_id='ticket_001' to an integer parameter). Offline score() follows BFCL; these GTs cannot be typed live.
LIVE_PARSER_KNOWN = {30, 173}


def _cfg():
  return base_config.get_config().env


def test_environment_protocol_and_live_gt(all_tasks):
  e = make_env("bfcl", _cfg())
  assert isinstance(e, protocol.Environment) and e.name == "bfcl"
  assert len(e.load_tasks("train")) == 400
  rng = np.random.default_rng(11)
  for c in CATEGORIES:
    for i in rng.choice(200, 6, replace=False):
      task = all_tasks[c][i]
      if task.meta["scenario"] in LIVE_PARSER_KNOWN:
        continue
      ep = e.new_episode(task)
      assert isinstance(ep, protocol.Episode)
      for t, turn in enumerate(task.gt_calls):
        msg = ep.user_message()
        released = env.released_at(task, t)
        assert msg.endswith(task.turns[t])
        if released:  # BFCL's prompting format: the new docs, then the message
          schemas = json.loads(msg[: -len(task.turns[t]) - 1])
          assert sorted(parsing.tool_name(d) for d in schemas) == sorted(released)
          assert all(d in ep.system_tools() for d in schemas)
        else:
          assert msg == task.turns[t]
        for k in range(0, len(turn), 4):
          res = ep.step("".join(parsing.format_call(call) for call in turn[k:k + 4]))
          assert res.kind == "tool" and not res.turn_closed
        res = ep.step("Done.")
        assert res.kind == "answer" and res.turn_closed
      assert ep.done
      r = ep.result()
      assert r.success and r.progress == 1.0, task.id
      assert r == e.score(task, [list(t) for t in task.gt_calls])._replace(n_errors=r.n_errors)


def test_live_and_offline_agree_on_perturbations(all_tasks):
  e = make_env("bfcl", _cfg())
  rng = np.random.default_rng(5)
  for i in rng.choice(200, 10, replace=False):
    task = all_tasks["base"][i]
    if task.meta["scenario"] in LIVE_PARSER_KNOWN:
      continue
    for kind in ("drop", "clear", "unknown", "swap"):
      calls = parity.perturb(task, kind, rng)
      if calls is None:
        continue
      ep = e.new_episode(task)
      for turn in calls:
        for call in turn:
          ep.step(parsing.format_call(call))
        ep.force_close_turn()
      live, off = ep.result(), e.score(task, calls)
      assert (live.turn_state, live.turn_exec, live.progress) == (off.turn_state, off.turn_exec, off.progress)


# --- safety ---------------------------------------------------------------------------------------------------------

def _hostile_calls(canary):
  cmd = f"__import__('os').system('touch {canary}')"
  return [
      {"name": "__init__", "arguments": {}},
      {"name": "_load_scenario", "arguments": {"scenario": {}}},
      {"name": "__class__", "arguments": {}},
      {"name": "eval", "arguments": {"source": cmd}},
      {"name": f"ls(); {cmd}", "arguments": {}},
      {"name": "os.system", "arguments": {"command": f"touch {canary}"}},
      {"name": "cd.__globals__", "arguments": {}},
      {"name": ["ls"], "arguments": {}},
      {"name": None, "arguments": None},
      "ls()",
      {"name": "echo", "arguments": {"content": cmd, "file_name": "x.txt"}},
      {"name": "echo", "arguments": {"content": "{0.__class__}", "file_name": "y.txt"}},
      {"name": "touch", "arguments": {"file_name": "z" * 10_000_000}},
      {"name": "echo", "arguments": {"content": [[[[[[[[[["deep"]]]]]]]]]], "file_name": "d"}},
      {"name": "echo", "arguments": {"__class__": 1}},
      {"name": "echo", "arguments": ["content"]},
      {"name": "mkdir", "arguments": {"dir_name": float("nan")}},
      {"name": "power", "arguments": {"base": 10, "exponent": 10 ** 9}},
      {"name": "square_root", "arguments": {"number": 2, "precision": 10 ** 8}},
      {"name": "mean", "arguments": {"numbers": [10 ** 400]}},
      {"name": "cd", "arguments": {"folder": b"bytes"}},
      {"name": "power", "arguments": {"base": 999_999_999_999_999, "exponent": 9_999}},  # a 150k-digit int result
  ]


def test_hostile_calls_are_error_observations_and_change_nothing(all_tasks, tmp_path):
  canary = tmp_path / "CANARY"
  task = next(t for t in all_tasks["base"] if set(t.classes) == {"GorillaFileSystem"})
  task = task.replace(classes=("GorillaFileSystem", "MathAPI"))
  hostile = _hostile_calls(canary)
  world, fresh = env.BfclWorld(task), env.BfclWorld(task)
  for call in hostile:
    name = call.get("name") if isinstance(call, dict) else None
    args = call.get("arguments") if isinstance(call, dict) else None
    out = backends.execute_call(world.backends, frozenset(world.backends.owner), name, args)
    assert out.error and out.result.startswith(backends.ERROR_PREFIX), call if len(str(call)) < 200 else name
    assert len(out.result) < 400
  assert world.same_state(fresh)
  ex = execution.execute_calls(task, [hostile])
  assert all(ex.errors[0]) and not any(ex.mutated[0])
  r = env.score(task, [hostile] + [[] for _ in range(task.num_turns - 1)])
  # all refused before a backend except the big power, which runs and fails in serialisation
  assert r.n_calls == r.n_errors == len(hostile) and r.n_parse_errors == len(hostile) - 1 and not r.success
  # the same payloads as model text in a live episode
  ep = make_env("bfcl", _cfg()).new_episode(task)
  for call in hostile:
    try:
      text = parsing.OPEN + json.dumps(call) + parsing.CLOSE
    except (ValueError, TypeError):  # not expressible as JSON text (bytes)
      continue
    res = ep.step(text)
    # rejected by the parser ("error") or passed to the dispatcher, which refuses it ("tool" with an error result)
    assert res.observations and all(o.startswith("Error") for o in res.observations), (call, res)
  for text in ["<tool_call>ls()</tool_call>", "<tool_call>{\"name\": \"__import__\"}</tool_call>",
               "<tool_call>" * 1000, "x" * 100_000, "<tool_call>{\"name\": \"ls\", \"arguments\": {\"a\": 1e999}}"
               "</tool_call>"]:
    assert ep.step(text).kind in ("error", "answer")
  assert ep._model.same_state(fresh)  # pylint: disable=protected-access
  assert not canary.exists()
  assert multi_turn_utils_instances() == []


def test_math_precision_does_not_leak_into_process():
  import mpmath
  task = Task(id="m", env="bfcl", category="base", classes=("MathAPI",), initial_state={}, turns=("q",),
              gt_calls=((),))
  prec, dps = decimal.getcontext().prec, mpmath.mp.dps
  ex = execution.execute_calls(task, [[{"name": "square_root", "arguments": {"number": 2, "precision": 5}},
                                       {"name": "logarithm", "arguments": {"value": 8, "base": 2, "precision": 3}}]])
  assert ex.results[0][0] == str({"result": decimal.Decimal(2).sqrt(decimal.Context(prec=5))})
  assert not any(ex.errors[0])
  assert decimal.getcontext().prec == prec and mpmath.mp.dps == dps


# --- synthesizer helpers --------------------------------------------------------------------------------------------

def test_execute_calls_results_match_official_executor(all_tasks):
  task = all_tasks["base"][0]
  ex = execution.execute_calls(task, [list(t) for t in task.gt_calls])
  name = "synthtest"
  try:
    for t, gt_turn in enumerate(data.raw_ground_truth("base")[task.id]):
      ref, inst = multi_turn_utils.execute_multi_turn_func_call(
          gt_turn, task.initial_state, list(task.classes), name, task.id)
      assert ex.results[t] == ref
  finally:
    for k in [k for k in vars(multi_turn_utils) if k.startswith(name)]:
      del vars(multi_turn_utils)[k]
  assert ex.final_state["GorillaFileSystem"] == backends.public_state(inst["GorillaFileSystem"])
  assert ex.mutated[0] == [False, True, True]  # cd (private cwd only), mkdir, mv
  js = execution.to_jsonable(ex.final_state)
  assert json.loads(json.dumps(js)) == js and js["GorillaFileSystem"]["root"]["__class__"] == "Directory"
  # mapping input, availability per turn
  mf = all_tasks["miss_func"][3]
  draft = {"classes": list(mf.classes), "initial_state": mf.initial_state,
           "missing_functions": {"1": ["find", "ls"]}}
  ex = execution.execute_calls(draft, [[{"name": "find", "arguments": {}}], [{"name": "find", "arguments": {}}]])
  assert ex.errors == [[True], [False]]
  assert not execution.execute_calls(draft, [[{"name": "find", "arguments": {}}]], check_offered=False).errors[0][0]
  with pytest.raises(ValueError, match="initial_state"):
    execution.execute_calls({"classes": ["MathAPI"]}, [])
  with pytest.raises(ValueError, match=r"initial_state\['GorillaFileSystem'\] cannot be loaded"):
    execution.execute_calls({"classes": ["GorillaFileSystem"], "initial_state": {"GorillaFileSystem": {"root": 3}}}, [])
  with pytest.raises(ValueError, match="must be a dict"):
    execution.execute_calls({"classes": ["TradingBot"], "initial_state": {"TradingBot": []}}, [])
  with pytest.raises(ValueError, match="not a BFCL multi-turn class"):
    execution.execute_calls({"classes": ["WebSearchAPI"], "initial_state": {}}, [])


def test_mutating_table_matches_observation():
  table = execution.mutating_functions()
  assert table == execution.observe_mutations()
  assert set(table["MathAPI"]["read_only"]) == set(data.function_names("MathAPI"))
  for cls, groups in table.items():
    assert sorted(sum(groups.values(), [])) == sorted(data.function_names(cls))
  assert {"mkdir", "mv", "rm", "touch", "echo", "cp"} <= set(table["GorillaFileSystem"]["mutating"])
  assert "cd" in table["GorillaFileSystem"]["read_only"]


# --- categories: miss_param, long_context; fuzzing the dispatcher ----------------------------------------------------

def test_miss_param_turn_must_stay_silent(all_tasks):
  rng = np.random.default_rng(13)
  checked = 0
  for task in [all_tasks["miss_param"][i] for i in rng.choice(200, 20, replace=False)]:
    empty = [t for t, turn in enumerate(task.gt_calls) if not turn]
    assert empty, task.id  # every miss_param task has a turn whose parameter is missing
    t = empty[0]
    calls = [list(turn) for turn in task.gt_calls]
    calls[t] = [copy.deepcopy(task.gt_calls[t + 1][0])] if t + 1 < task.num_turns and task.gt_calls[t + 1] else \
        [{"name": "ls", "arguments": {}}]
    r = env.score(task, calls)
    assert not r.turn_state[t] and not r.turn_exec[t] and not r.success
    gts = data.raw_ground_truth("miss_param")[task.id]
    assert parity.official_verdict(task, gts, calls) is False
    checked += 1
  assert checked == 20


def test_long_context_loads_bloated_state(all_tasks):
  for lc in [all_tasks["long_context"][i] for i in (0, 60, 110, 160)]:  # one scenario per domain
    plain = lc.replace(meta={**lc.meta, "long_context": False})
    w_lc, w_plain = env.BfclWorld(lc), env.BfclWorld(plain)
    assert not w_lc.same_state(w_plain), lc.id
    size = lambda w: len(json.dumps(execution.to_jsonable(
        {c: backends.public_state(o) for c, o in w.backends.instances.items()})))
    if "GorillaFileSystem" in lc.classes:  # the file system gets extra files / long contents
      assert size(w_lc) > size(w_plain) + 1000, lc.id


_json_values = st.recursive(
    st.none() | st.booleans()
    | st.integers() | st.floats()
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner,
                                                        max_size=4),
    max_leaves=12)


def test_dispatcher_fuzz_never_raises_and_rejections_change_nothing(all_tasks):
  task = all_tasks["base"][0]
  names = sorted(env.offered_names(task, 0))
  fresh = env.BfclWorld(task)

  @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
  @given(name=st.one_of(st.sampled_from(names + ["__init__", "_load_scenario", "eval", "__class__"]),
                        st.text(max_size=20)),
         args=st.one_of(st.dictionaries(st.text(max_size=12), _json_values, max_size=4), _json_values))
  def check(name, args):
    world = env.BfclWorld(task)
    out = backends.execute_call(world.backends, env.offered_names(task, 0), name, args)
    assert isinstance(out.result, str) and isinstance(out.error, bool)
    if out.result.startswith(backends.ERROR_PREFIX):
      assert world.same_state(fresh)

  check()


def test_environment_feeds_profile_and_function_class(all_tasks):
  from rods_jax.envs import profile as profile_lib
  e = make_env("bfcl", _cfg())
  assert e.function_class("cd") == "GorillaFileSystem" and e.function_class("place_order") == "TradingBot"
  with pytest.raises(KeyError, match="unknown BFCL function"):
    e.function_class("__init__")
  p = profile_lib.profile(all_tasks["base"][108], e)  # get_watchlist -> get_stock_info -> place_order -> order id
  assert p.depth == 4 and p.classes[0] == ("TradingBot",)
  depths = [profile_lib.profile(t, e).depth for t in all_tasks["base"][::5]]
  assert min(depths) == 1 and max(depths) <= 4


def test_parity_on_composed_perturbations(all_tasks):
  """Random stacks of 2-3 perturbations (each applied to the previous result) still agree with the official verdict."""
  gts = {c: data.raw_ground_truth(c) for c in CATEGORIES}

  @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
  @given(cat=st.sampled_from(CATEGORIES), idx=st.integers(0, 199), n_kinds=st.integers(2, 3),
         seed=st.integers(0, 2 ** 31))
  def check(cat, idx, n_kinds, seed):
    task = all_tasks[cat][idx]
    calls = parity.stacked_perturbation(task, n_kinds, np.random.default_rng(seed))
    if calls is not None:
      assert env.score(task, calls).success == parity.official_verdict(task, gts[cat][task.id], calls)

  check()


@settings(max_examples=300, deadline=None)
@given(needed=st.lists(st.sampled_from(["a", "b", '{"x": 1}', "", "None"]), max_size=6),
       pool=st.lists(st.sampled_from(["a", "b", '{"x": 1}', "", "None", "c"]), max_size=8))
def test_response_check_equals_bfcl_response_checker(needed, pool):
  """The shared reward.turn_checks response test is exactly bfcl's response_checker (multiset inclusion)."""
  from rods_jax.envs import reward
  assert reward.multiset_contains(needed, pool) == response_checker(list(pool), list(needed), 0)["valid"]
