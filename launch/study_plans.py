"""The run tables of ``launch.study`` (``--plan``): which arm configs run, with which per-run overrides.

* ``study``: the decisive lab study (every arm from one warm-up, same trajectory budget; curves on the validation
  split, final evaluations on the test split): static, rods and dynamic_sampling with 3 seeds; offline, env_augment
  and random_seed with 1; rods_posterior with 3 when its config file exists.
* ``pilot``: static GRPO only, over learning rate, rows per step, pool size and warm-up checkpoint, to choose the
  study's regime; curves AND final evaluations on the validation split (the test split stays untouched).
* ``pass3``: the third-pass study as it ran (its logs are in docs/runs_pass3).
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Run(NamedTuple):
  arm: str  # configs/<arm>.py
  overrides: dict[str, Any]  # --config.<key>=<value>; these win over the study's global flags
  warmup: str = "warmup"  # which warm-up flag it starts from: "warmup" or "warmup_late"


class Plan(NamedTuple):
  runs: dict[str, Run]
  split: str  # held-out split of the final evaluations (and of the warm-up's own evaluation)
  results_dir: str  # where finished runs are copied, relative to the repository root


# Pilot grid: lr × rows per step on the centre pool and warm-up, then pool size and warm-up one at a time at the
# centre (lr 3e-4, 256 rows, 32 seeds). Rows = tasks_per_step × K (K = 8 throughout: the study's zone detector).
PILOT_LRS = (1e-4, 3e-4, 1e-3)
PILOT_ROWS = (64, 256)
PILOT_POOLS = (16, 32, 64)
PILOT_K = 8
PILOT_CENTRE = {"lr": 3e-4, "rows": 256, "pool": 32, "warmup": "warmup"}


def pilot_name(lr: float, rows: int, pool: int, warmup: str) -> str:
  return f"pilot_lr{lr:g}_r{rows}_p{pool}" + ("_late" if warmup == "warmup_late" else "")


def pilot_run(lr: float, rows: int, pool: int, warmup: str, steps: int) -> Run:
  """A static run of ``steps`` GRPO steps (budget steps × rows trajectories, 4 validation evaluations)."""
  if rows % PILOT_K:
    raise ValueError(f"pilot rows per step {rows} is not a multiple of K={PILOT_K}")
  budget = steps * rows
  return Run("static", {"seed": 0, "optim.lr": lr, "rollout.tasks_per_step": rows // PILOT_K, "rollout.k": PILOT_K,
                        "rods.seed_limit": pool, "train.total_trajectories": budget,
                        "train.eval_every_trajectories": budget // 4, "train.eval_split": "validation"}, warmup)


def pilot(steps: int, late: bool) -> dict[str, Run]:
  """The pilot's runs; ``late``: include the centre run from the later (more depleted) warm-up checkpoint."""
  if steps < 1:
    raise ValueError(f"--pilot_steps={steps} must be >= 1")
  c = PILOT_CENTRE
  cells = [(lr, rows, c["pool"], c["warmup"]) for lr in PILOT_LRS for rows in PILOT_ROWS]
  cells += [(c["lr"], c["rows"], pool, c["warmup"]) for pool in PILOT_POOLS if pool != c["pool"]]
  if late:
    cells.append((c["lr"], c["rows"], c["pool"], "warmup_late"))
  return {pilot_name(*cell): pilot_run(*cell, steps) for cell in cells}


def study(root: str = ROOT) -> dict[str, Run]:
  """The decisive study's runs; rods_posterior only when ``configs/rods_posterior.py`` exists under ``root``."""
  val = {"train.eval_split": "validation"}
  three = ["static", "rods", "dynamic_sampling"]
  if os.path.exists(os.path.join(root, "configs", "rods_posterior.py")):
    three.append("rods_posterior")
  runs = {f"{arm}_s{s}": Run(arm, {"seed": s, **val}) for arm in three for s in range(3)}
  runs.update({f"{arm}_s0": Run(arm, {"seed": 0, **val}) for arm in ("offline", "env_augment", "random_seed")})
  return runs


# The third pass: three seeds for static and rods, one for the rest, and the P_max sweep {0, 50, 200, 400}.
PASS3 = {
    **{f"static_s{s}": Run("static", {"seed": s}) for s in range(3)},
    **{f"rods_s{s}": Run("rods", {"seed": s}) for s in range(3)},
    "dynamic_sampling_s0": Run("dynamic_sampling", {"seed": 0}),
    "env_augment_s0": Run("env_augment", {"seed": 0}),
    "random_seed_s0": Run("random_seed", {"seed": 0}),
    "no_retire_s0": Run("no_retire", {"seed": 0}),
    "static_pool_s0": Run("static_pool", {"seed": 0}),
    "offline_s0": Run("offline", {"seed": 0}),
    **{f"pmax{p}_s0": Run("rods", {"seed": 0, "rods.p_max": p}) for p in (0, 50, 200)},
}

PLANS = ("study", "pilot", "pass3")


def make(plan: str, *, pilot_steps: int, late_warmup: bool, root: str = ROOT) -> Plan:
  if plan == "study":
    return Plan(study(root), "test", "docs/runs")
  if plan == "pilot":
    return Plan(pilot(pilot_steps, late_warmup), "validation", "docs/pilot")
  if plan == "pass3":
    return Plan(dict(PASS3), "test", "docs/runs_pass3")
  raise ValueError(f"--plan={plan!r} is not one of {PLANS}")
