"""Mesh (data, fsdp, tensor) on 8 simulated CPU devices: sharded forward, gradient step and KV-cached decode equal the
single-device results, and parameters really are sharded."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rods_jax.models import Transformer, create_model, extend_fn, forward_fn, get_preset, init_cache
from rods_jax.models.kv_cache import cache_shardings
from rods_jax.sharding import batch_sharding, constrain, make_mesh, shard_model

V = 64


def _mesh_cfg(data, fsdp, tensor):
  c = ml_collections.ConfigDict()
  c.data, c.fsdp, c.tensor = data, fsdp, tensor
  return c


def _cfg():
  return get_preset("lab_tiny", vocab_size=V, hidden=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8,
                    mlp_dim=48, init_std=0.2, tie_embeddings=False)


def _batch(seed=0, b=4, t=10):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (b, t)).astype(np.int32)
  mask = np.arange(t)[None] < np.array([10, 6, 8, 3])[:, None]
  positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
  return tokens, mask, positions


def _loss(graphdef, params, tokens, mask, positions):
  logits = nnx.merge(graphdef, params)(tokens, positions, mask)
  tgt_mask = mask[:, 1:] & mask[:, :-1]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
  return jnp.sum(ce * tgt_mask) / jnp.sum(tgt_mask)


def _train_step(graphdef, params, tokens, mask, positions):
  loss, grads = jax.value_and_grad(_loss, argnums=1)(graphdef, params, tokens, mask, positions)
  new = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
  return loss, new, _loss(graphdef, new, tokens, mask, positions)


def test_make_mesh_sizes_and_errors():
  assert jax.device_count() == 8
  mesh = make_mesh(_mesh_cfg(2, -1, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(make_mesh(_mesh_cfg(1, -1, 1)).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(ValueError, match="config.mesh"):
    make_mesh(_mesh_cfg(3, -1, 1))
  with pytest.raises(ValueError, match=r"2\*2\*1 = 4 != 8"):
    make_mesh(_mesh_cfg(2, 2, 1))
  with pytest.raises(ValueError, match="config.mesh.tensor"):
    make_mesh(_mesh_cfg(1, -1, 0))
  one = make_mesh(_mesh_cfg(1, -1, 1), devices=jax.devices()[:1])
  assert one.size == 1
  x = jnp.ones((4, 3, 32))
  with jax.set_mesh(one):
    assert constrain(x, ("act_batch", "act_seq", "act_embed")) is x


def test_sharded_forward_and_grad_step_equal_single_device():
  cfg = _cfg()
  ref_model = Transformer(cfg, rngs=nnx.Rngs(0))
  graphdef, ref_params = nnx.split(ref_model)
  tokens, mask, positions = _batch()
  step = jax.jit(_train_step, static_argnums=0)
  fwd = jax.jit(forward_fn, static_argnums=0)
  ref_logits = np.asarray(fwd(graphdef, ref_params, tokens, positions, mask))
  ref_loss, ref_new, ref_loss2 = step(graphdef, ref_params, tokens, mask, positions)

  mesh = make_mesh(_mesh_cfg(2, 2, 2))
  model = shard_model(Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  # parameters really are sharded
  gate = model.layers[0].mlp.gate[...]
  assert gate.sharding.spec == P("fsdp", "tensor")
  assert gate.addressable_shards[0].data.shape == (cfg.hidden // 2, cfg.mlp_dim // 2)
  assert model.embed[...].sharding.spec == P("tensor", "fsdp")
  assert model.layers[0].attn.q[...].sharding.spec == P("fsdp", "tensor", None)
  assert model.layers[0].attn.o[...].sharding.spec == P("tensor", None, "fsdp")
  assert model.layers[0].attn_norm.scale[...].sharding.spec == P(None)
  _, params = nnx.split(model)
  data = [jax.device_put(a, batch_sharding(mesh)) for a in (tokens, mask, positions)]
  assert data[0].sharding.spec == P(("data", "fsdp"), None)
  with jax.set_mesh(mesh):
    logits = fwd(graphdef, params, data[0], data[2], data[1])
    loss, new, loss2 = step(graphdef, params, *data)
  np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-5)
  np.testing.assert_allclose(float(loss), float(ref_loss), atol=1e-5)
  np.testing.assert_allclose(float(loss2), float(ref_loss2), atol=1e-5)
  assert float(loss2) < float(loss)  # the step did something
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref_new)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  # updated params keep a sharded layout
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in jax.tree.leaves(new))


def test_sharded_kv_cache_decode_equals_single_device(tmp_path):
  cfg = _cfg()
  mesh = make_mesh(_mesh_cfg(2, 2, 2))
  ref_model = Transformer(cfg, rngs=nnx.Rngs(3))
  graphdef, ref_params = nnx.split(ref_model)
  model = shard_model(Transformer(cfg, rngs=nnx.Rngs(3)), mesh)
  _, params = nnx.split(model)
  tokens, mask, _ = _batch(seed=2)
  fn = jax.jit(extend_fn, static_argnums=(0, 5, 6), donate_argnums=(4,))

  def run(p, sharded):
    cache = init_cache(cfg, 4, 16, mesh=mesh if sharded else None)  # born sharded: rows and kv heads split
    outs = []
    for lo, hi in ((0, 4), (4, 5), (5, 9)):
      lg, cache = fn(graphdef, p, jnp.asarray(tokens[:, lo:hi]), jnp.asarray(mask[:, lo:hi]), cache, 16, False)
      outs.append(np.asarray(lg))
    return outs, cache

  ref, _ = run(ref_params, False)
  with jax.set_mesh(mesh):
    got, cache = run(params, True)
  want = cache_shardings(cfg, 4, 16, mesh)
  assert want.k[0].spec == P(("data", "fsdp"), "tensor", None, None)
  for a, sh in zip(cache.k + cache.v, want.k + want.v):
    assert a.sharding.is_equivalent_to(sh, a.ndim)  # the donated layout is kept
  for a, b in zip(got, ref):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_remat_gives_identical_loss_and_gradients():
  cfg = _cfg()
  tokens, mask, positions = _batch(seed=4)
  out = []
  for remat in (False, True):
    graphdef, params = nnx.split(Transformer(cfg.replace(remat=remat), rngs=nnx.Rngs(5)))
    lowered = jax.jit(jax.value_and_grad(_loss, argnums=1), static_argnums=0).lower(graphdef, params, tokens,
                                                                                     mask, positions)
    assert ("optimization_barrier" in lowered.as_text()) == remat  # remat really recomputes
    out.append(lowered.compile()(params, tokens, mask, positions))
  (l0, g0), (l1, g1) = out
  assert float(l0) == float(l1)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_create_model_initialises_directly_on_the_mesh():
  cfg = _cfg()
  mesh = make_mesh(_mesh_cfg(2, 2, 2))
  model = create_model(cfg, seed=7, mesh=mesh)
  eager = Transformer(cfg, rngs=nnx.Rngs(7))
  up = model.layers[0].mlp.up[...]
  assert up.sharding.spec == P("fsdp", "tensor") and up.addressable_shards[0].data.shape == (16, 24)
  assert model.lm_head[...].sharding.spec == P("fsdp", "tensor")
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(eager))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)  # same draw as eager construction
  std = float(np.asarray(up).std())
  assert abs(std - cfg.init_std) < 0.02, std
