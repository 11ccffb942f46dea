"""``GRPOLearner``: holds the learner state and runs one GRPO step per rollout batch, in the configured layout.

* ``config.grpo.layout = "bucketed"``: ``rl.bucketed`` — rows sorted by length into micro-batches cut to a
  few bucket lengths, so the forward/backward and the reference forward cost the batch's real tokens;
* ``"padded"`` (default): ``rl.grpo_step.train_step`` — every row at the batch's full width in one jitted call (the
  original layout; on the CPU lab still the faster one at 256 rows, docs/results.md "GRPO step").

Both compute the same objective (tests/test_bucketed.py). ``behaviour="sampler"`` makes the batch's sampler
log-probs the behaviour policy (a batch sampled by an older policy, ``train.overlap``).
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rods_jax import sharding as sharding_lib
from rods_jax.rl import advantages as advantages_lib
from rods_jax.rl import bucketed
from rods_jax.rl import grpo_step
from rods_jax.rl import losses
from rods_jax.rods import detector

LAYOUTS = ("bucketed", "padded")


def global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global jax.Array from a host array every process holds in full; each process places only its own shards
  (works single- and multi-host, unlike device_put of the whole array)."""
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate_on_mesh(x: jax.Array, mesh: Mesh) -> jax.Array:
  return global_array(np.asarray(jax.device_get(x)), NamedSharding(mesh, PartitionSpec()))


def on_mesh(x: jax.Array, mesh: Mesh) -> jax.Array:
  """Leaves already sharded over ``mesh`` stay; others (optimizer counts, ...) are replicated over it."""
  sh = getattr(x, "sharding", None)
  if isinstance(sh, NamedSharding) and sh.mesh == mesh:
    return x
  return replicate_on_mesh(x, mesh)


def host_arrays(batch) -> grpo_step.TrainBatch:
  """The learner's fields of a RolloutBatch / TrainBatch as numpy, with their shapes checked."""
  arrays = grpo_step.TrainBatch(tokens=np.asarray(batch.tokens, np.int32), loss_mask=np.asarray(batch.loss_mask, bool),
                                valid=np.asarray(batch.valid, bool),
                                sampler_logps=np.asarray(batch.sampler_logps, np.float32),
                                rewards=np.asarray(batch.rewards, np.float32))
  n = arrays.tokens.shape[0]
  for name in ("loss_mask", "valid", "sampler_logps"):
    if getattr(arrays, name).shape != arrays.tokens.shape:
      raise ValueError(f"batch.{name} has shape {getattr(arrays, name).shape}, tokens {arrays.tokens.shape}")
  if arrays.rewards.ndim != 2 or arrays.rewards.size != n:
    raise ValueError(f"batch.rewards must be [B, K] with B*K = {n} rows, got {arrays.rewards.shape}")
  return arrays


