"""Device mesh (data, fsdp, tensor) and logical-axis sharding rules.

Parameters and activations are annotated with *logical* axis names (``"embed"``, ``"mlp"``, ``"act_batch"``, ...);
`LOGICAL_RULES` maps each to a mesh axis. A dimension whose size the mesh axis does not divide is replicated
instead (e.g. 8 kv heads on tensor=16), so every preset runs on every mesh. With one device everything here is a
no-op. Recommended use:

    mesh = make_mesh(config.mesh)
    model = shard_model(Transformer(cfg, rngs=nnx.Rngs(0)), mesh)      # params placed on their shardings
    with jax.set_mesh(mesh):                                            # activations follow `constrain`
      loss = jax.jit(step)(nnx.split(model)[1], jax.device_put(batch, batch_sharding(mesh)))
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated). Weights are sharded over fsdp on their
# model dimension and over tensor on heads / mlp / vocab (Megatron style); activations over (data, fsdp) on batch.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_layers", None),
    ("act_kv_seq", None),
)
_RULES = dict(LOGICAL_RULES)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh with axes (data, fsdp, tensor) from ``config.mesh``; fsdp = -1 takes the remaining devices.

  Raises ValueError naming the field when the sizes do not multiply to the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = {}
  for name in MESH_AXES:
    value = int(mesh_cfg[name]) if hasattr(mesh_cfg, "__getitem__") else int(getattr(mesh_cfg, name))
    if value == 0 or value < -1:
      raise ValueError(f"config.mesh.{name}={value} must be a positive int or -1")
    sizes[name] = value
  auto = [k for k, v in sizes.items() if v == -1]
  if len(auto) > 1:
    raise ValueError(f"config.mesh: only one axis may be -1, got {auto}")
  fixed = int(np.prod([v for v in sizes.values() if v != -1]))
  if auto:
    if n % fixed:
      raise ValueError(f"config.mesh: {n} devices are not divisible by the fixed axes "
                       f"({', '.join(f'{k}={v}' for k, v in sizes.items() if v != -1)}) for config.mesh.{auto[0]}=-1")
    sizes[auto[0]] = n // fixed
  total = int(np.prod(list(sizes.values())))
  if total != n:
    raise ValueError(f"config.mesh: data*fsdp*tensor = {sizes['data']}*{sizes['fsdp']}*{sizes['tensor']} = {total} "
                     f"!= {n} devices")
  shape = tuple(sizes[a] for a in MESH_AXES)
  try:  # topology-aware device order on TPU/GPU; plain order where the helper does not know the platform
    grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  except (NotImplementedError, ValueError, AssertionError):
    grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | jax.sharding.AbstractMesh | None = None) -> PartitionSpec:
  """PartitionSpec for logical axis names. With `shape` and `mesh`, a dim the mesh axis does not divide (or a
  mesh axis of size 1) is replicated, and a mesh axis is used at most once."""
  out, used = [], set()
  for i, name in enumerate(logical_axes):
    if name is None:
      out.append(None)
      continue
    if name not in _RULES:
      raise ValueError(f"unknown logical axis {name!r}; known: {sorted(_RULES)}")
    target = _RULES[name]
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    axes = tuple(a for a in axes if a not in used)
    if mesh is not None:
      axes = tuple(a for a in axes if mesh.shape[a] > 1)
      if shape is not None:
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        while axes and shape[i] % size:  # drop trailing axes until the dim divides
          axes = axes[:-1]
          size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    used.update(axes)
    out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return PartitionSpec(*out)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint under the current `jax.set_mesh` mesh; a no-op without one or on one device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))


def param_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
  """NamedSharding for every Variable in `state` from its ``out_sharding`` logical-axis metadata."""

  def one(v):
    axes = v.get_metadata().get("out_sharding")
    value = v.get_value() if hasattr(v, "get_value") else v.value
    spec = PartitionSpec() if not axes else logical_to_spec(axes, value.shape, mesh)
    return v.replace(NamedSharding(mesh, spec))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
  """Places every parameter of `model` (in place) on its mesh sharding and returns the model."""
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, param_shardings(state, mesh)))
  return model


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a [B, ...] array with `ndim` dims: batch over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))

