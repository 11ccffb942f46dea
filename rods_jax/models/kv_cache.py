"""Fixed-capacity KV cache with a per-row write position.

One array per K/V for all layers ([L, B, S, Hkv, Dh]) so a jitted step can donate it and XLA updates it in place.
Row b holds `length[b]` valid slots; rows are extended independently (multi-turn: each row appends its own tool
and user tokens), so there is no shared "current index".
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rods_jax.models.config import ModelConfig


class KVCache(NamedTuple):
  """k, v: [L, B, S, Hkv, Dh] in the compute dtype; length: [B] int32 = number of filled slots per row."""
  k: jax.Array
  v: jax.Array
  length: jax.Array

  @property
  def capacity(self) -> int:
    return self.k.shape[2]


def init_cache(cfg: ModelConfig, batch: int, capacity: int, dtype: str | None = None) -> KVCache:
  """Empty cache for `batch` rows of `capacity` slots; dtype None means cfg.dtype (the compute dtype)."""
  if batch <= 0 or capacity <= 0:
    raise ValueError(f"init_cache: batch={batch} and capacity={capacity} must be positive")
  dt = jnp.dtype(cfg.dtype if dtype is None else dtype)
  shape = (cfg.n_layers, batch, capacity, cfg.n_kv_heads, cfg.head_dim)
  return KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt), jnp.zeros((batch,), jnp.int32))
