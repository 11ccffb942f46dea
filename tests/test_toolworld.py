"""toolworld: gold trajectories score R_P = 1, perturbations score like an independent reference scorer, category
semantics (miss_func / miss_param / long_context), generated profiles equal the requested ones, rerandomize, splits."""
import json
import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs.base import get_config
from rods_jax.envs import make_env, parsing, protocol, profile as profile_lib
from rods_jax.envs.task import CATEGORIES, Task
from rods_jax.envs.toolworld import apis, env as tw_env, generator, world as tw_world


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cfg = get_config().env
  cfg.cache_dir = str(tmp_path_factory.mktemp("twcache"))
  return make_env("toolworld", cfg)


@pytest.fixture(scope="module")
def seeds(env):
  return env.load_tasks("seeds")


@pytest.fixture(scope="module")
def test_split(env):
  return env.load_tasks("test")


def reference_score(env, task, calls_per_turn):
  """Independent reference of docs/METHOD.md §1 on raw ToolWorld objects (no parser, no TurnEpisode)."""
  lc = bool(task.meta.get("long_context"))
  model, gt = tw_world.ToolWorld(task.initial_state, lc), tw_world.ToolWorld(task.initial_state, lc)
  cumulative, passes = [], []
  tools_by_turn = [{parsing.tool_name(s) for s in env.tools_at(task, t)}
                   for t in range(task.num_turns)]
  for t, gt_calls in enumerate(task.gt_calls):
    calls = calls_per_turn[t] if t < len(calls_per_turn) else None
    if calls is None:
      passes.append(False)
      continue
    for c in calls:
      if c["name"] in tools_by_turn[t]:
        cumulative.append(model.execute(c["name"], c["arguments"]).output)
    gt_res = [gt.execute(c["name"], c["arguments"]).output for c in gt_calls]
    if not gt_calls:
      passes.append(len(calls) == 0)
      continue
    contained = not (Counter(gt_res) - Counter(cumulative))
    passes.append(model.state == gt.state and contained and len(calls) > 0)
  return sum(passes) / task.num_turns


def gold_calls(task):
  return [[dict(c) for c in t] for t in task.gt_calls]


def test_gold_scores_one_everywhere(env, seeds, test_split):
  for task in seeds + test_split:
    r = env.score(task, gold_calls(task))
    assert r.progress == 1.0 and r.success and r.n_errors == 0, task.id
    # the same through the live episode and the exact gold message texts
    ep = env.new_episode(task)
    for m in tw_env.gold_messages(task):
      if m["role"] == "user":
        assert ep.user_message() == m["content"]
      elif m["role"] == "assistant":
        res = ep.step(m["content"])
        assert res.kind in ("tool", "answer")
      else:
        assert res.observations == [m["content"]]
    assert ep.done and ep.result().success, task.id


def _perturb(task, rng):
  calls = gold_calls(task)
  nonempty = [t for t in range(len(calls)) if calls[t]]
  kind = rng.choice(["drop", "duplicate", "clear", "extra", "unknown", "swap", "truncate"])
  t = rng.choice(nonempty)
  if kind == "drop":
    calls[t].pop(rng.randrange(len(calls[t])))
  elif kind == "duplicate":
    k = rng.randrange(len(calls[t]))
    calls[t].insert(k, dict(calls[t][k]))
  elif kind == "clear":
    calls[t] = []
  elif kind == "extra":
    u = rng.randrange(len(calls))
    fn = rng.choice([f for c in task.classes for f in apis.BY_CLASS[c]])
    w = tw_world.ToolWorld(task.initial_state)
    lits = fn.pick(w.state[fn.cls], rng, {})
    if lits is not None:
      calls[u].append({"name": fn.name, "arguments": lits})
  elif kind == "unknown":
    calls[t].append({"name": "rm_rf", "arguments": {}})
  elif kind == "swap":
    c = calls[t][rng.randrange(len(calls[t]))]
    fn = apis.BY_NAME[c["name"]]
    p = rng.choice(fn.params)
    c["arguments"] = dict(c["arguments"], **{p.name: ("zz" if p.json_type == "string" else 7)})
  else:
    calls = calls[:t]
  return kind, calls


def test_perturbations_match_reference(env, seeds, test_split):
  rng = random.Random(0)
  fails = Counter()
  n = 0
  for task in seeds[::4] + test_split[::4]:
    for _ in range(5):
      kind, calls = _perturb(task, rng)
      got = env.score(task, calls)
      assert got.progress == pytest.approx(reference_score(env, task, calls), abs=1e-12), (task.id, kind, calls)
      fails[kind] += not got.success
      n += 1
      if kind in ("clear", "truncate"):
        assert not got.success
  # the perturbations that must change the verdict nearly always do
  assert fails["clear"] > 0 and fails["drop"] > 0 and fails["swap"] > 0


