"""Policy losses over [batch, time] arrays, registered by name (``config.grpo.loss``).

Every loss returns its value as a deferred reduction ``Weighted(total, count)`` (Tunix algo_core style): the division
happens once per optimizer step, after micro-batches are summed, so gradient accumulation equals the full batch
exactly (the count does not depend on the parameters, so ∇(Σ total)/Σ count = ∇ of the full-batch loss).

Rows of groups whose rewards are constant (``active_rows`` False) carry no policy-gradient signal; they are dropped
from every term AND from every denominator, so they neither contribute (no KL leak) nor dilute the other rows.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rods_jax.rl import advantages as advantages_lib
from rods_jax.rods import detector

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
KL_ESTIMATORS = ("low_var_kl", "k1", "k2")
# exp() of the importance log-ratio is clamped here (as in Tunix) so a stale or corrupted old log-prob cannot overflow.
MAX_LOG_RATIO = 20.0


class Weighted(NamedTuple):
  """A deferred mean: ``total / count``; micro-batches add both fields."""
  total: jnp.ndarray
  count: jnp.ndarray

  def value(self) -> jnp.ndarray:
    """total / count, and 0 where count == 0 (e.g. every group of the batch had zero reward variance)."""
    return jnp.where(self.count > 0, self.total / jnp.maximum(self.count, 1e-30), 0.0)


class LossOutput(NamedTuple):
  """What a registered loss returns. ``loss`` is differentiated; the rest are metrics (no gradient needed)."""
  loss: Weighted
  means: dict[str, Weighted]  # reduced by Σ total / Σ count
  maxes: dict[str, jnp.ndarray]  # reduced by max over micro-batches
  mins: dict[str, jnp.ndarray]  # reduced by min


def combine(a: LossOutput, b: LossOutput) -> LossOutput:
  """Sum of two micro-batches' outputs (exact: totals and counts add; extremes take max / min)."""
  return LossOutput(
      loss=Weighted(a.loss.total + b.loss.total, a.loss.count + b.loss.count),
      means={k: Weighted(a.means[k].total + b.means[k].total, a.means[k].count + b.means[k].count) for k in a.means},
      maxes={k: jnp.maximum(a.maxes[k], b.maxes[k]) for k in a.maxes},
      mins={k: jnp.minimum(a.mins[k], b.mins[k]) for k in a.mins})


def reduce(out: LossOutput) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """(loss, metrics) scalars from a (possibly accumulated) LossOutput."""
  metrics = {k: w.value() for k, w in out.means.items()}
  has_tokens = out.means["tokens"].total > 0
  metrics.update({k: jnp.where(has_tokens, v, 0.0) for k, v in {**out.maxes, **out.mins}.items()})
  metrics["tokens"] = out.means["tokens"].total  # a count, not a mean
  return out.loss.value(), metrics


LossFn = Callable[..., LossOutput]
LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
  """Decorator: register a loss under ``name`` in LOSSES (a duplicate name is an error)."""

  def wrap(fn: LossFn) -> LossFn:
    if name in LOSSES:
      raise ValueError(f"loss {name!r} is already registered")
    LOSSES[name] = fn
    return fn

  return wrap


def get_loss(name: str) -> LossFn:
  if name not in LOSSES:
    raise ValueError(f"config.grpo.loss={name!r} is not a registered loss; known: {sorted(LOSSES)}")
  return LOSSES[name]


def kl_penalty(logps: jnp.ndarray, ref_logps: jnp.ndarray, estimator: str) -> jnp.ndarray:
  """Per-token estimate of KL(π_θ ‖ π_ref) from the sampled token's log-probs (Schulman 2020), d = ref − logp:

    low_var_kl (k3): exp(d) − d − 1      (unbiased, ≥ 0, low variance; the GRPO / DeepSeekMath choice)
    k1:              −d = logp − ref
    k2:              d² / 2
  """
  d = ref_logps - logps
  if estimator == "low_var_kl":
    return jnp.exp(d) - d - 1.0
  if estimator == "k1":
    return -d
  if estimator == "k2":
    return 0.5 * jnp.square(d)
  raise ValueError(f"config.grpo.kl_estimator={estimator!r} is not one of {KL_ESTIMATORS}")


