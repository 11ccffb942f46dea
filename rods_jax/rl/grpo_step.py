"""The GRPO step as pure functions: state and batch types, the optimizer, and the padded-layout ``train_step``.

``rl.bucketed`` runs the same objective over length-bucketed micro-batches; ``rl.learner.GRPOLearner`` holds the state
and picks the layout (``config.grpo.layout``). One call of ``train_step(graphdef, state, batch)`` does, on device
and without a host round trip:

1. group statistics of the rewards (``rods.detector.group_statistics``: r̄, variance, φ, zone, zero_std) — the
   boundary detector costs nothing extra;
2. advantages from the registry (``config.grpo.advantage``), rows of zero-variance groups marked inactive;
3. reference log-probs (frozen ``ref_params``) and, if ``updates_per_batch > 1``, the behaviour ("old") log-probs, by
   forward passes over micro-batches;
4. ``updates_per_batch`` optimizer steps, each over 1/U of the rows, with exact gradient accumulation over
   micro-batches (``lax.scan``; sum/count losses divided once), AdamW + warm-up + global-norm clipping. With U = 1
   the old log-probs are the current ones under stop_gradient (ratio ≡ 1, no extra forward); the sampler's log-probs
   only feed the sampler-vs-trainer mismatch metrics. With ``behaviour = "sampler"`` (an off-policy batch, e.g.
   sampled one update stale while the previous update ran) the sampler's log-probs are the behaviour policy: the
   PPO ratio is π_θ / π_sampler and the clip acts.

Rows are laid out n = b·K + k. Micro-batches take rows strided across the batch, so when the batch axis is sharded over
(data, fsdp) every micro-batch stays spread over all devices with no resharding.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

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
  behaviour: str = "current"  # "current": params before the batch; "sampler": the batch's sampler_logps

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


BEHAVIOURS = ("current", "sampler")


def make_step_config(optim_cfg, grpo_cfg, rods_cfg, behaviour: str = "current") -> StepConfig:
  """Freezes the three sub-configs the step reads into a hashable StepConfig."""
  if behaviour not in BEHAVIOURS:
    raise ValueError(f"behaviour={behaviour!r} is not one of {BEHAVIOURS}")

  def items(c):
    d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))

  return StepConfig(items(grpo_cfg), items(optim_cfg), float(rods_cfg.alpha_low), float(rods_cfg.alpha_high),
                    behaviour)


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


def zero_like_output(out_shape: losses.LossOutput) -> losses.LossOutput:
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


def micro_loss(params: nnx.State, graphdef: nnx.GraphDef, r: dict[str, jnp.ndarray], cfg, behaviour: str = "current"
               ) -> tuple[jnp.ndarray, losses.LossOutput]:
  """(Σ loss, LossOutput) of one micro-batch r (arrays [mb, ...]). The behaviour log-probs are r["sampler"] when
  ``behaviour == "sampler"``, else r["old"] when present, else the current log-probs under stop_gradient
  (on-policy: ratio ≡ 1); the reference is r["ref"] when present, else the current log-probs (KL ≡ 0)."""
  scores = logprobs.token_scores(graphdef, params, r["tokens"], r["valid"], float(cfg.temperature),
                                 int(cfg.logit_chunk))
  logps = scores.logps
  current = jax.lax.stop_gradient(logps)
  if behaviour == "sampler":
    old = r["sampler"]
  else:
    old = r["old"] if "old" in r else current
  ref = r["ref"] if "ref" in r else current
  ent = scores.entropy if cfg.entropy_coef else jax.lax.stop_gradient(scores.entropy)
  out = losses.get_loss(cfg.loss)(logps, old, ref, r["adv"], r["mask"], cfg, active_rows=r["active"], entropy=ent)
  # trainer-vs-sampler log-prob difference on every sampled token (zero-variance rows included) at the pre-update
  # params (read from update 0): numerical mismatch, plus the policy's drift when the batch is stale
  diff = (current if behaviour == "sampler" else jax.lax.stop_gradient(old)) - r["sampler"]
  m = r["mask"].astype(jnp.float32)
  out.means["sampler/logp_diff_mean"] = losses.Weighted(jnp.sum(diff * m), jnp.sum(m))
  out.means["sampler/logp_absdiff_mean"] = losses.Weighted(jnp.sum(jnp.abs(diff) * m), jnp.sum(m))
  out.maxes["sampler/logp_absdiff_max"] = jnp.max(jnp.where(m > 0, jnp.abs(diff), -jnp.inf))
  return out.loss.total, out


def accumulate_gradients(graphdef: nnx.GraphDef, params: nnx.State, rows: dict[str, jnp.ndarray], cfg,
                         behaviour: str = "current") -> tuple[nnx.State, losses.LossOutput]:
  """Exact gradient of the loss over all micro-batches of ``rows`` ([n_micro, mb, ...]) by lax.scan:

    ∇L = (Σ_micro ∇ total_micro) / (Σ_micro count_micro)

  which equals the full-batch gradient because the count does not depend on the parameters. A batch with no
  counted token (count 0) gets a zero gradient.
  """
  first = jax.tree.map(lambda x: x[0], rows)
  out_shape = jax.eval_shape(lambda p, r: micro_loss(p, graphdef, r, cfg, behaviour)[1], params, first)

  def body(acc, r):
    grads_acc, out_acc = acc
    grads, out = jax.grad(micro_loss, has_aux=True)(params, graphdef, r, cfg, behaviour)
    return (jax.tree.map(jnp.add, grads_acc, grads), losses.combine(out_acc, out)), None

  init = (jax.tree.map(jnp.zeros_like, params), zero_like_output(out_shape))
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
  if cfg.updates_per_batch > 1 and step_cfg.behaviour == "current":  # behaviour = params before the first update
    rows["old"] = forward_logps(graphdef, state.params, rows, float(cfg.temperature), int(cfg.logit_chunk))

  def one_update(carry, xs):
    params, opt_state, step = carry
    grads, out = accumulate_gradients(graphdef, params, xs, cfg, step_cfg.behaviour)
    params, opt_state, step, metrics = apply_gradients(optimizer, params, opt_state, step, grads, out)
    return (params, opt_state, step), metrics

  (params, opt_state, step), per_update = jax.lax.scan(one_update, (state.params, state.opt_state, state.step), rows)
  metrics = combine_updates(per_update)
  metrics.update(batch_metrics(prep.stats, batch.rewards, prep.advantages, prep.active,
                               jnp.sum(batch.valid, axis=1), jnp.sum(prep.mask, axis=1),
                               lr_schedule(optim_cfg)(state.step)))
  metrics["token_slots"] = jnp.asarray(batch.tokens.size, jnp.float32)  # positions the forward computes
  return LearnerState(step, params, opt_state, state.ref_params), metrics, prep.stats


def apply_gradients(optimizer, params, opt_state, step, grads, out: losses.LossOutput):
  """One optimizer step from accumulated (already count-scaled) ``grads``; a batch with no signal (every group
  constant, or no sampled token, or a non-finite gradient) leaves params AND optimizer moments untouched.
  Returns (params, opt_state, step, this update's metrics)."""
  grad_norm = optax.global_norm(grads)
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  has_signal = (out.loss.count > 0) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(has_signal, a, b), new, old)  # noqa: E731
  params, opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
  loss, metrics = losses.reduce(out)
  metrics.update(loss=loss, grad_norm=grad_norm, skipped=1.0 - has_signal.astype(jnp.float32),
                 update_norm=optax.global_norm(updates) * has_signal)
  return params, opt_state, step + has_signal.astype(jnp.int32), metrics


