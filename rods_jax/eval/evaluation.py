"""Held-out evaluation: success per category and overall, mean progress R_P, unbiased pass@k and pass^k.

The evaluator only needs a rollout function ``rollout_fn(tasks, k, rng, greedy) -> obj`` whose result has
``rewards`` [B, K] (R_P) and ``success`` [B, K] (e.g. ``MultiTurnEngine.rollout`` through ``engine_rollout_fn``), so
it runs on any policy, including scripted ones in tests. Two modes:

* ``greedy``: one rollout per task at temperature 0 — success = fraction of tasks solved (the paper's accuracy).
* ``sampled``: n = k rollouts per task at the sampling temperature — success = mean over all samples (avg@n), plus
  pass@j and pass^j for j in ``ks`` (default 1, 2, 4, ..., n).

Every evaluation writes one JSON file (metrics, per-category metrics and per-task counts).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from rods_jax.eval import passk

MODES = ("greedy", "sampled")
RolloutFn = Callable[[Sequence[Any], int, jax.Array, bool], Any]


class EvalResult(NamedTuple):
  metrics: dict[str, float]  # flat: "success", "progress", "pass@4", "pass^4", "<category>/success", ...
  per_task: list[dict[str, Any]]  # id, category, n, successes, progress (mean R_P)
  path: str | None  # the JSON file written (None when no out_dir)


def engine_rollout_fn(engine, params, env, sampling_cfg) -> RolloutFn:
  """A RolloutFn over ``MultiTurnEngine.rollout``: greedy = temperature 0; sampled = ``sampling_cfg``'s temperature,
  top_p and top_k (``config.rollout``)."""
  from rods_jax.rollout.sampling import SamplingParams  # pylint: disable=g-import-not-at-top
  sampled = SamplingParams(temperature=float(sampling_cfg.temperature), top_p=float(sampling_cfg.top_p),
                           top_k=int(sampling_cfg.top_k))

  def fn(tasks, k, rng, greedy):
    return engine.rollout(params, env, tasks, k, rng, sampling=SamplingParams(temperature=0.0) if greedy else sampled)

  return fn


def summarize(success: np.ndarray, progress: np.ndarray, categories: Sequence[str], mode: str,
              ks: Sequence[int]) -> dict[str, float]:
  """Metrics from [tasks, n] success / progress matrices; per category under ``<category>/``."""
  s = np.asarray(success, bool)
  p = np.asarray(progress, np.float64)
  cats = np.asarray(categories)

  def block(sel: np.ndarray) -> dict[str, float]:
    out = {"success": float(s[sel].mean()), "progress": float(p[sel].mean()), "n_tasks": int(sel.sum())}
    if mode == "sampled":
      for j in ks:
        out[f"pass@{j}"] = passk.mean_pass_at_k(s[sel], j)
        out[f"pass^{j}"] = passk.mean_pass_hat_k(s[sel], j)
    return out

  metrics = block(np.ones(len(cats), bool))
  for cat in sorted(set(cats.tolist())):
    metrics.update({f"{cat}/{key}": v for key, v in block(cats == cat).items()})
  return metrics


def evaluate(rollout_fn: RolloutFn, tasks: Sequence[Any], *, mode: str, k: int, rng: jax.Array,
             chunk: int = 64, ks: Sequence[int] | None = None, out_dir: str | None = None, tag: str = "eval",
             extra: dict[str, Any] | None = None) -> EvalResult:
  """Evaluates ``tasks`` (``chunk`` tasks per rollout call) and writes ``<out_dir>/<tag>_<mode>_k<k>.json``.

  Args:
    rollout_fn: (tasks, k, rng, greedy) -> object with ``rewards`` and ``success`` arrays [len(tasks), k].
    tasks: held-out tasks (``.id``, ``.category``).
    mode: "greedy" (k must be 1) or "sampled".
    k: rollouts per task (n of pass@k).
    rng: JAX key; chunk i uses fold_in(rng, i).
    ks: the j of pass@j / pass^j (default ``passk.default_ks(k)``).
    extra: JSON-able fields copied into the file (step, trajectories, checkpoint, ...).
  """
  if mode not in MODES:
    raise ValueError(f"evaluation mode {mode!r} is not one of {MODES}")
  if k < 1 or (mode == "greedy" and k != 1):
    raise ValueError(f"evaluation k={k}: greedy needs k = 1 (identical samples), sampled needs k >= 1")
  if not tasks:
    raise ValueError("evaluate: no tasks")
  if chunk < 1:
    raise ValueError(f"evaluate: chunk={chunk} must be >= 1")
  ks = list(passk.default_ks(k) if ks is None else ks)
  for j in ks:
    if not 1 <= j <= k:
      raise ValueError(f"evaluate: pass@{j} needs 1 <= {j} <= k={k}")
  succ, prog = [], []
  for i in range(0, len(tasks), chunk):
    part = list(tasks[i:i + chunk])
    out = rollout_fn(part, k, jax.random.fold_in(rng, i), mode == "greedy")
    s, p = np.asarray(out.success, bool), np.asarray(out.rewards, np.float64)
    if s.shape != (len(part), k) or p.shape != (len(part), k):
      raise ValueError(f"rollout_fn returned success {s.shape} / rewards {p.shape}, expected {(len(part), k)}")
    succ.append(s)
    prog.append(p)
  success, progress = np.concatenate(succ), np.concatenate(prog)
  categories = [t.category for t in tasks]
  metrics = summarize(success, progress, categories, mode, ks)
  per_task = [{"id": t.id, "category": t.category, "n": k, "successes": int(success[i].sum()),
               "progress": float(progress[i].mean())} for i, t in enumerate(tasks)]
  path = None
  if out_dir is not None and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{tag}_{mode}_k{k}.json")
    record = {"mode": mode, "k": k, "ks": ks, "n_tasks": len(tasks), "metrics": metrics, "per_task": per_task,
              **(extra or {})}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written evaluation
  return EvalResult(metrics, per_task, path)