def test_dropped_unique_result_fails(env, seeds):
  for task in seeds[:200]:
    calls = gold_calls(task)
    t = next(t for t in range(task.num_turns) if calls[t])
    calls[t].pop()
    r = env.score(task, calls)
    gt_outputs = [[x.output for x in turn] for turn in protocol.execute_ground_truth(env, task)]
    if Counter(o for turn in gt_outputs for o in turn)[gt_outputs[t][-1]] == 1:
      assert not (r.turn_state[t] and r.turn_exec[t]) and not r.success, task.id


CREATING = ("transfer", "copy_file", "book_flight", "send_message", "buy_product", "deposit")


def test_duplicated_creating_call_fails(env, seeds):
  """A second transfer / copy / booking / message / order / deposit changes the state: the turn and the task fail."""
  n = 0
  for task in seeds:
    calls = gold_calls(task)
    hit = [(t, k) for t in range(task.num_turns) for k, c in enumerate(calls[t]) if c["name"] in CREATING]
    if not hit:
      continue
    t, k = hit[0]
    calls[t].insert(k, dict(calls[t][k]))
    ep = env.new_episode(task)
    observations = []
    for turn_calls in calls:
      observations.append(ep.submit_calls(turn_calls))
      ep.force_close_turn()
    r = ep.result()
    if '"error"' in observations[t][k + 1]:  # the copy was refused (stock, funds): state unchanged, BFCL passes it
      assert r.turn_state[t]
      continue
    assert not r.turn_state[t] and not r.success, task.id
    n += 1
  assert n >= 50


def test_error_hints_and_parse_errors_counted(tmp_path):
  cfg = get_config().env
  cfg.cache_dir = str(tmp_path)
  cfg.error_hints = True
  env = make_env("toolworld", cfg)
  task = tw_env.split_task("seeds", 3)
  ep = env.new_episode(task)
  res = ep.step('<tool_call>{"name": "nope", "arguments": {}}</tool_call>')
  assert res.kind == "error" and "Available:" in res.observations[0]
  assert ep.result().n_parse_errors == 1 and ep.result().n_calls == 1
  # backend errors carry an actionable hint; the GT world is unaffected (its calls succeed)
  fn = next(f for c in task.classes for f in apis.BY_CLASS[c] if any(p.kind == "fid" or p.kind == "acct"
                                                                     for p in f.params))
  p = next(p for p in fn.params if p.kind in ("fid", "acct"))
  args = {q.name: ("Z99" if q is p else (5 if q.json_type == "integer" else "zz")) for q in fn.params}
  res = ep.step(parsing.format_call({"name": fn.name, "arguments": args}))
  out = json.loads(res.observations[0])
  assert res.kind == "tool" and out["error"] and out["hint"]
  assert ep.result().n_errors == 2 and ep.result().n_parse_errors == 1
  assert env.score(task, gold_calls(task)).success


def test_miss_func_semantics(env, seeds):
  tasks = [t for t in seeds if t.category == "miss_func"]
  assert len(tasks) == 100
  for task in tasks:
    (turn, fns), = task.missing_functions.items()
    turn = int(turn)
    assert task.gt_calls[turn - 1] == () and task.gt_calls[turn]
    assert fns[0] in {c["name"] for c in task.gt_calls[turn]}
    assert fns[0] in task.turns[turn]  # the injection message names the new tool
    for u in range(task.num_turns):
      offered = {parsing.tool_name(s) for s in env.tools_at(task, u)}
      assert (fns[0] in offered) == (u >= turn)
      if u < turn:
        assert fns[0] not in {c["name"] for t in task.gt_calls[:u + 1] for c in t}
    # calling the held-back tool early is a parse error and fails the abstain turn
    calls = gold_calls(task)
    calls[turn - 1] = [dict(c) for c in task.gt_calls[turn]]
    r = env.score(task, calls)
    assert r.turn_exec[turn - 1] is False and r.n_parse_errors >= 1


def test_miss_param_semantics(env, seeds):
  tasks = [t for t in seeds if t.category == "miss_param"]
  for task in tasks:
    empty = [t for t in range(task.num_turns) if not task.gt_calls[t]]
    assert len(empty) == 1
    e = empty[0]
    m = re.fullmatch(r"the (.+) is (\S+)\.", task.turns[e + 1])
    assert m, task.turns[e + 1]
    value = m.group(2)
    assert not any(profile_lib.occurs(value, x) for x in task.turns[:e + 1])
    assert any(str(v) == value for c in task.gt_calls[e + 1] for v in c["arguments"].values())
    assert task.meta["answers"][e] == f"which {m.group(1)}?"