def combine_updates(per_update: dict[str, Any]) -> dict[str, Any]:
  """Step metrics from per-update metrics stacked on a leading [U] axis: sampler/* from update 0 (measured at the
  pre-update params), *_max / *_min by max / min, tokens and updates as sums, the rest as means."""
  metrics = {}
  for key, v in per_update.items():
    if key.startswith("sampler/"):
      metrics[key] = v[0]
    elif key.endswith("_max"):
      metrics[key] = jnp.max(v)
    elif key.endswith("_min"):
      metrics[key] = jnp.min(v)
    else:
      metrics[key] = jnp.mean(v)
  metrics["tokens"] = jnp.sum(per_update["tokens"])
  metrics["updates"] = jnp.sum(1.0 - per_update["skipped"])
  return metrics


def batch_metrics(stats: detector.GroupStats, rewards, advantages, active, row_valid, row_sampled, lr
                  ) -> dict[str, jnp.ndarray]:
  """Metrics of the batch itself (jnp): zero-variance share, reward mean/std, mean |A| over active rows, zone
  fractions, mean row length (``row_valid`` [N]) and sampled tokens per row (``row_sampled`` [N]), the step's lr."""
  metrics = {"frac_zero_std": jnp.mean(stats.zero_std.astype(jnp.float32)),
             "reward_mean": jnp.mean(rewards), "reward_std": jnp.std(rewards),
             "adv_abs_mean": jnp.sum(jnp.abs(advantages) * active) / jnp.maximum(jnp.sum(active), 1),
             "lr": jnp.asarray(lr, jnp.float32)}  # lr of this step's (first) update
  for z, name in enumerate(detector.ZONE_NAMES):
    metrics[f"zones/{name}"] = jnp.mean((stats.zone == z).astype(jnp.float32))
  metrics["seq_len_mean"] = jnp.mean(jnp.asarray(row_valid, jnp.float32))
  metrics["sampled_tokens_mean"] = jnp.mean(jnp.asarray(row_sampled, jnp.float32))
  return metrics
