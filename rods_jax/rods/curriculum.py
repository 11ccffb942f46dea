"""The data side of one RODS step: buffer sampling, observations, seed selection, synthesis requests and results.

The loop calls, per step::

    sample = cur.next_tasks(B)                        # from the active pool (epoch-ordered)
    ... rollout K each, learner step -> GroupStats ...
    metrics = cur.after_update(sample, stats, step)   # observe r̄, select seeds, submit, drain results, stage,
                                                      # and at an epoch boundary run the buffer's lifecycle

The arm decides what happens (configuration, not code): ``rods.synthesis`` False = a static pool (no selection, no
worker, epochs only reshuffle); ``rods.seed_selection`` = boundary | uniform; ``mode`` = "synthesize" | "perturb"
(env_augment); ``rods.dynamic`` False = static_pool (the pool is built once by ``build_static_pool`` and frozen);
``rods.detector`` = "step" (the paper: one step's r̄) | "posterior" (per-task Beta posterior across steps decides
zones, seed priority, burn-in and retirement: ``rods_jax.rods.posterior_table``).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rods_jax.envs.task import Lineage, Task
from rods_jax.rods import observability
from rods_jax.rods.buffer import ReplayBuffer, Sample
from rods_jax.rods.posterior_table import DETECTORS, PosteriorConfig
from rods_jax.rods.selector import SeedSelector
from rods_jax.rods.queues import Outcome
from rods_jax.rods.synth_process import SynthClient


def jax_process_index() -> int:
  """This host's index without importing jax at module load (the worker process never needs jax)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()

CANDIDATE_LOG = "candidates.jsonl"
EVENT_LOG = "pool_events.jsonl"  # one line per lifecycle event (first observation, injection, eviction, retirement)


