"""Replay buffer: invariants under random operation sequences (hypothesis), exact lifecycle rules, exact restore,
crash recovery from the candidate log."""
import json
import math
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rods_jax.envs.task import Lineage, Task
from rods_jax.rods.buffer import BufferConfig, ReplayBuffer, phi


def make_task(tid, origin="seed", category="base", parent=None, generation=0, step=0, turns=2):
  return Task(id=tid, env="toolworld", category=category, classes=("Files",),
              initial_state={"Files": {"n": len(tid)}}, turns=tuple(f"turn {i} of {tid}" for i in range(turns)),
              gt_calls=tuple(({"name": "ls", "arguments": {"i": i}},) for i in range(turns)),
              lineage=Lineage(origin=origin, parent_id=parent, generation=generation, birth_step=step))


def seeds(n):
  cats = ("base", "miss_func", "miss_param", "long_context")
  return [make_task(f"s{i}", category=cats[i % 4]) for i in range(n)]


def cfg(**kw):
  base = dict(p_max=6, beta=0.25, burn_in_low=0.2, retire_high=0.95, retire_low=0.2, stale_epochs=2, retirement=True)
  base.update(kw)
  return BufferConfig(**base)


def reference_lifecycle(c, gen_ids, hist, last_seen, ended):
  """Independent statement of §3.5's boundary rules over the generated ids (oldest first)."""
  out = {"evicted": set(), "retired_mastered": set(), "retired_unsolvable": set(), "retired_stale": set()}
  for g in gen_ids:
    h = hist.get(g, [])
    if h and h[0] < c.burn_in_low:
      out["evicted"].add(g)
    elif h and c.retirement and h[-1] > c.retire_high:
      out["retired_mastered"].add(g)
    elif h and c.retirement and h[-1] < c.retire_low:
      out["retired_unsolvable"].add(g)
    elif c.retirement and ended - last_seen[g] >= c.stale_epochs:
      out["retired_stale"].add(g)
  return out


rbar_values = st.one_of(st.sampled_from([0.0, 0.1, 0.19999, 0.2, 0.5, 0.85, 0.95, 0.950001, 1.0]),
                        st.floats(0.0, 1.0, allow_nan=False))
ops = st.lists(st.tuples(st.sampled_from(["step", "step", "step", "stage", "stage", "skip_obs"]),
                         st.integers(1, 5), st.lists(rbar_values, min_size=5, max_size=5)), min_size=5, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, n_seeds=st.integers(2, 9), p_max=st.integers(0, 7), beta=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
       retirement=st.booleans(), stale=st.integers(1, 3), rng_seed=st.integers(0, 2**16))
def test_invariants_hold_over_random_operation_sequences(tmp_path, ops, n_seeds, p_max, beta, retirement, stale,
                                                         rng_seed):
  c = cfg(p_max=p_max, beta=beta, retirement=retirement, stale_epochs=stale)
  log = tmp_path / f"log{rng_seed}_{len(ops)}.jsonl"
  if log.exists():
    log.unlink()
  buf = ReplayBuffer(seeds(n_seeds), c, str(log), seed=rng_seed)
  seed_ids = set(buf.active_ids())
  staged_fifo: list[str] = []
  hist: dict[str, list[float]] = {}
  last_seen: dict[str, int] = {}
  n_cand = 0
  for kind, n, rbars in ops:
    before = buf.active_ids()
    if kind == "stage":
      for _ in range(n):
        t = make_task(f"g{n_cand}", origin="synth", parent="s0", generation=1, step=n_cand)
        n_cand += 1
        assert buf.stage(t)
        staged_fifo.append(t.id)
      assert not buf.stage(make_task("s0", origin="synth"))  # known id: refused
      assert buf.active_ids() == before  # staging never touches the pool
      continue
    smp = buf.sample(n)
    assert len(smp.tasks) == n
    assert buf.active_ids() == before  # sampling never touches the pool
    if kind != "skip_obs":
      for t, r in zip(smp.tasks, rbars):
        first = buf.observe(t.id, r, step=0)
        assert first == (t.id not in seed_ids and t.id not in hist)
        if t.id not in seed_ids:
          hist.setdefault(t.id, []).append(r)
          last_seen[t.id] = buf.epoch
    if smp.epoch_end:
      gen_before = [i for i in buf.active_ids() if i not in seed_ids]
      expected = reference_lifecycle(c, gen_before, hist, last_seen, buf.epoch)
      rep = buf.end_epoch()
      for k, v in expected.items():
        assert set(getattr(rep, k)) == v, k
      if not retirement:
        assert not (rep.retired_mastered or rep.retired_stale or rep.retired_unsolvable)
      survivors = len(gen_before) - sum(len(v) for v in expected.values()) - len(rep.pruned)
      # Injection: at most floor(β·|active|) measured just before injection, FIFO, never past P_max.
      active_before_injection = len(seed_ids) + survivors
      assert rep.cap == math.floor(beta * active_before_injection + 1e-9)
      assert len(rep.injected) <= rep.cap
      assert rep.injected == staged_fifo[:len(rep.injected)]
      expected_n = max(0, min(rep.cap, p_max - survivors, len(staged_fifo)))
      assert len(rep.injected) == expected_n
      staged_fifo = staged_fifo[len(rep.injected):]
      for g in rep.injected:
        last_seen[g] = rep.epoch
      assert buf.staged_ids() == staged_fifo
    # Global invariants.
    active = buf.active_ids()
    assert seed_ids <= set(active)
    assert buf.num_generated <= p_max
    assert len(active) == len(set(active))
  c2 = buf.counters
  assert c2["accepted"] == n_cand
  assert c2["injected"] == buf.num_generated + sum(c2[k] for k in ("evicted", "retired_mastered",
                                                                   "retired_unsolvable", "retired_stale", "pruned"))