def test_long_context_outputs_are_padded(env, seeds):
  lc = [t for t in seeds if t.category == "long_context"]
  base = [t for t in seeds if t.category == "base"]
  assert all(t.meta["long_context"] for t in lc) and not any(t.meta["long_context"] for t in base)
  out = tw_env.gold_messages(lc[0])
  tool = [json.loads(m["content"]) for m in out if m["role"] == "tool"]
  assert all("log" in x and len(x["log"].split()) == 3 for x in tool)
  assert len(json.dumps(lc[0].initial_state)) > 1.5 * len(json.dumps(base[0].initial_state))


def test_profile_equals_requested(env, seeds):
  for task in seeds[::2]:
    assert profile_lib.profile(task, env) == profile_lib.Profile.from_dict(task.meta["profile"]), task.id
  rng = random.Random(123)
  made = 0
  for i in range(300):
    prof = generator.sample_profile(rng, CATEGORIES[i % 4])
    try:
      task = generator.generate(prof, rng, task_id=f"p{i}")
    except generator.InfeasibleProfile:
      continue
    made += 1
    assert profile_lib.profile(task, env) == prof
    assert env.score(task, gold_calls(task)).success
  assert made >= 250


def test_generate_with_handmade_profile(env):
  cls = generator.class_of
  # depth-4 cross-class chain spread over 3 turns, plus a miss_param abstain turn
  prof = profile_lib.build_profile(
      "miss_param", [[], ["find_file"], ["file_owner", "find_account"], ["get_balance"]], [(0, 1), (1, 2), (2, 3)], cls)
  assert prof.depth == 4 and prof.cross_turn_edges == 2
  task = generator.generate(prof, random.Random(5))
  assert profile_lib.profile(task, env) == prof
  assert task.turns[0] == "find file a file name." and task.turns[1].startswith("the file name is ")
  assert task.turns[2] == "owner of that file; account of the owner."
  assert task.turns[3] == "balance of that account."
  with pytest.raises(generator.InfeasibleProfile, match="nothing to make missing"):
    generator.generate(profile_lib.build_profile("miss_param", [["find_file"], [], ["file_owner"]], [(0, 1)], cls),
                       random.Random(0))
  with pytest.raises(generator.InfeasibleProfile):
    generator.generate(profile_lib.build_profile("base", [["freeze_account", "find_file"]], [(0, 1)], cls),
                       random.Random(0))
  with pytest.raises(generator.InfeasibleProfile, match="unknown toolworld function"):
    generator.generate(profile_lib.Profile("base", (("rm",),), (("x",),), (), 1, 0), random.Random(0))


_ENTITY = re.compile(r"\b[A-Z]\d+\b|\b\d+[A-F]?\b")
_WORDS = set(tw_world.PEOPLE) | set(tw_world.FILE_NAMES) | set(tw_world.DIRS) | set(tw_world.WORDS) | \
    set(tw_world.CITIES) | set(tw_world.PRODUCTS)


def _skeleton(text):
  text = _ENTITY.sub("#", text)
  return " ".join("@" if w.strip(".,;") in _WORDS else w for w in text.split())


def test_rerandomize_keeps_structure_changes_world(env, seeds):
  rng = random.Random(7)
  changed = 0
  for task in seeds[::8]:
    new = generator.rerandomize(task, rng)
    assert new.id == task.id and new.lineage == task.lineage and new.category == task.category
    assert new.meta["profile"] == task.meta["profile"]
    assert [[c["name"] for c in t] for t in new.gt_calls] == [[c["name"] for c in t] for t in task.gt_calls]
    assert [_skeleton(t) for t in new.turns] == [_skeleton(t) for t in task.turns]
    assert new.missing_functions == task.missing_functions or task.category == "miss_func"
    changed += new.initial_state != task.initial_state
    assert env.score(new, gold_calls(new)).success
  assert changed == len(seeds[::8])
  # without meta["profile"] the profile is measured from the executed ground truth
  bare = seeds[1].replace(meta={k: v for k, v in seeds[1].meta.items() if k != "profile"})
  assert generator.rerandomize(bare, rng).meta["profile"] == seeds[1].meta["profile"]


def test_splits_deterministic_disjoint_and_balanced(env, seeds, test_split):
  assert [t.to_json() for t in seeds[:5]] == [tw_env.split_task("seeds", i).to_json() for i in range(5)]
  assert Counter(t.category for t in seeds) == {c: 100 for c in CATEGORIES}
  assert Counter(t.category for t in test_split) == {c: 100 for c in CATEGORIES}
  assert len({t.id for t in seeds + test_split}) == 800
  assert not {t.turns for t in seeds} & {t.turns for t in test_split}
  assert {t.lineage.origin for t in seeds} == {"seed"} and {t.lineage.origin for t in test_split} == {"test"}
  stats = tw_env.task_stats(seeds)
  assert set(stats["depth"]) == {1, 2, 3, 4} and 3.0 <= stats["mean_turns"] <= 4.0
  assert stats["depth"][3] + stats["depth"][4] >= 150
  assert all(1 <= len(t.gt_calls[u]) <= 3 for t in seeds for u in range(t.num_turns) if t.gt_calls[u])
  assert all(1 <= t.num_turns <= 5 for t in seeds)
  # records round-trip (queue format)
  for t in seeds[:20]:
    assert Task.from_record(t.to_record()) == t


