"""Agreement of this project's BFCL success verdicts with bfcl's official multi-turn checker.

For every task: its ground truth (must score R_P = 1 and success here) and up to ``--kinds`` random perturbations
(drop, duplicate, clear, extra, unknown, swap, shuffle; see rods_jax/envs/bfcl/parity.py), each scored by
``rods_jax.envs.bfcl.score`` and by bfcl's ``multi_turn_checker`` + ``multi_turn_irrelevance_checker``.

  python -m launch.bfcl_parity --all                   # 800 tasks x (GT + 5 perturbations)
  python -m launch.bfcl_parity --per_category=40       # stratified sample (what the test runs)
  python -m launch.bfcl_parity --all --kinds=7 --json_out=runs/bfcl_parity.json
  python -m launch.bfcl_parity --all --stacked=3000      # plus 3000 trajectories with 2-4 stacked perturbations

Exit status 1 if any verdict disagrees or any ground truth falls short of R_P = 1.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

from rods_jax.envs.bfcl import data, parity
from rods_jax.envs.task import CATEGORIES

_ALL = flags.DEFINE_bool("all", False, "All 800 tasks (overrides --per_category).")
_PER_CATEGORY = flags.DEFINE_integer("per_category", 40, "Tasks per category, drawn with --seed.")
_KINDS = flags.DEFINE_integer("kinds", 5, f"Perturbations per task (distinct kinds, at most {len(parity.KINDS)}).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the task sample and the perturbations.")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Also write the report as JSON here.")
_STACKED = flags.DEFINE_integer("stacked", 0, "Also check this many trajectories with 2-4 stacked perturbations.")


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  tasks = []
  for c in CATEGORIES:
    all_c = data.load_all_tasks(c)
    if _ALL.value:
      tasks += all_c
    else:
      n = min(_PER_CATEGORY.value, len(all_c))
      tasks += [all_c[i] for i in sorted(rng.choice(len(all_c), n, replace=False))]
  t0 = time.perf_counter()
  rep = parity.run_parity(tasks, _KINDS.value, _SEED.value)
  wall = time.perf_counter() - t0
  print(f"tasks {rep.tasks}  trajectories {rep.checked}  (GT + up to {_KINDS.value} perturbations each)")
  print(f"ground truth R_P = 1 and success: {rep.gt_full}/{rep.tasks}")
  print(f"verdict agreement with bfcl multi_turn_checker + irrelevance checker: {rep.agree}/{rep.checked}")
  print(f"pass rate: ours {rep.ours_pass}/{rep.checked}, official {rep.official_pass}/{rep.checked}")
  print(f"time: ours {rep.seconds_ours:.2f} s ({1e3 * rep.seconds_ours / rep.checked:.2f} ms/trajectory), "
        f"official {rep.seconds_official:.2f} s ({1e3 * rep.seconds_official / rep.checked:.2f} ms/trajectory), "
        f"wall {wall:.1f} s")
  for tid, kind in rep.disagreements[:20]:
    print(f"DISAGREE {tid} {kind}")
  stacked_ok = True
  if _STACKED.value:
    checked, agree, bad = parity.run_stacked_parity(tasks, _STACKED.value, _SEED.value)
    print(f"stacked perturbations (2-4 each): agreement {agree}/{checked}")
    for tid in bad[:20]:
      print(f"DISAGREE (stacked) {tid}")
    stacked_ok = agree == checked
  if _JSON_OUT.value:
    os.makedirs(os.path.dirname(_JSON_OUT.value) or ".", exist_ok=True)
    with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
      json.dump({**rep._asdict(), "wall_seconds": wall, "kinds": _KINDS.value, "seed": _SEED.value}, f, indent=1)
  ok = rep.agree == rep.checked and rep.gt_full == rep.tasks and stacked_ok
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  app.run(main)