def aggregate(x: jnp.ndarray, mask: jnp.ndarray, mode: str) -> Weighted:
  """Deferred aggregation of a per-token quantity x [N, T] over the tokens where mask [N, T] is 1.

    token-mean:           Σ_{n,t} x m / Σ_{n,t} m
    seq-mean-token-mean:  (1/|S|) Σ_{n∈S} (Σ_t x m / Σ_t m)       S = rows with at least one masked-in token
    seq-mean-token-sum:   (1/|S|) Σ_{n∈S} Σ_t x m
  """
  m = mask.astype(x.dtype)
  row_tokens = jnp.sum(m, axis=1)
  row_sum = jnp.sum(x * m, axis=1)
  rows = (row_tokens > 0).astype(x.dtype)
  if mode == "token-mean":
    return Weighted(jnp.sum(row_sum), jnp.sum(row_tokens))
  if mode == "seq-mean-token-mean":
    return Weighted(jnp.sum(row_sum / jnp.maximum(row_tokens, 1.0)), jnp.sum(rows))
  if mode == "seq-mean-token-sum":
    return Weighted(jnp.sum(row_sum), jnp.sum(rows))
  raise ValueError(f"config.grpo.aggregation={mode!r} is not one of {AGGREGATIONS}")


@register_loss("ppo_clip")
def ppo_clip(logps: jnp.ndarray, old_logps: jnp.ndarray, ref_logps: jnp.ndarray, advantages: jnp.ndarray,
             loss_mask: jnp.ndarray, cfg: Any, *, active_rows: jnp.ndarray | None = None,
             entropy: jnp.ndarray | None = None) -> LossOutput:
  """GRPO / DAPO clipped surrogate with a KL penalty to a frozen reference, per token t of row n:

    ρ = exp(clip(logp − old, ±20))
    pg = max(−A ρ, −A clip(ρ, 1 − ε_low, 1 + ε_high))           (ε_low = cfg.clip_low, ε_high = cfg.clip_high)
    pg = min(pg, −A c)  where A < 0, if c = cfg.clip_ratio_c > 0   (dual clip, Ye et al. 2020; verl's clip_ratio_c)
    ℓ = pg + β KL_est(logp, ref) − c_H H                          (β = cfg.kl_coef, c_H = cfg.entropy_coef)
    loss = aggregate(ℓ, loss_mask ∧ active_rows, cfg.aggregation)

  Args:
    logps, old_logps, ref_logps: [N, T] log-prob of the token at t under the policy (differentiated), the policy
      that sampled (behaviour) and the frozen reference.
    advantages: [N] (one per trajectory, broadcast over time) or [N, T].
    loss_mask: [N, T] bool/float, 1 on the tokens the policy sampled.
    cfg: config.grpo.
    active_rows: [N] bool, False for rows of zero-variance groups (default: all True).
    entropy: optional [N, T] per-token entropy of the policy (for the metric and the entropy bonus).
  """
  if logps.ndim != 2:
    raise ValueError(f"logps must be [N, T], got shape {logps.shape}")
  for name, arr in (("old_logps", old_logps), ("ref_logps", ref_logps), ("loss_mask", loss_mask)):
    if arr.shape != logps.shape:
      raise ValueError(f"{name} has shape {arr.shape}, expected {logps.shape} like logps")
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  if advantages.shape[0] != logps.shape[0]:
    raise ValueError(f"advantages has {advantages.shape[0]} rows, logps has {logps.shape[0]}")
  dtype = logps.dtype  # float32 in training; float64 in the reference tests
  mask = loss_mask.astype(dtype)
  if active_rows is not None:
    mask = mask * active_rows.astype(dtype)[:, None]
  adv = advantages.astype(dtype)

  log_ratio = jnp.clip(logps - old_logps, -MAX_LOG_RATIO, MAX_LOG_RATIO)
  ratio = jnp.exp(log_ratio)
  low, high = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
  pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, low, high))
  dual = float(cfg.clip_ratio_c)
  if dual:
    if dual <= 1.0:
      raise ValueError(f"config.grpo.clip_ratio_c={dual} must be > 1 (or 0 = off)")
    pg = jnp.where(adv < 0, jnp.minimum(pg, -adv * dual), pg)
  kl = kl_penalty(logps, ref_logps, cfg.kl_estimator)
  per_token = pg + cfg.kl_coef * kl
  ent = jnp.zeros_like(logps) if entropy is None else entropy
  if cfg.entropy_coef:
    if entropy is None:
      raise ValueError("config.grpo.entropy_coef != 0 needs the policy entropy (pass logits / entropy)")
    per_token = per_token - cfg.entropy_coef * ent

  def tok_mean(x):
    return aggregate(x, mask, "token-mean")

  sg = jax.lax.stop_gradient
  means = {
      "pg_loss": aggregate(sg(pg), mask, cfg.aggregation),
      "kl": tok_mean(sg(kl)),
      "clip_frac_low": tok_mean(((ratio < low) & (adv < 0)).astype(dtype)),
      "clip_frac_high": tok_mean(((ratio > high) & (adv > 0)).astype(dtype)),
      "clip_frac_dual": tok_mean(((ratio > dual) & (adv < 0)).astype(dtype) if dual else jnp.zeros_like(ratio)),
      "ratio_mean": tok_mean(sg(ratio)),
      "log_ratio_abs": tok_mean(sg(jnp.abs(log_ratio))),
      "tokens": Weighted(jnp.sum(mask), jnp.ones(())),
  }
  if entropy is not None:
    means["entropy"] = tok_mean(sg(entropy))
  on = mask > 0
  maxes = {"ratio_max": jnp.max(jnp.where(on, sg(ratio), -jnp.inf))}
  mins = {"ratio_min": jnp.min(jnp.where(on, sg(ratio), jnp.inf))}
  return LossOutput(aggregate(per_token, mask, cfg.aggregation), means, maxes, mins)


