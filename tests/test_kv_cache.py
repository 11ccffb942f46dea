"""KV-cached incremental decoding equals the full forward, with rows of different lengths extended independently."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rods_jax.models import KVCache, Transformer, extend_fn, forward_fn, get_preset, init_cache
from rods_jax.models.kv_cache import put_rows, take_rows

V = 61


@pytest.fixture(scope="module")
def model():
  cfg = get_preset("lab_tiny", vocab_size=V, hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                   mlp_dim=96, init_std=0.2)
  return Transformer(cfg, rngs=nnx.Rngs(1))


@functools.lru_cache(maxsize=None)
def _jitted():
  return jax.jit(extend_fn, static_argnums=(0, 5, 6), donate_argnums=(4,))


def _full(model, tokens, lengths):
  b, t = tokens.shape
  mask = np.arange(t)[None] < lengths[:, None]
  pos = np.broadcast_to(np.arange(t), (b, t))
  gd, params = nnx.split(model)
  return np.asarray(jax.jit(forward_fn, static_argnums=0)(gd, params, tokens, pos, mask))


def test_incremental_rows_extended_by_different_amounts_equal_full_forward(model):
  """Prefill different prompt lengths, then extend rows by different chunk sizes (tool/user appends) and single
  tokens, some rows idle in a step; every produced logit equals the full forward at that position (<= 1e-5)."""
  rng = np.random.default_rng(7)
  b, t, cap = 4, 19, 32
  tokens = rng.integers(0, V, (b, t)).astype(np.int32)
  totals = np.array([19, 11, 16, 7])
  full = _full(model, tokens, totals)
  gd, params = nnx.split(model)
  step = _jitted()
  cache = init_cache(model.cfg, b, cap)
  written = np.zeros(b, int)
  errs = []
  # each entry: number of tokens each row appends in this call (0 = idle row)
  schedule = [[5, 2, 3, 1], [1, 4, 0, 2], [3, 0, 5, 1], [1, 1, 1, 3], [4, 4, 7, 0], [5, 0, 0, 0]]
  for amounts in schedule:
    amounts = np.minimum(amounts, totals - written)
    width = 1 if amounts.max() <= 1 else 8  # two bucketed widths, as an engine would use
    chunk = np.zeros((b, width), np.int32)
    valid = np.zeros((b, width), bool)
    for r in range(b):
      chunk[r, :amounts[r]] = tokens[r, written[r]:written[r] + amounts[r]]
      valid[r, :amounts[r]] = True
    logits, cache = step(gd, params, jnp.asarray(chunk), jnp.asarray(valid), cache, cap, False)
    logits = np.asarray(logits)
    for r in range(b):
      for j in range(amounts[r]):
        errs.append(np.abs(logits[r, j] - full[r, written[r] + j]).max())
    written += amounts
  assert np.array_equal(written, totals), written
  np.testing.assert_array_equal(np.asarray(cache.length), totals)
  assert len(errs) == totals.sum()
  assert max(errs) <= 1e-5, max(errs)
  # the logits are not trivially equal (distinct positions/rows give distinct logits)
  assert np.abs(full[0, 1] - full[0, 2]).max() > 1e-2


def test_working_cache_of_some_rows_equals_full_forward_and_leaves_other_rows_alone(model):
  """take_rows -> extend -> put_rows on a subset of rows (any order, padding entries >= B, fewer slots than the
  capacity): every logit equals the full forward (<= 1e-5), untouched rows keep bit-identical k/v/length, padding
  changes nothing."""
  rng = np.random.default_rng(11)
  b, t, cap = 5, 14, 24
  tokens = rng.integers(0, V, (b, t)).astype(np.int32)
  full = _full(model, tokens, np.full(b, t))
  gd, params = nnx.split(model)

  @functools.partial(jax.jit, static_argnums=(4,))
  def step(cache, chunk, valid, rows, slots):
    logits, part = extend_fn(gd, params, chunk, valid, take_rows(cache, rows, slots))
    return logits, put_rows(cache, rows, part)

  cache, written, errs = init_cache(model.cfg, b, cap), np.zeros(b, int), []
  # (cache rows of the batch incl. padding b, tokens each appends, slots of the working cache)
  schedule = [([4, 0, 2, 1, 3], [6, 3, 5, 2, 4], 8), ([2, 5, 0, 5], [3, 0, 1, 0], 16), ([1, 5], [1, 0], 8),
              ([3, 1, 5, 5], [4, 2, 0, 0], 16), ([0, 4, 2, 3, 1], [1, 1, 1, 1, 1], 24)]
  for rows, amounts, slots in schedule:
    rows, amounts = np.asarray(rows, np.int32), np.asarray(amounts)
    before = jax.tree.map(np.asarray, cache)
    chunk = np.zeros((len(rows), 8), np.int32)
    valid = np.zeros((len(rows), 8), bool)
    for j, (r, a) in enumerate(zip(rows, amounts)):
      if r < b:
        chunk[j, :a] = tokens[r, written[r]:written[r] + a]
        valid[j, :a] = True
    logits, cache = step(cache, jnp.asarray(chunk), jnp.asarray(valid), jnp.asarray(rows), slots)
    logits = np.asarray(logits)
    assert logits.shape == (len(rows), 8, V)
    for j, (r, a) in enumerate(zip(rows, amounts)):
      for i in range(a if r < b else 0):
        errs.append(np.abs(logits[j, i] - full[r, written[r] + i]).max())
    touched = {int(r) for r, a in zip(rows, amounts) if r < b and a > 0}
    for r in set(range(b)) - touched:  # bit-identical
      for x, y in zip(cache.k + cache.v, before.k + before.v):
        np.testing.assert_array_equal(np.asarray(x)[r], y[r])
    for r, a in zip(rows, amounts):
      if r < b:
        written[r] += a
    np.testing.assert_array_equal(np.asarray(cache.length), written)
  assert len(errs) == written.sum() and max(errs) <= 1e-5, max(errs)
  with pytest.raises(ValueError, match="slots"):
    take_rows(cache, jnp.zeros((2,), jnp.int32), cap + 1)


def test_bucketed_kv_len_and_last_only(model):
  """kv_len < capacity gives the same logits as full attention; last_only picks each row's last valid token; a
  non-prefix valid mask is compacted (valid tokens appended in order)."""
  rng = np.random.default_rng(3)
  b, t, cap = 3, 12, 64
  tokens = rng.integers(0, V, (b, t)).astype(np.int32)
  lengths = np.array([12, 5, 9])
  full = _full(model, tokens, lengths)
  gd, params = nnx.split(model)
  valid = np.arange(t)[None] < lengths[:, None]
  out = {}
  for kv_len in (16, cap):
    cache = init_cache(model.cfg, b, cap)
    logits, cache = _jitted()(gd, params, jnp.asarray(tokens), jnp.asarray(valid), cache, kv_len, False)
    out[kv_len] = np.asarray(logits)
    for r in range(b):
      np.testing.assert_allclose(out[kv_len][r, :lengths[r]], full[r, :lengths[r]], atol=1e-5)
  # last_only, with row 2 given a gap in its valid mask: its valid tokens are appended in order (compacted)
  gap_valid = valid.copy()
  gap_valid[2, 3] = False
  cache = init_cache(model.cfg, b, cap)
  last, cache = _jitted()(gd, params, jnp.asarray(tokens), jnp.asarray(gap_valid), cache, 16, True)
  assert last.shape == (b, V)
  for r in range(2):
    np.testing.assert_allclose(np.asarray(last)[r], full[r, lengths[r] - 1], atol=1e-5)
  compact = tokens[2:3, [i for i in range(t) if gap_valid[2, i]]]
  ref = _full(model, compact, np.array([compact.shape[1]]))
  np.testing.assert_allclose(np.asarray(last)[2], ref[0, -1], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(cache.length), [12, 5, 8])


def test_cache_is_updated_in_place_when_donated(model):
  """With the cache donated, extend writes into the same buffers (no copy of the per-layer [B,Hkv,S,Dh] arrays)."""
  gd, params = nnx.split(model)
  cache = init_cache(model.cfg, 4, 32)  # same shapes as above: reuses the compiled step
  ptrs = [a.unsafe_buffer_pointer() for a in cache.k + cache.v]
  for _ in range(2):
    old = cache
    _, cache = _jitted()(gd, params, jnp.ones((4, 1), jnp.int32), jnp.ones((4, 1), bool), cache, 32, False)
    assert all(a.is_deleted() for a in old.k + old.v)
  assert [a.unsafe_buffer_pointer() for a in cache.k + cache.v] == ptrs
  np.testing.assert_array_equal(np.asarray(cache.length), [2, 2, 2, 2])


def test_init_cache_shapes_and_errors(model):
  cfg = model.cfg
  cache = init_cache(cfg, 3, 8)
  assert isinstance(cache, KVCache)
  assert len(cache.k) == len(cache.v) == cfg.n_layers and cache.capacity == 8 and cache.batch == 3
  assert all(a.shape == (3, cfg.n_kv_heads, cfg.head_dim, 8) and a.dtype == jnp.float32 for a in cache.k)  # K: [B,Hkv,Dh,S]
  assert all(a.shape == (3, cfg.n_kv_heads, 8, cfg.head_dim) and a.dtype == jnp.float32 for a in cache.v)
  assert cache.length.dtype == jnp.int32
  assert init_cache(cfg, 1, 4, "bfloat16").v[0].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="capacity"):
    init_cache(cfg, 2, 0)
  with pytest.raises(ValueError, match="kv_len"):
    model.extend(jnp.zeros((3, 1), jnp.int32), jnp.ones((3, 1), bool), cache, kv_len=9)
  with pytest.raises(ValueError, match="batch"):
    model.extend(jnp.zeros((2, 1), jnp.int32), jnp.ones((2, 1), bool), cache)


def test_attn_chunk_model_equals_unchunked(model):
  """ModelConfig.attn_chunk (query-blocked attention) changes memory, not results: full forward and prefill."""
  chunked = Transformer(model.cfg.replace(attn_chunk=4), rngs=nnx.Rngs(0))
  nnx.update(chunked, nnx.state(model))
  rng = np.random.default_rng(5)
  tokens = rng.integers(0, V, (4, 19)).astype(np.int32)
  lengths = np.array([19, 11, 16, 7])
  np.testing.assert_allclose(_full(chunked, tokens, lengths), _full(model, tokens, lengths), atol=1e-5)
