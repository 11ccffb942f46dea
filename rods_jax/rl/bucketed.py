"""The GRPO step over length-bucketed micro-batches (``rl.buckets``): the padded step's objective at the cost of the
batch's real tokens.

Same objective as ``grpo_step.train_step``, term for term: advantages and zero-variance groups from the whole
batch's rewards, the same registered loss on each micro-batch, Weighted (total, count) sums over micro-batches
divided once per optimizer update (exact gradient accumulation: the count does not depend on the parameters), the
same optimizer step and no-signal rule, the same metrics. Differences are only in where rows sit:

* rows are cut to their micro-batch's bucket length L (positions ≥ L are padding in every row of it; the forward is
  causal, so the logits of the positions < L are unchanged);
* rows are sorted by length before they are cut into micro-batches (the loss sums are order-free);
* micro-batches are separate jitted calls dispatched asynchronously from the host (their shapes differ), each adding
  into a donated accumulator, instead of one ``lax.scan``.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rods_jax.rl import advantages as advantages_lib
from rods_jax.rl import buckets
from rods_jax.rl import grpo_step
from rods_jax.rl import logprobs
from rods_jax.rl import losses
from rods_jax.rods import detector


class HostBatch(NamedTuple):
  """A TrainBatch as numpy on the host, with the loss mask (sampled ∧ valid, position 0 off) and row lengths."""
  tokens: np.ndarray  # [N, T] int32
  valid: np.ndarray  # [N, T] bool
  mask: np.ndarray  # [N, T] bool
  sampler_logps: np.ndarray  # [N, T] float32
  rewards: np.ndarray  # [B, K] float32
  lengths: np.ndarray  # [N] int: last valid position + 1 (0 for an empty row)


def host_batch(batch) -> HostBatch:
  """From a RolloutBatch / TrainBatch of numpy (or device) arrays."""
  valid = np.asarray(batch.valid, bool)
  mask = np.asarray(batch.loss_mask, bool) & valid
  mask[:, 0] = False  # token 0 has no prediction
  t = valid.shape[1]
  lengths = np.where(valid.any(axis=1), t - np.argmax(valid[:, ::-1], axis=1), 0)
  return HostBatch(np.asarray(batch.tokens, np.int32), valid, mask, np.asarray(batch.sampler_logps, np.float32),
                   np.asarray(batch.rewards, np.float32), lengths)


def micro_arrays(hb: HostBatch, plan: buckets.MicroBatchPlan) -> dict[str, np.ndarray]:
  """The [R, L] arrays (and [R] row indices) of one planned micro-batch; padding rows are empty."""
  return {"tokens": buckets.gather_rows(hb.tokens, plan), "valid": buckets.gather_rows(hb.valid, plan, False),
          "mask": buckets.gather_rows(hb.mask, plan, False), "sampler": buckets.gather_rows(hb.sampler_logps, plan),
          "rows": plan.rows}


@functools.partial(jax.jit, static_argnames=("step_cfg",))
def prepare_groups(rewards: jnp.ndarray, row_valid: jnp.ndarray, row_sampled: jnp.ndarray, step: jnp.ndarray, *,
                   step_cfg: grpo_step.StepConfig):
  """(group stats, advantages [N], active [N], batch metrics) from the rewards [B, K] and per-row counts."""
  cfg = step_cfg.grpo_cfg()
  k = rewards.shape[1]
  stats = detector.group_statistics(rewards, step_cfg.alpha_low, step_cfg.alpha_high, cfg.zero_std_tol)
  adv = advantages_lib.compute_advantages(rewards, cfg).reshape(-1)
  active = jnp.repeat(~stats.zero_std, k)
  lr = grpo_step.lr_schedule(step_cfg.optim_cfg())(step)
  return stats, adv, active, grpo_step.batch_metrics(stats, rewards, adv, active, row_valid, row_sampled, lr)


def _row_inputs(micro: dict[str, jnp.ndarray], adv: jnp.ndarray, active: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """The micro-batch as ``grpo_step.micro_loss`` reads it: per-row advantage and activity gathered by row index."""
  real = micro["rows"] >= 0
  idx = jnp.maximum(micro["rows"], 0)
  r = {key: micro[key] for key in ("tokens", "valid", "mask", "sampler") + tuple(k for k in ("old",) if k in micro)}
  r["adv"] = jnp.where(real, adv[idx], 0.0)
  r["active"] = real & active[idx]
  return r


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "chunk"))
def micro_logps(graphdef: nnx.GraphDef, params: nnx.State, tokens: jnp.ndarray, valid: jnp.ndarray, *,
                temperature: float, chunk: int) -> jnp.ndarray:
  """Log-probs [R, L] of one micro-batch under ``params`` (no gradient): the behaviour policy for U > 1."""
  return jax.lax.stop_gradient(logprobs.token_scores(graphdef, params, tokens, valid, temperature, chunk).logps)


@functools.partial(jax.jit, static_argnames=("graphdef", "step_cfg"), donate_argnames=("acc",))
def micro_gradients(graphdef: nnx.GraphDef, params: nnx.State, ref_params: nnx.State | None, acc, micro, adv, active,
                    *, step_cfg: grpo_step.StepConfig):
  """acc + (∇ Σ loss, LossOutput) of one micro-batch; the reference forward (kl_coef ≠ 0) runs in the same call."""
  cfg = step_cfg.grpo_cfg()
  r = _row_inputs(micro, adv, active)
  if ref_params is not None:
    r["ref"] = micro_logps(graphdef, ref_params, r["tokens"], r["valid"], temperature=float(cfg.temperature),
                           chunk=int(cfg.logit_chunk))
  grads, out = jax.grad(grpo_step.micro_loss, has_aux=True)(params, graphdef, r, cfg, step_cfg.behaviour)
  return jax.tree.map(jnp.add, acc[0], grads), losses.combine(acc[1], out)


@functools.partial(jax.jit, static_argnames=("graphdef", "step_cfg"))
def zero_accumulator(graphdef: nnx.GraphDef, params: nnx.State, *, step_cfg: grpo_step.StepConfig):
  """(zeros like params, an empty LossOutput): the accumulator every update starts from (one compilation; the
  LossOutput's structure does not depend on the micro-batch shape, so a 1 x 2 dummy traces it)."""
  cfg = step_cfg.grpo_cfg()
  dummy = {"tokens": jnp.zeros((1, 2), jnp.int32), "valid": jnp.ones((1, 2), bool), "mask": jnp.ones((1, 2), bool),
           "sampler": jnp.zeros((1, 2), jnp.float32), "adv": jnp.zeros((1,), jnp.float32),
           "active": jnp.ones((1,), bool)}
  if int(cfg.updates_per_batch) > 1 and step_cfg.behaviour == "current":
    dummy["old"] = dummy["sampler"]
  if cfg.kl_coef != 0:
    dummy["ref"] = dummy["sampler"]
  out_shape = jax.eval_shape(lambda p: grpo_step.micro_loss(p, graphdef, dummy, cfg, step_cfg.behaviour)[1], params)
  return jax.tree.map(jnp.zeros_like, params), grpo_step.zero_like_output(out_shape)


@functools.partial(jax.jit, static_argnames=("step_cfg",), donate_argnames=("params", "opt_state"))
def apply_update(params: nnx.State, opt_state, step: jnp.ndarray, acc, *, step_cfg: grpo_step.StepConfig):
  """One optimizer update from the accumulated (Σ ∇ total, LossOutput): ∇L = Σ ∇ total / Σ count."""
  grads, out = acc
  count = out.loss.count
  scale = jnp.where(count > 0, 1.0 / jnp.maximum(count, 1e-30), 0.0)
  grads = jax.tree.map(lambda g: g * scale, grads)
  return grpo_step.apply_gradients(grpo_step.make_optimizer(step_cfg.optim_cfg()), params, opt_state, step, grads,
                                   out)


@jax.jit
def combine(per_update: list[dict[str, jnp.ndarray]]) -> dict[str, jnp.ndarray]:
  """The step's metrics from each update's (``grpo_step.combine_updates`` on them stacked), in one jitted call: the
  scalars may live on a mesh, where eager reductions would each be a program of their own."""
  return grpo_step.combine_updates(jax.tree.map(lambda *xs: jnp.stack(xs), *per_update))


def plan(hb: HostBatch, cfg, bucket: int) -> list[list[buckets.MicroBatchPlan]]:
  """The bucketed micro-batches of every optimizer update: the padded layout's micro-batch rows, cut to buckets."""
  n_rows, t = hb.tokens.shape
  updates = int(cfg.updates_per_batch)
  n_micro, mb = grpo_step.plan_layout(n_rows, cfg.micro_batch, updates)
  return buckets.plan_batch(hb.lengths, updates=updates, n_micro=n_micro, rows=mb, bucket=bucket, max_len=t)


def accumulate(graphdef: nnx.GraphDef, params: nnx.State, ref_params: nnx.State | None, micros: list[dict],
               adv: jnp.ndarray, active: jnp.ndarray, step_cfg: grpo_step.StepConfig):
  """(Σ_micro ∇ total, Σ_micro LossOutput) over one update's device micro-batches (dispatched, not awaited)."""
  acc = zero_accumulator(graphdef, params, step_cfg=step_cfg)
  for m in micros:
    acc = micro_gradients(graphdef, params, ref_params, acc, m, adv, active, step_cfg=step_cfg)
  return acc


def device_micro_batches(hb: HostBatch, plans: list[list[buckets.MicroBatchPlan]],
                         put: Callable[[np.ndarray], jax.Array]) -> list[list[dict[str, jax.Array]]]:
  return [[{key: put(x) for key, x in micro_arrays(hb, p).items()} for p in update] for update in plans]


def train_step(graphdef: nnx.GraphDef, state: grpo_step.LearnerState, hb: HostBatch, *,
               step_cfg: grpo_step.StepConfig, put: Callable[[np.ndarray], jax.Array], bucket: int
               ) -> tuple[grpo_step.LearnerState, dict[str, jnp.ndarray], detector.GroupStats]:
  """One GRPO update of ``state`` on the host batch ``hb``, bucketed (module docstring). ``put`` places a host
  array on the device(s) (rows sharded over (data, fsdp) on a mesh; the micro-batch rows, ``grpo.micro_batch``,
  are a multiple of data x fsdp, as validated). Donates ``state``'s params and optimizer state. Returns (state,
  device metrics, group stats)."""
  cfg = step_cfg.grpo_cfg()
  if hb.rewards.size != hb.tokens.shape[0]:
    raise ValueError(f"rewards {hb.rewards.shape} do not match the {hb.tokens.shape[0]} token rows (n = b*K + k)")
  if cfg.kl_coef != 0 and state.ref_params is None:
    raise ValueError("config.grpo.kl_coef != 0 but the learner state has no ref_params")
  stats, adv, active, metrics = prepare_groups(jnp.asarray(hb.rewards), jnp.asarray(hb.valid.sum(1)),
                                               jnp.asarray(hb.mask.sum(1)), state.step, step_cfg=step_cfg)
  ref = state.ref_params if cfg.kl_coef != 0 else None
  plans = plan(hb, cfg, bucket)
  micros = device_micro_batches(hb, plans, put)
  if int(cfg.updates_per_batch) > 1 and step_cfg.behaviour == "current":  # behaviour = params before the batch
    for update in micros:
      for m in update:
        m["old"] = micro_logps(graphdef, state.params, m["tokens"], m["valid"], temperature=float(cfg.temperature),
                               chunk=int(cfg.logit_chunk))
  params, opt_state, step = state.params, state.opt_state, state.step
  per_update = []
  for update in micros:
    acc = accumulate(graphdef, params, ref, update, adv, active, step_cfg)
    params, opt_state, step, m_u = apply_update(params, opt_state, step, acc, step_cfg=step_cfg)
    per_update.append(m_u)
  metrics.update(combine(per_update))
  metrics["token_slots"] = jnp.asarray(buckets.padded_token_slots(plans), jnp.float32)
  return grpo_step.LearnerState(step, params, opt_state, state.ref_params), metrics, stats
