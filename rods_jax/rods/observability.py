"""Per-step RODS metrics as flat ``{key: scalar}`` dicts for ``rods_jax.metrics.MetricWriter`` (pure functions).

Keys: ``zones/<zone>`` (fraction of the step's tasks), ``zones/var_<zone>`` (mean group variance in that zone, NaN
when empty), ``zones/<category>/<zone>``, ``zones/zero_std``; ``synth/*`` (yield funnel, queue depths, trainer wait);
``pool/*`` (the buffer's composition); ``epoch/*`` (what an epoch boundary changed).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from rods_jax.rods.detector import ZONE_NAMES


def zone_metrics(stats: Any, categories: Sequence[str]) -> dict[str, float]:
  """Zone fractions, mean variance per zone, per-category zone fractions, reward mean, zero-variance fraction."""
  mean = np.asarray(stats.mean, np.float64).reshape(-1)
  var = np.asarray(stats.var, np.float64).reshape(-1)
  zone = np.asarray(stats.zone).reshape(-1)
  zero = np.asarray(stats.zero_std).reshape(-1)
  b = max(len(mean), 1)
  out: dict[str, float] = {"reward/group_mean": float(mean.mean()) if len(mean) else float("nan"),
                           "zones/zero_std": float(zero.sum()) / b}
  for z, name in enumerate(ZONE_NAMES):
    sel = zone == z
    out[f"zones/{name}"] = float(sel.sum()) / b
    out[f"zones/var_{name}"] = float(var[sel].mean()) if sel.any() else float("nan")
  cats = np.asarray(list(categories))
  for c in sorted(set(cats.tolist())):
    in_c = cats == c
    for z, name in enumerate(ZONE_NAMES):
      out[f"zones/{c}/{name}"] = float((zone[in_c] == z).sum()) / float(in_c.sum())
  return out


def funnel_metrics(counters: Mapping[str, int], failures: Mapping[str, int]) -> dict[str, int]:
  """Cumulative synthesis yield: requested → executed → accepted → injected → evicted / retired / pruned."""
  out = {f"synth/{k}": int(v) for k, v in counters.items()}
  out["synth/retired"] = sum(int(counters.get(k, 0)) for k in ("retired_mastered", "retired_unsolvable",
                                                               "retired_stale"))
  for k, v in failures.items():
    out[f"synth/fail/{k}"] = int(v)
  return out


def epoch_metrics(report) -> dict[str, int]:
  """What one ``ReplayBuffer.end_epoch()`` changed."""
  return {"epoch/ended": int(report.epoch), "epoch/injected": len(report.injected),
          "epoch/evicted": len(report.evicted), "epoch/retired_mastered": len(report.retired_mastered),
          "epoch/retired_unsolvable": len(report.retired_unsolvable), "epoch/retired_stale": len(report.retired_stale),
          "epoch/pruned": len(report.pruned), "epoch/cap": int(report.cap), "epoch/deferred": int(report.deferred)}