def test_epoch_is_one_pass_over_the_pool_with_filler_at_the_end(tmp_path):
  buf = ReplayBuffer(seeds(10), cfg(), str(tmp_path / "log.jsonl"), seed=3)
  seen, ends = [], []
  for _ in range(3):
    s = buf.sample(4)
    seen.append([t.id for t in s.tasks])
    ends.append((s.epoch_end, s.n_filler))
  assert ends == [(False, 0), (False, 0), (True, 2)]
  first_pass = seen[0] + seen[1] + seen[2][:2]
  assert sorted(first_pass) == sorted(f"s{i}" for i in range(10))
  assert len(set(seen[2])) == 4  # filler is drawn without replacement from the rest of the pool
  with pytest.raises(RuntimeError, match="end_epoch"):
    buf.sample(4)
  buf.end_epoch()
  assert buf.epoch == 1
  s = buf.sample(10)
  assert s.epoch_end and sorted(t.id for t in s.tasks) == sorted(f"s{i}" for i in range(10))


def test_burn_in_retirement_and_stale_exact(tmp_path):
  buf = ReplayBuffer(seeds(8), cfg(p_max=10, beta=1.0, stale_epochs=2), str(tmp_path / "log.jsonl"))
  for i in range(6):
    buf.stage(make_task(f"g{i}", origin="synth", parent="s1", generation=1))
  buf.sample(8)
  rep = buf.end_epoch()
  assert rep.injected == [f"g{i}" for i in range(6)] and rep.cap == 8
  # First obs 0.1 then 0.6 -> burn-in eviction uses the FIRST: evicted.
  buf.observe("g0", 0.1, 10)
  buf.observe("g0", 0.6, 11)
  # First obs 0.5, latest 0.96 -> mastered; latest exactly 0.95 -> stays.
  buf.observe("g1", 0.5, 10)
  buf.observe("g1", 0.96, 11)
  buf.observe("g2", 0.5, 10)
  buf.observe("g2", 0.95, 11)
  # First obs 0.3, latest 0.15 -> unsolvable; latest exactly 0.2 -> stays.
  buf.observe("g3", 0.3, 10)
  buf.observe("g3", 0.15, 11)
  buf.observe("g4", 0.2, 10)
  # g5 never observed: stale after 2 epochs unobserved (injected at end of epoch 0; stale at end of epoch 2).
  while not buf.sample(7).epoch_end:
    pass
  rep = buf.end_epoch()
  assert rep.evicted == ["g0"] and rep.retired_mastered == ["g1"] and rep.retired_unsolvable == ["g3"]
  assert rep.retired_stale == []
  assert buf.removed() == {"g0": "evicted", "g1": "retired_mastered", "g3": "retired_unsolvable"}
  assert buf.history("g0") == [(10, 0.1), (11, 0.6)]  # history survives removal
  buf.observe("g2", 0.5, 20)
  buf.observe("g4", 0.5, 20)
  while not buf.sample(7).epoch_end:
    pass
  rep = buf.end_epoch()
  assert rep.retired_stale == ["g5"]
  assert set(buf.active_ids()) == {f"s{i}" for i in range(8)} | {"g2", "g4"}


