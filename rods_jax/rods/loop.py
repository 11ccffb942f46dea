"""The RODS trainer (docs/METHOD.md §7-§8): one code path for every experiment arm.

    train(config, workdir)

per step: sample B tasks from the active pool → engine: K rollouts each → learner.step (GRPO update; returns the
detector's GroupStats, computed inside the jitted step) → metrics → curriculum.after_update (observe r̄, select
seeds, request synthesis, drain validated tasks into staging, epoch-boundary lifecycle) → checkpoint every N steps →
held-out evaluation at fixed trajectory counts. The x-axis is trajectories consumed; the run stops at
``config.train.total_trajectories``. A run resumes from its workdir's latest checkpoint (same step, pool, RNGs).

Arms are configuration (configs/arms.py): ``rods.synthesis`` off = static data; ``rods.seed_selection="uniform"`` =
random seeds; ``arm="env_augment"`` sends perturbation requests; ``rods.retirement`` off = no_retire;
``rods.dynamic`` off = static_pool (built once before training); ``rods.dynamic_sampling`` = DAPO-style
zero-variance filtering with refill.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rods_jax import console
from rods_jax import metrics as metrics_lib
from rods_jax.rods import detector
from rods_jax.rods.buffer import Sample
from rods_jax.rollout.types import select_groups
# Building the parts and checkpointing them live in rods.parts; re-exported because loop.build / loop.train and
# the directory names are the documented API (docs/ARCHITECTURE.md).
from rods_jax.rods.parts import (CHECKPOINT_DIR, EVAL_DIR, WARMUP_DIR, LoopState, Parts, build, build_model,
                                 build_tokenizer, limit_seeds, restore, save, synthesis_mode, warm_start_dir)

__all__ = ["CHECKPOINT_DIR", "EVAL_DIR", "WARMUP_DIR", "LoopState", "Parts", "build", "build_model",
           "build_tokenizer", "limit_seeds", "restore", "save", "synthesis_mode", "warm_start_dir", "select_groups",
           "rollout_step", "rollout_metrics", "evaluate", "train_step", "maybe_evaluate", "train",
           "build_static_pool"]


# ------------------------------------------------------------------------------------------------ rollouts
def _numpy_stats(rewards: np.ndarray, rods_cfg, tol: float):
  return jax.device_get(detector.group_statistics(jnp.asarray(rewards), float(rods_cfg.alpha_low),
                                                  float(rods_cfg.alpha_high), float(tol)))


def rollout_step(parts: Parts, sample: Sample, rng: jax.Array, params):
  """K rollouts per task of ``sample`` by the policy ``params``; with ``rods.dynamic_sampling``, groups with zero
  reward variance are dropped and the batch is refilled from more tasks (up to ``dynamic_sampling_max_rounds``
  rollout rounds, never aborting: short of B informative groups, the batch is completed with zero-variance ones,
  which carry no gradient).

  Returns (batch, sample actually trained on, trajectories consumed, metrics).
  """
  c = parts.config
  k = int(c.rollout.k)
  batch = parts.engine.rollout(params, parts.env, sample.tasks, k, jax.random.fold_in(rng, 0))
  if not c.rods.dynamic_sampling:
    return batch, sample, len(sample.tasks) * k, {}
  b = len(sample.tasks)
  batches, tasks = [batch], [list(sample.tasks)]
  informative, flat = [], []
  cur = parts.curriculum
  ended = False
  for rnd in range(int(c.rods.dynamic_sampling_max_rounds)):
    if rnd > 0:
      if cur.buffer.epoch_finished:
        cur.end_epoch(lifecycle=False)
        ended = True
      more = cur.next_tasks(b)
      batches.append(parts.engine.rollout(params, parts.env, more.tasks, k, jax.random.fold_in(rng, rnd)))
      tasks.append(list(more.tasks))
    stats = _numpy_stats(np.asarray(batches[-1].rewards), c.rods, c.grpo.zero_std_tol)
    for i in range(b):
      (flat if bool(stats.zero_std[i]) else informative).append((len(batches) - 1, i))
    if len(informative) >= b:
      break
  picks = (informative + flat)[:b]
  if cur.buffer.epoch_finished:
    cur.end_epoch(lifecycle=False)
    ended = True
  kept = select_groups(batches, picks, k)
  trained = Sample(tasks=[tasks[bi][i] for bi, i in picks], epoch=cur.buffer.epoch, epoch_end=False, n_filler=0)
  m = {"dynamic_sampling/rounds": len(batches), "dynamic_sampling/informative": min(len(informative), b),
       "dynamic_sampling/filled_flat": max(0, b - len(informative)), "dynamic_sampling/epoch_ended": int(ended)}
  return kept, trained, len(batches) * b * k, m


def rollout_metrics(batch) -> dict[str, float]:
  r = np.asarray(batch.rewards, np.float64)
  sampled = np.sum(np.asarray(batch.loss_mask, bool), axis=1)  # policy-sampled tokens per trajectory
  return {"reward/mean": float(r.mean()), "reward/std": float(r.std()), "reward/max": float(r.max()),
          "reward/min": float(r.min()), "rollout/success": float(np.asarray(batch.success).mean()),
          "rollout/n_calls": float(np.mean(batch.n_calls)), "rollout/n_errors": float(np.mean(batch.n_errors)),
          "rollout/parse_errors": float(np.mean(batch.n_parse_errors)),
          "rollout/truncated": float(np.mean(batch.truncated)), "rollout/length": float(np.mean(batch.lengths)),
          "rollout/length_max": float(np.max(batch.lengths)),
          "rollout/response_tokens_mean": float(sampled.mean()), "rollout/response_tokens_max": float(sampled.max()),
          "rollout/response_tokens_min": float(sampled.min()),
          "rollout/sampled_tokens": float(batch.stats.get("sampled_tokens", 0))}


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(parts: Parts, rng: jax.Array) -> dict[str, float]:
  """Held-out evaluation on the test split through ``rods_jax.eval.evaluate`` (greedy when ``train.eval_k`` == 1,
  else sampled at the rollout temperature with unbiased pass@j / pass^j); its metrics under ``eval/``."""
  from rods_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  c = parts.config
  k = int(c.train.eval_k)
  rollout_fn = eval_lib.engine_rollout_fn(parts.engine, parts.learner.params, parts.env, c.rollout)
  # chunk = the training prompt batch: its prefill is already compiled.
  result = eval_lib.evaluate(rollout_fn, parts.test_tasks, mode="greedy" if k == 1 else "sampled", k=k, rng=rng,
                             chunk=int(c.rollout.tasks_per_step))
  return {f"eval/{key}": value for key, value in result.metrics.items()}


def _write_eval(parts: Parts, m: dict[str, float]) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.join(parts.workdir, EVAL_DIR), exist_ok=True)
  rec = {"step": parts.state.step, "trajectories": parts.state.trajectories, **m}
  with open(os.path.join(parts.workdir, EVAL_DIR, f"eval_{parts.state.trajectories:09d}.json"), "w") as f:
    json.dump(rec, f, indent=1, sort_keys=True)


# ------------------------------------------------------------------------------------------------ the loop
def train_step(parts: Parts) -> dict[str, Any]:
  """One RODS step; updates ``parts`` in place and returns the step's metrics."""
  c = parts.config
  timings: dict[str, float] = {}
  t0 = time.perf_counter()
  parts.rng, key = jax.random.split(parts.rng)
  sample = parts.curriculum.next_tasks(int(c.rollout.tasks_per_step))
  batch, trained, consumed, m = rollout_step(parts, sample, key, parts.learner.params)
  timings["rollout"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  learner_metrics, stats = parts.learner.step(batch)
  timings["update"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  step = parts.state.step + 1  # the number of the step being completed (metrics, events and history agree)
  m.update(parts.curriculum.after_update(trained, stats, step))
  timings["curriculum"] = time.perf_counter() - t0
  _finish_step(parts, sample, batch, trained, consumed, m, learner_metrics, timings)
  return m


def _finish_step(parts: Parts, sample: Sample, batch, trained: Sample, consumed: int, m: dict[str, Any],
                 learner_metrics: dict[str, float], timings: dict[str, float]) -> None:
  """Counters, metrics and the step's log record, once its update and curriculum step are done."""
  timings["synthesis_wait"] = float(m.get("synth/drain_s", 0.0))
  for t in trained.tasks:
    parts.seen.add(t.id)
  parts.state = parts.state._replace(step=parts.state.step + 1, trajectories=parts.state.trajectories + consumed,
                                     distinct_tasks=len(parts.seen))
  m.update({f"grpo/{k}": v for k, v in learner_metrics.items()})
  m.update(rollout_metrics(batch))
  for name, secs in batch.timings.items():
    timings[f"engine_{name}"] = float(secs)
  m[metrics_lib.X_AXIS] = parts.state.trajectories
  m["train/distinct_tasks"] = parts.state.distinct_tasks
  m["train/filler_tasks"] = sample.n_filler
  parts.writer.write(parts.state.step, m, timings)


# ------------------------------------------------------------------------------------------------ overlap
class Pending(NamedTuple):
  """A rollout running in a host thread: the step's tasks, and the future of ``rollout_step``'s result."""
  sample: Sample
  future: concurrent.futures.Future
  staleness: int  # policy updates between the sampling policy and the one the batch will update


def start_rollout(parts: Parts, executor: concurrent.futures.Executor, params, staleness: int) -> Pending:
  """Draws the next step's tasks and key here (so the curriculum and the RNG advance in step order) and rolls them
  out in ``executor`` with ``params`` (a copy the learner will not donate)."""
  parts.rng, key = jax.random.split(parts.rng)
  sample = parts.curriculum.next_tasks(int(parts.config.rollout.tasks_per_step))
  return Pending(sample, executor.submit(rollout_step, parts, sample, key, params), staleness)


def overlapped_step(parts: Parts, pending: Pending, executor: concurrent.futures.Executor,
                    may_overlap: Callable[[LoopState], bool]) -> tuple[dict[str, Any], Pending | None]:
  """One RODS step with ``train.overlap``: the batch of ``pending`` (sampled by the policy before the previous
  update) trains while the next step's rollout runs with the current policy — one update stale.

  Order (what keeps it exact): the detector's statistics come from the batch's rewards before the update, so the
  curriculum observes step t and draws step t+1's tasks in step order, as without overlap. The next rollout starts
  during the update only if ``may_overlap(state after this step)`` (another step follows and no held-out evaluation
  is due before it) and no checkpoint is saved at this step: otherwise the pipeline drains, the next rollout uses
  the updated policy (staleness 0), and a run resumed from that checkpoint continues exactly as an uninterrupted
  one.
  """
  c = parts.config
  timings: dict[str, float] = {}
  t0 = time.perf_counter()
  batch, trained, consumed, m = pending.future.result()
  timings["rollout_wait"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  stats = _numpy_stats(np.asarray(batch.rewards), c.rods, c.grpo.zero_std_tol)
  step = parts.state.step + 1
  m.update(parts.curriculum.after_update(trained, stats, step))
  timings["curriculum"] = time.perf_counter() - t0
  after = parts.state._replace(step=step, trajectories=parts.state.trajectories + consumed)
  drain = not may_overlap(after) or parts.ckpt.should_save(step)
  t0 = time.perf_counter()
  nxt = None
  if drain:
    learner_metrics, _ = parts.learner.step(batch)
  else:
    params = parts.learner.params_copy()  # the update donates the learner's own buffers
    dispatched = parts.learner.dispatch(batch)
    nxt = start_rollout(parts, executor, params, staleness=1)
    learner_metrics, _ = parts.learner.fetch(dispatched)
  timings["update"] = time.perf_counter() - t0
  m["train/staleness"] = float(pending.staleness)
  _finish_step(parts, pending.sample, batch, trained, consumed, m, learner_metrics, timings)
  return m, nxt


def maybe_evaluate(parts: Parts, force: bool = False) -> dict[str, float] | None:
  """Evaluates when the trajectory count reached the next scheduled point (or ``force``), at most once per count."""
  st = parts.state
  due = st.next_eval >= 0 and st.trajectories >= st.next_eval
  if not (due or force) or st.last_eval == st.trajectories:
    return None
  m = evaluate(parts, jax.random.fold_in(jax.random.key(int(parts.config.seed) + 1), st.trajectories))
  m[metrics_lib.X_AXIS] = st.trajectories
  parts.writer.write(st.step, m)
  _write_eval(parts, m)
  logging.info("held-out evaluation at %d trajectories: success %.3f, mean R_P %.3f", st.trajectories,
               m.get("eval/success", float("nan")), m.get("eval/progress", float("nan")))
  every = int(parts.config.train.eval_every_trajectories)
  nxt = st.next_eval
  while every > 0 and nxt <= st.trajectories:
    nxt += every
  parts.state = st._replace(next_eval=nxt, last_eval=st.trajectories)
  return m


def train(config, workdir: str, synth_factory: Callable[[], Any] | None = None,
          max_steps: int | None = None, evaluate_heldout: bool = True) -> LoopState:
  """Runs (or resumes) the experiment in ``workdir`` until ``train.total_trajectories``; returns the final state.

  ``max_steps`` stops early after that many steps of this invocation (a resumable partial run);
  ``evaluate_heldout=False`` skips the held-out evaluations (smoke tests).
  """
  parts = build(config, workdir, synth_factory)
  try:
    if parts.restored_step is None and config.rods.synthesis and not config.rods.dynamic:
      parts.writer.write(0, build_static_pool(parts))
    evals = evaluate_heldout and int(config.train.eval_every_trajectories) > 0 and bool(parts.test_tasks)
    total = int(config.train.total_trajectories)
    done = 0
    pending = None

    def may_overlap(after: LoopState) -> bool:  # another step follows, with no evaluation before it
      more = after.trajectories < total and (max_steps is None or done + 1 < max_steps)
      return more and not (evals and after.next_eval >= 0 and after.trajectories >= after.next_eval)

    # one host thread for the overlapped rollout (train.overlap); idle otherwise
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout") as executor, \
        console.Progress(config.logging, total, "traj", str(config.arm), console.GRPO_HEADLINE,
                         initial=parts.state.trajectories) as progress:
      while parts.state.trajectories < total and (max_steps is None or done < max_steps):
        if evals:
          maybe_evaluate(parts)  # at 0 (the warm-up policy) and every eval_every_trajectories
        t0 = time.perf_counter()
        if config.train.overlap:
          if pending is None:  # the first step, or after a drain: sampled by the current policy
            pending = start_rollout(parts, executor, parts.learner.params, staleness=0)
          m, pending = overlapped_step(parts, pending, executor, may_overlap)
        else:
          m = train_step(parts)
        done += 1
        save(parts)
        progress.update(parts.state.step, parts.state.trajectories, {**m, "time/step": time.perf_counter() - t0})
    if evals and parts.state.trajectories >= total:
      maybe_evaluate(parts, force=True)  # the final policy
    if parts.ckpt.latest_step() != parts.state.step:
      save(parts, force=True)
    return parts.state
  finally:
    parts.close()


def build_static_pool(parts: Parts) -> dict[str, Any]:
  """static_pool arm: the warm-up policy's boundary over the seeds → synthesis, once, before training."""
  c = parts.config
  k = int(c.rollout.k)

  def group_stats(tasks):
    parts.rng, key = jax.random.split(parts.rng)
    out = parts.engine.rollout(parts.learner.params, parts.env, tasks, k, key)
    return _numpy_stats(np.asarray(out.rewards), c.rods, c.grpo.zero_std_tol)

  return parts.curriculum.build_static_pool(group_stats, int(c.rollout.tasks_per_step), int(c.rods.static_pool_size),
                                            max_passes=int(c.rods.static_pool_max_passes),
                                            timeout_s=float(c.rods.static_pool_timeout_s))
