"""Checkpoints: exact resume, restore onto another mesh, keep-last-N, host state, bad input."""
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rods_jax import checkpoint as ckpt_lib


class _MLP(nnx.Module):
  """Independent of rods_jax.models on purpose: this file tests only the checkpoint plumbing."""

  def __init__(self, rngs):
    self.l1 = nnx.Linear(16, 32, rngs=rngs)
    self.l2 = nnx.Linear(32, 8, rngs=rngs)

  def __call__(self, x):
    return self.l2(jax.nn.gelu(self.l1(x)))


def _cfg(keep=3, every=1, async_save=True):
  c = ml_collections.ConfigDict()
  c.every_steps = every
  c.keep = keep
  c.async_save = async_save
  return c


_TX = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, weight_decay=0.01))


def _init(seed=0):
  graphdef, params = nnx.split(_MLP(nnx.Rngs(seed)), nnx.Param)
  return graphdef, params


def _make_step(graphdef, placed=None):
  """A jitted train step; ``placed`` = (params, opt_state, rng) whose shardings the outputs keep, as a learner does."""

  def step(params, opt_state, ref_params, rng):
    # The batch comes from the carried key, so a wrongly restored key changes the trajectory.
    rng, sub = jax.random.split(rng)
    kx, ky = jax.random.split(sub)
    x = jax.random.normal(kx, (32, 16))
    y = jax.random.normal(ky, (32, 8))

    def loss_fn(p):
      pred = nnx.merge(graphdef, p)(x)
      ref = nnx.merge(graphdef, ref_params)(x)
      return jnp.mean((pred - y) ** 2) + 0.01 * jnp.mean((pred - ref) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = _TX.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, rng, loss

  if placed is None:
    return jax.jit(step)
  shardings = tuple(jax.tree.map(lambda x: x.sharding, t) for t in placed)
  return jax.jit(step, out_shardings=(*shardings, None))


def _shard(tree, mesh, spec_for):
  return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec_for(x))), tree)


def _spec_fsdp(x):
  return P(None, "fsdp") if x.ndim == 2 else P()


def _spec_tensor(x):
  return P("data", "tensor") if x.ndim == 2 and x.shape[0] % 2 == 0 else P()


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_continue_is_bit_identical(tmp_path):
  mesh = Mesh(np.array(jax.devices()).reshape(8), ("fsdp",))
  graphdef, params0 = _init()

  def fresh():
    params = _shard(params0, mesh, _spec_fsdp)
    ref = jax.tree.map(jnp.copy, params)
    # Scalars (adam's count) replicated on the mesh, as a learner places them.
    return params, _shard(_TX.init(params), mesh, _spec_fsdp), ref, _shard(jax.random.key(7), mesh, _spec_fsdp)

  # Uninterrupted: 6 steps.
  params, opt, ref, rng = fresh()
  step = _make_step(graphdef, (params, opt, rng))
  losses = []
  for _ in range(6):
    params, opt, rng, loss = step(params, opt, ref, rng)
    losses.append(float(loss))
  full_params = params

  # Interrupted: 3 steps, save (async), keep training in memory for 1 step (must not corrupt the save), restore.
  params, opt, ref, rng = fresh()
  np_rng = np.random.default_rng(3)
  np_rng.random(5)
  with ckpt_lib.CheckpointManager(tmp_path / "ckpt", _cfg()) as manager:
    for i in range(3):
      params, opt, rng, _ = step(params, opt, ref, rng)
    assert manager.save(ckpt_lib.TrainState(3, params, opt, ref, rng),
                        {"np_rng": ckpt_lib.numpy_rng_state(np_rng), "buffer": {"ids": [1, 2], "pos": 9}})
    step(params, opt, ref, rng)  # keeps the device busy while the async write runs
  expected_np = np_rng.random(4)
  assert ckpt_lib.latest_step(tmp_path / "ckpt") == 3

  params, opt, ref, rng = fresh()  # a new process would start exactly like this
  with ckpt_lib.CheckpointManager(tmp_path / "ckpt", _cfg()) as manager:
    restored = manager.restore(ckpt_lib.TrainState(0, params, opt, ref, rng))
  state = restored.state
  assert state.step == 3
  assert restored.host_state["buffer"] == {"ids": [1, 2], "pos": 9}
  np.testing.assert_array_equal(ckpt_lib.numpy_rng_from_state(restored.host_state["np_rng"]).random(4), expected_np)
  assert jax.dtypes.issubdtype(state.rng.dtype, jax.dtypes.prng_key)
  params, opt, ref, rng = state.params, state.opt_state, state.ref_params, state.rng
  resumed = []
  for _ in range(3):
    params, opt, rng, loss = step(params, opt, ref, rng)
    resumed.append(float(loss))
  assert resumed == losses[3:]  # bit-identical
  _leaves_equal(params, full_params)
  assert isinstance(params, nnx.State)


