"""Two processes x 4 CPU devices under jax.distributed == one process x 8 devices.

The test starts two copies of this file as workers (``python tests/test_multihost.py WORKER ...``) on a localhost
coordinator. Both run a few sharded train steps of the real rods_jax Transformer on a (data=2, fsdp=2, tensor=2) mesh
spanning the two processes, gather the parameters, and save an Orbax checkpoint from both processes; then both run
the multi-turn engine with its rows spread over that mesh. The test then runs the same steps and rollouts in-process
on its 8 simulated devices and checks losses, parameters and trajectories agree, and that the multi-process
checkpoint restores here onto a different mesh.
"""
import os
import socket
import subprocess
import sys

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STEPS = 3


def _train(steps):
  """Runs ``steps`` sharded train steps over all global devices; returns (losses, params State, opt_state)."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  import optax
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P

  from rods_jax import sharding
  from rods_jax.models import Transformer, get_preset

  mesh_cfg = ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
  mesh = sharding.make_mesh(mesh_cfg)
  cfg = get_preset("lab_tiny", vocab_size=96, hidden=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8,
                   mlp_dim=64)
  model = sharding.shard_model(Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.sgd(0.5, momentum=0.9)  # not adam: it turns float-rounding noise in ~0 gradients into O(lr) steps
  param_sh = jax.tree.map(lambda x: x.sharding, params)
  # Optimizer-state copies of the parameter tree take the parameters' shardings; anything else is replicated.
  opt_out_sh = optax.tree_utils.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, params), param_sh,
                                                transform_non_params=lambda _: NamedSharding(mesh, P()))
  opt_state = jax.jit(tx.init, out_shardings=opt_out_sh)(params)
  opt_sh = jax.tree.map(lambda x: x.sharding, opt_state)

  rng = np.random.default_rng(0)
  b, t = 16, 24
  tokens = rng.integers(0, cfg.vocab_size, (b, t)).astype(np.int32)  # one batch, fitted for a few steps
  lengths = rng.integers(t // 2, t + 1, (b,))
  mask = np.arange(t)[None, :] < lengths[:, None]  # right padding on most rows
  positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
  batch_sh = sharding.batch_sharding(mesh)

  def global_array(x):  # each process supplies only its addressable shards
    return jax.make_array_from_callback(x.shape, batch_sh, lambda idx: x[idx])

  def loss_fn(p, tok, pos, m):
    logits = nnx.merge(graphdef, p, rest)(tok, pos, m)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, tok[:, 1:, None], axis=-1)[..., 0]
    w = (m[:, 1:] & m[:, :-1]).astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.sum(w)

  @jax.jit
  def step(p, o, tok, pos, m):
    loss, grads = jax.value_and_grad(loss_fn)(p, tok, pos, m)
    updates, o = tx.update(grads, o, p)
    p = optax.apply_updates(p, updates)
    return jax.lax.with_sharding_constraint(p, param_sh), jax.lax.with_sharding_constraint(o, opt_sh), loss

  losses = []
  with jax.set_mesh(mesh):
    for _ in range(steps):
      params, opt_state, loss = step(params, opt_state, global_array(tokens), global_array(positions),
                                     global_array(mask))
      losses.append(float(loss))
  kernel = jax.tree.leaves(params)[0]
  assert isinstance(kernel.sharding, NamedSharding) and kernel.sharding.spec != P()
  return np.asarray(losses), params, opt_state


def _rollout():
  """Greedy engine rollouts (test_engine's scripted tasks, K = 4) with the rows spread over the (2, 2, 2) mesh."""
  import jax
  import ml_collections
  from flax import nnx

  import test_engine as te
  from rods_jax import sharding
  from rods_jax.models import Transformer, get_preset
  from rods_jax.rollout.engine import MultiTurnEngine
  from rods_jax.rollout.render import ChatRenderer
  from rods_jax.rollout.sampling import SamplingParams

  tok = te._bpe_tokenizer()
  cfg = get_preset("lab_tiny", vocab_size=len(tok), hidden=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                   mlp_dim=64, init_std=0.3)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
  graphdef, params = nnx.split(sharding.shard_model(Transformer(cfg, rngs=nnx.Rngs(1)), mesh))
  rcfg = te._rollout_cfg(kv_bucket=128, prefill_bucket=32, min_stopped_frac=0.3, compact_min_rows=1)
  engine = MultiTurnEngine(graphdef, tok, ChatRenderer(tok), rcfg, cfg, mesh=mesh)
  assert engine.placement.row_multiple == 4
  batch = engine.rollout(params, te.ScriptedEnv(), te.TASKS, 4, jax.random.key(0),
                         sampling=SamplingParams(temperature=0.0))
  return {"tokens": batch.tokens, "loss_mask": batch.loss_mask, "sampler_logps": batch.sampler_logps}


def _flat(tree):
  import jax
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _worker(process_id, port, out_dir):
  from launch import distributed

  distributed.initialize(distributed.resolve("env", f"127.0.0.1:{port}", 2, process_id, {}))
  import jax
  import ml_collections
  from jax.experimental import multihost_utils

  from rods_jax import checkpoint

  jax.config.update("jax_default_matmul_precision", "highest")
  assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
  losses, params, opt_state = _train(_STEPS)
  gathered = multihost_utils.process_allgather(params, tiled=True)
  ckpt_cfg = ml_collections.ConfigDict({"every_steps": 1, "keep": 1, "async_save": True})
  with checkpoint.CheckpointManager(os.path.join(out_dir, "ckpt"), ckpt_cfg) as manager:
    manager.save(checkpoint.TrainState(_STEPS, params, opt_state, None, jax.random.key_data(jax.random.key(0))),
                 {"process_count": jax.process_count()})
  np.savez(os.path.join(out_dir, f"result_{process_id}.npz"), losses=losses, **_flat(gathered))
  np.savez(os.path.join(out_dir, f"rollout_{process_id}.npz"), **_rollout())


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  import jax
  import ml_collections
  from flax import nnx

  from rods_jax import checkpoint

  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "WORKER", str(i), str(port), str(tmp_path)],
                            env=env, cwd=_REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"worker {i} failed:\n{out[-4000:]}"

  losses, params, opt_state = _train(_STEPS)  # the same steps on this process's 8 devices
  expected = _flat(params)
  for i in range(2):
    got = dict(np.load(tmp_path / f"result_{i}.npz"))
    np.testing.assert_allclose(got.pop("losses"), losses, rtol=1e-5, atol=1e-6)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
      np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  assert losses[-1] < losses[0]  # it trained

  # Both processes produced the rollouts this process produces on its 8 devices.
  rollout = _rollout()
  for i in range(2):
    got = dict(np.load(tmp_path / f"rollout_{i}.npz"))
    np.testing.assert_array_equal(got["tokens"], rollout["tokens"])
    np.testing.assert_array_equal(got["loss_mask"], rollout["loss_mask"])
    np.testing.assert_allclose(got["sampler_logps"], rollout["sampler_logps"], atol=1e-5)

  # The checkpoint written jointly by both processes restores here, replicated on one device.
  device = jax.devices()[0]
  on_one = lambda tree: jax.tree.map(lambda x: jax.device_put(x, device), tree)  # noqa: E731
  target = checkpoint.TrainState(0, on_one(params), on_one(opt_state), None,
                                 jax.device_put(jax.random.key_data(jax.random.key(1)), device))
  ckpt_cfg = ml_collections.ConfigDict({"every_steps": 1, "keep": 1, "async_save": False})
  with checkpoint.CheckpointManager(tmp_path / "ckpt", ckpt_cfg) as manager:
    restored = manager.restore(target)
  assert restored.state.step == _STEPS and restored.host_state == {"process_count": 2}
  assert isinstance(restored.state.params, nnx.State)
  for name, value in _flat(restored.state.params).items():
    np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
  np.testing.assert_array_equal(restored.state.rng, jax.random.key_data(jax.random.key(0)))


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "WORKER":
  _worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
