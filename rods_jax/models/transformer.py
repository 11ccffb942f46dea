"""Flax NNX decoder-only transformer for the Qwen3 / Qwen2 / Llama 3 families, with a per-row KV cache.

Two entry points share the same weights and math:

* ``model(tokens, positions, mask) -> logits``: full causal forward (training, scoring). Padding (mask False) neither
  attends nor is attended to; causality is by index, RoPE uses the given positions, so left or right padding both work.
* ``model.extend(tokens, valid, cache, kv_len=None) -> (logits, cache)``: appends each row's valid tokens to its own
  slots of a fixed-capacity `KVCache` and returns their logits (prefill, decode, multi-turn tool/user appends).

Recommended functional pattern (what the sampler does; no NNX graph traversal inside jit or lax loops)::

    graphdef, params = nnx.split(model)

    @functools.partial(jax.jit, static_argnames=("kv_len",), donate_argnums=(3,))
    def step(params, tokens, valid, cache, kv_len):
      return nnx.merge(graphdef, params).extend(tokens, valid, cache, kv_len=kv_len)

`extend_fn` / `forward_fn` below are exactly that body. Donating the cache lets XLA scatter into it in place.

Parameter layout (the HF loader maps onto these; logical axes in brackets):
  embed [V, D] (vocab, embed); lm_head [D, V] (embed, vocab) when untied; final_norm.scale [D];
  layers[i].attn.q [D, H, Dh] (embed, q_heads, head_dim); .k/.v [D, Hkv, Dh]; .o [H, Dh, D];
  .q_bias [H, Dh], .k_bias/.v_bias [Hkv, Dh] (Qwen2); .q_norm/.k_norm [Dh] (Qwen3);
  layers[i].attn_norm.scale, .mlp_norm.scale [D]; layers[i].mlp.gate/.up [D, F] (embed, mlp), .down [F, D].
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rods_jax.models.config import ModelConfig
from rods_jax.models.kv_cache import CACHE_K_AXES, CACHE_V_AXES, KVCache
from rods_jax.models.layers import apply_rope, chunked_gqa_attention, rms_norm, rope_inv_freq
from rods_jax.sharding import constrain, param_shardings

_BTD = ("act_batch", "act_seq", "act_embed")
_BTHD = ("act_batch", "act_seq", "act_heads", None)
_BTKD = ("act_batch", "act_seq", "act_kv_heads", None)


def token_matmul(x: jax.Array, w: jax.Array, n_in: int) -> jax.Array:
  """out[b, t, o...] = Σ_i x[b, t, i...] · w[i..., o...], contracting x's last ``n_in`` axes with w's first ``n_in``,
  computed as ONE 2-D matmul over the b·t tokens. Same values as the einsum; for the 3-D einsum XLA:CPU transposed
  the activations to form the weight gradient (`launch.benchmark --suite=train` times the step)."""
  lead, cin = x.shape[:x.ndim - n_in], x.shape[x.ndim - n_in:]
  if w.shape[:n_in] != cin:
    raise ValueError(f"token_matmul: x {x.shape} and w {w.shape} disagree on the contracted axes")
  out = w.shape[n_in:]
  y = x.reshape(math.prod(lead), math.prod(cin)) @ w.reshape(math.prod(cin), math.prod(out))
  return y.reshape(*lead, *out)


def _param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
  # Logical names only; `rods_jax.sharding` maps them to the mesh. No eager sharding: models are built without a
  # mesh and placed afterwards (shard_model) or loaded straight onto their shardings (hf_loader).
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def _normal(rngs: nnx.Rngs, shape, cfg: ModelConfig) -> jax.Array:
  return cfg.init_std * jax.random.normal(rngs.params(), shape, jnp.dtype(cfg.param_dtype))


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale."""

  def __init__(self, dim: int, eps: float, param_dtype: str, axis_name: str = "norm"):
    self.scale = _param(jnp.ones((dim,), jnp.dtype(param_dtype)), (axis_name,))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.scale[...], self.eps)


