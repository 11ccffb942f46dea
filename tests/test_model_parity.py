"""Logit parity with transformers' PyTorch models (Qwen3, Qwen2, Llama 3 with rope scaling), left-padded batches.

Each test builds a tiny random HF model, saves it with save_pretrained, loads it with `load_hf_checkpoint` and
compares float32 logits on the valid positions (max |Δ| <= 1e-4). Weights are re-drawn with a large scale (norm
weights around 1, biases non-zero) so attention patterns and logits are far from trivial.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from flax import nnx  # noqa: E402

import jax  # noqa: E402

from rods_jax.models import Transformer, extend_fn, forward_fn, init_cache  # noqa: E402
from rods_jax.models.hf_loader import load_hf_checkpoint  # noqa: E402

V = 101


def _randomize(model, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.15 * noise)


def make_hf(kind: str, tmp_path, seed=0):
  common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=128)
  if kind == "qwen3":
    cfg = transformers.Qwen3Config(head_dim=24, rope_theta=1000.0, **common)
    cls = transformers.Qwen3ForCausalLM
  elif kind == "qwen3_tied":
    cfg = transformers.Qwen3Config(head_dim=16, rope_theta=1000.0, **dict(common, tie_word_embeddings=True))
    cls = transformers.Qwen3ForCausalLM
  elif kind == "qwen2":
    cfg = transformers.Qwen2Config(rope_theta=10000.0, **common)
    cls = transformers.Qwen2ForCausalLM
  elif kind == "llama":
    cfg = transformers.LlamaConfig(
        rope_theta=10000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        **dict(common, rms_norm_eps=1e-5))
    cls = transformers.LlamaForCausalLM
  else:
    raise ValueError(kind)
  torch.manual_seed(seed)
  model = cls._from_config(cfg, attn_implementation="eager").eval()
  _randomize(model, seed)
  path = tmp_path / kind
  model.save_pretrained(path)
  return model, str(path)


def left_padded_batch(seed=0, b=3, t=13):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (b, t)).astype(np.int64)
  lengths = np.array([t, t - 5, t - 9])[:b]
  mask = np.arange(t)[None] >= (t - lengths)[:, None]
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return tokens, mask, positions


def jax_logits(model, tokens, mask, positions):
  gd, params = nnx.split(model)
  return np.asarray(jax.jit(forward_fn, static_argnums=0)(gd, params, jnp.asarray(tokens, jnp.int32),
                                                          jnp.asarray(positions, jnp.int32), jnp.asarray(mask)))


def torch_logits(model, tokens, mask, positions):
  torch.set_num_threads(1)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                position_ids=torch.tensor(positions))
  return out.logits.float().numpy()


@pytest.mark.parametrize("kind", ["qwen3", "qwen2", "llama", "qwen3_tied"])
def test_logit_parity_left_padded(kind, tmp_path):
  hf_model, path = make_hf(kind, tmp_path, seed=["qwen3", "qwen2", "llama", "qwen3_tied"].index(kind))
  ours, cfg = load_hf_checkpoint(path)
  assert cfg.architecture == kind.split("_")[0]
  tokens, mask, positions = left_padded_batch()
  ref = torch_logits(hf_model, tokens, mask, positions)
  got = jax_logits(ours, tokens, mask, positions)
  diff = np.abs(got - ref)[mask].max()
  assert diff <= 1e-4, diff
  assert np.abs(ref[mask]).std() > 0.5  # non-trivial logits
  print(f"{kind}: max|dlogit| = {diff:.2e}")
  if cfg.rope_scaling is not None:  # the scaling is really exercised: dropping it breaks parity
    plain = Transformer(cfg.replace(rope_scaling=None), rngs=nnx.Rngs(0))
    nnx.update(plain, nnx.state(ours))
    got_plain = jax_logits(plain, tokens, mask, positions)
    assert np.abs(got_plain - ref)[mask].max() > 1e-2

  if kind not in ("qwen3", "llama"):
    return
  # KV-cached incremental decoding of the same rows (unpadded in the cache) matches too.
  b, t = tokens.shape
  lengths = mask.sum(1)
  cache = init_cache(cfg, b, 16)
  prompt = 3
  packed = np.stack([np.concatenate([tokens[r][mask[r]], np.zeros(t - lengths[r], np.int64)]) for r in range(b)])
  gd, params = nnx.split(ours)
  step = jax.jit(extend_fn, static_argnums=(0, 5, 6), donate_argnums=(4,))
  lg, cache = step(gd, params, jnp.asarray(packed[:, :prompt], jnp.int32), jnp.ones((b, prompt), bool), cache, 16,
                   False)
  errs = [np.abs(np.asarray(lg)[r] - ref[r][mask[r]][:prompt]).max() for r in range(b)]
  for j in range(prompt, t):
    valid = j < lengths
    lg, cache = step(gd, params, jnp.asarray(packed[:, j:j + 1], jnp.int32), jnp.asarray(valid[:, None]), cache, 16,
                     False)
    errs += [np.abs(np.asarray(lg)[r, 0] - ref[r][mask[r]][j]).max() for r in range(b) if valid[r]]
  assert max(errs) <= 1e-4, max(errs)


def test_bfloat16_compute_close_to_float32(tmp_path):
  hf_model, path = make_hf("qwen3", tmp_path, seed=5)
  tokens, mask, positions = left_padded_batch(seed=1)
  ref = torch_logits(hf_model, tokens, mask, positions)
  ours, cfg = load_hf_checkpoint(path, dtype="bfloat16")
  assert cfg.dtype == "bfloat16"
  got = jax_logits(ours, tokens, mask, positions)
  assert got.dtype == np.float32
  rel = np.abs(got - ref)[mask].max() / np.abs(ref[mask]).max()
  assert rel < 0.05, rel


# ----------------------------------------------------------------------------- component references (float64)


def test_llama3_inv_freq_matches_transformers():
  from transformers.modeling_rope_utils import _compute_llama3_parameters

  from rods_jax.models import get_preset
  from rods_jax.models.layers import rope_inv_freq

  cfg = get_preset("llama3_1_8b")
  hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf_config().items()
                                      if k not in ("architectures", "model_type", "torch_dtype")})
  ref = _compute_llama3_parameters(hf_cfg)[0].double().numpy()
  got = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_dict)
  np.testing.assert_allclose(got, ref, rtol=1e-6)
  plain = rope_inv_freq(cfg.head_dim, cfg.rope_theta, None)
  assert (got < plain * 0.99).any() and (got == plain).any()  # all three regimes present


def test_rms_norm_rope_and_gqa_attention_against_float64_numpy():
  from rods_jax.models.layers import apply_rope, gqa_attention, rms_norm, rope_inv_freq

  rng = np.random.default_rng(11)
  b, t, s, h, kv, dh = 2, 5, 7, 6, 2, 8
  x = rng.normal(size=(b, t, 16))
  w = rng.normal(size=16)
  ref = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * w
  np.testing.assert_allclose(np.asarray(rms_norm(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), 1e-6)),
                             ref, atol=1e-5)

  # RoPE as a complex rotation of the pairs (x_i, x_{i+d/2}) by pos * theta^(-2i/d)
  q = rng.normal(size=(b, t, h, dh))
  pos = rng.integers(0, 50, (b, t))
  inv = 1.0 / (100.0 ** (np.arange(0, dh, 2) / dh))
  z = (q[..., :dh // 2] + 1j * q[..., dh // 2:]) * np.exp(1j * pos[:, :, None, None] * inv)
  ref = np.concatenate([z.real, z.imag], -1)
  got = apply_rope(jnp.asarray(q, jnp.float32), jnp.asarray(pos), rope_inv_freq(dh, 100.0, None))
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)

  # GQA: query head j uses kv head j // (h / kv); masked softmax; a fully masked row stays finite
  q = rng.normal(size=(b, t, h, dh))
  k = rng.normal(size=(b, s, kv, dh))
  v = rng.normal(size=(b, s, kv, dh))
  mask = rng.random((b, t, s)) < 0.6
  mask[:, :, 0] = True
  mask[1, 2, :] = False
  ref = np.zeros((b, t, h, dh))
  for bi in range(b):
    for ti in range(t):
      for j in range(h):
        if not mask[bi, ti].any():
          continue
        sc = k[bi, :, j // (h // kv)] @ q[bi, ti, j] / np.sqrt(dh)
        sc = np.where(mask[bi, ti], sc, -np.inf)
        p = np.exp(sc - sc.max())
        ref[bi, ti, j] = (p / p.sum()) @ v[bi, :, j // (h // kv)]
  got = np.asarray(gqa_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), jnp.asarray(mask)))
  keep = mask.any(-1)
  np.testing.assert_allclose(got[keep], ref[keep], atol=1e-5)
  assert np.isfinite(got).all()
  # the KV cache's layouts (k [B, Hkv, Dh, S], v [B, Hkv, S, Dh]): the prefill path (T > 1) and the decode path (T = 1)
  kc, vc = (jnp.asarray(a, jnp.float32) for a in (k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)))
  got = np.asarray(gqa_attention(jnp.asarray(q, jnp.float32), kc, vc, jnp.asarray(mask), cache_layout=True))
  np.testing.assert_allclose(got[keep], ref[keep], atol=1e-5)
  assert np.isfinite(got).all()
  got = np.asarray(gqa_attention(jnp.asarray(q[:, :1], jnp.float32), kc, vc, jnp.asarray(mask[:, :1]),
                                 cache_layout=True))
  np.testing.assert_allclose(got, ref[:, :1], atol=1e-5)


def test_chunked_attention_equals_full_values_and_gradients():
  from rods_jax.models.layers import chunked_gqa_attention, gqa_attention

  rng = np.random.default_rng(2)
  b, t, s, h, kv, dh = 2, 11, 11, 4, 2, 8
  q, k, v, w = (jnp.asarray(rng.normal(size=shape), jnp.float32)
                for shape in ((b, t, h, dh), (b, s, kv, dh), (b, s, kv, dh), (b, t, h, dh)))
  mask = jnp.asarray(np.tril(np.ones((t, s), bool))[None] & (rng.random((b, 1, s)) < 0.8))

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v) * w)

  full = lambda q, k, v: gqa_attention(q, k, v, mask)
  chunked = lambda q, k, v: chunked_gqa_attention(q, k, v, mask, 4)  # 11 = 4 + 4 + 3 (padded block)
  np.testing.assert_allclose(np.asarray(chunked(q, k, v)), np.asarray(full(q, k, v)), atol=1e-6)
  g_full = jax.grad(lambda *a: loss(full, *a), argnums=(0, 1, 2))(q, k, v)
  g_chunk = jax.jit(jax.grad(lambda *a: loss(chunked, *a), argnums=(0, 1, 2)))(q, k, v)
  for a, c in zip(g_full, g_chunk):
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=1e-5)


def test_token_matmul_against_float64_einsum_values_and_gradients():
  """The 2-D-matmul projection equals the einsum it replaces (one and two contracted axes), gradients included."""
  from rods_jax.models.transformer import token_matmul
  rng = np.random.default_rng(5)
  x = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)  # [b, t, h, k]
  w2 = rng.normal(size=(4, 6, 7)).astype(np.float32)  # [h, k, d]
  w1 = rng.normal(size=(6, 2, 3)).astype(np.float32)  # [k, h', k']
  want2 = np.einsum("bthk,hkd->btd", x.astype(np.float64), w2.astype(np.float64))
  want1 = np.einsum("bthk,kgj->bthgj", x.astype(np.float64), w1.astype(np.float64))
  np.testing.assert_allclose(np.asarray(token_matmul(jnp.asarray(x), jnp.asarray(w2), 2)), want2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(token_matmul(jnp.asarray(x), jnp.asarray(w1), 1)), want1, rtol=1e-5, atol=1e-5)
  c = rng.normal(size=want2.shape)  # d/dw Σ c·(x·w) = Σ_bt x ⊗ c
  gx, gw = jax.grad(lambda a, b: jnp.sum(jnp.asarray(c, jnp.float32) * token_matmul(a, b, 2)), argnums=(0, 1))(
      jnp.asarray(x), jnp.asarray(w2))
  np.testing.assert_allclose(np.asarray(gw), np.einsum("bthk,btd->hkd", x.astype(np.float64), c), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(gx), np.einsum("btd,hkd->bthk", c, w2.astype(np.float64)), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="contracted axes"):
    token_matmul(jnp.asarray(x), jnp.asarray(w1), 2)
