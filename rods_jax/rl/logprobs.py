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
                 temperature: float = 1.0, chunk: int = 0) -> TokenScores:
  """Full forward of ``nnx.merge(graphdef, params)`` over [N, T] and the shifted per-token scores. Jit-friendly.

  ``chunk`` > 0 computes the LM head, log-softmax and entropy ``chunk`` positions at a time under ``jax.checkpoint``
  (lax.scan), so neither the forward nor the backward ever holds the full [N, T, V] logits — at a 152k vocabulary
  they dominate memory. Same values as ``chunk`` = 0.
  """
  if chunk <= 0:
    logits = forward_fn(graphdef, params, tokens, positions_from_valid(valid), valid)
    return shifted_scores(logits, tokens, temperature)
  model = nnx.merge(graphdef, params)
  hidden = model.hidden(tokens, positions_from_valid(valid), valid)[:, :-1]  # position t−1 predicts token t
  targets = tokens[:, 1:].astype(jnp.int32)
  n, t1, d = hidden.shape
  n_chunks = -(-t1 // chunk)
  pad = n_chunks * chunk - t1
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(n, n_chunks, chunk, d).swapaxes(0, 1)
  targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(n, n_chunks, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one(h, y):
    lp = jax.nn.log_softmax(model.logits(h).astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(lp, y[..., None], axis=-1)[..., 0], -jnp.sum(jnp.exp(lp) * lp, axis=-1)

  _, (picked, ent) = jax.lax.scan(lambda c, xs: (c, one(*xs)), None, (hidden, targets))
  unchunk = lambda x: x.swapaxes(0, 1).reshape(n, n_chunks * chunk)[:, :t1]  # noqa: E731
  front = jnp.zeros((n, 1), jnp.float32)
  return TokenScores(jnp.concatenate([front, unchunk(picked)], axis=1), jnp.concatenate([front, unchunk(ent)], axis=1))
