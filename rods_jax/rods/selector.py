"""Seed selection for synthesis from one step's group statistics (docs/METHOD.md §3).

``boundary`` (RODS): eligible = zone boundary (α⁻ ≤ r̄ ≤ α⁺) and not on cooldown; bucket by category; sort each
bucket by φ = 4 r̄ (1 − r̄) descending (ties: batch order); take ≤ M_τ per category, then ≤ M in all by φ. No quota
redistribution when a category has too few eligible tasks.
``uniform`` (random_seed arm): ≤ M tasks drawn uniformly from the batch's off-cooldown tasks, any zone.

A task sent at step s is on cooldown while step − s < c.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from rods_jax.rods.detector import BOUNDARY

SELECTIONS = ("boundary", "uniform")


@dataclasses.dataclass(frozen=True)
class SelectorConfig:
  seeds_per_step: int  # M
  seeds_per_category: int  # M_τ
  cooldown_steps: int  # c
  seed_selection: str

  @classmethod
  def from_rods(cls, rods_cfg) -> "SelectorConfig":
    c = cls(seeds_per_step=int(rods_cfg.seeds_per_step), seeds_per_category=int(rods_cfg.seeds_per_category),
            cooldown_steps=int(rods_cfg.cooldown_steps), seed_selection=str(rods_cfg.seed_selection))
    if c.seed_selection not in SELECTIONS:
      raise ValueError(f"config.rods.seed_selection={c.seed_selection!r} not in {SELECTIONS}")
    for name in ("seeds_per_step", "seeds_per_category", "cooldown_steps"):
      if getattr(c, name) < 0:
        raise ValueError(f"config.rods.{name} must be >= 0, got {getattr(c, name)}")
    return c


class SeedSelector:
  """Stateful wrapper: the cooldown table and (uniform arm) a numpy RNG; both in state_dict()."""

  def __init__(self, rods_cfg, seed: int = 0):
    self._cfg = rods_cfg if isinstance(rods_cfg, SelectorConfig) else SelectorConfig.from_rods(rods_cfg)
    self._last_sent: dict[str, int] = {}
    self._rng = np.random.default_rng(seed)

  def on_cooldown(self, task_id: str, step: int) -> bool:
    s = self._last_sent.get(task_id)
    return s is not None and step - s < self._cfg.cooldown_steps

  def select(self, task_ids: Sequence[str], categories: Sequence[str], stats: Any, step: int) -> list[str]:
    """Picks the step's seeds; ``stats`` is a GroupStats (host or device arrays) aligned with ``task_ids``."""
    n = len(task_ids)
    if len(categories) != n:
      raise ValueError(f"select: {n} task ids but {len(categories)} categories")
    mean = np.asarray(stats.mean, np.float64).reshape(-1)
    phi = np.asarray(stats.phi, np.float64).reshape(-1)
    zone = np.asarray(stats.zone).reshape(-1)
    if not mean.shape[0] == phi.shape[0] == zone.shape[0] == n:
      raise ValueError(f"select: stats have {mean.shape[0]} rows but there are {n} task ids")
    # A task may appear more than once in a batch (epoch filler); keep its first row.
    first: dict[str, int] = {}
    for i, tid in enumerate(task_ids):
      first.setdefault(tid, i)
    rows = [i for tid, i in first.items() if not self.on_cooldown(tid, step)]
    m = self._cfg.seeds_per_step
    if self._cfg.seed_selection == "uniform":
      k = min(m, len(rows))
      picked = [rows[j] for j in sorted(self._rng.choice(len(rows), size=k, replace=False))] if k else []
    else:
      buckets: dict[str, list[int]] = {}
      for i in rows:
        if int(zone[i]) == BOUNDARY:
          buckets.setdefault(categories[i], []).append(i)
      chosen = []
      for rows_c in buckets.values():
        rows_c.sort(key=lambda i: (-phi[i], i))
        chosen += rows_c[:self._cfg.seeds_per_category]
      chosen.sort(key=lambda i: (-phi[i], i))
      picked = chosen[:m]
    out = [task_ids[i] for i in picked]
    # Expired cooldowns carry no information: drop them so the state stays O(M·c).
    self._last_sent = {k: v for k, v in self._last_sent.items() if step - v < self._cfg.cooldown_steps}
    for tid in out:
      self._last_sent[tid] = int(step)
    return out

  def state_dict(self) -> dict[str, Any]:
    return {"last_sent": dict(self._last_sent), "rng": self._rng.bit_generator.state}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self._last_sent = {str(k): int(v) for k, v in state["last_sent"].items()}
    rng_state = state["rng"]
    self._rng = np.random.Generator(getattr(np.random, rng_state["bit_generator"])())
    self._rng.bit_generator.state = rng_state
