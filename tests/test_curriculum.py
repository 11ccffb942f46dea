"""The RODS data side over a simulated policy (no model): each task has a latent success rate p, rewards are
Bernoulli(p) per rollout, the policy slowly improves, and the injected synthesizer makes variants near the parent's p.
Checks that tasks are injected, evicted and retired, that every invariant holds, that a killed worker does not stop
the run or lose an accepted task, and that save/restore mid-run continues exactly."""
import json
import os
import signal
import time
import types

import ml_collections
import numpy as np

from rods_jax.envs.task import Lineage, Task
from rods_jax.rods.curriculum import CANDIDATE_LOG, Curriculum
from rods_jax.rods.detector import GroupStats

CATS = ("base", "miss_func", "miss_param", "long_context")


def seed_tasks(n, rng):
  return [Task(id=f"s{i}", env="toolworld", category=CATS[i % 4], classes=("Files",), initial_state={},
               turns=("t",), gt_calls=((),), meta={"p": float(rng.uniform(0.0, 1.0))}) for i in range(n)]


def variant_fn(seed, rng):
  p = float(np.clip(seed.meta["p"] + rng.normal(0.0, 0.3), 0.0, 1.0))
  if rng.uniform() < 0.2:
    return types.SimpleNamespace(task=None, failure="vm_exec_failed")
  t = seed.replace(id=f"{seed.id}.{int(rng.integers(1 << 40)):x}", meta={"p": p},
                   lineage=Lineage("synth", seed.id, 1, 0))
  return types.SimpleNamespace(task=t, failure=None)


def variant_factory():
  return variant_fn


def slow_variant_factory():
  def fn(seed, rng):
    time.sleep(0.01)
    return variant_fn(seed, rng)
  return fn


def configs(process, p_max=12):
  rods = ml_collections.ConfigDict(dict(
      alpha_low=0.2, alpha_high=0.85, retire_high=0.95, retire_low=0.2, burn_in_low=0.2, beta=0.2, p_max=p_max,
      seeds_per_step=3, seeds_per_category=1, cooldown_steps=3, stale_epochs=2, seed_selection="boundary",
      synthesis=True, retirement=True, dynamic=True, detector="step"))
  syn = ml_collections.ConfigDict(dict(process=process, exchange_dir="", request_queue_size=16, result_queue_size=32,
                                        lag_steps=-1))
  return rods, syn


def fake_stats(tasks, step, rng, k=8):
  p = np.array([min(1.0, t.meta["p"] + 0.004 * step) for t in tasks])  # the policy improves
  r = (rng.uniform(size=(len(tasks), k)) < p[:, None]).astype(np.float64)
  mean = r.mean(1)
  var = r.var(1)
  zone = np.where(mean < 0.2, 0, np.where(mean > 0.85, 2, 1))
  return GroupStats(mean=mean, var=var, phi=4 * mean * (1 - mean), zone=zone, zero_std=var <= 1e-6)


def run(cur, rng, steps, start=0, b=6, kill_at=None):
  logs = []
  for step in range(start, start + steps):
    s = cur.next_tasks(b)
    m = cur.after_update(s, fake_stats(s.tasks, step, rng), step)
    logs.append(m)
    assert set(cur.buffer.active_ids()) >= {f"s{i}" for i in range(16)}
    assert cur.buffer.num_generated <= cur.buffer.config.p_max
    if "epoch/injected" in m:
      assert m["epoch/injected"] <= m["epoch/cap"]
    if kill_at is not None and step == kill_at:
      t0 = time.monotonic()
      while cur.buffer.counters["executed"] < 5 and time.monotonic() - t0 < 30:  # the worker is up and serving
        cur.drain(step)
        time.sleep(0.02)
      os.kill(cur.client.pid, signal.SIGKILL)
      while cur.client.alive():
        time.sleep(0.01)
    if cur.client is not None and cur.client._process:
      time.sleep(0.01)  # a real step takes far longer: let the worker keep up
  return logs