class Curriculum:
  """Buffer + selector + synthesizer client, and their checkpointable state.

  Args:
    seeds: the seed split (protected pool).
    rods_cfg: ``config.rods``.
    synthesis_cfg: ``config.synthesis``.
    workdir: the run directory (the candidate log lives in it).
    synth_factory: picklable zero-argument callable building ``synth_fn(seed_task, rng)`` in the worker; None when
      ``rods_cfg.synthesis`` is False.
    mode: "synthesize" | "perturb".
    seed: base seed of the buffer, selector and worker RNGs.
    depth_fn: ``depth_fn(task) -> int | None``, the dependency depth of Φ for the pool-composition metrics (cached per
      task id); None = read it from the task's meta.
    primary: this host runs the synthesizer and writes the logs (multi-host: process 0).
    share: multi-host only: ``share(outcomes) -> outcomes``, the primary's drained outcomes on every host (a
      broadcast), so every host stages the same tasks at the same step and the pools stay identical.
    group_size: K, the rollouts behind each observed r̄ (``config.rollout.k``); ``rods.detector="posterior"`` needs it.
  """

  def __init__(self, seeds: Sequence[Task], rods_cfg, synthesis_cfg, workdir: str,
               synth_factory: Callable[[], Any] | None, mode: str, seed: int, *, primary: bool = True,
               share: Callable[[list[Outcome]], list[Outcome]] | None = None,
               depth_fn: Callable[[Task], int | None] | None = None, group_size: int | None = None):
    self.synthesis = bool(rods_cfg.synthesis)
    self.dynamic = bool(rods_cfg.dynamic)
    if self.synthesis and synth_factory is None:
      raise ValueError("config.rods.synthesis=True needs a synthesizer factory")
    if not primary and share is None:
      raise ValueError("a non-primary host needs share= to receive the primary's synthesized tasks")
    self.primary = primary
    self._share = share
    # Every host keeps a buffer (identical decisions); only the primary's log is the crash log that matters, the
    # others keep their own copy so each host can restore from local disk.
    log_name = CANDIDATE_LOG if primary else f"{CANDIDATE_LOG}.host{jax_process_index()}"
    if rods_cfg.detector not in DETECTORS:
      raise ValueError(f"config.rods.detector={rods_cfg.detector!r} not in {DETECTORS}")
    if rods_cfg.detector == "posterior" and group_size is None:
      raise ValueError("config.rods.detector='posterior' needs group_size (config.rollout.k)")
    post_cfg = PosteriorConfig.from_rods(rods_cfg, group_size) if rods_cfg.detector == "posterior" else None
    self.buffer = ReplayBuffer(seeds, rods_cfg, os.path.join(workdir, log_name), seed=seed, posterior_cfg=post_cfg)
    self.selector = SeedSelector(rods_cfg, seed=seed + 1)
    self.client = (SynthClient(synth_factory, synthesis_cfg, seed=seed + 2, mode=mode)
                   if self.synthesis and primary else None)
    self.failures: dict[str, int] = {}
    self._events_path = os.path.join(workdir, EVENT_LOG) if primary else ""
    self._depth_fn = depth_fn
    self._depths: dict[str, int | None] = {}
    # Candidates re-staged from the log on resume whose requests were re-submitted: their second delivery is the
    # same task (per-request RNG), already staged, so it is neither staged again nor counted a duplicate.
    self._replayed: set[str] = set()

  # ------------------------------------------------------------------------------------------ per step
  def next_tasks(self, n: int) -> Sample:
    return self.buffer.sample(n)

  def observe(self, task_ids: Sequence[str], stats: Any, step: int) -> list[float]:
    """Records each task's r̄; returns the r̄ of generated tasks observed for the first time."""
    mean = np.asarray(stats.mean, np.float64).reshape(-1)
    firsts, events = [], []
    for tid, r in zip(task_ids, mean):
      if self.buffer.observe(tid, float(np.clip(r, 0.0, 1.0)), step):
        firsts.append(float(r))
        t = self.buffer.get(tid)
        events.append({"event": "first_obs", "id": tid, "rbar": float(r), "parent": t.lineage.parent_id,
                       "origin": t.lineage.origin, "category": t.category, "birth_step": t.lineage.birth_step})
    self._log_events(step, events)
    return firsts

  def _log_events(self, step: int, events: list[dict[str, Any]]) -> None:
    if not self._events_path or not events:
      return
    with open(self._events_path, "a", encoding="utf-8") as f:
      for e in events:
        f.write(json.dumps({"step": int(step), "epoch": self.buffer.epoch, **e}) + "\n")

  def after_update(self, sample: Sample, stats: Any, step: int, *, lifecycle: bool | None = None) -> dict[str, Any]:
    """Observation, selection, synthesis traffic and (at the end of an epoch) the lifecycle; returns metrics."""
    ids = [t.id for t in sample.tasks]
    cats = [t.category for t in sample.tasks]
    metrics: dict[str, Any] = observability.zone_metrics(stats, cats)
    firsts = self.observe(ids, stats, step)
    if firsts:
      metrics["synth/first_rbar_mean"] = float(np.mean(firsts))
      metrics["synth/first_rbar_n"] = len(firsts)
    if self.buffer.posterior is not None:
      metrics.update(self.buffer.posterior.metrics(ids))
    metrics.update(self.exchange(ids, cats, stats, step))
    if sample.epoch_end:
      metrics.update(self.end_epoch(lifecycle, step))
    metrics.update(self.buffer.composition(self._cached_depth if self._depth_fn is not None else None))
    metrics["epoch"] = self.buffer.epoch
    return metrics

  def _cached_depth(self, task: Task) -> int | None:
    if task.id not in self._depths:
      self._depths[task.id] = self._depth_fn(task)
    return self._depths[task.id]

  def exchange(self, ids: Sequence[str], cats: Sequence[str], stats: Any, step: int) -> dict[str, Any]:
    """Seed selection → requests, and draining validated tasks into staging (never waits on the worker)."""
    out: dict[str, Any] = {}
    if not self.synthesis:
      return out
    if not self.dynamic:  # static_pool: the one-off pool's funnel, nothing requested any more
      return observability.funnel_metrics(self.buffer.counters, self.failures)
    if self.buffer.posterior is not None:  # zones and φ of the posterior, not of this one step
      stats = self.buffer.posterior.decision_stats(ids, stats)
    seeds = self.selector.select(ids, cats, stats, step)  # same decision on every host
    self.buffer.count("requested", len(seeds))
    out["synth/seeds_sent"] = len(seeds)
    if self.client is not None:
      out["synth/requests_dropped"] = self.client.submit([self.buffer.get(s) for s in seeds])
    out.update(self.drain(step))
    return out

  def drain(self, step: int) -> dict[str, Any]:
    """Stages what the worker finished (the primary polls; other hosts receive the same outcomes)."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    outcomes: list[Outcome] = []
    if self.client is not None:
      poll = self.client.poll()
      outcomes = poll.outcomes
      out.update({"synth/would_wait_s": poll.would_wait_s, "synth/restarts": self.client.stats.restarts,
                  "synth/dropped_total": self.client.stats.dropped})
      out.update(self.client.depths())
    if self._share is not None:
      outcomes = self._share(outcomes)
    out["synth/staged_now"] = self._stage_outcomes(outcomes, step)
    out["synth/drain_s"] = time.perf_counter() - t0
    out.update(observability.funnel_metrics(self.buffer.counters, self.failures))
    return out

  def _stage_outcomes(self, outcomes, step: int) -> int:
    staged = 0
    self.buffer.count("executed", len(outcomes))
    for o in outcomes:
      if o.record is None:
        self.failures[o.failure or "unknown"] = self.failures.get(o.failure or "unknown", 0) + 1
        continue
      try:
        task = Task.from_record(o.record)
      except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:  # a corrupt record never crashes the run
        kind = f"bad_record:{type(e).__name__}"
        self.failures[kind] = self.failures.get(kind, 0) + 1
        continue
      if task.id in self._replayed:
        self._replayed.discard(task.id)
        staged += 1  # staged already, by the log replay on resume
        continue
      staged += self.buffer.stage(self._with_lineage(task, o.seed_id, step))
    return staged

  def _with_lineage(self, task: Task, seed_id: str, step: int) -> Task:
    """Stamps lineage from the trainer's view: parent = the requested seed, generation = parent's + 1."""
    try:
      parent_gen = self.buffer.get(seed_id).lineage.generation
    except KeyError:  # the parent left the pool while its request was in flight
      parent_gen = int(task.lineage.generation) - 1 if task.lineage.generation > 0 else 0
    origin = task.lineage.origin if task.lineage.origin in ("synth", "augment") else "synth"
    return task.replace(lineage=Lineage(origin=origin, parent_id=seed_id or task.lineage.parent_id,
                                        generation=parent_gen + 1, birth_step=int(step)))

  def end_epoch(self, lifecycle: bool | None = None, step: int = -1) -> dict[str, Any]:
    lifecycle = (self.synthesis and self.dynamic) if lifecycle is None else lifecycle
    rep = self.buffer.end_epoch(lifecycle=lifecycle)
    events = []
    for kind in ("injected", "evicted", "retired_mastered", "retired_unsolvable", "retired_stale", "pruned"):
      for tid in getattr(rep, kind):
        hist = self.buffer.history(tid)
        events.append({"event": kind, "id": tid, "rbar": hist[-1][1] if hist else None,
                       "first_rbar": hist[0][1] if hist else None, "n_obs": len(hist)})
    self._log_events(step, events)
    return observability.epoch_metrics(rep)

  # ------------------------------------------------------------------------------------------ static pool
  def build_static_pool(self, group_stats_fn: Callable[[list[Task]], Any], batch_size: int, size: int,
                        max_passes: int, timeout_s: float) -> dict[str, Any]:
    """static_pool arm: one pass (or more) over the seeds with the warm-up policy, boundary seeds → synthesis until
    ``size`` candidates are staged, then all of them enter the pool at once; the pool stays fixed afterwards.

    ``group_stats_fn(tasks)`` rolls the tasks out (no update) and returns their GroupStats.
    """
    if not self.synthesis:
      raise ValueError("build_static_pool needs config.rods.synthesis=True")
    if self.client is None:
      raise NotImplementedError("static_pool is built on one host; run it single-host, then resume multi-host")
    t0 = time.perf_counter()
    seeds = self.buffer.active_ids()
    passes = 0
    step = -1
    while self.buffer.num_staged < size and passes < max_passes:
      for i in range(0, len(seeds), batch_size):
        tasks = [self.buffer.get(t) for t in seeds[i:i + batch_size]]
        stats = group_stats_fn(tasks)
        sent = self.selector.select([t.id for t in tasks], [t.category for t in tasks], stats, step)
        self.buffer.count("requested", len(sent))
        self.client.submit([self.buffer.get(s) for s in sent])
        self._stage_outcomes(self.client.poll().outcomes, step)
      passes += 1
      step -= 1
    deadline = time.monotonic() + timeout_s  # before training the trainer may wait for its pool
    while self.buffer.num_staged < size and time.monotonic() < deadline and self.client.depths()[
        "synth/request_depth"] + self.client.depths()["synth/in_flight"] > 0:
      self._stage_outcomes(self.client.poll().outcomes, step)
      time.sleep(0.05)
    injected = self.buffer.inject_initial(max_n=size)
    return {"static_pool/size": len(injected), "static_pool/passes": passes,
            "static_pool/seconds": time.perf_counter() - t0}

  # ------------------------------------------------------------------------------------------ state
  def state_dict(self) -> dict[str, Any]:
    return {"buffer": self.buffer.state_dict(), "selector": self.selector.state_dict(),
            "failures": dict(self.failures), "synth_log_offset": self.buffer.log_offset,
            "client": self.client.state_dict() if self.client is not None else None,
            "replayed": sorted(self._replayed)}

  def load_state_dict(self, state: Mapping[str, Any]) -> list[str]:
    """Restores; returns the candidate ids re-staged from the log (accepted after the checkpoint)."""
    self.selector.load_state_dict(state["selector"])
    self.failures = {str(k): int(v) for k, v in state["failures"].items()}
    if self.client is not None and state.get("client") is not None:
      self.client.load_state_dict(state["client"])
    restaged = self.buffer.load_state_dict(state["buffer"])
    # Accepted after the checkpoint, so produced by requests the checkpoint holds and that are now re-submitted.
    self._replayed = set(state.get("replayed", ())) | (set(restaged) if state.get("client") is not None else set())
    return restaged

  def close(self) -> None:
    if self.client is not None:
      self.client.close()
