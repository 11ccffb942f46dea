"""``launch.benchmark --suite=grpo_step``: full GRPO steps (rollout + update + curriculum, synthesis on) on lab tasks.

Three variants of one step, timed in the same process on the same policy, tasks and seed:

  padded       grpo.layout=padded, no overlap      (the original path: every row at max_trajectory_tokens)
  real_tokens  grpo.layout=bucketed, no overlap    (the update costs the batch's real tokens: rl/buckets.py)
  overlap      bucketed + train.overlap            (step t+1's rollout runs during update t, one update stale)

Each variant is a fresh run (``rods.loop.build`` in a temporary workdir) from the same warm policy. All variants
first run ``warmup`` untimed steps (compilations, shared across the variants of one process; the bucketed layout
compiles one program per bucket length as it first appears), then each runs ``repeats`` timed steps; medians are
reported. With overlap a step's time is the wall time between the ends of two consecutive steady-state steps (a
step before and one after the timed ones fill and drain the pipeline), which is what a run pays per step.

The policy's trajectory lengths should look like a warmed-up lab policy's: ``--checkpoint_dir`` (e.g. the committed
lab warm-up), else the lab model after ``--sft_steps`` of supervised warm-up on gold toolworld trajectories, made
here first (as the rollout suite does). ``mean_len`` / ``max_len`` are the measured trajectory lengths of the timed
batches.

  speedup = padded_s / overlap_s        real_tokens_speedup = padded_s / real_tokens_s
  tokens_per_s = trajectory tokens of the timed steps / their time, with overlap
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np
from absl import logging

VARIANTS = {"padded": ("padded", False), "real_tokens": ("bucketed", False), "overlap": ("bucketed", True)}


def step_config(base_config, warm_dir: str, rows: int, k: int, variant: str):
  """The lab rods config of one variant at ``rows`` = tasks_per_step x k rows per step, starting from ``warm_dir``."""
  from configs import arms  # pylint: disable=g-import-not-at-top
  c = arms.apply_arm(base_config.copy_and_resolve_references(), "rods")
  layout, overlap = VARIANTS[variant]
  c.grpo.layout, c.train.overlap = layout, overlap
  c.sft.init_checkpoint, c.model.tokenizer_dir = warm_dir, warm_dir
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
  c.rollout.k, c.rollout.tasks_per_step = k, rows // k
  c.rollout.max_trajectory_tokens, c.rollout.cache_capacity = 384, 448  # the lab study's setting
  c.rods.seed_limit = 64
  c.train.total_trajectories = 10 ** 9
  c.checkpoint.every_steps, c.checkpoint.async_save = 10 ** 6, False
  c.logging.tensorboard, c.logging.progress_bar = False, False
  return c


class Variant:
  """One variant's run: its parts, a rollout thread and its pending overlapped rollout; ``steps`` runs n steps."""

  def __init__(self, config, workdir: str):
    import concurrent.futures  # pylint: disable=g-import-not-at-top
    from rods_jax.rods import loop  # pylint: disable=g-import-not-at-top
    self.config, self.workdir, self.loop = config, workdir, loop
    self.parts = loop.build(config, workdir)
    self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    self.pending = None

  def steps(self, n: int, keep_pipeline: bool) -> list[float]:
    """Wall seconds of each of ``n`` steps (with overlap: between the ends of consecutive steps). Without
    ``keep_pipeline`` the last step drains, so no rollout runs while another variant is timed."""
    times = []
    t_prev = time.perf_counter()
    for i in range(n):
      if self.config.train.overlap:
        if self.pending is None:
          self.pending = self.loop.start_rollout(self.parts, self.executor, self.parts.learner.params, staleness=0)
        last = i == n - 1 and not keep_pipeline
        _, self.pending = self.loop.overlapped_step(self.parts, self.pending, self.executor, lambda after: not last)
      else:
        self.loop.train_step(self.parts)
      t_now = time.perf_counter()
      times.append(t_now - t_prev)
      t_prev = t_now
    return times

  def close(self) -> None:
    self.executor.shutdown(wait=True)
    self.parts.close()


def summarize(config, workdir: str, times: list[float], first: int) -> dict[str, Any]:
  """Medians of the timed steps and their phases (from the run's own metrics.jsonl: steps first+1 .. first+n)."""
  from rods_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  recs = [r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "rollout/length" in r]
  timed = recs[first:first + len(times)]
  phase = lambda key: statistics.median(r.get(key, float("nan")) for r in timed)  # noqa: E731
  return {"step_s": statistics.median(times), "steps_s": times,
          "mean_len": float(np.mean([r["rollout/length"] for r in timed])),
          "max_len": int(max(r["rollout/length_max"] for r in timed)),
          "update_s": phase("timing_s/update_actor"),
          "rollout_s": phase("timing_s/rollout_wait" if config.train.overlap else "timing_s/gen"),
          "token_slots": phase("actor/token_slots"), "staleness": phase("train/staleness")}


def grpo_step_benchmark(base_config, warm_dir: str, rows_list: tuple[int, ...], *, k: int, warmup: int,
                        repeats: int) -> dict[str, Any]:
  """The three variants at each row count (module docstring)."""
  out: dict[str, Any] = {}
  for rows in rows_list:
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
      cfgs = {v: step_config(base_config, warm_dir, rows, k, v) for v in VARIANTS}
      runs = {v: Variant(cfgs[v], os.path.join(tmp, v)) for v in VARIANTS}
      try:
        for v, run in runs.items():  # every variant warmed first: compilations are shared across them
          run.steps(warmup, keep_pipeline=False)
        for v, run in runs.items():
          # with overlap, a step before and one after the timed ones fill and drain the pipeline, so every timed
          # step is a steady-state one (its update ran beside the next step's rollout)
          edge = 1 if cfgs[v].train.overlap else 0
          times = run.steps(edge + repeats + edge, keep_pipeline=False)[edge:edge + repeats]
          res[v] = summarize(cfgs[v], run.workdir, times, warmup + edge)
          logging.info("grpo_step rows=%d %s: %.2f s/step", rows, v, res[v]["step_s"])
      finally:
        for run in runs.values():
          run.close()
    lens = [res[v]["mean_len"] for v in VARIANTS]
    max_len = max(res[v]["max_len"] for v in VARIANTS)
    out[f"rows_{rows}"] = {
        "rows": rows, "padded_s": res["padded"]["step_s"], "real_tokens_s": res["real_tokens"]["step_s"],
        "overlap_s": res["overlap"]["step_s"], "speedup": res["padded"]["step_s"] / res["overlap"]["step_s"],
        "real_tokens_speedup": res["padded"]["step_s"] / res["real_tokens"]["step_s"],
        "tokens_per_s": rows * res["overlap"]["mean_len"] / res["overlap"]["step_s"],
        "mean_len": float(np.mean(lens)), "max_len": max_len, "variants": res}
  return out