def test_simulated_rods_run_injects_evicts_retires_and_survives_a_killed_worker(tmp_path):
  rng = np.random.default_rng(0)
  rods, syn = configs(process=True)
  cur = Curriculum(seed_tasks(16, rng), rods, syn, str(tmp_path), slow_variant_factory, "synthesize", seed=0)
  try:
    logs = run(cur, rng, 60, kill_at=20)
    executed_after_kill = cur.buffer.counters["executed"]
    t0 = time.monotonic()
    while cur.buffer.counters["executed"] <= executed_after_kill and time.monotonic() - t0 < 30:
      time.sleep(0.02)
      cur.drain(80)  # the restarted worker serves again
    logs += run(cur, rng, 40, start=60)
  finally:
    cur.close()
  c = cur.buffer.counters
  assert c["requested"] > 0 and c["executed"] > 0 and c["accepted"] > 0
  # Whether the pool is ever full when a variant arrives depends on the worker's timing here; eviction itself is
  # checked deterministically (inline synthesis) in test_inline_run_evicts_and_retires_deterministically.
  assert c["injected"] > 0
  assert c["retired_mastered"] + c["retired_unsolvable"] + c["retired_stale"] > 0
  assert cur.client.stats.restarts == 1
  assert any(k.startswith("synth/fail/vm_exec_failed") for k in logs[-1])
  assert {"zones/boundary", "zones/var_boundary", "synth/would_wait_s", "synth/drain_s", "pool/origin/synth",
          "synth/request_depth"} <= set(logs[-1])
  assert any("synth/first_rbar_mean" in m for m in logs)
  # No accepted task is lost: every accepted id is in the log, and the pool/staging/removed account for all of them.
  logged = [json.loads(x)["id"] for x in open(tmp_path / CANDIDATE_LOG)]
  assert len(logged) == c["accepted"] == len(set(logged))
  accounted = set(cur.buffer.active_ids()) | set(cur.buffer.staged_ids()) | set(cur.buffer.removed())
  assert set(logged) <= accounted
  # Lineage is stamped by the trainer.
  gen = [cur.buffer.get(i) for i in cur.buffer.active_ids() if not cur.buffer.is_seed(i)]
  assert all(t.lineage.parent_id is not None and t.lineage.generation >= 1 for t in gen)


def test_inline_run_evicts_and_retires_deterministically(tmp_path):
  """Inline synthesis (no worker timing): the pool fills to P_max, so later variants evict, and tasks retire."""
  rng = np.random.default_rng(0)
  rods, syn = configs(process=False)
  cur = Curriculum(seed_tasks(16, rng), rods, syn, str(tmp_path), variant_factory, "synthesize", seed=0)
  try:
    run(cur, rng, 100)  # asserts seeds stay and the generated pool never exceeds P_max, every step
  finally:
    cur.close()
  c = cur.buffer.counters
  assert c["injected"] > rods.p_max and c["evicted"] > 0, c
  assert c["retired_mastered"] > 0 and c["retired_unsolvable"] > 0, c


def test_save_restore_mid_run_continues_exactly(tmp_path):
  rods, syn = configs(process=False)  # inline synthesis: deterministic, so the two runs must agree bit for bit
  seeds = seed_tasks(16, np.random.default_rng(1))
  a = Curriculum(seeds, rods, syn, str(tmp_path / "a"), variant_factory, "synthesize", seed=4)
  rng_a = np.random.default_rng(2)
  run(a, rng_a, 23)
  state = json.loads(json.dumps(a.state_dict()))
  rng_state = rng_a.bit_generator.state
  os.makedirs(tmp_path / "b")
  with open(tmp_path / "a" / CANDIDATE_LOG, "rb") as f, open(tmp_path / "b" / CANDIDATE_LOG, "wb") as g:
    g.write(f.read())
  b = Curriculum(seeds, rods, syn, str(tmp_path / "b"), variant_factory, "synthesize", seed=99)
  b.load_state_dict(state)
  rng_b = np.random.default_rng()
  rng_b.bit_generator.state = rng_state
  la = run(a, rng_a, 30, start=23)
  lb = run(b, rng_b, 30, start=23)
  strip = lambda logs: [{k: v for k, v in m.items() if k not in ("synth/drain_s", "synth/would_wait_s")}
                        for m in logs]
  assert json.dumps(strip(la)) == json.dumps(strip(lb))
  assert json.dumps(a.state_dict(), sort_keys=True) == json.dumps(b.state_dict(), sort_keys=True)
  assert a.buffer.counters["injected"] > 0


def test_static_arm_has_no_worker_and_a_fixed_pool(tmp_path):
  rods, syn = configs(process=True)
  rods.synthesis = False
  rng = np.random.default_rng(3)
  cur = Curriculum(seed_tasks(16, rng), rods, syn, str(tmp_path), None, "synthesize", seed=0)
  logs = run(cur, rng, 12)
  assert cur.client is None and cur.buffer.num_generated == 0 and cur.buffer.epoch == 4
  assert not any(k.startswith("synth/") for k in logs[-1])


def test_static_pool_is_built_once_then_frozen(tmp_path):
  rods, syn = configs(process=False, p_max=10)
  rods.dynamic = False
  rng = np.random.default_rng(5)
  cur = Curriculum(seed_tasks(16, rng), rods, syn, str(tmp_path), variant_factory, "synthesize", seed=0)
  info = cur.build_static_pool(lambda tasks: fake_stats(tasks, 0, rng), batch_size=6, size=8, max_passes=4,
                               timeout_s=5.0)
  assert info["static_pool/size"] == 8 and cur.buffer.num_generated == 8
  pool = sorted(cur.buffer.active_ids())
  requested = cur.buffer.counters["requested"]
  logs = run(cur, rng, 20)
  assert sorted(cur.buffer.active_ids()) == pool  # frozen: no injection, burn-in or retirement
  assert cur.buffer.counters["requested"] == requested  # no synthesis during training
  assert sum(m.get("epoch/evicted", 0) for m in logs) == 0


