"""Per-token log-probs (and entropy) of given token sequences under a model: one full causal forward, shifted.

Convention (the same as the sampler's ``sampler_logps``): ``logps[n, t] = log softmax(z[n, t−1] / τ)[tokens[n, t]]``,
the log-prob of token t given tokens < t; position 0 has no prediction and is 0.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rods_jax.models import forward_fn


class TokenScores(NamedTuple):
  logps: jnp.ndarray  # [N, T] float32
  entropy: jnp.ndarray  # [N, T] float32, entropy of the distribution that predicted token t (0 at t = 0)


def positions_from_valid(valid: jnp.ndarray) -> jnp.ndarray:
  """RoPE positions [N, T]: index of each valid token among its row's valid tokens (works for left or right padding)."""
  return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)


def shifted_scores(logits: jnp.ndarray, tokens: jnp.ndarray, temperature: float) -> TokenScores:
  """Log-prob of tokens[:, t] under logits[:, t − 1] / τ and that distribution's entropy, front-padded with 0.

    lp = z/τ − logsumexp(z/τ);  logps[t] = lp[t−1, tokens[t]];  H[t] = −Σ_v exp(lp[t−1, v]) lp[t−1, v]
  """
  z = logits[:, :-1].astype(jnp.float32) / temperature
  lp = jax.nn.log_softmax(z, axis=-1)
  picked = jnp.take_along_axis(lp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
  ent = -jnp.sum(jnp.exp(lp) * lp, axis=-1)
  pad = jnp.zeros((tokens.shape[0], 1), jnp.float32)
  return TokenScores(jnp.concatenate([pad, picked], axis=1), jnp.concatenate([pad, ent], axis=1))


def token_scores(graphdef: nnx.GraphDef, params: nnx.State, tokens: jnp.ndarray, valid: jnp.ndarray,
                 temperature: float = 1.0) -> TokenScores:
  """Full forward of ``nnx.merge(graphdef, params)`` over [N, T] and the shifted per-token scores. Jit-friendly."""
  logits = forward_fn(graphdef, params, tokens, positions_from_valid(valid), valid)
  return shifted_scores(logits, tokens, temperature)
