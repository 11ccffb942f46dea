"""Stateless sampler core: jitted prefill and decode over one per-row KV cache (gemma ``_sampler_loop`` style).

Cache convention: every token a row has seen, prompt and sampled alike, is in the cache, and ``DecodeState.logits``
holds each row's next-token logits. So a decode step samples from the stored logits, then feeds the sampled token
through ``model.extend`` (which writes it at slot ``length[b]`` and returns the logits for the token after it). A row
that samples a stop token still writes it, so the cache never holds a "pending" token and an incremental prefill of
the environment's delta can follow directly.

Shapes stay static: the attention length ``kv_len`` is a static multiple of a bucket chosen by the host, the output
buffer width ``M`` is fixed, and rows that are stopped are masked (``valid=False``) rather than removed. The decode
state, cache included, is donated, so XLA updates it in place (a copying cache was 8x slower: docs/METHOD.md §10).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rods_jax.models import kv_cache
from rods_jax.rollout.sampling import SamplingParams, sample_tokens
from rods_jax.sharding import constrain

_ROWS = ("act_batch", None)  # a per-row [B, ·] array: rows over the data-parallel devices (under jax.set_mesh)


class DecodeState(NamedTuple):
  """Per-row decoding state; a pytree carried through ``lax.while_loop`` and donated between calls.

  Attributes:
    cache: the model's KV cache (``rods_jax.models.KVCache``, B rows).
    logits: [R, V] float32 next-token logits of each decoded row.
    active: [B] bool, the row is still sampling in this segment.
    n_new: [B] int32, tokens sampled in this segment.
    max_new: [B] int32, per-row cap on tokens in this segment (<= M).
    tokens: [B, M] int32 sampled tokens of this segment (row b's first n_new[b] entries are meaningful).
    logps: [B, M] float32 their log-probs (``sampling.token_logps`` convention).
    rng: PRNG key.
    rows: None (R = B: the state's rows are the cache's rows) or [R] int32, the cache row of each state row
      (entries >= B: padding rows, inactive). Every other [R, ...] field is per state row.
  """
  cache: Any
  logits: jax.Array
  active: jax.Array
  n_new: jax.Array
  max_new: jax.Array
  tokens: jax.Array
  logps: jax.Array
  rng: jax.Array
  rows: jax.Array | None = None


def _merge(graphdef, params):
  return nnx.merge(graphdef, *params) if isinstance(params, tuple) else nnx.merge(graphdef, params)


def round_up(n: int, multiple: int) -> int:
  """Smallest multiple of ``multiple`` that is >= max(n, 1)."""
  return max(1, -(-int(n) // multiple)) * multiple


def kv_bucket(max_slot: int, bucket: int, capacity: int) -> int:
  """Static attention length covering slots [0, max_slot): max_slot rounded up to ``bucket``, at most ``capacity``."""
  if max_slot > capacity:
    raise ValueError(f"needs {max_slot} KV slots but rollout.cache_capacity is {capacity}")
  return min(round_up(max_slot, bucket), capacity)


@functools.partial(jax.jit, static_argnames=("graphdef", "kv_len"), donate_argnames=("cache", "logits"))
def prefill(graphdef, params, cache, logits: jax.Array, tokens: jax.Array, valid: jax.Array,
            rows: jax.Array | None = None, *, kv_len: int):
  """Appends each row's valid prefix of ``tokens`` to its cache and returns (cache, next-token logits [B, V]).

  Row b's ``valid[b]`` must be a prefix of True; a row with no valid token keeps its cache and its old logits (so a
  batched incremental prefill touches only the rows that have something to append). With ``rows`` ([R], as in
  ``kv_cache.take_rows``), tokens/valid are [R, T] for those cache rows only; ``logits`` stays [B, V].
  """
  model = _merge(graphdef, params)
  if rows is None:
    rows = jnp.arange(cache.batch, dtype=jnp.int32)
  last, part = model.extend(tokens, valid, kv_cache.take_rows(cache, rows, kv_len), last_only=True)
  n = jnp.sum(valid, axis=1)
  old = logits[jnp.minimum(rows, logits.shape[0] - 1)]
  new = jnp.where((n > 0)[:, None], last.astype(jnp.float32), old)
  return kv_cache.put_rows(cache, rows, part), constrain(logits.at[rows].set(new, mode="drop"), _ROWS)


def _decode_loop(graphdef, params, state: DecodeState, stop_ids: jax.Array, min_stopped: jax.Array | int = 0, *,
                 sampling: SamplingParams, kv_len: int):
  model = _merge(graphdef, params)
  rows = jnp.arange(state.tokens.shape[0])
  width = state.tokens.shape[1]
  # Decode on a working cache of just these rows and kv_len slots (one copy per call): every step then attends over
  # whole contiguous per-layer buffers instead of slicing the full cache (a copy per layer per step).
  cache_rows = rows if state.rows is None else state.rows
  full_cache = state.cache

  def cond(s: DecodeState):
    stopped = jnp.sum((s.n_new > 0) & ~s.active)  # rows that sampled in this call and have stopped
    return jnp.any(s.active) & ((min_stopped <= 0) | (stopped < min_stopped))

  def body(s: DecodeState):
    rng, sub = jax.random.split(s.rng)
    tok, lp = sample_tokens(s.logits, sub, sampling)
    act = s.active
    slot = jnp.where(act, s.n_new, width)  # out of range -> dropped for inactive rows
    put = jax.vmap(lambda buf, i, x: buf.at[i].set(x, mode="drop"))  # per row: stays on the row's device
    tokens, logps = put(s.tokens, slot, tok), put(s.logps, slot, lp)
    n_new = s.n_new + act.astype(jnp.int32)
    out, cache = model.extend(tok[:, None], act[:, None], s.cache, last_only=True)
    logits = constrain(jnp.where(act[:, None], out.astype(jnp.float32), s.logits), _ROWS)
    stopped = jnp.any(tok[:, None] == stop_ids, axis=-1) | (n_new >= s.max_new)
    return DecodeState(cache, logits, act & ~stopped, n_new, s.max_new, tokens, logps, rng, s.rows)

  final = jax.lax.while_loop(cond, body, state._replace(cache=kv_cache.take_rows(full_cache, cache_rows, kv_len)))
  return final._replace(cache=kv_cache.put_rows(full_cache, cache_rows, final.cache))


decode = jax.jit(_decode_loop, static_argnames=("graphdef", "sampling", "kv_len"), donate_argnames=("state",))
decode.__doc__ = """Samples until every row stops: a stop token (row's ``stop_ids``, -1 padded) or ``max_new`` tokens.

Args:
  graphdef, params: ``nnx.split(model)`` (params may be a tuple of states).
  state: DecodeState with ``active``/``max_new`` set and ``n_new`` = 0 (donated).
  stop_ids: [R, S] int32 per-row stop token sets, padded with -1.
  min_stopped: int32 scalar (traced: no recompilation); > 0 = return as soon as that many rows have stopped, leaving
    the others ``active`` mid-message (the caller continues them in its next call); 0 = run until no row is active.
  sampling: static SamplingParams.
  kv_len: static attention length; must cover cache.length + max_new for every active row.
Returns the final DecodeState (early exit as soon as no row is active, or ``min_stopped`` rows have stopped).
"""


@functools.partial(jax.jit, static_argnames=("k", "n_rows"))
def repeat_rows(cache, logits: jax.Array, k: int, n_rows: int | None = None):
  """Broadcasts a group's prefilled prompt to its K rollout rows: row b -> rows b*K .. b*K+K-1, keeping the first
  ``n_rows`` (None: all B*K; the engine pads the prompt batch to a multiple of the data-parallel size).

  Every cache array (per-layer k [B, Hkv, Dh, S] and v [B, Hkv, S, Dh], length [B]) has its batch axis first.
  """
  cache, logits = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0)[:n_rows], (cache, logits))
  return kv_cache.constrain_cache(cache), constrain(logits, _ROWS)


def new_decode_state(cache, logits, active: np.ndarray, max_new: np.ndarray, width: int, rng,
                     rows: np.ndarray | None = None) -> DecodeState:
  """A fresh segment: host arrays for ``active`` and ``max_new``; output buffers of width ``width``.

  ``rows`` ([R], optional): decode only these cache rows (``logits``, ``active``, ``max_new`` are then [R, ...]);
  entries >= B pad R up to a bucket and must be inactive."""
  b = int(active.shape[0])
  if rows is not None and (rows.shape != (b,) or logits.shape[0] != b):
    raise ValueError(f"new_decode_state: rows {rows.shape}, active {active.shape}, logits {logits.shape} disagree")
  if rows is not None and np.any(active & (rows >= cache.batch)):
    raise ValueError("new_decode_state: padding rows (index >= B) must be inactive")
  return DecodeState(
      cache=cache, logits=logits, active=jnp.asarray(active, jnp.bool_), n_new=jnp.zeros((b,), jnp.int32),
      max_new=jnp.asarray(max_new, jnp.int32), tokens=jnp.zeros((b, width), jnp.int32),
      logps=jnp.zeros((b, width), jnp.float32), rng=rng, rows=None if rows is None else jnp.asarray(rows, jnp.int32))


def row_bucket(n: int, total: int, smallest: int) -> int:
  """Compacted batch size for ``n`` busy rows of ``total``: the first of m, 1.5m, 2m, 3m, 4m, 6m, 8m, ... (m =
  ``smallest``, fractions rounded up) that is >= n, so at most about a third of the rows are padding and there are
  few distinct sizes (few compilations); ``total`` when that is not smaller."""
  power = max(int(smallest), 1)
  while power < n:
    if -(-3 * power // 2) >= n:
      return min(-(-3 * power // 2), int(total))
    power *= 2
  return min(power, int(total))


@functools.partial(jax.jit, donate_argnames=("logits",))
def scatter_logits(logits: jax.Array, rows: jax.Array, values: jax.Array) -> jax.Array:
  """logits[rows] = values (rows >= B dropped): a compacted segment's last logits back into the full [B, V]."""
  return constrain(logits.at[rows].set(values, mode="drop"), _ROWS)
