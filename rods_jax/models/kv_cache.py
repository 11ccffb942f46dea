"""Fixed-capacity KV cache with a per-row write position.

Per layer, one K array [B, Hkv, Dh, S] and one V array [B, Hkv, S, Dh] (a tuple of L of each), so that

* a jitted step can donate the cache and XLA updates it in place;
* attention reads a layer's keys and values as whole, contiguous buffers in the layouts its two dots want: q·Kᵀ
  contracts Dh, so K is stored transposed and q [Hkv·G, Dh] @ K [Dh, S] is a plain matmul (XLA:CPU's dot over
  the [S, Dh] layout was markedly slower); p·V contracts S, so V keeps [S, Dh]. No per-step slice or transpose
  copy (slicing a layer out of one stacked [L, ...] array is a copy on XLA:CPU, every layer, every decode step).

Row b holds `length[b]` valid slots; rows are extended independently (multi-turn: each row appends its own tool
and user tokens), so there is no shared "current index". `take_rows` / `put_rows` cut a working cache of just the
rows and slots one decode segment needs (the sampler decodes on it, then writes it back).

On a mesh, rows are spread over the data-parallel axes and kv heads over tensor (``cache_shardings``; the
``init_cache(mesh=...)`` cache is born that way and ``constrain_cache`` keeps row gathers and scatters on it).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from rods_jax.models.config import ModelConfig
from rods_jax.sharding import constrain, logical_to_spec

# Logical axes of one layer's k [B, Hkv, Dh, S] and v [B, Hkv, S, Dh]: rows over (data, fsdp), kv heads over tensor.
CACHE_K_AXES = ("act_batch", "act_kv_heads", None, "act_kv_seq")
CACHE_V_AXES = ("act_batch", "act_kv_heads", "act_kv_seq", None)


class KVCache(NamedTuple):
  """k: tuple of L arrays [B, Hkv, Dh, S]; v: tuple of L arrays [B, Hkv, S, Dh] (compute dtype); length: [B] int32
  = filled slots per row."""
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  length: jax.Array

  @property
  def capacity(self) -> int:
    return self.v[0].shape[2]

  @property
  def batch(self) -> int:
    return self.length.shape[0]


def init_cache(cfg: ModelConfig, batch: int, capacity: int, dtype: str | None = None,
               mesh: Mesh | None = None) -> KVCache:
  """Empty cache for `batch` rows of `capacity` slots; dtype None means cfg.dtype (the compute dtype). With a mesh
  the cache is born sharded (``cache_shardings``), so no device ever holds all of it."""
  if batch <= 0 or capacity <= 0:
    raise ValueError(f"init_cache: batch={batch} and capacity={capacity} must be positive")
  dt = jnp.dtype(cfg.dtype if dtype is None else dtype)
  if mesh is None or mesh.size == 1:
    return _zeros(cfg, batch, capacity, dt)
  return _sharded_zeros(cfg, batch, capacity, dt, mesh)()


def _zeros(cfg: ModelConfig, batch: int, capacity: int, dt) -> KVCache:
  zeros = lambda shape: tuple(jnp.zeros(shape, dt) for _ in range(cfg.n_layers))
  return KVCache(zeros((batch, cfg.n_kv_heads, cfg.head_dim, capacity)),
                 zeros((batch, cfg.n_kv_heads, capacity, cfg.head_dim)), jnp.zeros((batch,), jnp.int32))


@functools.lru_cache(maxsize=32)
def _sharded_zeros(cfg: ModelConfig, batch: int, capacity: int, dt, mesh: Mesh):
  # one jitted builder per shape and mesh (a fresh jax.jit per call would compile again every rollout)
  return jax.jit(functools.partial(_zeros, cfg, batch, capacity, dt),
                 out_shardings=cache_shardings(cfg, batch, capacity, mesh))


def cache_shardings(cfg: ModelConfig, batch: int, capacity: int, mesh: Mesh) -> KVCache:
  """A KVCache of NamedShardings: rows over (data, fsdp), kv heads over tensor; an axis the mesh does not divide
  is replicated instead (``sharding.logical_to_spec``)."""
  k_spec = logical_to_spec(CACHE_K_AXES, (batch, cfg.n_kv_heads, cfg.head_dim, capacity), mesh)
  v_spec = logical_to_spec(CACHE_V_AXES, (batch, cfg.n_kv_heads, capacity, cfg.head_dim), mesh)
  rows = logical_to_spec(("act_batch",), (batch,), mesh)
  layers = lambda spec: tuple(NamedSharding(mesh, spec) for _ in range(cfg.n_layers))
  return KVCache(layers(k_spec), layers(v_spec), NamedSharding(mesh, rows))


def constrain_cache(cache: KVCache) -> KVCache:
  """``cache_shardings``' layout as a sharding constraint under the current ``jax.set_mesh`` mesh (no-op without
  one): row gathers and scatters (take_rows, put_rows, repeats) keep the rows spread over the data-parallel
  devices instead of letting XLA replicate them."""
  return KVCache(tuple(constrain(a, CACHE_K_AXES) for a in cache.k), tuple(constrain(a, CACHE_V_AXES) for a in cache.v),
                 constrain(cache.length, ("act_batch",)))


def take_rows(cache: KVCache, rows: jax.Array, slots: int) -> KVCache:
  """A working cache of rows ``rows`` ([R] int32; entries >= B are padding and read row B-1) and their first
  ``slots`` slots: k [R, Hkv, Dh, slots], v [R, Hkv, slots, Dh], length [R]. One copy, made once per decode
  segment."""
  if not 0 < slots <= cache.capacity:
    raise ValueError(f"take_rows: slots={slots} must be in [1, capacity={cache.capacity}]")
  safe = jnp.minimum(rows, cache.batch - 1)
  return constrain_cache(KVCache(tuple(a[safe, :, :, :slots] for a in cache.k),
                                 tuple(a[safe, :, :slots] for a in cache.v), cache.length[safe]))


def put_rows(cache: KVCache, rows: jax.Array, part: KVCache) -> KVCache:
  """Writes a working cache from ``take_rows(cache, rows, slots)`` back into ``cache`` (padding rows, >= B, are
  dropped). With ``cache`` donated the update is in place."""
  slots = part.capacity
  return constrain_cache(KVCache(tuple(a.at[rows, :, :, :slots].set(p, mode="drop") for a, p in zip(cache.k, part.k)),
                                 tuple(a.at[rows, :, :slots].set(p, mode="drop") for a, p in zip(cache.v, part.v)),
                                 cache.length.at[rows].set(part.length, mode="drop")))
