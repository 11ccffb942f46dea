"""GRPO learner: a pure jitted ``train_step`` and a thin stateful wrapper, ``GRPOLearner``.

One call of ``train_step(graphdef, state, batch)`` does, on device and without a host round trip:

1. group statistics of the rewards (``rods.detector.group_statistics``: r̄, variance, φ, zone, zero_std) — the
   boundary detector costs nothing extra;
2. advantages from the registry (``config.grpo.advantage``), rows of zero-variance groups marked inactive;
3. reference log-probs (frozen ``ref_params``) and, if ``updates_per_batch > 1``, the behaviour ("old") log-probs, by
   forward passes over micro-batches;
4. ``updates_per_batch`` optimizer steps, each over 1/U of the rows, with exact gradient accumulation over
   micro-batches (``lax.scan``; sum/count losses divided once), AdamW + warm-up + global-norm clipping. With U = 1
   the old log-probs are the current ones under stop_gradient (ratio ≡ 1, no extra forward); the sampler's log-probs
   only feed the sampler-vs-trainer mismatch metrics.

Rows are laid out n = b·K + k. Micro-batches take rows strided across the batch, so when the batch axis is sharded over
(data, fsdp) every micro-batch stays spread over all devices with no resharding.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rods_jax import sharding as sharding_lib
from rods_jax.rl import advantages as advantages_lib
from rods_jax.rl import logprobs
from rods_jax.rl import losses
from rods_jax.rods import detector


class LearnerState(NamedTuple):
  """Device state of the learner. ``ref_params`` is None when ``kl_coef == 0`` (no reference is kept)."""
  step: jnp.ndarray  # int32 [], optimizer steps taken
  params: nnx.State
  opt_state: optax.OptState
  ref_params: nnx.State | None


class TrainBatch(NamedTuple):
  """The device-side part of a ``rollout.RolloutBatch`` (row n = b·K + k)."""
  tokens: jnp.ndarray  # [N, T] int32
  loss_mask: jnp.ndarray  # [N, T] bool, 1 only on sampled tokens
  valid: jnp.ndarray  # [N, T] bool
  sampler_logps: jnp.ndarray  # [N, T] float32
  rewards: jnp.ndarray  # [B, K] float32


class StepConfig(NamedTuple):
  """Everything static the step needs (hashable: a jit static argument)."""
  grpo: tuple  # sorted (key, value) pairs of config.grpo
  optim: tuple  # sorted (key, value) pairs of config.optim
  alpha_low: float  # config.rods: zone thresholds for the detector
  alpha_high: float

  def grpo_cfg(self) -> "FrozenConfig":
    return FrozenConfig(dict(self.grpo))

  def optim_cfg(self) -> "FrozenConfig":
    return FrozenConfig(dict(self.optim))


class FrozenConfig:
  """Attribute view of a dict (what the registered losses / advantages read: ``cfg.clip_low`` ...)."""

  def __init__(self, d: dict[str, Any]):
    self.__dict__.update(d)

  def __contains__(self, key: str) -> bool:
    return key in self.__dict__


def make_step_config(optim_cfg, grpo_cfg, rods_cfg) -> StepConfig:
  """Freezes the three sub-configs the step reads into a hashable StepConfig."""
  def items(c):
    d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))

  return StepConfig(items(grpo_cfg), items(optim_cfg), float(rods_cfg.alpha_low), float(rods_cfg.alpha_high))


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
  """clip_by_global_norm(grad_clip) → AdamW(lr schedule, b1, b2, weight_decay on matrices only).

  Schedule: lr · min(1, (step + 1) / warmup_steps) (linear warm-up, then constant; warmup_steps 0 = constant).
  Norm scales and biases (ndim < 2) are not decayed.
  """
  for name in ("lr", "warmup_steps", "weight_decay", "b1", "b2", "grad_clip"):
    if name not in optim_cfg:
      raise ValueError(f"optimizer config is missing field {name!r}")
  return optax.chain(
      optax.clip_by_global_norm(float(optim_cfg.grad_clip)) if optim_cfg.grad_clip > 0 else optax.identity(),
      optax.adamw(lr_schedule(optim_cfg), b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay,
                  mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))


def lr_schedule(optim_cfg) -> optax.Schedule:
  lr, warm = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
  if warm <= 0:
    return optax.constant_schedule(lr)
  return lambda count: lr * jnp.minimum(1.0, (count + 1.0) / warm)


def init_state(params: nnx.State, optimizer: optax.GradientTransformation, keep_reference: bool) -> LearnerState:
  """Fresh state; the reference is a copy of ``params`` (separate buffers, so donating params never frees it)."""
  ref = jax.tree.map(jnp.copy, params) if keep_reference else None
  return LearnerState(jnp.zeros((), jnp.int32), params, optimizer.init(params), ref)


# ----------------------------------------------------------------------------------------------------------------------
# layout helpers
# ----------------------------------------------------------------------------------------------------------------------
def plan_layout(n_rows: int, micro_batch: int, updates: int) -> tuple[int, int]:
  """(micro-batches per update, rows per micro-batch) for N rows, U updates and config.grpo.micro_batch."""
  if updates < 1:
    raise ValueError(f"config.grpo.updates_per_batch={updates} must be >= 1")
  if n_rows % updates:
    raise ValueError(f"config.grpo.updates_per_batch={updates} does not divide the {n_rows} rows of the batch")
  per_update = n_rows // updates
  mb = min(int(micro_batch), per_update)
  if mb < 1 or per_update % mb:
    raise ValueError(f"config.grpo.micro_batch={micro_batch} does not divide the {per_update} rows per update")
  return per_update // mb, mb


def _split(x: jnp.ndarray, updates: int, n_micro: int, mb: int) -> jnp.ndarray:
  """[N, ...] → [U, n_micro, mb, ...] with row n = j·(U·n_micro) + u·n_micro + m (strided: stays device-local)."""
  y = x.reshape((mb, updates, n_micro) + x.shape[1:])
  y = jnp.moveaxis(y, 0, 2)
  return sharding_lib.constrain(y, (None, None, "act_batch") + (None,) * (x.ndim - 1))


def _zero_like_output(out_shape: losses.LossOutput) -> losses.LossOutput:
  z = lambda s: jnp.zeros(s.shape, s.dtype)  # noqa: E731
  return losses.LossOutput(
      loss=losses.Weighted(z(out_shape.loss.total), z(out_shape.loss.count)),
      means={k: losses.Weighted(z(w.total), z(w.count)) for k, w in out_shape.means.items()},
      maxes={k: jnp.full(s.shape, -jnp.inf, s.dtype) for k, s in out_shape.maxes.items()},
      mins={k: jnp.full(s.shape, jnp.inf, s.dtype) for k, s in out_shape.mins.items()})


# ----------------------------------------------------------------------------------------------------------------------
# the pure step
# ----------------------------------------------------------------------------------------------------------------------
class Prepared(NamedTuple):
  rows: dict[str, jnp.ndarray]  # per-row arrays laid out [U, n_micro, mb, ...]
  stats: detector.GroupStats
  advantages: jnp.ndarray  # [N]
  active: jnp.ndarray  # [N] bool, False for rows of zero-variance groups
  mask: jnp.ndarray  # [N, T] bool, sampled ∧ valid, position 0 off


def prepare(batch: TrainBatch, cfg, alpha_low: float, alpha_high: float) -> Prepared:
  """Detector statistics, advantages and the micro-batch layout of a batch (pure; runs inside the jitted step)."""
  n_rows, _ = batch.tokens.shape
  b, k = batch.rewards.shape
  if b * k != n_rows:
    raise ValueError(f"rewards [B={b}, K={k}] do not match the {n_rows} token rows (row n = b*K + k)")
  updates = int(cfg.updates_per_batch)
  n_micro, mb = plan_layout(n_rows, cfg.micro_batch, updates)
  stats = detector.group_statistics(batch.rewards, alpha_low, alpha_high, cfg.zero_std_tol)
  adv = advantages_lib.compute_advantages(batch.rewards, cfg).reshape(-1)
  active = jnp.repeat(~stats.zero_std, k)
  mask = (batch.loss_mask & batch.valid).at[:, 0].set(False)  # token 0 has no prediction
  split = lambda x: _split(x, updates, n_micro, mb)  # noqa: E731
  rows = dict(tokens=split(batch.tokens), valid=split(batch.valid), mask=split(mask), adv=split(adv),
              active=split(active), sampler=split(batch.sampler_logps))
  return Prepared(rows, stats, adv, active, mask)


def forward_logps(graphdef: nnx.GraphDef, params: nnx.State, rows: dict[str, jnp.ndarray],
                  temperature: float, chunk: int = 0) -> jnp.ndarray:
  """Log-probs of rows laid out [..., mb, T], one micro-batch forward at a time (no gradient)."""
  shape = rows["tokens"].shape
  flat = {key: rows[key].reshape((-1,) + shape[-2:]) for key in ("tokens", "valid")}
  out = jax.lax.map(lambda r: logprobs.token_scores(graphdef, params, r["tokens"], r["valid"], temperature,
                                                    chunk).logps, flat)
  return jax.lax.stop_gradient(out.reshape(shape))


def micro_loss(params: nnx.State, graphdef: nnx.GraphDef, r: dict[str, jnp.ndarray], cfg
               ) -> tuple[jnp.ndarray, losses.LossOutput]:
  """(Σ loss, LossOutput) of one micro-batch r (arrays [mb, ...]). Uses r["old"] / r["ref"] when present, else
  the current log-probs under stop_gradient (on-policy: ratio ≡ 1; no reference: KL ≡ 0)."""
  scores = logprobs.token_scores(graphdef, params, r["tokens"], r["valid"], float(cfg.temperature),
                                 int(cfg.logit_chunk))
  logps = scores.logps
  old = r["old"] if "old" in r else jax.lax.stop_gradient(logps)
  ref = r["ref"] if "ref" in r else jax.lax.stop_gradient(logps)
  ent = scores.entropy if cfg.entropy_coef else jax.lax.stop_gradient(scores.entropy)
  out = losses.get_loss(cfg.loss)(logps, old, ref, r["adv"], r["mask"], cfg, active_rows=r["active"], entropy=ent)
  # sampler-vs-trainer mismatch on every sampled token (zero-variance rows included), at the pre-update params
  diff = jax.lax.stop_gradient(old) - r["sampler"]
  m = r["mask"].astype(jnp.float32)
  out.means["sampler/logp_diff_mean"] = losses.Weighted(jnp.sum(diff * m), jnp.sum(m))
  out.means["sampler/logp_absdiff_mean"] = losses.Weighted(jnp.sum(jnp.abs(diff) * m), jnp.sum(m))
  out.maxes["sampler/logp_absdiff_max"] = jnp.max(jnp.where(m > 0, jnp.abs(diff), -jnp.inf))
  return out.loss.total, out


def accumulate_gradients(graphdef: nnx.GraphDef, params: nnx.State, rows: dict[str, jnp.ndarray], cfg
                         ) -> tuple[nnx.State, losses.LossOutput]:
  """Exact gradient of the loss over all micro-batches of ``rows`` ([n_micro, mb, ...]) by lax.scan:

    ∇L = (Σ_micro ∇ total_micro) / (Σ_micro count_micro)

  which equals the full-batch gradient because the count does not depend on the parameters. A batch with no
  counted token (count 0) gets a zero gradient.
  """
  first = jax.tree.map(lambda x: x[0], rows)
  out_shape = jax.eval_shape(lambda p, r: micro_loss(p, graphdef, r, cfg)[1], params, first)

  def body(acc, r):
    grads_acc, out_acc = acc
    grads, out = jax.grad(micro_loss, has_aux=True)(params, graphdef, r, cfg)
    return (jax.tree.map(jnp.add, grads_acc, grads), losses.combine(out_acc, out)), None

  init = (jax.tree.map(jnp.zeros_like, params), _zero_like_output(out_shape))
  (grads, out), _ = jax.lax.scan(body, init, rows)
  count = out.loss.count
  scale = jnp.where(count > 0, 1.0 / jnp.maximum(count, 1e-30), 0.0)
  return jax.tree.map(lambda g: g * scale, grads), out


@functools.partial(jax.jit, static_argnames=("graphdef", "step_cfg"), donate_argnames=("state",))
def train_step(graphdef: nnx.GraphDef, state: LearnerState, batch: TrainBatch, *, step_cfg: StepConfig
               ) -> tuple[LearnerState, dict[str, jnp.ndarray], detector.GroupStats]:
  """One GRPO update of ``state`` on ``batch`` (see the module docstring). Returns (state, metrics, group_stats)."""
  cfg = step_cfg.grpo_cfg()
  optim_cfg = step_cfg.optim_cfg()
  optimizer = make_optimizer(optim_cfg)
  prep = prepare(batch, cfg, step_cfg.alpha_low, step_cfg.alpha_high)
  rows = dict(prep.rows)
  if cfg.kl_coef != 0:
    if state.ref_params is None:
      raise ValueError("config.grpo.kl_coef != 0 but the learner state has no ref_params")
    rows["ref"] = forward_logps(graphdef, state.ref_params, rows, float(cfg.temperature), int(cfg.logit_chunk))
  if cfg.updates_per_batch > 1:  # behaviour policy = params before this batch's first update
    rows["old"] = forward_logps(graphdef, state.params, rows, float(cfg.temperature), int(cfg.logit_chunk))

  def one_update(carry, xs):
    params, opt_state, step = carry
    grads, out = accumulate_gradients(graphdef, params, xs, cfg)
    grad_norm = optax.global_norm(grads)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # no signal (every group constant, or no sampled token): leave params AND optimizer moments untouched
    has_signal = (out.loss.count > 0) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(has_signal, a, b), new, old)  # noqa: E731
    params, opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
    loss, metrics = losses.reduce(out)
    metrics.update(loss=loss, grad_norm=grad_norm, skipped=1.0 - has_signal.astype(jnp.float32),
                   update_norm=optax.global_norm(updates) * has_signal)
    return (params, opt_state, step + has_signal.astype(jnp.int32)), metrics

  (params, opt_state, step), per_update = jax.lax.scan(one_update, (state.params, state.opt_state, state.step), rows)

  metrics = {}
  for key, v in per_update.items():
    if key.startswith("sampler/"):  # measured at the pre-update params: update 0
      metrics[key] = v[0]
    elif key.endswith("_max"):
      metrics[key] = jnp.max(v)
    elif key.endswith("_min"):
      metrics[key] = jnp.min(v)
    else:
      metrics[key] = jnp.mean(v)
  metrics["tokens"] = jnp.sum(per_update["tokens"])
  metrics["updates"] = jnp.sum(1.0 - per_update["skipped"])
  stats = prep.stats
  metrics["frac_zero_std"] = jnp.mean(stats.zero_std.astype(jnp.float32))
  metrics["reward_mean"] = jnp.mean(batch.rewards)
  metrics["reward_std"] = jnp.std(batch.rewards)
  metrics["adv_abs_mean"] = jnp.sum(jnp.abs(prep.advantages) * prep.active) / jnp.maximum(jnp.sum(prep.active), 1)
  metrics["lr"] = jnp.asarray(lr_schedule(optim_cfg)(state.step), jnp.float32)  # lr of this step's (first) update
  for z, name in enumerate(detector.ZONE_NAMES):
    metrics[f"zones/{name}"] = jnp.mean((stats.zone == z).astype(jnp.float32))
  metrics["seq_len_mean"] = jnp.mean(jnp.sum(batch.valid, axis=1).astype(jnp.float32))
  metrics["sampled_tokens_mean"] = jnp.mean(jnp.sum(prep.mask, axis=1).astype(jnp.float32))
  return LearnerState(step, params, opt_state, state.ref_params), metrics, stats


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

  def __init__(self, model: nnx.Module, optim_cfg, grpo_cfg, rods_cfg, mesh: Mesh | None = None):
    for name in ("advantage", "loss", "micro_batch", "updates_per_batch", "kl_coef", "temperature", "zero_std_tol",
                 "logit_chunk"):
      if name not in grpo_cfg:
        raise ValueError(f"config.grpo is missing field {name!r}")
    advantages_lib.get_advantage(grpo_cfg.advantage)  # fail early on unknown names
    losses.get_loss(grpo_cfg.loss)
    if grpo_cfg.temperature <= 0:
      raise ValueError(f"config.grpo.temperature={grpo_cfg.temperature} must be > 0")
    self.mesh = mesh
    self.step_cfg = make_step_config(optim_cfg, grpo_cfg, rods_cfg)
    if mesh is not None:
      sharding_lib.shard_model(model, mesh)
    self.graphdef, params = nnx.split(model)
    with self._mesh_context():
      state = init_state(params, make_optimizer(optim_cfg), keep_reference=grpo_cfg.kl_coef != 0)
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

  def to_device(self, batch) -> TrainBatch:
    """TrainBatch on the mesh (batch axis over (data, fsdp); rewards replicated) from a RolloutBatch / TrainBatch."""
    arrays = TrainBatch(tokens=np.asarray(batch.tokens, np.int32), loss_mask=np.asarray(batch.loss_mask, bool),
                        valid=np.asarray(batch.valid, bool),
                        sampler_logps=np.asarray(batch.sampler_logps, np.float32),
                        rewards=np.asarray(batch.rewards, np.float32))
    n = arrays.tokens.shape[0]
    for name in ("loss_mask", "valid", "sampler_logps"):
      if getattr(arrays, name).shape != arrays.tokens.shape:
        raise ValueError(f"batch.{name} has shape {getattr(arrays, name).shape}, tokens {arrays.tokens.shape}")
    if arrays.rewards.ndim != 2 or arrays.rewards.size != n:
      raise ValueError(f"batch.rewards must be [B, K] with B*K = {n} rows, got {arrays.rewards.shape}")
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, arrays)
    rows = sharding_lib.batch_sharding(self.mesh, 2)
    return TrainBatch(*(global_array(x, rows) for x in arrays[:4]),
                      global_array(arrays.rewards, NamedSharding(self.mesh, PartitionSpec())))

  def step(self, batch) -> tuple[dict[str, float], detector.GroupStats]:
    """One jitted GRPO update on a RolloutBatch; returns host metrics and the detector's per-task GroupStats."""
    device_batch = self.to_device(batch)
    with self._mesh_context():
      self.state, metrics, stats = train_step(self.graphdef, self.state, device_batch, step_cfg=self.step_cfg)
    metrics, stats = jax.device_get((metrics, stats))
    return {k: float(v) for k, v in metrics.items()}, stats
