"""The RODS trainer: group selection for dynamic sampling, and short end-to-end lab runs (toolworld, tiny model)."""
import functools
import json
import logging
import os

import jax
import numpy as np

from rods_jax.rods import loop
from rods_jax.rollout.types import RolloutBatch
from synth_factories import crash_once_factory


def fake_batch(b, k, t, offset, rng):
  n = b * k
  return RolloutBatch(
      tokens=rng.integers(0, 100, size=(n, t)).astype(np.int32), loss_mask=rng.uniform(size=(n, t)) < 0.5,
      valid=np.ones((n, t), bool), sampler_logps=rng.normal(size=(n, t)).astype(np.float32),
      rewards=rng.uniform(size=(b, k)).astype(np.float32), success=rng.uniform(size=(b, k)) < 0.5,
      task_ids=np.array([f"t{offset + i}" for i in range(b)]), categories=np.array(["base"] * b),
      n_calls=rng.integers(0, 5, n).astype(np.int32), n_errors=rng.integers(0, 5, n).astype(np.int32),
      n_parse_errors=rng.integers(0, 5, n).astype(np.int32), turns_closed=rng.integers(0, 5, n).astype(np.int32),
      truncated=rng.uniform(size=n) < 0.5, lengths=rng.integers(1, t, n).astype(np.int32),
      timings={"total": 1.0, "decode": 0.5}, stats={"sampled_tokens": 10},
      messages=tuple((({"role": "user", "content": f"row{offset * k + j}"},)) for j in range(n)))


def test_select_groups_keeps_rows_of_each_group_together():
  rng = np.random.default_rng(0)
  k = 3
  a, b = fake_batch(4, k, 7, 0, rng), fake_batch(4, k, 7, 10, rng)
  picks = [(1, 2), (0, 0), (1, 3), (0, 3)]
  out = loop.select_groups([a, b], picks, k)
  assert list(out.task_ids) == ["t12", "t0", "t13", "t3"]
  for g, (bi, i) in enumerate(picks):
    src = (a, b)[bi]
    np.testing.assert_array_equal(out.rewards[g], src.rewards[i])
    np.testing.assert_array_equal(out.tokens[g * k:(g + 1) * k], src.tokens[i * k:(i + 1) * k])
    np.testing.assert_array_equal(out.loss_mask[g * k:(g + 1) * k], src.loss_mask[i * k:(i + 1) * k])
    np.testing.assert_array_equal(out.lengths[g * k:(g + 1) * k], src.lengths[i * k:(i + 1) * k])
    assert out.messages[g * k] == src.messages[i * k]
  assert out.timings == {"total": 2.0, "decode": 1.0} and out.stats == {"sampled_tokens": 20}
  assert out.tokens.shape == (12, 7) and out.rewards.shape == (4, 3)


# ------------------------------------------------------------------------------------------------ end to end (lab)
def lab_config(tokenizer_dir, steps):
  from configs import arms, base
  c = arms.apply_arm(base.get_config(), "rods")
  c.model.tokenizer_dir = tokenizer_dir
  c.sft.steps = 0  # an untrained policy (the warm-up has its own tests)
  c.mesh.data, c.mesh.fsdp = jax.device_count(), 1  # pure data parallel: params replicated
  c.rollout.tasks_per_step, c.rollout.k = 4, 2
  c.rollout.max_tokens_per_message = 16
  c.rollout.max_trajectory_tokens, c.rollout.cache_capacity = 320, 384  # short rows: a cheap test
  c.grpo.micro_batch = 8
  c.train.total_trajectories = 4 * 2 * steps
  c.rods.seed_limit = 8  # 2 per category: an epoch is 2-3 steps
  c.rods.p_max, c.rods.beta, c.rods.seeds_per_step, c.rods.cooldown_steps = 6, 0.5, 4, 1
  # An untrained policy scores only the empty-ground-truth turns of miss_* tasks (r̄ = 1/N: 0.2 for 5 turns, 0.25 for
  # 4): thresholds that make that boundary, evict 0.2 at burn-in and retire 0.25 as unsolvable (< 0.99).
  c.rods.alpha_low, c.rods.burn_in_low, c.rods.retire_low, c.rods.retire_high = 0.01, 0.22, 0.99, 0.999
  c.checkpoint.every_steps, c.checkpoint.async_save = 3, False
  c.logging.tensorboard = False
  return c