def test_two_hosts_stay_identical_when_the_primary_shares_its_outcomes(tmp_path, monkeypatch):
  import rods_jax.rods.curriculum as cur_mod
  rods, syn = configs(process=False)
  seeds = seed_tasks(16, np.random.default_rng(7))
  mailbox = []

  def primary_share(outs):  # stands in for the broadcast from process 0
    mailbox.append(list(outs))
    return outs

  def secondary_share(outs):
    assert outs == []
    return mailbox.pop(0)

  monkeypatch.setattr(cur_mod, "jax_process_index", lambda: 1)
  p = Curriculum(seeds, rods, syn, str(tmp_path / "p"), variant_factory, "synthesize", seed=3, share=primary_share)
  s = Curriculum(seeds, rods, syn, str(tmp_path / "s"), variant_factory, "synthesize", seed=3, primary=False,
                 share=secondary_share)
  assert s.client is None
  rp, rs = np.random.default_rng(8), np.random.default_rng(8)
  for step in range(40):
    a, b = p.next_tasks(6), s.next_tasks(6)
    assert [t.id for t in a.tasks] == [t.id for t in b.tasks]
    p.after_update(a, fake_stats(a.tasks, step, rp), step)
    s.after_update(b, fake_stats(b.tasks, step, rs), step)
  assert p.buffer.counters["injected"] > 0
  assert json.dumps(p.buffer.state_dict()["generated"]) == json.dumps(s.buffer.state_dict()["generated"])
  assert os.path.exists(tmp_path / "s" / "candidates.jsonl.host1")
  events = [json.loads(x) for x in open(tmp_path / "p" / "pool_events.jsonl")]
  assert {"first_obs", "injected"} <= {e["event"] for e in events}
  assert not os.path.exists(tmp_path / "s" / "pool_events.jsonl")


def test_crash_after_a_step_past_the_checkpoint_resumes_exactly_with_a_worker_process(tmp_path):
  """A real worker, synthesis.lag_steps=1: the run dies one step after its checkpoint, with requests in flight and
  candidates of that step already in the log. The resumed run re-submits the requests, replays the log and ends
  exactly where an uninterrupted run does (a re-delivered candidate is neither staged nor counted twice)."""
  rods, syn = configs(process=True)
  syn.lag_steps = 1
  seeds = seed_tasks(16, np.random.default_rng(1))
  strip = lambda logs: [{k: v for k, v in m.items() if not k.endswith("_s") and k not in (  # noqa: E731
      "synth/in_flight", "synth/request_depth", "synth/result_depth")} for m in logs]
  b = Curriculum(seeds, rods, syn, str(tmp_path / "b"), slow_variant_factory, "synthesize", seed=4)
  rng_b = np.random.default_rng(2)
  try:
    run(b, rng_b, 23)
    state = json.loads(json.dumps(b.state_dict()))  # the checkpoint after step 22
    rng_state = rng_b.bit_generator.state
    assert state["client"]["waiting"] or state["client"]["held"]  # synthesis in flight at the checkpoint
    staged_before = b.buffer.counters["accepted"]
    run(b, rng_b, 1, start=23)  # one more step, then the trainer dies before its checkpoint
    assert b.buffer.counters["accepted"] > staged_before  # ... with candidates of that step in the log
    os.kill(b.client.pid, signal.SIGKILL)
  finally:
    b.close()
  c = Curriculum(seeds, rods, syn, str(tmp_path / "b"), slow_variant_factory, "synthesize", seed=4)
  try:
    assert c.load_state_dict(state)  # candidates re-staged from the log
    rng_c = np.random.default_rng()
    rng_c.bit_generator.state = rng_state
    lc = run(c, rng_c, 17, start=23)
  finally:
    c.close()
  rng_a = np.random.default_rng(2)
  a2 = Curriculum(seeds, rods, syn, str(tmp_path / "a2"), slow_variant_factory, "synthesize", seed=4)
  try:
    la = run(a2, rng_a, 40)
  finally:
    a2.close()
  assert json.dumps(strip(la[23:])) == json.dumps(strip(lc))
  assert json.dumps(a2.state_dict()["buffer"], sort_keys=True) == json.dumps(c.state_dict()["buffer"], sort_keys=True)
  assert c.state_dict()["replayed"] == [] and c.buffer.counters["duplicates"] == 0
  assert open(tmp_path / "a2" / CANDIDATE_LOG).read() == open(tmp_path / "b" / CANDIDATE_LOG).read()