# ----------------------------------------------------------------------------------------------------------------------
# the stateful wrapper
# ----------------------------------------------------------------------------------------------------------------------
class GRPOLearner:
  """Holds the LearnerState and calls the jitted ``train_step``; nothing else.

  The learner takes ownership of ``model``'s arrays (with a mesh they are placed on their shardings; every step
  donates them): read the current policy from ``learner.params`` / ``learner.model()``, not from ``model``.

    learner = GRPOLearner(model, config.optim, config.grpo, config.rods, mesh)
    metrics, group_stats = learner.step(rollout_batch)     # metrics: dict[str, float]; group_stats: numpy GroupStats
  """

  def __init__(self, model: nnx.Module, optim_cfg, grpo_cfg, rods_cfg, mesh: Mesh | None = None,
               behaviour: str = "current"):
    for name in ("advantage", "loss", "micro_batch", "updates_per_batch", "kl_coef", "temperature", "zero_std_tol",
                 "logit_chunk", "layout", "bucket_tokens"):
      if name not in grpo_cfg:
        raise ValueError(f"config.grpo is missing field {name!r}")
    if grpo_cfg.layout not in LAYOUTS:
      raise ValueError(f"config.grpo.layout={grpo_cfg.layout!r} is not one of {LAYOUTS}")
    if int(grpo_cfg.bucket_tokens) < 1:
      raise ValueError(f"config.grpo.bucket_tokens={grpo_cfg.bucket_tokens} must be >= 1")
    self.layout = str(grpo_cfg.layout)
    self.bucket_tokens = int(grpo_cfg.bucket_tokens)
    advantages_lib.get_advantage(grpo_cfg.advantage)  # fail early on unknown names
    losses.get_loss(grpo_cfg.loss)
    if grpo_cfg.temperature <= 0:
      raise ValueError(f"config.grpo.temperature={grpo_cfg.temperature} must be > 0")
    self.mesh = mesh
    self.step_cfg = grpo_step.make_step_config(optim_cfg, grpo_cfg, rods_cfg, behaviour)
    if mesh is not None:
      sharding_lib.shard_model(model, mesh)
    self.graphdef, params = nnx.split(model)
    with self._mesh_context():
      state = grpo_step.init_state(params, grpo_step.make_optimizer(optim_cfg), keep_reference=grpo_cfg.kl_coef != 0)
    if mesh is not None:  # scalars (step, Adam's count) replicated on the mesh, so every process holds them
      state = state._replace(step=replicate_on_mesh(state.step, mesh),
                             opt_state=jax.tree.map(lambda x: on_mesh(x, mesh), state.opt_state))
    self.state = state

  def _mesh_context(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  @property
  def params(self) -> nnx.State:
    return self.state.params

  @property
  def num_updates(self) -> int:
    return int(self.state.step)

  def model(self) -> nnx.Module:
    """The current policy as an NNX module (shares the learner's arrays: do not keep it across steps)."""
    return nnx.merge(self.graphdef, self.state.params)

  def params_copy(self) -> nnx.State:
    """A copy of the current params in separate buffers (the next step donates the learner's own), e.g. for a
    sampler that keeps rolling out with this policy while the next update runs."""
    with self._mesh_context():
      return jax.tree.map(jnp.copy, self.state.params)

  def to_device(self, batch) -> grpo_step.TrainBatch:
    """TrainBatch on the mesh (batch axis over (data, fsdp); rewards replicated) from a RolloutBatch / TrainBatch."""
    arrays = host_arrays(batch)
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, arrays)
    rows = sharding_lib.batch_sharding(self.mesh, 2)
    return grpo_step.TrainBatch(*(global_array(x, rows) for x in arrays[:4]),
                                global_array(arrays.rewards, NamedSharding(self.mesh, PartitionSpec())))

  def _put(self, x: np.ndarray) -> jax.Array:
    if self.mesh is None:
      return jnp.asarray(x)
    return global_array(np.ascontiguousarray(x), sharding_lib.batch_sharding(self.mesh, x.ndim))

  def dispatch(self, batch):
    """Dispatches one GRPO update on a RolloutBatch without waiting for it (JAX async dispatch); returns the device
    (metrics, GroupStats). ``fetch`` turns them into host values."""
    with self._mesh_context():
      if self.layout == "padded":
        self.state, metrics, stats = grpo_step.train_step(self.graphdef, self.state, self.to_device(batch),
                                                          step_cfg=self.step_cfg)
      else:
        self.state, metrics, stats = bucketed.train_step(
            self.graphdef, self.state, bucketed.host_batch(host_arrays(batch)), step_cfg=self.step_cfg, put=self._put,
            bucket=self.bucket_tokens)
    return metrics, stats

  @staticmethod
  def fetch(pending) -> tuple[dict[str, float], detector.GroupStats]:
    metrics, stats = jax.device_get(pending)
    return {k: float(v) for k, v in metrics.items()}, stats

  def step(self, batch) -> tuple[dict[str, float], detector.GroupStats]:
    """One GRPO update on a RolloutBatch; returns host metrics and the detector's per-task GroupStats."""
    return self.fetch(self.dispatch(batch))
