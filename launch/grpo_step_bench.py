"""``launch.benchmark --suite=grpo_step``: full GRPO steps (rollout + update + curriculum, synthesis on) on lab tasks.

Three variants of one step, timed in the same process on the same policy, tasks and seed:

  padded       grpo.layout=padded, no overlap      (the original path: every row at max_trajectory_tokens)
  real_tokens  grpo.layout=bucketed, no overlap    (the update costs the batch's real tokens: rl/buckets.py)
  overlap      bucketed + train.overlap            (step t+1's rollout runs during update t, one update stale)

Each variant is a fresh run (``rods.loop.build`` in a temporary workdir) from the same warm policy: ``warmup`` steps
are run untimed (compilations; the bucketed layout compiles one program per bucket shape as it first appears), then
``repeats`` steps timed; medians are reported. With overlap a step's time is the wall time between the ends of two
consecutive steps (steady state), which is what a run pays per step.

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


def time_variant(config, workdir: str, warmup: int, repeats: int) -> dict[str, Any]:
  """Runs ``warmup`` + ``repeats`` steps of a fresh run; per-step wall seconds, the phases' medians (from the
  run's own metrics.jsonl) and the timed batches' lengths."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  from rods_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from rods_jax.rods import loop  # pylint: disable=g-import-not-at-top
  parts = loop.build(config, workdir)
  times = []
  try:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
      pending = None
      t_prev = time.perf_counter()
      for i in range(warmup + repeats):
        if config.train.overlap:
          if pending is None:
            pending = loop.start_rollout(parts, executor, parts.learner.params, staleness=0)
          m, pending = loop.overlapped_step(parts, pending, executor, lambda after: True)
        else:
          m = loop.train_step(parts)
        t_now = time.perf_counter()
        if i >= warmup:
          times.append(t_now - t_prev)
        del m
        t_prev = t_now
      if pending is not None:
        pending.future.result()
  finally:
    parts.close()
  recs = [r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "rollout/length" in r]
  timed = recs[warmup:]
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
    for variant in VARIANTS:
      with tempfile.TemporaryDirectory() as tmp:
        cfg = step_config(base_config, warm_dir, rows, k, variant)
        res[variant] = time_variant(cfg, os.path.join(tmp, variant), warmup, repeats)
      logging.info("grpo_step rows=%d %s: %.2f s/step", rows, variant, res[variant]["step_s"])
    lens = [res[v]["mean_len"] for v in VARIANTS]
    max_len = max(res[v]["max_len"] for v in VARIANTS)
    out[f"rows_{rows}"] = {
        "rows": rows, "padded_s": res["padded"]["step_s"], "real_tokens_s": res["real_tokens"]["step_s"],
        "overlap_s": res["overlap"]["step_s"], "speedup": res["padded"]["step_s"] / res["overlap"]["step_s"],
        "real_tokens_speedup": res["padded"]["step_s"] / res["real_tokens"]["step_s"],
        "tokens_per_s": rows * res["overlap"]["mean_len"] / res["overlap"]["step_s"],
        "mean_len": float(np.mean(lens)), "max_len": max_len, "variants": res}
  return out