def test_lab_rods_run_survives_a_killed_synthesizer_and_resumes_exactly(tmp_path, lab_tokenizer_dir, caplog, capsys):
  from rods_jax import checkpoint as ckpt_lib
  from rods_jax import metrics as metrics_lib
  from rods_jax.rods import loop
  wd = str(tmp_path / "run")
  c = lab_config(lab_tokenizer_dir, steps=9)
  factory = functools.partial(crash_once_factory, str(tmp_path / "crashed"), "toolworld", c.env.to_dict(),
                              c.synthesis.to_dict())
  # Part 1: 6 steps (checkpoints at 3 and 6), with the synthesizer dying on its third request.
  st = loop.train(c, wd, synth_factory=factory, max_steps=6, evaluate_heldout=False)
  assert st.step == 6 and st.trajectories == 48
  assert os.path.exists(tmp_path / "crashed")
  saved = ckpt_lib.CheckpointManager(os.path.join(wd, "checkpoints"), c.checkpoint)
  assert saved.latest_step() == 6
  host = saved._manager.restore(6, args=__import__("orbax.checkpoint").checkpoint.args.Composite(
      host=__import__("orbax.checkpoint").checkpoint.args.JsonRestore()))["host"]["state"]
  saved.close()
  # Resume: same step, loop counters, buffer, selector and RNG key as saved (inspected without a worker process).
  c.synthesis.process = False
  parts = loop.build(c, wd, synth_factory=factory)
  try:
    assert parts.restored_step == 6 and parts.state._asdict() == host["loop"]
    assert parts.curriculum.state_dict()["selector"] == host["curriculum"]["selector"]
    assert parts.curriculum.buffer.state_dict()["generated"] == host["curriculum"]["buffer"]["generated"]
    assert parts.curriculum.buffer.state_dict()["rng"] == host["curriculum"]["buffer"]["rng"]
    assert int(parts.learner.state.step) == host["learner_updates"]  # updates that had a signal
  finally:
    parts.close()
  # Part 2: finish the budget from the checkpoint, with held-out evaluation (at 48 trajectories, and the final one).
  c.synthesis.process = True
  c.train.eval_every_trajectories, c.train.eval_max_tasks = 1000, 4
  caplog.set_level(logging.INFO)
  capsys.readouterr()
  st = loop.train(c, wd, synth_factory=factory)
  assert st.step == 9 and st.trajectories == 72 and st.last_eval == 72
  # what a person watching sees: a bar from the resumed count to the budget, one line per step, the evaluations
  assert "72/72" in capsys.readouterr().err
  lines = [r.getMessage() for r in caplog.records]
  assert sum(x.startswith("rods step ") for x in lines) == 3, lines
  assert any(x.startswith("rods step 9 (72/72): R=") and "pool=" in x for x in lines), lines
  assert any(x.startswith("held-out evaluation at 72 trajectories: success ") for x in lines), lines
  recs = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
  steps = [r["step"] for r in recs if "zones/boundary" in r]
  assert steps == list(range(1, 10))
  last = [r for r in recs if "zones/boundary" in r][-1]
  assert last["synth/restarts"] >= 1  # the worker died once and was restarted
  assert last["synth/injected"] > 0 and last["synth/evicted"] > 0 and last["synth/retired"] > 0
  assert last["synth/accepted"] >= last["synth/injected"]
  # No accepted task is lost: every line of the candidate log is in the pool, staging, or the removed archive.
  logged = [json.loads(x)["id"] for x in open(os.path.join(wd, "candidates.jsonl"))]
  c.synthesis.process = False
  parts = loop.build(c, wd, synth_factory=factory)
  try:
    buf = parts.curriculum.buffer
    accounted = set(buf.active_ids()) | set(buf.staged_ids()) | set(buf.removed())
    assert set(logged) <= accounted and len(logged) == buf.counters["accepted"]
  finally:
    parts.close()
  events = [json.loads(x)["event"] for x in open(os.path.join(wd, "pool_events.jsonl"))]
  assert {"injected", "first_obs", "evicted", "retired_unsolvable"} <= set(events)
  assert any(k.startswith("pool/depth/") for k in last)  # Φ depth of the active pool
  evals = [r for r in recs if "eval/success" in r]
  assert [r["trajectories"] for r in evals] == [48, 72]
  assert all(0.0 <= r["eval/progress"] <= 1.0 and r["eval/n_tasks"] == 4 for r in evals)
  assert {f"eval/{cat}/progress" for cat in ("base", "miss_func", "miss_param", "long_context")} <= set(evals[-1])
  assert sorted(os.listdir(os.path.join(wd, "eval"))) == ["eval_000000048.json", "eval_000000072.json"]