def policy_loss(logps: jnp.ndarray, old_logps: jnp.ndarray, ref_logps: jnp.ndarray, advantages: jnp.ndarray,
                loss_mask: jnp.ndarray, cfg: Any, *, active_rows: jnp.ndarray | None = None,
                logits: jnp.ndarray | None = None) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The loss named by ``cfg.loss``, reduced: ``(loss, metrics)``; see ``ppo_clip`` for the objective.

  ``logits`` [N, T, V] (optional) are the logits that produced ``logps`` (position t's distribution over token t);
  they give the entropy metric / bonus.
  """
  entropy = None if logits is None else token_entropy(logits)
  out = get_loss(cfg.loss)(logps, old_logps, ref_logps, advantages, loss_mask, cfg, active_rows=active_rows,
                           entropy=entropy)
  return reduce(out)


def token_entropy(logits: jnp.ndarray) -> jnp.ndarray:
  """H = logsumexp(z) − Σ_v softmax(z)_v z_v over the last axis (at least float32)."""
  z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  lse = jax.nn.logsumexp(z, axis=-1)
  return lse - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)


def active_rows_from_rewards(rewards: jnp.ndarray, tol: float) -> jnp.ndarray:
  """[B·K] bool: False for every row of a group whose reward std ≤ tol (the detector's zero_std), row n = b·K + k."""
  zero_std = detector.group_statistics(rewards, 0.0, 1.0, tol).zero_std
  return jnp.repeat(~zero_std, rewards.shape[1])


def grpo_objective(logps: jnp.ndarray, old_logps: jnp.ndarray, ref_logps: jnp.ndarray, rewards: jnp.ndarray,
                   loss_mask: jnp.ndarray, cfg: Any, *, logits: jnp.ndarray | None = None
                   ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The full GRPO objective from rewards [B, K] and [B·K, T] token arrays (row n = b·K + k):
  advantages by ``cfg.advantage``, zero-variance groups (std ≤ ``cfg.zero_std_tol``) masked out, then
  ``policy_loss``. Adds ``frac_zero_std`` to the metrics.
  """
  adv = advantages_lib.compute_advantages(rewards, cfg).reshape(-1)
  active = active_rows_from_rewards(rewards, cfg.zero_std_tol)
  loss, metrics = policy_loss(logps, old_logps, ref_logps, adv, loss_mask, cfg, active_rows=active, logits=logits)
  metrics["frac_zero_std"] = 1.0 - jnp.mean(active.astype(logps.dtype))
  return loss, metrics
