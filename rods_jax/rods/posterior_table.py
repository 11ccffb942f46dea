"""The ``posterior`` detector's host state: one Beta posterior per active task, its decisions and its metrics.

The buffer owns one ``PosteriorTable`` when ``config.rods.detector == "posterior"`` and asks it, instead of the
task's latest r̄, for the zone and seed priority (selection), burn-in, retirement and the pruning order:

  zone        : the paper's zones of the posterior mean E[p]
  priority    : E[4 p (1 − p)] (unobserved tasks: 1, as the paper's pruning treats them)
  burn-in     : at the end of the epoch of its first observation, a variant is evicted when
                E[p] < burn_in_low and P(p < burn_in_low) ≥ confidence
  retirement  : mastered when E[p] > retire_high and P(p > retire_high) ≥ confidence; unsolvable when
                E[p] < retire_low and P(p < retire_low) ≥ confidence

Seeds start from Beta(s/2, s/2); a variant starts, when injected, from its parent's posterior mean worth s
pseudo-rollouts (s = ``rods.posterior_prior_strength``; the parent's if it has been observed, else the seeds' prior).
The metrics compare each rule with the one-step rule on the same observations (``posterior/step_*``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from rods_jax.rods import posterior
from rods_jax.rods.detector import ZONE_NAMES, GroupStats

DETECTORS = ("step", "posterior")
KEEP, MASTERED, UNSOLVABLE = 0, 1, 2  # retirement verdict of one rule after an observation
_COUNTS = ("revisited_tasks", "zone_flips", "step_zone_flips", "retire_checked", "retire_contradicted",
           "step_retire_checked", "step_retire_contradicted", "burn_in_checked", "burn_in_contradicted",
           "step_burn_in_checked", "step_burn_in_contradicted")


@dataclasses.dataclass(frozen=True)
class PosteriorConfig:
  """The fields of ``config.rods`` the posterior detector reads, and K (``config.rollout.k``)."""
  decay: float
  prior_strength: float
  confidence: float
  group_size: int
  alpha_low: float
  alpha_high: float
  burn_in_low: float
  retire_high: float
  retire_low: float

  @classmethod
  def from_rods(cls, rods_cfg, group_size: int) -> "PosteriorConfig":
    c = cls(decay=float(rods_cfg.posterior_decay), prior_strength=float(rods_cfg.posterior_prior_strength),
            confidence=float(rods_cfg.posterior_confidence), group_size=int(group_size),
            alpha_low=float(rods_cfg.alpha_low), alpha_high=float(rods_cfg.alpha_high),
            burn_in_low=float(rods_cfg.burn_in_low), retire_high=float(rods_cfg.retire_high),
            retire_low=float(rods_cfg.retire_low))
    if not 0.0 <= c.decay <= 1.0:
      raise ValueError(f"config.rods.posterior_decay must be in [0, 1], got {c.decay}")
    if c.prior_strength < 0:
      raise ValueError(f"config.rods.posterior_prior_strength must be >= 0, got {c.prior_strength}")
    if not 0.0 <= c.confidence <= 1.0:
      raise ValueError(f"config.rods.posterior_confidence must be in [0, 1], got {c.confidence}")
    if c.group_size < 1:
      raise ValueError(f"the posterior detector needs K >= 1 rollouts per observation, got {c.group_size}")
    return c


def _entry(a: float, b: float, step: int) -> dict[str, Any]:
  # zone/verdict fields describe the latest observation (-1: none yet), for the flip and contradiction metrics.
  return {"a": float(a), "b": float(b), "last_step": int(step), "n_obs": 0, "first_epoch": -1, "zone": -1,
          "step_zone": -1, "verdict": KEEP, "step_verdict": KEEP, "burn_fail": False, "step_burn_fail": False}


class PosteriorTable:
  """Per-task (a, b) with forgetting, the posterior decisions, and cumulative comparison counters."""

  def __init__(self, cfg: PosteriorConfig, seed_ids: Sequence[str]):
    self._cfg = cfg
    self._now = 0  # the latest observed step: a prior set at injection starts forgetting from here
    self._tab: dict[str, dict[str, Any]] = {}
    self._counts = {k: 0 for k in _COUNTS}
    for sid in seed_ids:
      self.add(sid, None)

  @property
  def config(self) -> PosteriorConfig:
    return self._cfg

  def __contains__(self, task_id: str) -> bool:
    return task_id in self._tab

  def get(self, task_id: str) -> tuple[float, float, int]:
    """(a, b, number of observations)."""
    e = self._tab[task_id]
    return e["a"], e["b"], e["n_obs"]

  # ------------------------------------------------------------------------------------------ evidence
  def add(self, task_id: str, parent_id: str | None) -> None:
    """Starts a task from its prior (the parent's shrunk posterior when the parent has been observed)."""
    s = self._cfg.prior_strength
    parent = self._tab.get(parent_id) if parent_id is not None else None
    if parent is not None and parent["n_obs"] > 0:
      a0, b0 = posterior.shrunk_prior(parent["a"], parent["b"], s)
    else:
      a0, b0 = s / 2.0, s / 2.0
    self._tab[task_id] = _entry(a0, b0, self._now)

  def drop(self, task_id: str) -> list[float]:
    """Forgets a task that left the pool; returns its final [a, b] (kept in the buffer's archive)."""
    e = self._tab.pop(task_id)
    return [e["a"], e["b"]]

  def observe(self, task_id: str, rbar: float, step: int, epoch: int, generated: bool) -> None:
    """Adds one observation of K rollouts with mean ``rbar`` (Σ R = K r̄) and updates the comparison counters."""
    c, e = self._cfg, self._tab[task_id]
    k = c.group_size
    a, b = posterior.update(e["a"], e["b"], k * float(rbar), k, c.decay, max(0, int(step) - e["last_step"]))
    e["a"], e["b"], e["last_step"] = float(a), float(b), int(step)
    self._now = max(self._now, int(step))
    e["n_obs"] += 1
    if e["n_obs"] == 1:
      e["first_epoch"] = int(epoch)
    zone = int(posterior.zones(posterior.mean(a, b), c.alpha_low, c.alpha_high))
    step_zone = int(posterior.zones(rbar, c.alpha_low, c.alpha_high))
    verdict = self.retire_verdict(task_id)
    step_verdict = MASTERED if rbar > c.retire_high else UNSOLVABLE if rbar < c.retire_low else KEEP
    burn_fail = bool(posterior.confidently_below(a, b, c.burn_in_low, c.confidence))
    step_burn_fail = rbar < c.burn_in_low
    n = self._counts
    if e["n_obs"] >= 2:
      n["revisited_tasks"] += int(e["n_obs"] == 2)
      n["zone_flips"] += int(zone != e["zone"])
      n["step_zone_flips"] += int(step_zone != e["step_zone"])
      for prefix, new, old in (("", verdict, e["verdict"]), ("step_", step_verdict, e["step_verdict"])):
        if old != KEEP:  # a retirement verdict, checked by this later observation
          n[f"{prefix}retire_checked"] += 1
          n[f"{prefix}retire_contradicted"] += int(new != old)
      if generated and e["n_obs"] == 2:  # the burn-in verdict of the first observation, checked by the second
        for prefix, new, old in (("", burn_fail, e["burn_fail"]), ("step_", step_burn_fail, e["step_burn_fail"])):
          if old:
            n[f"{prefix}burn_in_checked"] += 1
            n[f"{prefix}burn_in_contradicted"] += int(not new)
    e.update(zone=zone, step_zone=step_zone, verdict=verdict, step_verdict=step_verdict)
    if e["n_obs"] == 1:
      e.update(burn_fail=burn_fail, step_burn_fail=bool(step_burn_fail))

  # ------------------------------------------------------------------------------------------ decisions
  def retire_verdict(self, task_id: str) -> int:
    c, e = self._cfg, self._tab[task_id]
    if posterior.confidently_above(e["a"], e["b"], c.retire_high, c.confidence):
      return MASTERED
    if posterior.confidently_below(e["a"], e["b"], c.retire_low, c.confidence):
      return UNSOLVABLE
    return KEEP

  def lifecycle(self, task_id: str, ended_epoch: int, retirement: bool) -> str | None:
    """The buffer's removal reason for an observed generated task at the end of ``ended_epoch`` (None = keep)."""
    c, e = self._cfg, self._tab[task_id]
    if e["first_epoch"] == ended_epoch and posterior.confidently_below(e["a"], e["b"], c.burn_in_low, c.confidence):
      return "evicted"
    if retirement:
      verdict = self.retire_verdict(task_id)
      if verdict != KEEP:
        return "retired_mastered" if verdict == MASTERED else "retired_unsolvable"
    return None

  def priority(self, task_id: str) -> float:
    """Pruning and selection priority E[4 p (1 − p)]; 1 for a task never observed."""
    e = self._tab[task_id]
    return float(posterior.expected_phi(e["a"], e["b"])) if e["n_obs"] else 1.0

  def decision_stats(self, task_ids: Sequence[str], stats: Any) -> GroupStats:
    """The step's GroupStats with mean, φ and zone replaced by the posterior's (what the seed selector reads)."""
    c = self._cfg
    a = np.array([self._tab[t]["a"] for t in task_ids], np.float64)
    b = np.array([self._tab[t]["b"] for t in task_ids], np.float64)
    m = posterior.mean(a, b)
    return GroupStats(mean=m, var=np.asarray(stats.var), phi=posterior.expected_phi(a, b),
                      zone=posterior.zones(m, c.alpha_low, c.alpha_high), zero_std=np.asarray(stats.zero_std))

  # ------------------------------------------------------------------------------------------ metrics
  def metrics(self, task_ids: Sequence[str]) -> dict[str, float]:
    """This step's posterior zones and widths per zone, and the cumulative comparison with the one-step rule."""
    c = self._cfg
    ids = list(dict.fromkeys(task_ids))
    a = np.array([self._tab[t]["a"] for t in ids], np.float64)
    b = np.array([self._tab[t]["b"] for t in ids], np.float64)
    zone = posterior.zones(posterior.mean(a, b), c.alpha_low, c.alpha_high)
    width = posterior.sd(a, b)
    out: dict[str, float] = {}
    for z, name in enumerate(ZONE_NAMES):
      sel = zone == z
      out[f"posterior/zones/{name}"] = float(sel.sum()) / max(len(ids), 1)
      out[f"posterior/sd_{name}"] = float(width[sel].mean()) if sel.any() else float("nan")
    n = self._counts
    out.update({f"posterior/{k}": int(v) for k, v in n.items()})
    revisited = max(n["revisited_tasks"], 1)
    out["posterior/zone_flips_per_task"] = n["zone_flips"] / revisited
    out["posterior/step_zone_flips_per_task"] = n["step_zone_flips"] / revisited
    return out

  # ------------------------------------------------------------------------------------------ state
  def state_dict(self) -> dict[str, Any]:
    return {"now": self._now, "tasks": {k: dict(v) for k, v in self._tab.items()}, "counts": dict(self._counts)}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self._now = int(state["now"])
    self._tab = {str(k): dict(v) for k, v in state["tasks"].items()}
    self._counts = {k: int(state["counts"][k]) for k in _COUNTS}