def test_restore_onto_another_mesh(tmp_path):
  devices = np.array(jax.devices())
  mesh_a = Mesh(devices.reshape(8), ("fsdp",))
  mesh_b = Mesh(devices.reshape(2, 4), ("data", "tensor"))
  graphdef, params0 = _init(1)
  params = _shard(params0, mesh_a, _spec_fsdp)
  opt = _shard(_TX.init(params), mesh_a, _spec_fsdp)
  # Make the optimizer state non-trivial before saving.
  params, opt, rng, _ = _make_step(graphdef)(params, opt, params, jax.random.key(1))
  with ckpt_lib.CheckpointManager(tmp_path, _cfg(async_save=False)) as manager:
    manager.save(ckpt_lib.TrainState(1, params, opt, None, jax.random.key_data(rng)))

  # Target on mesh B given as abstract arrays only (nothing materialised before restore).
  abstract_params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh_b, _spec_tensor(x))), params0)
  abstract_opt = jax.eval_shape(_TX.init, abstract_params)
  abstract_opt = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh_b, _spec_tensor(x))), abstract_opt)
  target = ckpt_lib.TrainState(0, abstract_params, abstract_opt, None,
                               jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh_b, P())))
  with ckpt_lib.CheckpointManager(tmp_path, _cfg()) as manager:
    state = manager.restore(target).state
  _leaves_equal(state.params, params)
  _leaves_equal(state.opt_state, opt)
  np.testing.assert_array_equal(state.rng, jax.random.key_data(rng))
  kernel = state.params["l1"]["kernel"].value
  assert kernel.sharding.spec == P("data", "tensor") and kernel.sharding.mesh.shape == {"data": 2, "tensor": 4}
  assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (8, 8)
  assert state.ref_params is None


def test_keep_last_n_and_cadence(tmp_path):
  _, params = _init()
  state = ckpt_lib.TrainState(0, params, {"count": jnp.zeros((), jnp.int32)}, None, jax.random.key(0))
  with ckpt_lib.CheckpointManager(tmp_path, _cfg(keep=2, every=2)) as manager:
    saved = [manager.save(state._replace(step=s), {"s": s}) for s in range(7)]
    manager.wait_until_finished()
    assert saved == [True, False, True, False, True, False, True]
    assert manager.save(state._replace(step=7), {"s": 7}, force=True)
    manager.wait_until_finished()
    assert manager.all_steps() == [6, 7]
  assert ckpt_lib.latest_step(tmp_path) == 7
  with ckpt_lib.CheckpointManager(tmp_path, _cfg()) as manager:
    assert manager.restore(state, step=6).host_state == {"s": 6}
    with pytest.raises(FileNotFoundError, match="step 2"):
      manager.restore(state, step=2)


def test_host_state_round_trip_exact(tmp_path):
  rng = np.random.default_rng(11)
  host = {
      "buffer": {"tasks": [{"id": f"t{i}", "history": rng.random(3).tolist(), "lineage": {"parent": None}}
                           for i in range(5)], "epoch": 4},
      "synth_log": {"path": "runs/x/synth.jsonl", "offset": 12345},
      "np_rng": ckpt_lib.numpy_rng_state(rng),
  }
  _, params = _init()
  state = ckpt_lib.TrainState(5, params, (), None, jax.random.key(2))
  with ckpt_lib.CheckpointManager(tmp_path, _cfg()) as manager:
    manager.save(state, host)
  with ckpt_lib.CheckpointManager(tmp_path, _cfg()) as manager:
    out = manager.restore(state)
  assert json.dumps(out.host_state, sort_keys=True) == json.dumps(host, sort_keys=True)


def test_bad_input_is_named(tmp_path):
  _, params = _init()
  state = ckpt_lib.TrainState(1, params, (), None, jax.random.key(0))
  assert ckpt_lib.latest_step(tmp_path / "missing") is None
  with pytest.raises(ValueError, match="config.checkpoint.keep"):
    ckpt_lib.CheckpointManager(tmp_path, _cfg(keep=0))
  with ckpt_lib.CheckpointManager(tmp_path, _cfg()) as manager:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
      manager.restore(state)
    with pytest.raises(ValueError, match=r"host_state\['buffer'\] is not JSON-able"):
      manager.save(state, {"buffer": {"ids": np.arange(3)}})
    manager.save(state)
  with ckpt_lib.CheckpointManager(tmp_path, _cfg()) as manager:
    with pytest.raises(ValueError, match="ref_params"):
      manager.restore(state._replace(ref_params=params))
    with pytest.raises(ValueError, match="rng"):
      manager.restore(state._replace(rng=jnp.zeros((2,), jnp.uint32)))
    with pytest.raises(ValueError, match=r"\['l1'\]\['bias'\]"):
      manager.restore(state._replace(params=jax.tree.map(np.asarray, params)))


