"""Boundary detector: per-task statistics of the K rollouts already made for the GRPO update.

Runs inside the jitted train step (pure jnp, static shapes), so detection costs no extra pass over the rollouts.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

HARD, BOUNDARY, MASTERED = 0, 1, 2
ZONE_NAMES = ("hard", "boundary", "mastered")


class GroupStats(NamedTuple):
  mean: jnp.ndarray  # [B] r̄
  var: jnp.ndarray  # [B] population variance (1/K) Σ (R_k − r̄)²
  phi: jnp.ndarray  # [B] 4 r̄ (1 − r̄)
  zone: jnp.ndarray  # [B] int32: 0 hard, 1 boundary, 2 mastered
  zero_std: jnp.ndarray  # [B] bool: std <= tol (no GRPO signal)


def group_statistics(rewards: jnp.ndarray, alpha_low: float, alpha_high: float, tol: float) -> GroupStats:
  """Per-task boundary statistics from a [B, K] reward matrix.

    r̄_i   = (1/K) Σ_k R_ik
    Var_i = (1/K) Σ_k (R_ik − r̄_i)²
    φ_i   = 4 r̄_i (1 − r̄_i)                    (Bhatia–Davis bound on 4·Var for R ∈ [0, 1])
    zone  = hard if r̄ < α⁻; mastered if r̄ > α⁺; boundary otherwise (α⁻ ≤ r̄ ≤ α⁺)

  Raises:
    ValueError: if K < 2 (a single rollout has no variance; the detector is meaningless).
  """
  if rewards.ndim != 2:
    raise ValueError(f"rewards must be [B, K], got shape {rewards.shape}")
  if rewards.shape[1] < 2:
    raise ValueError(f"the boundary detector needs K >= 2 rollouts per task, got K={rewards.shape[1]}")
  r = rewards.astype(jnp.float32)
  mean = jnp.mean(r, axis=1)
  var = jnp.mean(jnp.square(r - mean[:, None]), axis=1)
  phi = 4.0 * mean * (1.0 - mean)
  zone = jnp.where(mean < alpha_low, HARD, jnp.where(mean > alpha_high, MASTERED, BOUNDARY)).astype(jnp.int32)
  zero_std = jnp.sqrt(var) <= tol
  return GroupStats(mean=mean, var=var, phi=phi, zone=zone, zero_std=zero_std)
