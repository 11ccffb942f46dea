"""Train-step throughput and MFU of the GRPO learner, against a matmul peak measured in the same process.

FLOPs counted per GRPO step on N sequences of T tokens (PaLM-style model FLOPs: matmuls only, dense attention as
computed — the causal mask does not skip work in this implementation):

    P      = parameters that enter a matmul: every ≥2-D parameter except an untied input embedding table
             (a gather, no FLOPs); a tied embedding counts once, as the LM head.
    dense  = 2·P·N·T per forward; backward = 2 × forward
    attn   = 4·L·H·Dh·T²·N per forward (QKᵀ and AV); backward = 2 × forward
    step   = 3·(dense + attn)  [policy forward + backward]  +  (dense + attn)  [frozen-reference forward, kl_coef ≠ 0]

    MFU = step FLOPs / step time / peak, peak = 2·n³ / t of a jitted float32 [n, n] matmul on the same device
    (median over repeats after warm-up). Step time is the median over ``repeats`` timed steps after warm-up steps.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rods_jax.models import ModelConfig, Transformer
from rods_jax.rl import grpo_step
from rods_jax.rl import learner as learner_lib


def matmul_params(model_cfg: ModelConfig, params: nnx.State) -> int:
  """P of the module docstring: ≥2-D parameters, minus an untied input embedding."""
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params) if x.ndim >= 2)
  if not model_cfg.tie_embeddings:
    total -= model_cfg.vocab_size * model_cfg.hidden
  return total


def step_flops(model_cfg: ModelConfig, p_matmul: int, n_seqs: int, seq: int, with_reference: bool) -> float:
  """FLOPs of one GRPO step (module docstring)."""
  dense = 2.0 * p_matmul * n_seqs * seq
  attn = 4.0 * model_cfg.n_layers * model_cfg.n_heads * model_cfg.head_dim * seq * seq * n_seqs
  return 3.0 * (dense + attn) + (dense + attn if with_reference else 0.0)


def matmul_peak_gflops(n: int, repeats: int, warmup: int = 2) -> float:
  """Median GFLOP/s of a jitted float32 [n, n] @ [n, n] on the default device (2·n³ FLOPs per product)."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  for _ in range(warmup):
    f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2.0 * n ** 3 / statistics.median(times) / 1e9


def synthetic_batch(vocab: int, n_seqs: int, seq: int, k: int, seed: int) -> grpo_step.TrainBatch:
  """Random full-length trajectories, every token after the first in the loss, rewards with variance in every group."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (n_seqs, seq)).astype(np.int32)
  mask = np.ones((n_seqs, seq), bool)
  mask[:, 0] = False
  rewards = rng.uniform(0, 1, (n_seqs // k, k)).astype(np.float32)
  logps = -rng.uniform(0.1, 3.0, (n_seqs, seq)).astype(np.float32)
  return grpo_step.TrainBatch(tokens, mask, np.ones_like(mask), logps, rewards)


def train_benchmark(model_cfg: ModelConfig, batch: int, seq: int, repeats: int, *, warmup: int = 2,
                    grpo_cfg=None, optim_cfg=None, rods_cfg=None, matmul_size: int | None = None,
                    group_size: int = 8, seed: int = 0) -> dict[str, Any]:
  """GRPO train-step throughput and MFU on one device.

  Args:
    model_cfg: the model to train (e.g. ``get_preset("lab_tiny", vocab_size=V)``).
    batch: sequences per step (B·K; grouped by K = min(group_size, batch), which must divide it).
    seq: tokens per sequence.
    repeats: timed steps (and timed matmuls); medians are reported.
    warmup: untimed steps first (compilation).
    grpo_cfg / optim_cfg / rods_cfg: default ``configs.base`` sections; micro_batch is set to ``batch`` unless given.
    matmul_size: n of the peak matmul (default 2048 on CPU, 8192 on accelerators).
  Returns:
    {"tokens_per_s", "mfu", "peak_gflops", "step_ms", "achieved_gflops", "flops_per_step", "matmul_params",
     "batch", "seq", "device"}.
  """
  from configs import base  # pylint: disable=g-import-not-at-top
  if repeats < 1 or warmup < 0:
    raise ValueError(f"train_benchmark: repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
  k = min(group_size, batch)
  if batch % k:
    raise ValueError(f"train_benchmark: batch={batch} must be a multiple of the group size {k}")
  config = base.get_config()
  grpo = config.grpo if grpo_cfg is None else grpo_cfg
  if grpo_cfg is None:
    grpo.micro_batch = batch
  optim = config.optim if optim_cfg is None else optim_cfg
  rods = config.rods if rods_cfg is None else rods_cfg

  learner = learner_lib.GRPOLearner(Transformer(model_cfg, rngs=nnx.Rngs(seed)), optim, grpo, rods)
  data = learner.to_device(synthetic_batch(model_cfg.vocab_size, batch, seq, k, seed))

  def one_step() -> float:
    t0 = time.perf_counter()
    learner.state, metrics, _ = grpo_step.train_step(learner.graphdef, learner.state, data,
                                                        step_cfg=learner.step_cfg)
    jax.block_until_ready((learner.state, metrics))
    return time.perf_counter() - t0

  for _ in range(warmup):
    one_step()
  step_s = statistics.median(one_step() for _ in range(repeats))

  device = jax.devices()[0]
  n = matmul_size if matmul_size is not None else (2048 if device.platform == "cpu" else 8192)
  peak = matmul_peak_gflops(n, repeats)
  flops = step_flops(model_cfg, matmul_params(model_cfg, learner.params), batch, seq, grpo.kl_coef != 0)
  achieved = flops / step_s / 1e9
  return {"tokens_per_s": batch * seq / step_s, "mfu": achieved / peak, "peak_gflops": peak,
          "step_ms": 1e3 * step_s, "achieved_gflops": achieved, "flops_per_step": flops,
          "matmul_params": matmul_params(model_cfg, learner.params), "batch": batch, "seq": seq,
          "device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "matmul_size": n}