def test_no_retire_keeps_everything_but_burn_in(tmp_path):
  buf = ReplayBuffer(seeds(4), cfg(p_max=10, beta=1.0, retirement=False, stale_epochs=1), str(tmp_path / "l.jsonl"))
  for i in range(3):
    buf.stage(make_task(f"g{i}", origin="synth"))
  buf.sample(4)
  assert buf.end_epoch().injected == ["g0", "g1", "g2"]
  buf.observe("g0", 1.0, 1)
  buf.observe("g1", 0.0, 1)
  for _ in range(3):
    while not buf.sample(3).epoch_end:
      pass
    buf.end_epoch()
  assert set(buf.active_ids()) == {"s0", "s1", "s2", "s3", "g0", "g2"}
  assert buf.removed() == {"g1": "evicted"}


def test_pruning_drops_lowest_phi_when_over_p_max(tmp_path):
  log = str(tmp_path / "log.jsonl")
  buf = ReplayBuffer(seeds(10), cfg(p_max=6, beta=1.0), log)
  for i in range(6):
    buf.stage(make_task(f"g{i}", origin="synth"))
  buf.sample(10)
  buf.end_epoch()
  rbars = {"g0": 0.5, "g1": 0.3, "g2": 0.9, "g3": 0.25, "g4": 0.6}  # g5 unobserved (φ counted as 1)
  for g, r in rbars.items():
    buf.observe(g, r, 3)
  state = json.loads(json.dumps(buf.state_dict()))
  # Lowering P_max on resume: the next boundary prunes the 3 lowest-φ tasks.
  small = ReplayBuffer(seeds(10), cfg(p_max=3, beta=1.0), log)
  small.load_state_dict(state)
  while not small.sample(8).epoch_end:
    pass
  rep = small.end_epoch()
  by_phi = sorted(rbars, key=lambda g: phi(rbars[g]))[:3]
  assert set(rep.pruned) == set(by_phi) == {"g2", "g3", "g1"}
  assert small.num_generated == 3 and small.counters["pruned"] == 3


def _drive(buf, rng, steps, n=3, cand_prefix="c"):
  """A deterministic mixed workload driven by ``rng`` (test side)."""
  for step in range(steps):
    s = buf.sample(n)
    for t in s.tasks:
      buf.observe(t.id, float(rng.choice([0.0, 0.1, 0.4, 0.5, 0.7, 0.97, 1.0])), step)
    if rng.uniform() < 0.6:
      buf.stage(make_task(f"{cand_prefix}{step}", origin="synth", parent=s.tasks[0].id, generation=1, step=step))
    if s.epoch_end:
      buf.end_epoch()


def test_save_restore_mid_epoch_then_continue_equals_uninterrupted(tmp_path):
  a_log = tmp_path / "a.jsonl"
  a = ReplayBuffer(seeds(7), cfg(p_max=5, beta=0.5), str(a_log), seed=11)
  _drive(a, np.random.default_rng(0), 17)
  assert not a.epoch_finished and a.epoch >= 2  # mid-epoch, several boundaries behind us
  state = json.loads(json.dumps(a.state_dict()))  # must be JSON-able
  b_log = tmp_path / "b.jsonl"
  shutil.copy(a_log, b_log)
  b = ReplayBuffer(seeds(7), cfg(p_max=5, beta=0.5), str(b_log), seed=999)  # a different RNG seed: state wins
  assert b.load_state_dict(state) == []
  _drive(a, np.random.default_rng(1), 25, cand_prefix="d")
  _drive(b, np.random.default_rng(1), 25, cand_prefix="d")
  assert json.dumps(a.state_dict(), sort_keys=True) == json.dumps(b.state_dict(), sort_keys=True)
  assert a_log.read_bytes() == b_log.read_bytes()
  assert a.counters["injected"] > 0 and a.counters["evicted"] + a.counters["retired_mastered"] > 0