class Attention(nnx.Module):
  """GQA self-attention with optional qkv bias (Qwen2) and q/k RMSNorm (Qwen3)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, h, kv, dh = cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = cfg
    self.q = _param(_normal(rngs, (d, h, dh), cfg), ("embed", "q_heads", "head_dim"))
    self.k = _param(_normal(rngs, (d, kv, dh), cfg), ("embed", "kv_heads", "head_dim"))
    self.v = _param(_normal(rngs, (d, kv, dh), cfg), ("embed", "kv_heads", "head_dim"))
    self.o = _param(_normal(rngs, (h, dh, d), cfg), ("q_heads", "head_dim", "embed"))
    if cfg.qkv_bias:
      self.q_bias = _param(jnp.zeros((h, dh), pd), ("q_heads", "head_dim"))
      self.k_bias = _param(jnp.zeros((kv, dh), pd), ("kv_heads", "head_dim"))
      self.v_bias = _param(jnp.zeros((kv, dh), pd), ("kv_heads", "head_dim"))
    else:
      self.q_bias = self.k_bias = self.v_bias = None
    if cfg.qk_norm:
      self.q_norm = RMSNorm(dh, cfg.norm_eps, cfg.param_dtype, "head_dim")
      self.k_norm = RMSNorm(dh, cfg.norm_eps, cfg.param_dtype, "head_dim")
    else:
      self.q_norm = self.k_norm = None

  def qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Projected, normed and rotated q [B,T,H,Dh], k, v [B,T,Hkv,Dh] in the compute dtype."""
    dt = x.dtype
    q = token_matmul(x, self.q[...].astype(dt), 1)
    k = token_matmul(x, self.k[...].astype(dt), 1)
    v = token_matmul(x, self.v[...].astype(dt), 1)
    if self.q_bias is not None:
      q = q + self.q_bias[...].astype(dt)
      k = k + self.k_bias[...].astype(dt)
      v = v + self.v_bias[...].astype(dt)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    inv_freq = rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta, self.cfg.rope_scaling_dict)
    q = constrain(apply_rope(q, positions, inv_freq), _BTHD)
    k = constrain(apply_rope(k, positions, inv_freq), _BTKD)
    return q, k, constrain(v, _BTKD)

  def out(self, attn: jax.Array) -> jax.Array:
    return token_matmul(attn, self.o[...].astype(attn.dtype), 2)

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    q, k, v = self.qkv(x, positions)
    return self.out(chunked_gqa_attention(q, k, v, mask, self.cfg.attn_chunk))

  def extend(self, x, positions, slots, mask, cache_k, cache_v, kv_len: int):
    """Writes this chunk's k/v at `slots` of this layer's cache (slot == capacity: dropped) and attends over the
    first kv_len slots. cache_k: [B, Hkv, Dh, S], cache_v: [B, Hkv, S, Dh] (this layer's; see kv_cache)."""
    q, k, v = self.qkv(x, positions)
    # One scatter per row, vmapped: the row is a scatter *batching* dimension, which the SPMD partitioner keeps
    # local to the devices holding the row (explicit row indices made it all-gather every update, every step).
    write_k = lambda c, u, sl: c.at[:, :, sl].set(jnp.moveaxis(u, 0, -1), mode="drop")  # c [Hkv,Dh,S], u [T,Hkv,Dh]
    write_v = lambda c, u, sl: c.at[:, sl].set(jnp.moveaxis(u, 0, 1), mode="drop")  # c [Hkv,S,Dh]
    cache_k = jax.vmap(write_k)(cache_k, k.astype(cache_k.dtype), slots)
    cache_v = jax.vmap(write_v)(cache_v, v.astype(cache_v.dtype), slots)
    cache_k, cache_v = constrain(cache_k, CACHE_K_AXES), constrain(cache_v, CACHE_V_AXES)  # keep the donated layout
    full = kv_len == cache_v.shape[2]
    keys = (cache_k if full else cache_k[..., :kv_len]).astype(q.dtype)
    values = (cache_v if full else cache_v[:, :, :kv_len]).astype(q.dtype)
    return self.out(chunked_gqa_attention(q, keys, values, mask, self.cfg.attn_chunk, cache_layout=True)), \
        cache_k, cache_v


