"""Sampler core: sampling rules vs float64 numpy references, and cached decoding vs full forward passes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rods_jax.models import Transformer, get_preset, init_cache
from rods_jax.rollout import sampler
from rods_jax.rollout.sampling import (NEG_INF, SamplingParams, filter_logits, inverse_cdf_sample, sample_tokens,
                                      token_logps)

V = 61


def _np_filtered_probs(logits, temperature, top_k, top_p):
  """float64 reference of the sampling distribution: temperature, then top-k, then top-p on the renormalised set."""
  z = logits.astype(np.float64) / temperature
  keep = np.ones_like(z, bool)
  if 0 < top_k < z.shape[-1]:
    kth = np.sort(z, axis=-1)[:, -top_k][:, None]
    keep &= z >= kth
  if top_p < 1.0:
    for b in range(z.shape[0]):
      p = np.where(keep[b], np.exp(z[b] - z[b][keep[b]].max()), 0.0)
      p /= p.sum()
      order = np.argsort(-p, kind="stable")
      before = np.cumsum(p[order]) - p[order]
      drop = order[before >= top_p]
      keep[b, drop] = False
  p = np.where(keep, np.exp(z - z.max(-1, keepdims=True)), 0.0)
  return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (0, 0.7), (7, 0.9), (1, 1.0)])
def test_filter_logits_matches_numpy(top_k, top_p):
  rng = np.random.default_rng(top_k * 10 + int(top_p * 10))
  logits = rng.normal(size=(6, 23)).astype(np.float32) * 2.0
  got = jax.nn.softmax(filter_logits(jnp.asarray(logits / 0.8), top_k, top_p), axis=-1)
  want = _np_filtered_probs(logits, 0.8, top_k, top_p)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  assert ((np.asarray(got) > 0) == (want > 0)).all()


def test_sample_tokens_empirical_distribution():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(1, 8)).astype(np.float32) * 1.5
  params = SamplingParams(temperature=0.7, top_p=0.9, top_k=6)
  n = 40_000
  toks, lps = sample_tokens(jnp.asarray(np.repeat(logits, n, 0)), jax.random.key(3), params)
  freq = np.bincount(np.asarray(toks), minlength=8) / n
  want = _np_filtered_probs(logits, 0.7, 6, 0.9)[0]
  sigma = np.sqrt(want * (1 - want) / n)
  assert (np.abs(freq - want) <= 5 * sigma + 1e-9).all(), (freq, want)
  assert (freq[want == 0] == 0).all()
  # stored log-prob: tempered, untruncated distribution (module convention)
  z = logits[0].astype(np.float64) / 0.7
  ref = z - np.log(np.exp(z - z.max()).sum()) - z.max()
  np.testing.assert_allclose(np.asarray(lps)[:50], ref[np.asarray(toks)[:50]], atol=1e-5)


def test_inverse_cdf_sample_matches_softmax_per_row():
  """Rows with different distributions (one with a masked token) are each drawn from their own softmax."""
  rng = np.random.default_rng(7)
  v, n = 40, 30_000
  logits = (rng.normal(size=(3, v)) * np.array([[0.5], [2.0], [4.0]])).astype(np.float32)
  logits[1, 5] = NEG_INF
  toks = np.asarray(inverse_cdf_sample(jnp.asarray(np.repeat(logits, n, 0)), jax.random.key(11))).reshape(3, n)
  z = logits.astype(np.float64)
  want = np.exp(z - z.max(-1, keepdims=True))
  want /= want.sum(-1, keepdims=True)
  for r in range(3):
    freq = np.bincount(toks[r], minlength=v) / n
    sigma = np.sqrt(want[r] * (1 - want[r]) / n)
    assert (np.abs(freq - want[r]) <= 5 * sigma + 1e-9).all(), (r, freq, want[r])
  assert not (toks[1] == 5).any() and toks.min() >= 0 and toks.max() < v


def test_greedy_and_token_logps():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(5, 17)).astype(np.float32)
  toks, lps = sample_tokens(jnp.asarray(logits), jax.random.key(0), SamplingParams(temperature=0.0))
  np.testing.assert_array_equal(np.asarray(toks), logits.argmax(-1))
  z = logits.astype(np.float64)
  ref = (z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(5), logits.argmax(-1)]
  np.testing.assert_allclose(np.asarray(lps), ref, atol=1e-6)
  np.testing.assert_allclose(np.asarray(token_logps(jnp.asarray(logits), toks, 1.0)), ref, atol=1e-6)


def test_sampling_params_validation():
  for kw, field in [({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_k": -2}, "top_k")]:
    with pytest.raises(ValueError, match=field):
      SamplingParams(**kw)
  with pytest.raises(ValueError, match="cache_capacity"):
    sampler.kv_bucket(500, 64, 384)
  assert sampler.kv_bucket(65, 64, 384) == 128 and sampler.kv_bucket(380, 64, 384) == 384


# ----------------------------------------------------------------------------------------------- cached decoding


@pytest.fixture(scope="module")
def tiny():
  cfg = get_preset("lab_tiny", vocab_size=V, hidden=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                   mlp_dim=64, init_std=0.35)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  return cfg, model, graphdef, params


_forward = jax.jit(lambda graphdef, params, t, m: nnx.merge(graphdef, params)(
    t, jnp.broadcast_to(jnp.arange(t.shape[1], dtype=jnp.int32), t.shape), m), static_argnums=0)


def _full_logits(tiny, seq, width=32):
  """Reference: one full causal forward pass over the whole sequence (right-padded to a fixed width: one compile)."""
  _, _, graphdef, params = tiny
  tok = np.zeros((1, width), np.int32)
  tok[0, :len(seq)] = seq
  out = _forward(graphdef, params, jnp.asarray(tok), jnp.asarray(np.arange(width) < len(seq))[None])
  return np.asarray(out[0, :len(seq)], np.float64)


def _run(tiny, prompts, max_new, stop, sampling, width=12, capacity=64, seed=0):
  cfg, _, graphdef, params = tiny
  b = len(prompts)
  cache = init_cache(cfg, b, capacity)
  logits = jnp.zeros((b, cfg.vocab_size), jnp.float32)
  tok = np.zeros((b, 12), np.int32)
  val = np.zeros((b, 12), bool)
  for i, s in enumerate(prompts):
    tok[i, :len(s)], val[i, :len(s)] = s, True
  cache, logits = sampler.prefill(graphdef, params, cache, logits, jnp.asarray(tok), jnp.asarray(val), kv_len=capacity)
  state = sampler.new_decode_state(cache, logits, np.ones(b, bool), np.asarray(max_new), width, jax.random.key(seed))
  stop_ids = jnp.asarray(np.asarray(stop, np.int32))
  state = sampler.decode(graphdef, params, state, stop_ids, sampling=sampling, kv_len=capacity)
  return jax.device_get((state.tokens, state.logps, state.n_new, state.cache.length))


def test_greedy_decode_equals_stepwise_full_forward(tiny):

  rng = np.random.default_rng(5)
  prompts = [rng.integers(3, V, size=n).tolist() for n in (7, 3, 11, 1)]
  stop = [[2, -1], [2, 9], [-1, -1], [4, 5]]
  max_new = [12, 5, 9, 6]
  toks, lps, n_new, length = _run(tiny, prompts, max_new, stop, SamplingParams(temperature=0.0))
  for b, prompt in enumerate(prompts):
    seq, ref_lp = list(prompt), []
    for _ in range(max_new[b]):  # reference: argmax of a full forward pass over the whole sequence, every step
      z = _full_logits(tiny, seq)[-1]
      nxt = int(z.argmax())
      ref_lp.append(z[nxt] - np.log(np.exp(z - z.max()).sum()) - z.max())
      seq.append(nxt)
      if nxt in stop[b]:
        break
    got = toks[b, :n_new[b]].tolist()
    assert got == seq[len(prompt):], (b, got, seq[len(prompt):])
    np.testing.assert_allclose(lps[b, :n_new[b]], ref_lp, atol=1e-4)
    assert length[b] == len(prompt) + n_new[b]  # every sampled token, the stop token included, is in the cache


def test_sampled_logps_match_full_forward(tiny):

  rng = np.random.default_rng(6)
  prompts = [rng.integers(3, V, size=n).tolist() for n in (4, 9, 6, 2)]
  samp = SamplingParams(temperature=0.8, top_p=0.9, top_k=20)
  toks, lps, n_new, _ = _run(tiny, prompts, [10, 10, 3, 10], [[-1, -1]] * 4, samp, seed=11)
  assert n_new.tolist() == [10, 10, 3, 10]
  for b, prompt in enumerate(prompts):
    seq = prompt + toks[b, :n_new[b]].tolist()
    z = _full_logits(tiny, seq)[len(prompt) - 1:-1] / 0.8
    ref = z - z.max(-1, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    np.testing.assert_allclose(lps[b, :n_new[b]], ref[np.arange(n_new[b]), seq[len(prompt):]], atol=1e-4)


def test_per_row_stop_sets_and_early_exit(tiny):

  rng = np.random.default_rng(7)
  prompts = [rng.integers(3, V, size=5).tolist() for _ in range(4)]
  greedy = SamplingParams(temperature=0.0)
  free, _, _, _ = _run(tiny, prompts, [8, 8, 8, 8], [[-1, -1]] * 4, greedy)
  # row 0 stops on its 3rd greedy token, row 1 on its 1st; row 2 has no stop and a cap of 4; row 3 a cap of 1
  stop = [[int(free[0, 2]), -1], [-1, int(free[1, 0])], [-1, -1], [-1, -1]]
  toks, _, n_new, length = _run(tiny, prompts, [8, 8, 4, 1], stop, greedy)
  first = [free[0, :8].tolist().index(stop[0][0]) + 1, 1, 4, 1]
  assert n_new.tolist() == first
  for b in range(4):
    assert toks[b, :n_new[b]].tolist() == free[b, :n_new[b]].tolist()
  assert length.tolist() == [5 + f for f in first]

  # min_stopped=1: the call returns as soon as row 1 stops; the others resume in a second call, same tokens
  cfg, _, graphdef, params = tiny
  tok = np.zeros((4, 12), np.int32)
  val = np.zeros((4, 12), bool)
  for i, p in enumerate(prompts):
    tok[i, :5], val[i, :5] = p, True
  cache, logits = sampler.prefill(graphdef, params, init_cache(cfg, 4, 64), jnp.zeros((4, V), jnp.float32),
                                  jnp.asarray(tok), jnp.asarray(val), kv_len=64)
  stop_ids = jnp.asarray(np.asarray(stop, np.int32))
  st = sampler.new_decode_state(cache, logits, np.ones(4, bool), np.asarray([8, 8, 4, 1]), 12, jax.random.key(0))
  st = sampler.decode(graphdef, params, st, stop_ids, jnp.int32(1), sampling=greedy, kv_len=64)
  act1, n1, t1 = jax.device_get((st.active, st.n_new, st.tokens))
  assert n1.tolist() == [1, 1, 1, 1] and act1.tolist() == [True, False, True, False]
  st2 = sampler.new_decode_state(st.cache, st.logits, act1, np.asarray([7, 0, 3, 0]), 12, jax.random.key(1))
  st2 = sampler.decode(graphdef, params, st2, stop_ids, jnp.int32(0), sampling=greedy, kv_len=64)
  n2, t2, length2 = jax.device_get((st2.n_new, st2.tokens, st2.cache.length))
  for b in (0, 2):
    assert t1[b, :1].tolist() + t2[b, :n2[b]].tolist() == free[b, :first[b]].tolist()
  assert length2.tolist() == length.tolist()


def test_group_prefill_once_then_broadcast(tiny):
  cfg, _, graphdef, params = tiny
  rng = np.random.default_rng(8)
  prompts = [rng.integers(3, V, size=n).tolist() for n in (6, 4)]
  k = 2

  def prefill_rows(rows):
    tok = np.zeros((len(rows), 12), np.int32)
    val = np.zeros((len(rows), 12), bool)
    for i, s in enumerate(rows):
      tok[i, :len(s)], val[i, :len(s)] = s, True
    return sampler.prefill(graphdef, params, init_cache(cfg, len(rows), 64),
                           jnp.zeros((len(rows), V), jnp.float32), jnp.asarray(tok), jnp.asarray(val), kv_len=64)

  cache_g, logits_g = sampler.repeat_rows(*prefill_rows(prompts), k)
  cache_r, logits_r = prefill_rows([p for p in prompts for _ in range(k)])
  np.testing.assert_array_equal(np.asarray(cache_g.length), np.asarray(cache_r.length))
  np.testing.assert_allclose(np.asarray(cache_g.k), np.asarray(cache_r.k), atol=1e-5)
  np.testing.assert_allclose(np.asarray(cache_g.v), np.asarray(cache_r.v), atol=1e-5)
  np.testing.assert_allclose(np.asarray(logits_g), np.asarray(logits_r), atol=1e-5)


def test_incremental_prefill_skips_empty_rows(tiny):
  cfg, _, graphdef, params = tiny
  rng = np.random.default_rng(9)
  rows = [rng.integers(3, V, size=n).tolist() for n in (5, 4, 7, 2)]
  extra = rng.integers(3, V, 3).tolist()
  tok = np.zeros((4, 12), np.int32)
  val = np.zeros((4, 12), bool)
  for i, s in enumerate(rows):
    tok[i, :len(s)], val[i, :len(s)] = s, True
  cache, logits = sampler.prefill(graphdef, params, init_cache(cfg, 4, 64), jnp.zeros((4, V), jnp.float32),
                                  jnp.asarray(tok), jnp.asarray(val), kv_len=64)
  before = np.asarray(logits)
  tok2 = np.zeros((4, 12), np.int32)
  val2 = np.zeros((4, 12), bool)
  tok2[1, :3], val2[1, :3] = extra, True
  cache, logits = sampler.prefill(graphdef, params, cache, logits, jnp.asarray(tok2), jnp.asarray(val2), kv_len=64)
  assert np.asarray(cache.length).tolist() == [5, 7, 7, 2]
  np.testing.assert_array_equal(np.asarray(logits)[[0, 2, 3]], before[[0, 2, 3]])  # untouched rows keep logits
  np.testing.assert_allclose(np.asarray(logits)[1], _full_logits(tiny, rows[1] + extra)[-1], atol=1e-4)


def test_row_bucket_covers_the_busy_rows_with_at_most_a_third_padding():
  for m in (1, 4, 8):
    sizes = {sampler.row_bucket(n, 10_000, m) for n in range(1, 600)}
    for n in range(1, 600):
      size = sampler.row_bucket(n, 10_000, m)
      assert n <= size <= max(m, -(-3 * n // 2) + 1), (m, n, size)  # +1: 1.5·odd m rounds up
    assert len(sizes) <= 2 * 10 + 1  # two sizes per doubling: few compilations
  assert sampler.row_bucket(40, 64, 8) == 48 and sampler.row_bucket(50, 64, 8) == 64 and sampler.row_bucket(3, 4, 8) == 4


# ----------------------------------------------------------------------------------------------------------------------
# decode-step benchmark (rods_jax.rollout.bench)
# ----------------------------------------------------------------------------------------------------------------------
def test_decode_bytes_hand_count_and_benchmark_reports_consistent_figures():
  from rods_jax.rollout import bench
  cfg = get_preset("lab_tiny", vocab_size=64, hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                   mlp_dim=64)
  # 2 layers x (K and V) x 3 rows x 2 kv heads x 40 slots x 8 dims x 4 bytes, plus 1000 float32 weights
  assert bench.decode_bytes(cfg, 1000, 3, 40, 4, 4) == 2 * 2 * 3 * 2 * 40 * 8 * 4 + 4000
  out = bench.decode_step_benchmark(cfg, rows=3, kv_len=32, steps=4, repeats=2, stream_bytes=1 << 20)
  _, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert out["bytes_per_step"] == bench.decode_bytes(cfg, n_params, 3, 32, 4, 4)
  assert out["achieved_gbps"] == pytest.approx(out["bytes_per_step"] / (out["step_ms"] / 1e3) / 1e9, rel=1e-9)
  assert out["mbu"] == pytest.approx(out["achieved_gbps"] / out["stream_gbps"], rel=1e-9)
  assert out["row_steps_per_s"] == pytest.approx(3 / (out["step_ms"] / 1e3), rel=1e-9)
  assert out["step_ms"] > 0 and out["stream_gbps"] > 0
  with pytest.raises(ValueError, match="kv_len"):
    bench.decode_step_benchmark(cfg, rows=3, kv_len=4, steps=4, repeats=1)
