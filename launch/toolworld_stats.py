"""Histograms of a toolworld split next to BFCL multi-turn's (multi_turn_base).

  python -m launch.toolworld_stats                    # the seed split
  python -m launch.toolworld_stats --split=test --json_out=runs/toolworld_test_stats.json

Prints the dependency-depth, turn and category histograms (plus calls per task and cross-turn edges) of the split,
with the shape BFCL's 200 base tasks have, and measures the split's profiles from its executed ground truth (so the
numbers are Φ as the synthesizer sees it, not the generator's request).
"""
from __future__ import annotations

import json
import os

from absl import app, flags

from configs.base import get_config
from rods_jax.envs import make_env, profile as profile_lib

_SPLIT = flags.DEFINE_enum("split", "seeds", ["seeds", "test", "offline"], "toolworld split.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", "", "Split cache directory (default: config.env.cache_dir rules).")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Also write the statistics as JSON here.")

# BFCL multi_turn_base (200 tasks): turns {1:3, 2:40, 3:50, 4:50, 5:43, 6:12, 7:2}, mean 3.67; depth (the
# parameter-flow heuristic of rods_jax.envs.profile) {1:65, 2:92, 3:37, 4:6}, mean 1.92. miss_* add one turn.
BFCL_BASE = {"turns": {1: 3, 2: 40, 3: 50, 4: 50, 5: 43, 6: 12, 7: 2}, "mean_turns": 3.67,
             "depth": {1: 65, 2: 92, 3: 37, 4: 6}, "mean_depth": 1.92}


def measured_stats(tasks, env) -> dict:
  """Histograms from Φ measured on the executed ground truth of every task."""
  from collections import Counter
  profs = [profile_lib.profile(t, env) for t in tasks]
  n = max(len(profs), 1)
  return {
      "n": len(profs),
      "category": dict(sorted(Counter(p.category for p in profs).items())),
      "turns": dict(sorted(Counter(p.num_turns for p in profs).items())),
      "mean_turns": sum(p.num_turns for p in profs) / n,
      "depth": dict(sorted(Counter(p.depth for p in profs).items())),
      "mean_depth": sum(p.depth for p in profs) / n,
      "calls": dict(sorted(Counter(p.num_calls for p in profs).items())),
      "mean_calls": sum(p.num_calls for p in profs) / n,
      "cross_turn_edges": dict(sorted(Counter(p.cross_turn_edges for p in profs).items())),
      "with_cross_turn_edge": sum(p.cross_turn_edges > 0 for p in profs) / n,
      "classes_used": dict(sorted(Counter(len({c for t in p.classes for c in t}) for p in profs).items())),
  }


def _bar(hist: dict, total: int, width: int = 40) -> str:
  lines = []
  for k, v in hist.items():
    lines.append(f"  {k!s:>12} {v:6d} {100 * v / max(total, 1):5.1f}% " + "#" * round(width * v / max(total, 1)))
  return "\n".join(lines)


def format_report(split: str, stats: dict) -> str:
  out = [f"toolworld split {split!r}: {stats['n']} tasks (profiles measured on executed ground truth)"]
  for key in ("category", "turns", "depth", "calls", "cross_turn_edges", "classes_used"):
    out.append(f"{key}:")
    out.append(_bar(stats[key], stats["n"]))
  out.append(f"mean turns {stats['mean_turns']:.2f} (BFCL base {BFCL_BASE['mean_turns']}, +1 in miss categories)  "
             f"mean depth {stats['mean_depth']:.2f} (BFCL base {BFCL_BASE['mean_depth']})  "
             f"mean calls {stats['mean_calls']:.2f}  with a cross-turn edge {100 * stats['with_cross_turn_edge']:.0f}%")
  out.append(f"BFCL base turns {BFCL_BASE['turns']}  depth {BFCL_BASE['depth']}")
  return "\n".join(out)


def main(argv):
  del argv
  cfg = get_config().env
  if _CACHE_DIR.value:
    cfg.cache_dir = _CACHE_DIR.value
  env = make_env("toolworld", cfg)
  stats = measured_stats(env.load_tasks(_SPLIT.value), env)
  print(format_report(_SPLIT.value, stats))
  if _JSON_OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON_OUT.value)), exist_ok=True)
    with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
      json.dump(stats, f, indent=1)


if __name__ == "__main__":
  app.run(main)