class MLP(nnx.Module):
  """SwiGLU: down(silu(x·gate) ⊙ (x·up))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f = cfg.hidden, cfg.mlp_dim
    self.gate = _param(_normal(rngs, (d, f), cfg), ("embed", "mlp"))
    self.up = _param(_normal(rngs, (d, f), cfg), ("embed", "mlp"))
    self.down = _param(_normal(rngs, (f, d), cfg), ("mlp", "embed"))

  def __call__(self, x: jax.Array) -> jax.Array:
    dt = x.dtype
    g = token_matmul(x, self.gate[...].astype(dt), 1)
    u = token_matmul(x, self.up[...].astype(dt), 1)
    h = constrain(jax.nn.silu(g) * u, ("act_batch", "act_seq", "act_mlp"))
    return token_matmul(h, self.down[...].astype(dt), 1)


class Block(nnx.Module):
  """Pre-norm decoder block: x += attn(norm(x)); x += mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps, cfg.param_dtype)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.hidden, cfg.norm_eps, cfg.param_dtype)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, positions, mask):
    x = x + self.attn(self.attn_norm(x), positions, mask)
    return constrain(x + self.mlp(self.mlp_norm(x)), _BTD)

  def extend(self, x, positions, slots, mask, cache_k, cache_v, kv_len):
    a, cache_k, cache_v = self.attn.extend(self.attn_norm(x), positions, slots, mask, cache_k, cache_v, kv_len)
    x = x + a
    return constrain(x + self.mlp(self.mlp_norm(x)), _BTD), cache_k, cache_v