def test_restore_params_alone(tmp_path):
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "tensor"))
  graphdef, params = _init(4)
  params = _shard(params, mesh, _spec_tensor)
  opt = _shard(_TX.init(params), mesh, _spec_tensor)
  params, opt, rng, _ = _make_step(graphdef)(params, opt, params, jax.random.key(4))
  with ckpt_lib.CheckpointManager(tmp_path, _cfg(async_save=False)) as manager:
    manager.save(ckpt_lib.TrainState(9, params, opt, params, rng))
  # An evaluator knows only the model: a fresh, differently initialised one on a single device.
  _, target = _init(5)
  with ckpt_lib.CheckpointManager(tmp_path, _cfg()) as manager:
    got = manager.restore_params(jax.tree.map(lambda x: jax.device_put(x, jax.devices()[0]), target))
  _leaves_equal(got, params)
  assert got["l2"]["kernel"].value.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])


def test_async_save_survives_donation_of_the_saved_buffers(tmp_path):
  """The learner's step donates its state: an async save must have copied the arrays before save() returns."""
  _, params = _init(6)
  expected = jax.tree.map(np.asarray, params)
  update = jax.jit(lambda p: jax.tree.map(lambda x: x * 0.0 - 7.0, p), donate_argnums=0)
  with ckpt_lib.CheckpointManager(tmp_path, _cfg(async_save=True)) as manager:
    manager.save(ckpt_lib.TrainState(1, params, (), None, jax.random.key(0)))
    params = update(params)  # the saved buffers are donated (freed / overwritten) while the write may still run
    jax.block_until_ready(params)
  _, target = _init(7)
  with ckpt_lib.CheckpointManager(tmp_path, _cfg()) as manager:
    got = manager.restore(ckpt_lib.TrainState(0, target, (), None, jax.random.key(1))).state.params
  _leaves_equal(got, expected)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _largest_chunk(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "params")) for f in fs
           if os.sep + "d" + os.sep in os.path.join(r, f)]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("corrupt", ["params_chunk", "host_metadata"])
def test_a_truncated_newest_step_falls_back_to_the_newest_readable_one(tmp_path, corrupt, caplog):
  graphdef, params = _init(3)
  opt = _TX.init(params)
  step_fn = _make_step(graphdef)
  rng = jax.random.key(8)
  saved = {}
  with ckpt_lib.CheckpointManager(tmp_path, _cfg(keep=1, async_save=False)) as manager:
    for s in (1, 2, 3):
      params, opt, rng, _ = step_fn(params, opt, params, rng)
      saved[s] = (params, opt, rng)
      manager.save(ckpt_lib.TrainState(s, params, opt, None, rng), {"s": s})
    manager.wait_until_finished()
    assert manager.all_steps() == [3]
  # keep=1 left only step 3; copy step 2 back in from a second directory so there is an older, intact step
  with ckpt_lib.CheckpointManager(tmp_path / "older", _cfg(keep=1, async_save=False)) as manager:
    manager.save(ckpt_lib.TrainState(2, *saved[2][:2], None, saved[2][2]), {"s": 2})
  os.rename(tmp_path / "older" / "2", tmp_path / "2")
  bad_file = (_largest_chunk(str(tmp_path / "3")) if corrupt == "params_chunk"
              else str(tmp_path / "3" / "host" / "metadata"))
  _truncate(bad_file)
  target = ckpt_lib.TrainState(0, _init(9)[1], _TX.init(_init(9)[1]), None, jax.random.key(0))
  caplog.set_level(logging.WARNING)
  with ckpt_lib.CheckpointManager(tmp_path, _cfg(keep=1, async_save=False)) as manager:
    got = manager.restore(target)
    assert got.state.step == 2 and got.host_state == {"s": 2}
    _leaves_equal(got.state.params, saved[2][0])
    _leaves_equal(got.state.opt_state, saved[2][1])
    np.testing.assert_array_equal(jax.random.key_data(got.state.rng), jax.random.key_data(saved[2][2]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    expected_file = bad_file if corrupt == "host_metadata" else str(tmp_path / "3" / "params")
    assert warnings[0].startswith(f"checkpoint step 3: cannot read {expected_file}"), warnings
    assert sorted(os.listdir(tmp_path)) == ["2", "3.corrupt", "older"]  # set aside, not deleted
    # The resumed run writes steps 3 and 4 anew; keep=1 would drop step 2, but it stays while this run lives.
    for s in (3, 4):
      manager.save(ckpt_lib.TrainState(s, *saved[3][:2], None, saved[3][2]), {"s": s})
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 4]
  with ckpt_lib.CheckpointManager(tmp_path, _cfg(keep=1)) as manager:
    assert manager.restore(target).host_state == {"s": 4}


def test_no_readable_step_is_one_clear_error(tmp_path):
  _, params = _init()
  state = ckpt_lib.TrainState(1, params, (), None, jax.random.key(0))
  with ckpt_lib.CheckpointManager(tmp_path, _cfg(async_save=False)) as manager:
    manager.save(state)
  _truncate(str(tmp_path / "1" / "host" / "metadata"))
  with ckpt_lib.CheckpointManager(tmp_path, _cfg()) as manager:
    with pytest.raises(ckpt_lib.UnreadableCheckpoint, match=r"none of the steps \[1\] restores completely"):
      manager.restore(state)
