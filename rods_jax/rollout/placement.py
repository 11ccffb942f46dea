"""Where the rollout engine's rows live on the device mesh.

The policy's parameters come sharded by the mesh. The engine's per-row arrays (KV cache, next-token logits, decode
state) are spread over the data-parallel devices (data x fsdp), and the cache's kv heads over tensor, so every
device prefills and decodes only its share of the B*K rows; left to XLA, the rows were replicated and every
data-parallel device decoded all of them. Row counts of the jitted calls are rounded up to a multiple of the
data-parallel size so the split is even. Without a mesh, or on one device, this is all a no-op.

Multi-process runs (TPU pod slices, multi-node GPU) work the same way: every process runs the same host loop on
the same tasks and key, so the host arrays it passes in are the same everywhere, and ``fetch`` all-gathers the
row-sharded outputs before they are read on the host (tests/test_multihost.py: two processes == one).
"""
from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rods_jax.models.config import ModelConfig
from rods_jax.models.kv_cache import KVCache, init_cache
from rods_jax.rollout import sampler
from rods_jax.sharding import logical_to_spec


class RowPlacement(NamedTuple):
  """The mesh the engine's rows are spread over; None = one device (everything local)."""
  mesh: Mesh | None

  @classmethod
  def of(cls, mesh: Mesh | None) -> "RowPlacement":
    return cls(mesh if mesh is not None and mesh.size > 1 else None)

  @property
  def row_multiple(self) -> int:
    """Data-parallel size: row counts that are multiples of it split evenly over the devices."""
    return 1 if self.mesh is None else int(self.mesh.shape["data"] * self.mesh.shape["fsdp"])

  def rows(self, n: int) -> int:
    """n (>= 1) rounded up to a multiple of ``row_multiple``."""
    return sampler.round_up(n, self.row_multiple)

  def scope(self):
    """Context for every engine call: ``jax.set_mesh`` (so the model's and sampler's sharding constraints apply)."""
    return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

  def new_cache(self, cfg: ModelConfig, batch: int, capacity: int) -> KVCache:
    return init_cache(cfg, batch, capacity, mesh=self.mesh)

  def zero_logits(self, batch: int, vocab: int) -> jax.Array:
    """[batch, vocab] float32 zeros, rows split like the cache's (replicated where they do not divide)."""
    if self.mesh is None:
      return jnp.zeros((batch, vocab), jnp.float32)
    return _zero_logits_fn(self.mesh, batch, vocab)()

  def fetch(self, tree):
    """``jax.device_get(tree)``; arrays that span devices of other processes are all-gathered first (one jitted
    copy to a replicated layout), since a process can only read the shards it holds."""
    if self.mesh is None or all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
      return jax.device_get(tree)
    return jax.device_get(_replicate(self.mesh)(tree))


# One jitted function per mesh (and shape): a fresh jax.jit per call would compile again on every call.
@functools.lru_cache(maxsize=32)
def _zero_logits_fn(mesh: Mesh, batch: int, vocab: int):
  spec = logical_to_spec(("act_batch", None), (batch, vocab), mesh)
  return jax.jit(lambda: jnp.zeros((batch, vocab), jnp.float32), out_shardings=NamedSharding(mesh, spec))


@functools.lru_cache(maxsize=8)
def _replicate(mesh: Mesh):
  return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, PartitionSpec()))