def test_crash_between_checkpoints_loses_no_accepted_candidate(tmp_path):
  log = tmp_path / "log.jsonl"
  a = ReplayBuffer(seeds(5), cfg(p_max=10, beta=1.0), str(log))
  a.stage(make_task("c0", origin="synth"))
  ckpt = json.loads(json.dumps(a.state_dict()))
  a.sample(5)
  a.end_epoch()  # c0 injected after the checkpoint
  a.stage(make_task("c1", origin="synth"))
  a.stage(make_task("c2", origin="augment"))
  with open(log, "ab") as f:  # the crash tore the last write
    f.write(b'{"id": "c3", "env"')
  b = ReplayBuffer(seeds(5), cfg(p_max=10, beta=1.0), str(log))
  assert b.load_state_dict(ckpt) == ["c1", "c2"]
  assert b.staged_ids() == ["c0", "c1", "c2"]
  assert b.counters["accepted"] == 3
  assert log.read_bytes().endswith(b"\n")  # torn tail cut off
  b.stage(make_task("c4", origin="synth"))
  lines = [json.loads(x)["id"] for x in log.read_text().splitlines()]
  assert lines == ["c0", "c1", "c2", "c4"]


def test_bad_inputs_raise_clear_errors(tmp_path):
  log = str(tmp_path / "l.jsonl")
  with pytest.raises(ValueError, match="duplicate seed"):
    ReplayBuffer([make_task("a"), make_task("a")], cfg(), log)
  with pytest.raises(ValueError, match="at least one seed"):
    ReplayBuffer([], cfg(), log)
  buf = ReplayBuffer(seeds(3), cfg(), log)
  with pytest.raises(KeyError, match="not in the active pool"):
    buf.observe("nope", 0.5, 0)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    buf.observe("s0", float("nan"), 0)
  with pytest.raises(KeyError, match="unknown buffer counter"):
    buf.count("bogus")
  other = ReplayBuffer(seeds(4), cfg(), str(tmp_path / "m.jsonl"))
  with pytest.raises(ValueError, match="different seeds"):
    other.load_state_dict(buf.state_dict())


def test_config_validation_names_the_field():
  import ml_collections
  rc = ml_collections.ConfigDict(dict(p_max=10, beta=1.5, burn_in_low=0.2, retire_high=0.95, retire_low=0.2,
                                      stale_epochs=3, retirement=True))
  with pytest.raises(ValueError, match="config.rods.beta"):
    BufferConfig.from_rods(rc)


def test_static_pool_initial_injection_and_frozen_epochs(tmp_path):
  buf = ReplayBuffer(seeds(4), cfg(p_max=5, beta=0.25), str(tmp_path / "l.jsonl"))
  for i in range(7):
    buf.stage(make_task(f"g{i}", origin="synth"))
  assert buf.inject_initial() == [f"g{i}" for i in range(5)]  # no β cap, P_max still holds
  assert buf.num_generated == 5 and buf.staged_ids() == ["g5", "g6"]
  s = buf.sample(9)
  assert s.epoch_end and sorted(t.id for t in s.tasks) == sorted(buf.active_ids())
  for t in s.tasks:
    buf.observe(t.id, 0.0, 0)  # would evict every generated task under the lifecycle
  rep = buf.end_epoch(lifecycle=False)
  assert not rep.injected and not rep.evicted and buf.num_generated == 5 and buf.epoch == 1
  with pytest.raises(RuntimeError, match="before training starts"):
    buf.inject_initial()


def test_composition_counts_origin_category_turns_and_depth(tmp_path):
  s = [make_task("a", category="base", turns=2), make_task("b", category="miss_func", turns=3)]
  s[0] = s[0].replace(meta={"profile": {"depth": 3}})
  buf = ReplayBuffer(s, cfg(p_max=5, beta=1.0), str(tmp_path / "l.jsonl"))
  buf.stage(make_task("g", origin="synth", category="base", turns=2, generation=1).replace(meta={"depth": 1}))
  buf.sample(2)
  buf.end_epoch()
  comp = buf.composition()
  assert comp["pool/size"] == 3 and comp["pool/seeds"] == 2 and comp["pool/generated"] == 1
  assert comp["pool/origin/seed"] == 2 and comp["pool/origin/synth"] == 1
  assert comp["pool/category/base"] == 2 and comp["pool/category/miss_func"] == 1
  assert comp["pool/turns/2"] == 2 and comp["pool/turns/3"] == 1 and comp["pool/generation/1"] == 1
  assert comp["pool/depth/3"] == 1 and comp["pool/depth/1"] == 1 and "pool/depth/0" not in comp
  assert buf.composition(lambda t: len(t.id))["pool/depth/1"] == 3