class Transformer(nnx.Module):
  """Decoder-only LM. See the module docstring for the two entry points and the functional pattern."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = _param(_normal(rngs, (cfg.vocab_size, cfg.hidden), cfg), ("vocab", "embed"))
    self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.hidden, cfg.norm_eps, cfg.param_dtype)
    if cfg.tie_embeddings:
      self.lm_head = None
    else:
      self.lm_head = _param(_normal(rngs, (cfg.hidden, cfg.vocab_size), cfg), ("embed", "vocab"))

  # ------------------------------------------------------------------ pieces

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    # Gather the table over fsdp first (what FSDP does for every weight); gathering from an embed-sharded table and
    # then resharding to batch-sharded activations makes XLA replicate the whole result.
    table = constrain(self.embed[...], ("vocab", None))
    x = jnp.take(table, tokens, axis=0).astype(jnp.dtype(self.cfg.dtype))
    return constrain(x, _BTD)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[..., D] final-normed hidden states -> [..., V] float32 logits."""
    dt = hidden.dtype
    if self.lm_head is None:
      out = jnp.einsum("...d,vd->...v", hidden, self.embed[...].astype(dt), preferred_element_type=jnp.float32)
    else:
      out = jnp.einsum("...d,dv->...v", hidden, self.lm_head[...].astype(dt), preferred_element_type=jnp.float32)
    return out.astype(jnp.float32)

  def hidden(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    """Final-normed hidden states [B, T, D] of the full causal forward (for chunked log-prob heads)."""
    _check_2d(tokens=tokens, positions=positions, mask=mask)
    t = tokens.shape[1]
    mask = mask.astype(bool)
    causal = jnp.tril(jnp.ones((t, t), bool))
    attn_mask = causal[None] & mask[:, None, :] & mask[:, :, None]
    x = self.embed_tokens(tokens)
    for block in self.layers:
      if self.cfg.remat:  # keep only block inputs for the backward pass; recompute the rest
        x = nnx.remat(_call_block)(block, x, positions, attn_mask)
      else:
        x = block(x, positions, attn_mask)
    return self.final_norm(x)

  # ------------------------------------------------------------------ entry points

  def __call__(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    """tokens, positions: [B, T] int; mask: [B, T] bool (False = padding) -> logits [B, T, V] float32."""
    return self.logits(self.hidden(tokens, positions, mask))

  def extend(self, tokens: jax.Array, valid: jax.Array, cache: KVCache, kv_len: int | None = None,
             last_only: bool = False) -> tuple[jax.Array, KVCache]:
    """Appends each row's valid tokens to its cache row and returns their logits.

    Row b's valid tokens (in order; valid[b] is normally a prefix of True) go to slots length[b] .. length[b]+n_b-1,
    with RoPE position = slot; each attends to the row's slots <= its own; length += n_b. `kv_len` (static int,
    default capacity) limits attention to the first kv_len slots: callers must keep length + n_b <= kv_len and
    <= capacity (slots past capacity are dropped). Returns logits [B, T, V] float32 (rows of invalid tokens are
    finite garbage), or [B, V] for each row's last valid token when `last_only` (rows with n_b = 0: garbage).
    To run only some rows, cut a working cache with `kv_cache.take_rows` and write it back with `put_rows`.
    """
    _check_2d(tokens=tokens, valid=valid)
    if tokens.shape[0] != cache.batch:
      raise ValueError(f"extend: tokens batch {tokens.shape[0]} != cache batch {cache.batch}")
    capacity = cache.capacity
    kv_len = capacity if kv_len is None else int(kv_len)
    if not 0 < kv_len <= capacity:
      raise ValueError(f"extend: kv_len={kv_len} must be in [1, capacity={capacity}]")
    valid = valid.astype(bool)
    rank = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1  # index of each valid token among the row's new ones
    n_new = rank[:, -1] + 1
    positions = cache.length[:, None] + jnp.maximum(rank, 0)
    slots = jnp.where(valid, positions, capacity)  # invalid -> out of range -> dropped by the scatter
    new_length = cache.length + n_new
    key = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :]
    mask = (key <= positions[:, :, None]) & (key < new_length[:, None, None]) & valid[:, :, None]

    x = self.embed_tokens(tokens)
    ks, vs = list(cache.k), list(cache.v)
    for i, block in enumerate(self.layers):
      x, ks[i], vs[i] = block.extend(x, positions, slots, mask, ks[i], vs[i], kv_len)
    if last_only:
      last = jnp.maximum(n_new - 1, 0)
      idx = jnp.argmax(jnp.where(valid, rank, -1) == last[:, None], axis=1)
      x = jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
    logits = self.logits(self.final_norm(x))
    return logits, KVCache(tuple(ks), tuple(vs), new_length)


def _call_block(block: Block, x, positions, mask):
  return block(x, positions, mask)


def _check_2d(**arrays):
  shapes = {k: tuple(v.shape) for k, v in arrays.items()}
  first = next(iter(shapes.values()))
  for name, shape in shapes.items():
    if len(shape) != 2 or shape != first:
      raise ValueError(f"{name} has shape {shape}; expected [B, T] matching {first} ({shapes})")


def forward_fn(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array, positions: jax.Array,
               mask: jax.Array) -> jax.Array:
  """Functional full forward: nnx.merge(graphdef, params)(tokens, positions, mask). Jit-friendly."""
  return nnx.merge(graphdef, params)(tokens, positions, mask)


def extend_fn(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array, valid: jax.Array, cache: KVCache,
              kv_len: int | None = None, last_only: bool = False) -> tuple[jax.Array, KVCache]:
  """Functional extend; jit it with static kv_len/last_only and donate the cache."""
  return nnx.merge(graphdef, params).extend(tokens, valid, cache, kv_len=kv_len, last_only=last_only)


def create_model(cfg: ModelConfig, seed: int = 0, mesh: jax.sharding.Mesh | None = None) -> Transformer:
  """A freshly initialised Transformer built by one jitted program. With `mesh`, parameters are created directly on
  their shardings, so a large model never exists unsharded on one device (use this for from-scratch runs at scale).
  Same values as eager ``Transformer(cfg, rngs=nnx.Rngs(seed))`` up to float rounding of the fused normal draw."""
  graphdef, abs_state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed))))
  out_shardings = None if mesh is None else param_shardings(abs_state, mesh)

  @functools.partial(jax.jit, out_shardings=out_shardings)
  def init():
    return nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))[1]

  return nnx.merge(graphdef, init())
