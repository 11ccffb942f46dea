"""Token sampling: greedy / temperature / top-k / top-p, and the log-prob convention shared with the trainer.

Log-prob convention (the trainer must recompute the same quantity; use ``token_logps``):

  logp(y) = log softmax(z / τ)[y],   τ = temperature if temperature > 0 else 1

i.e. the log-probability of the sampled token under the policy's *tempered, untruncated* distribution. Top-k / top-p
only choose which tokens may be drawn; they do not renormalise the stored log-prob, because the trainer's forward pass
cannot see the truncation and the importance ratio must compare like with like (the same choice as verl / Tunix).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite "minus infinity": keeps softmax free of NaN when every entry of a row is masked


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How the next token is drawn. Hashable: it is a static argument of the jitted decode loop.

  Attributes:
    temperature: 0 = greedy (argmax); > 0 divides the logits.
    top_p: nucleus mass in (0, 1]; 1 = off.
    top_k: keep the k most likely tokens; 0 = off.
  """
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"rollout.temperature must be >= 0, got {self.temperature}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"rollout.top_k must be >= 0 (0 = off), got {self.top_k}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  @property
  def logp_temperature(self) -> float:
    """τ of the log-prob convention: the sampling temperature, or 1 for greedy decoding."""
    return self.temperature if self.temperature > 0 else 1.0

  @classmethod
  def from_config(cls, rollout_cfg) -> "SamplingParams":
    return cls(temperature=float(rollout_cfg.temperature), top_p=float(rollout_cfg.top_p),
               top_k=int(rollout_cfg.top_k))


def token_logps(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0) -> jax.Array:
  """log softmax(logits / τ)[token] along the last axis, in float32.

  Args:
    logits: [..., V].
    tokens: [...] int, same leading shape.
    temperature: τ > 0 (pass ``SamplingParams.logp_temperature``).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Masks (to NEG_INF) every token outside the top-k set and outside the top-p nucleus.

  top-k keeps the tokens whose logit is >= the k-th largest (ties at the k-th value are kept).
  top-p keeps, in descending-probability order, token i iff the mass strictly before it is < top_p, i.e. the smallest
  prefix whose mass reaches top_p (the most likely token is always kept). top-p is applied after top-k, on the
  distribution renormalised over the top-k set.

  Args:
    logits: [B, V] float32, already divided by the temperature.
  """
  if top_k > 0 and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, NEG_INF)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, NEG_INF)
  return logits


def sample_tokens(logits: jax.Array, rng: jax.Array, params: SamplingParams) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row and returns (tokens [B] int32, logps [B] float32) under the module's convention.

  Args:
    logits: [B, V] raw next-token logits (any float dtype).
    rng: a PRNG key (ignored when greedy).
    params: static sampling parameters.
  """
  logits = logits.astype(jnp.float32)
  if params.greedy:
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  else:
    scaled = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    tokens = inverse_cdf_sample(scaled, rng)
  return tokens, token_logps(logits, tokens, params.logp_temperature)


def inverse_cdf_sample(logits: jax.Array, rng: jax.Array) -> jax.Array:
  """One draw per row from softmax(logits) [B, V] by inversion: with w_i = exp(z_i − max z), c_j = Σ_{i≤j} w_i and
  u ~ U[0, 1) per row, the token is #{j : c_j ≤ u·c_{V−1}} (clipped to V − 1), i.e. the first j with c_j > u·c_{V−1}.
  A masked token (w = 0) never satisfies that first, so it is never drawn.

  Same distribution as ``jax.random.categorical`` (Gumbel-max) but one uniform per row instead of V Gumbel draws,
  which were the costliest op of a decode step on XLA:CPU (``launch.benchmark --suite=decode`` times the step).
  """
  w = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  c = jnp.cumsum(w, axis=-1)
  u = jax.random.uniform(rng, (logits.shape[0], 1), jnp.float32) * c[:, -1:]
  return jnp.minimum(jnp.sum(c <= u, axis=-1), logits.shape[-1] - 1).astype(jnp.int32)