def test_dynamic_sampling_drops_flat_groups_refills_and_never_aborts(tmp_path):
  import types
  import ml_collections
  from rods_jax.envs.task import Task
  from rods_jax.rods.curriculum import Curriculum

  seeds = [Task(id=f"s{i}", env="toolworld", category="base", classes=("Files",), initial_state={}, turns=("t",),
                gt_calls=((),)) for i in range(10)]
  flat = {"s1", "s3", "s4", "s5", "s6", "s7", "s8", "s9"}  # only s0 and s2 ever have reward variance

  class Engine:
    calls = 0

    def rollout(self, params, env, tasks, k, rng):
      Engine.calls += 1
      b = fake_batch(len(tasks), k, 5, 100 * Engine.calls, np.random.default_rng(Engine.calls))
      rewards = np.array([[1.0] * k if t.id in flat else [0.0, 1.0] * (k // 2) for t in tasks], np.float32)
      return b._replace(rewards=rewards, task_ids=np.array([t.id for t in tasks]))

  rods = ml_collections.ConfigDict(dict(
      alpha_low=0.2, alpha_high=0.85, retire_high=0.95, retire_low=0.2, burn_in_low=0.2, beta=0.2, p_max=0,
      seeds_per_step=0, seeds_per_category=1, cooldown_steps=1, stale_epochs=1, seed_selection="boundary",
      synthesis=False, retirement=True, dynamic=True, dynamic_sampling=True, dynamic_sampling_max_rounds=3,
      detector="step"))
  syn = ml_collections.ConfigDict(dict(process=False, exchange_dir="", request_queue_size=4, result_queue_size=4,
                                        lag_steps=-1))
  cfg = ml_collections.ConfigDict(dict(rods=rods, rollout=dict(k=2), grpo=dict(zero_std_tol=1e-6)))
  cur = Curriculum(seeds, rods, syn, str(tmp_path), None, "synthesize", seed=0)
  parts = types.SimpleNamespace(config=cfg, learner=types.SimpleNamespace(params=None), engine=Engine(), env=None,
                                curriculum=cur)
  sample = cur.next_tasks(4)
  batch, trained, consumed, m = loop.rollout_step(parts, sample, jax.random.key(0), parts.learner.params)
  # Three rounds of 4 tasks cover 12 draws of a 10-task pool: s0 and s2 once each (maybe twice after the epoch
  # wrapped); the rest of the batch is completed with flat groups instead of aborting.
  ids = [t.id for t in trained.tasks]
  assert m["dynamic_sampling/rounds"] == 3 and consumed == 3 * 4 * 2
  assert len(ids) == 4 and list(batch.task_ids) == ids and batch.rewards.shape == (4, 2)
  informative = [i for i in ids if i not in flat]
  assert informative == ids[:len(informative)] and len(informative) == m["dynamic_sampling/informative"] >= 2
  assert m["dynamic_sampling/filled_flat"] == 4 - len(informative)
  assert m["dynamic_sampling/epoch_ended"] == 1 and cur.buffer.epoch == 1 and not trained.epoch_end
  for g, tid in enumerate(ids):
    assert (batch.rewards[g].std() > 0) == (tid not in flat)