def test_apis_shape():
  assert len(apis.CLASSES) >= 5
  for c in apis.CLASSES:
    assert len(apis.BY_CLASS[c]) >= 6
  assert len(apis.BY_NAME) == len(apis.FUNCTIONS)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from([f.name for f in apis.FUNCTIONS] + ["__class__", "eval"]),
       value=st.one_of(st.text(max_size=250), st.integers(), st.floats(allow_nan=False), st.booleans(),
                       st.lists(st.text(max_size=5), max_size=7)))
def test_rejected_calls_leave_state_unchanged(name, value):
  task = tw_env.split_task("seeds", 10)
  cfg = get_config().env
  ep = tw_env.ToolWorldEnv(cfg).new_episode(task)
  before = json.dumps(ep._model.state, sort_keys=True)
  fn = apis.BY_NAME.get(name)
  args = {p.name: value for p in fn.params} if fn else {"x": value}
  res = ep.step(parsing.format_call({"name": name, "arguments": args}))
  if res.kind == "error":
    assert json.dumps(ep._model.state, sort_keys=True) == before
  if res.kind == "tool" and json.loads(res.observations[0]).get("error"):
    assert json.dumps(ep._model.state, sort_keys=True) == before


def test_random_policy_invariants(env, seeds):
  """A random policy mixing gold calls (of this and other tasks), garbage and answers never breaks an episode."""
  rng = random.Random(3)
  pool = [m["content"] for t in seeds[:40] for m in tw_env.gold_messages(t) if m["role"] == "assistant"]
  pool += ["<tool_call>{bad json</tool_call>", "<tool_call>", "</tool_call>", "", "\x00" * 5,
           '<tool_call>{"name":"transfer","arguments":{"src":"A1","dst":"A2","amount":-5}}</tool_call>']
  for task in seeds[::7]:
    ep = env.new_episode(task)
    steps = 0
    while not ep.done and steps < 60:
      steps += 1
      if rng.random() < 0.1:
        ep.force_close_turn()
        continue
      res = ep.step(rng.choice(pool))
      assert res.kind in protocol.KINDS and all(isinstance(o, str) for o in res.observations)
      assert res.turn_closed == (res.kind == "answer")
    r = ep.result()
    assert 0.0 <= r.progress <= 1.0 and r.success == (r.progress == 1.0)
    assert len(r.turn_state) == len(r.turn_exec) == r.turns_closed <= task.num_turns
    assert r.n_parse_errors <= r.n_errors
    assert r.progress == pytest.approx(sum(s and e for s, e in zip(r.turn_state, r.turn_exec)) / task.num_turns)


def _content(task):
  # what a policy is asked and scored on: the user turns and the ground-truth calls
  return task.turns, json.dumps(task.gt_calls, sort_keys=True)


def test_validation_split_is_balanced_and_disjoint_from_every_other_split(env, seeds, test_split):
  val = env.load_tasks("validation")
  assert len(val) == 200 and Counter(t.category for t in val) == {c: 50 for c in CATEGORIES}
  assert {t.lineage.origin for t in val} == {"validation"}
  assert [t.to_json() for t in val[:3]] == [tw_env.split_task("validation", i).to_json() for i in range(3)]
  # The full 16,000-task offline split takes minutes to generate; a stride over all its category blocks stands in
  # (the complete check found no shared content either when the split was added).
  offline = [tw_env.split_task("offline", i) for i in range(0, 16_000, 80)]
  others = seeds + test_split + offline
  assert not {t.id for t in val} & {t.id for t in others}
  assert not {_content(t) for t in val} & {_content(t) for t in others}
  assert not {t.turns for t in val} & {t.turns for t in others}


def test_registry_and_task_checks(env, seeds):
  with pytest.raises(ValueError, match=r"config.env.name='nope'"):
    make_env("nope", get_config().env)
  assert isinstance(env, protocol.Environment) and env.name == "toolworld"
  assert isinstance(env.new_episode(seeds[0]), protocol.Episode)
  with pytest.raises(ValueError, match="not a toolworld split"):
    env.load_tasks("train")
  with pytest.raises(ValueError, match="not toolworld"):
    env.new_episode(seeds[0].replace(env="bfcl"))
  with pytest.raises(KeyError, match="unknown toolworld function"):
    env.function_class("rm")
