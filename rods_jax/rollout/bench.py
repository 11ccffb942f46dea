"""Decode-step speed of the sampler against the memory bandwidth measured in the same run.

A decode step samples one token per row and feeds it through the model, attending over ``kv_len`` cached slots. At
lab and real sizes it is bound by memory traffic, not FLOPs, so it is reported as a bandwidth utilisation (MBU):

    bytes  = P·s_p                      every weight read once per step (s_p = parameter itemsize)
           + 2·L·R·Hkv·kv_len·Dh·s_c    each layer's K and V of R rows over kv_len slots (s_c = cache itemsize)
    MBU    = bytes / step time / stream bandwidth

    stream bandwidth = n·4 bytes / t of a jitted float32 sum over n elements (n·4 ≫ last-level cache), median over
    repeats after warm-up, on the same device. Step time = median over repeats of one ``sampler.decode`` call of
    ``steps`` steps (no row stops early), divided by ``steps``.
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
from rods_jax.models.kv_cache import init_cache
from rods_jax.rollout import sampler
from rods_jax.rollout.sampling import SamplingParams


def decode_bytes(model_cfg: ModelConfig, n_params: int, rows: int, kv_len: int, param_itemsize: int,
                 cache_itemsize: int) -> int:
  """Bytes one decode step must read (module docstring)."""
  kv = 2 * model_cfg.n_layers * rows * model_cfg.n_kv_heads * kv_len * model_cfg.head_dim * cache_itemsize
  return n_params * param_itemsize + kv


def stream_read_gbps(n_bytes: int, repeats: int, warmup: int = 2) -> float:
  """Median GB/s of a jitted float32 sum over ``n_bytes`` (rounded down to whole float32s)."""
  x = jax.random.uniform(jax.random.key(0), (max(n_bytes // 4, 1),), jnp.float32)
  f = jax.jit(jnp.sum)
  for _ in range(warmup):
    f(x).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(x).block_until_ready()
    times.append(time.perf_counter() - t0)
  return x.size * 4 / statistics.median(times) / 1e9


def decode_step_benchmark(model_cfg: ModelConfig, rows: int, kv_len: int, steps: int, repeats: int, *,
                          warmup: int = 1, temperature: float = 1.0, stream_bytes: int = 256 << 20,
                          seed: int = 0) -> dict[str, Any]:
  """Time of one decode step of ``rows`` rows whose cache holds ``kv_len − steps`` tokens, attending over ``kv_len``.

  Args:
    model_cfg: the model (random weights; speed does not depend on them).
    rows: decoded rows (the engine's compacted batch).
    kv_len: static attention length (a multiple of rollout.kv_bucket in the engine).
    steps: decode steps per timed call (every row samples exactly ``steps`` tokens).
    repeats: timed calls; medians are reported (also of the bandwidth probe).
    warmup: untimed calls first (compilation).
    temperature: 0 = greedy, else sampled (the sampling cost is part of the step).
    stream_bytes: size of the bandwidth probe.
  Returns:
    {"step_ms", "row_steps_per_s", "bytes_per_step", "achieved_gbps", "stream_gbps", "mbu", "rows", "kv_len",
     "steps", "device"}.
  """
  if rows < 1 or steps < 1 or repeats < 1 or warmup < 0 or not steps < kv_len:
    raise ValueError(f"decode_step_benchmark: rows={rows}, steps={steps}, repeats={repeats} must be >= 1, "
                     f"warmup={warmup} >= 0 and steps < kv_len={kv_len}")
  graphdef, params = nnx.split(Transformer(model_cfg, rngs=nnx.Rngs(seed)))
  stop_ids = jnp.full((rows, 1), -1, jnp.int32)  # nothing stops: every call runs exactly `steps` steps
  sampling = SamplingParams(temperature=temperature)
  logits0 = jax.random.normal(jax.random.key(seed + 1), (rows, model_cfg.vocab_size), jnp.float32)

  def one_call() -> float:
    cache = init_cache(model_cfg, rows, kv_len)
    cache = cache._replace(length=jnp.full((rows,), kv_len - steps, jnp.int32))
    state = sampler.new_decode_state(cache, jnp.array(logits0), np.ones(rows, bool), np.full(rows, steps, np.int32),
                                     steps, jax.random.key(seed + 2))
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    state = sampler.decode(graphdef, params, state, stop_ids, jnp.int32(0), sampling=sampling, kv_len=kv_len)
    jax.block_until_ready(state.tokens)
    return time.perf_counter() - t0

  for _ in range(warmup):
    one_call()
  step_s = statistics.median(one_call() for _ in range(repeats)) / steps
  leaves = jax.tree.leaves(params)
  n_params = int(sum(np.prod(x.shape) for x in leaves))
  n_bytes = decode_bytes(model_cfg, n_params, rows, kv_len, leaves[0].dtype.itemsize,
                         jnp.dtype(model_cfg.dtype).itemsize)
  stream = stream_read_gbps(stream_bytes, repeats)
  achieved = n_bytes / step_s / 1e9
  device = jax.devices()[0]
  return {"step_ms": 1e3 * step_s, "row_steps_per_s": rows / step_s, "bytes_per_step": n_bytes,
          "achieved_gbps": achieved, "stream_gbps": stream, "mbu": achieved / stream, "rows": rows, "kv_len": kv_len,
          "steps": steps, "temperature": temperature,
          "device": f"{device.platform}:{getattr(device, 'device_kind', '')}"}
