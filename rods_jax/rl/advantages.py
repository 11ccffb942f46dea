"""Group-relative advantage estimators, registered by name (``config.grpo.advantage``).

Every estimator is a pure, jittable function ``fn(rewards[B, K], cfg) -> advantages[B, K]`` where row b holds the K
rollouts of task b and ``cfg`` is ``config.grpo``. A variant is a config change: add a function with
``@register_advantage("name")``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

AdvantageFn = Callable[[jnp.ndarray, Any], jnp.ndarray]

ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
  """Decorator: register ``fn`` under ``name`` in ADVANTAGES (a duplicate name is an error)."""

  def wrap(fn: AdvantageFn) -> AdvantageFn:
    if name in ADVANTAGES:
      raise ValueError(f"advantage estimator {name!r} is already registered")
    ADVANTAGES[name] = fn
    return fn

  return wrap


def get_advantage(name: str) -> AdvantageFn:
  """The estimator registered as ``name``; an unknown name raises ValueError naming it and the known ones."""
  if name not in ADVANTAGES:
    raise ValueError(f"config.grpo.advantage={name!r} is not a registered advantage estimator; "
                     f"known: {sorted(ADVANTAGES)}")
  return ADVANTAGES[name]


def compute_advantages(rewards: jnp.ndarray, cfg: Any) -> jnp.ndarray:
  """Advantages [B, K] from rewards [B, K] with the estimator named by ``cfg.advantage``."""
  _check_rewards(rewards)
  return get_advantage(cfg.advantage)(rewards, cfg)


def _as_float(rewards: jnp.ndarray) -> jnp.ndarray:
  """Rewards as a float array: float32 for ints / bools / float16; float64 stays float64 (reference tests)."""
  return jnp.asarray(rewards).astype(jnp.promote_types(jnp.asarray(rewards).dtype, jnp.float32))


def _check_rewards(rewards: jnp.ndarray) -> None:
  if rewards.ndim != 2:
    raise ValueError(f"rewards must be [B, K] (tasks x rollouts), got shape {rewards.shape}")
  if rewards.shape[1] < 2:
    raise ValueError(f"group-relative advantages need K >= 2 rollouts per task, got K={rewards.shape[1]}")


@register_advantage("grpo")
def grpo(rewards: jnp.ndarray, cfg: Any) -> jnp.ndarray:
  """GRPO (Shao et al. 2024): per-group standardised reward.

    A_bk = (R_bk − r̄_b) / (s_b + ε),   r̄_b = (1/K) Σ_k R_bk,
    s_b  = sqrt( Σ_k (R_bk − r̄_b)² / (K − ddof) )

  ``cfg.std_ddof`` (1 = unbiased, as in verl / Tunix; 0 = population) and ``cfg.eps`` (ε) come from config.grpo.
  A constant group gets A ≈ 0 only up to the rounding of r̄ (divided by ε!): the loss masks such groups out by
  ``zero_std_tol`` instead of relying on it.
  """
  _check_rewards(rewards)
  r = _as_float(rewards)
  k = r.shape[1]
  centred = r - jnp.mean(r, axis=1, keepdims=True)
  std = jnp.sqrt(jnp.sum(jnp.square(centred), axis=1, keepdims=True) / (k - cfg.std_ddof))
  return centred / (std + cfg.eps)


@register_advantage("rloo")
def rloo(rewards: jnp.ndarray, cfg: Any) -> jnp.ndarray:
  """REINFORCE leave-one-out (Ahmadian et al. 2024): baseline = mean of the other K − 1 rollouts.

    A_bk = R_bk − (1/(K−1)) Σ_{j≠k} R_bj  =  K/(K−1) · (R_bk − r̄_b)
  """
  del cfg  # no parameters
  _check_rewards(rewards)
  r = _as_float(rewards)
  k = r.shape[1]
  return r - (jnp.sum(r, axis=1, keepdims=True) - r) / (k - 1)


@register_advantage("drgrpo")
def drgrpo(rewards: jnp.ndarray, cfg: Any) -> jnp.ndarray:
  """Dr. GRPO (Liu et al. 2025): mean-centred reward, no division by the group std.

    A_bk = R_bk − r̄_b
  """
  del cfg  # no parameters
  _check_rewards(rewards)
  r = _as_float(rewards)
  return r - jnp.mean(r, axis=1, keepdims=True)
