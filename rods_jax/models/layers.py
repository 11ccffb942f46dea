"""Pure functions for the transformer's math: RMSNorm, RoPE (incl. Llama-3 scaling), grouped-query attention.

Everything here is a plain function of arrays, so it is testable against a float64 numpy reference on its own.
Statistics (norm variance, softmax) are always computed in float32 whatever the compute dtype.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Masked attention scores use a large finite value rather than -inf so a query row with no admissible key
# (a padding query) yields a finite uniform average instead of NaN; such rows are never read.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """y = x / sqrt(mean(x^2, -1) + eps) * scale, statistics in float32, result in x.dtype."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y.astype(x.dtype) * scale.astype(x.dtype))


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None) -> np.ndarray:
  """Inverse frequencies [head_dim/2] (float32), computed in float64.

  Plain: inv_freq_i = theta^(-2i/d). linear: inv_freq / factor. llama3 (Llama 3.1): with wavelen = 2π/inv_freq,
  L = original_max_position_embeddings, low = L/low_freq_factor, high = L/high_freq_factor:
  wavelen > low -> inv_freq/factor; wavelen < high -> inv_freq; otherwise interpolate with
  s = (L/wavelen - low_freq_factor)/(high_freq_factor - low_freq_factor): (1-s)·inv_freq/factor + s·inv_freq.
  """
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  rope_type = "default" if scaling is None else scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "default":
    pass
  elif rope_type == "linear":
    inv_freq = inv_freq / float(scaling["factor"])
  elif rope_type == "llama3":
    factor = float(scaling["factor"])
    lo, hi = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    inv_freq = np.where(medium, smoothed, scaled)
  else:
    raise ValueError(f"rope_type={rope_type!r} is not supported")
  return inv_freq.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotary embedding, half-split (HF "rotate_half") convention.

  x: [B, T, H, Dh], positions: [B, T]. With a = pos·inv_freq (float32), x = [x1, x2] halves:
  out = [x1 cos a - x2 sin a, x2 cos a + x1 sin a].
  """
  angle = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, Dh/2]
  cos = jnp.cos(angle)[:, :, None, :]
  sin = jnp.sin(angle)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, cache_layout: bool = False) -> jax.Array:
  """Grouped-query attention.

  q: [B, T, H, Dh]; k, v: [B, S, Hkv, Dh], or with `cache_layout` the KV cache's layout, k [B, Hkv, Dh, S] and
  v [B, Hkv, S, Dh]; mask: [B, T, S] bool (True = may attend). Query head h uses kv head h // (H/Hkv).
  out[b,t,h] = Σ_s softmax_s(q·k_s/√Dh masked) v_s; scores and softmax in float32. Returns [B, T, H, Dh] in q.dtype.
  """
  b, t, h, dh = q.shape
  hkv = k.shape[1] if cache_layout else k.shape[2]
  if cache_layout and t > 1:
    return _gqa_cache_prefill(q, k, v, mask)
  qg = q.reshape(b, t, hkv, h // hkv, dh)
  ks, vs = ("bkds", "bksd") if cache_layout else ("bskd", "bskd")
  if t == 1:  # decode: without the size-1 query axis XLA:CPU emits cheaper batched dots
    scores = jnp.einsum(f"bkgd,{ks}->bkgs", qg[:, 0], k, preferred_element_type=jnp.float32)[:, :, :, None]
  else:
    scores = jnp.einsum(f"btkgd,{ks}->bkgts", qg, k, preferred_element_type=jnp.float32)
  scores = scores * (1.0 / math.sqrt(dh))
  scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  if t == 1:
    out = jnp.einsum(f"bkgs,{vs}->bkgd", probs[:, :, :, 0], v, preferred_element_type=jnp.float32)[:, None]
  else:
    out = jnp.einsum(f"bkgts,{vs}->btkgd", probs, v, preferred_element_type=jnp.float32)
  return out.reshape(b, t, h, dh).astype(q.dtype)


def _gqa_cache_prefill(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """`gqa_attention` for T > 1 queries against the cache layout (k [B, Hkv, Dh, S], v [B, Hkv, S, Dh]).

  The T·G queries of a kv head are laid out as the rows of one [T·G, Dh] matrix, so both contractions are plain
  batched matmuls over (B, Hkv): scores = Q [T·G, Dh] @ K [Dh, S], out = P [T·G, S] @ V [S, Dh]. Written as the
  5-d einsum of the decode path, XLA:CPU emitted a generic dot plus transposes of the [B, Hkv, G, T, S] scores,
  markedly slower at the rollout engine's prefill shapes.
  """
  b, t, h, dh = q.shape
  hkv, s = k.shape[1], k.shape[3]
  g = h // hkv
  qm = q.reshape(b, t, hkv, g, dh).transpose(0, 2, 1, 3, 4).reshape(b, hkv, t * g, dh)
  scores = jnp.einsum("bkmd,bkds->bkms", qm, k, preferred_element_type=jnp.float32) * (1.0 / math.sqrt(dh))
  allowed = jnp.broadcast_to(mask[:, None, :, None, :], (b, 1, t, g, s)).reshape(b, 1, t * g, s)
  probs = jax.nn.softmax(jnp.where(allowed, scores, _MASK_VALUE), axis=-1).astype(v.dtype)
  out = jnp.einsum("bkms,bksd->bkmd", probs, v, preferred_element_type=jnp.float32)
  return out.reshape(b, hkv, t, g, dh).transpose(0, 2, 1, 3, 4).reshape(b, t, h, dh).astype(q.dtype)


def chunked_gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, chunk: int,
                          cache_layout: bool = False) -> jax.Array:
  """`gqa_attention` computed over query blocks of `chunk` rows, each block rematerialised in the backward pass.

  Same result; the [B, H, T, S] score tensor never exists whole, so peak attention memory is O(chunk·S) instead of
  O(T·S) (long multi-turn trajectories at real-model scale). chunk <= 0 or T <= chunk: one block.
  """
  b, t, h, dh = q.shape
  if chunk <= 0 or t <= chunk:
    return gqa_attention(q, k, v, mask, cache_layout)
  pad = -t % chunk
  if pad:  # padded query rows see no key; their (finite) output is sliced off
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))
  n = (t + pad) // chunk
  qs = q.reshape(b, n, chunk, h, dh).swapaxes(0, 1)
  ms = mask.reshape(b, n, chunk, mask.shape[-1]).swapaxes(0, 1)
  block = jax.checkpoint(lambda qm: gqa_attention(qm[0], k, v, qm[1], cache_layout))
  out = jax.lax.map(block, (qs, ms))  # [n, B, chunk, H, Dh]
  return out.swapaxes(0, 1).reshape(b, n * chunk, h, dh)[:, :t]
