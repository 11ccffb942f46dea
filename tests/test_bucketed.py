"""Length-bucketed GRPO step == the padded step: same loss, gradient and metrics on a random batch of mixed lengths
(rows of 20 to 384 tokens, a zero-variance group, a row with no sampled token), on one device and on an 8-device
mesh; the bucket planner's invariants; a stale batch with the sampler as behaviour policy makes the ratio and the
clip act."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from rods_jax import sharding
from rods_jax.models import Transformer, get_preset
from rods_jax.rl import bucketed, buckets, grpo_step
from rods_jax.rl import learner as learner_lib
from rods_jax.rl import losses

VOCAB = 48
MODEL = get_preset("lab_tiny", vocab_size=VOCAB, hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                   mlp_dim=64)
B, K, T = 4, 8, 384


def make_config(**grpo):
  c = base.get_config()
  c.grpo.micro_batch = 8  # token budget 8 x 384 per micro-batch
  c.grpo.kl_coef = 0.05
  c.grpo.entropy_coef = 0.01
  c.optim.lr = 1e-3
  for key, value in grpo.items():
    setattr(c.grpo, key, value)
  return c


def mixed_batch(seed: int) -> grpo_step.TrainBatch:
  rng = np.random.default_rng(seed)
  n = B * K
  lengths = rng.integers(20, T + 1, n)
  lengths[rng.integers(n)] = T  # one full-width row
  valid = np.arange(T)[None, :] < lengths[:, None]
  tokens = np.where(valid, rng.integers(0, VOCAB, (n, T)), 0).astype(np.int32)
  loss_mask = valid & (rng.random((n, T)) < 0.5) & (np.arange(T)[None, :] >= 4)
  loss_mask[5] = False  # a row with no sampled token
  rewards = rng.uniform(0, 1, (B, K)).astype(np.float32)
  rewards[2] = 0.75  # a zero-variance group
  sampler = np.where(loss_mask, -rng.uniform(0.5, 4.0, (n, T)), 0.0).astype(np.float32)
  return grpo_step.TrainBatch(tokens, loss_mask, valid, sampler, rewards)


def rel_err(a, b) -> float:
  num = sum(float(jnp.sum(jnp.square(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  den = sum(float(jnp.sum(jnp.square(y))) for y in jax.tree.leaves(b))
  return (num / den) ** 0.5


# ------------------------------------------------------------------------------------------------------ planner
def test_plan_covers_every_row_once_within_its_bucket():
  rng = np.random.default_rng(0)
  lengths = rng.integers(0, 385, 64)
  for updates, n_micro, rows in ((1, 8, 8), (2, 4, 8), (1, 2, 32)):
    plans = buckets.plan_batch(lengths, updates=updates, n_micro=n_micro, rows=rows, bucket=64, max_len=384)
    which = buckets.update_of_rows(64, updates, n_micro)
    seen, shapes = [], set()
    for u, update in enumerate(plans):
      for p in update:
        real = p.rows[p.rows >= 0]
        assert len(p.rows) == rows and p.length % 64 == 0 and p.length <= 384
        assert (lengths[real] <= p.length).all() and (which[real] == u).all()
        assert p.length - 64 < lengths[real].max()  # the smallest bucket that holds the longest row
        seen.extend(real.tolist())
        shapes.add((len(p.rows), p.length))
    assert sorted(seen) == list(range(64)) and len(shapes) <= 384 // 64
    # lengths uniform in [0, 384]: 8 micro-batches of 8 rows compute 0.65 of the padded slots, 2 of 32 rows 0.83
    assert buckets.padded_token_slots(plans) <= {8: 0.72, 32: 0.84}[rows] * 64 * 384
  assert buckets.bucket_length(0, 64, 384) == 64 and buckets.bucket_length(385, 64, 384) == 384
  assert buckets.bucket_length(65, 64, 384) == 128 and buckets.bucket_length(64, 64, 384) == 64
  part = buckets.plan_update(np.arange(5), lengths, rows=4, bucket=64, max_len=384)
  assert [len(p.rows) for p in part] == [4, 4] and (part[1].rows[1:] == -1).all()  # a partial one is filled


# ------------------------------------------------------------------------------------------------------ equality
def padded_gradients(graphdef, params, ref_params, batch, step_cfg):
  cfg = step_cfg.grpo_cfg()

  @jax.jit
  def run(params, ref_params, batch):
    prep = grpo_step.prepare(batch, cfg, 0.2, 0.85)
    rows = {k: v[0] for k, v in prep.rows.items()}
    rows["ref"] = grpo_step.forward_logps(graphdef, ref_params, rows, 1.0)
    return grpo_step.accumulate_gradients(graphdef, params, rows, cfg)

  return run(params, ref_params, jax.tree.map(jnp.asarray, batch))


def bucketed_gradients(graphdef, params, ref_params, batch, step_cfg, put):
  hb = bucketed.host_batch(batch)
  _, adv, active, _ = bucketed.prepare_groups(jnp.asarray(hb.rewards), jnp.asarray(hb.valid.sum(1)),
                                              jnp.asarray(hb.mask.sum(1)), jnp.zeros((), jnp.int32),
                                              step_cfg=step_cfg)
  plans = bucketed.plan(hb, step_cfg.grpo_cfg(), 64)
  assert len(plans[0]) > 2 and len({p.length for p in plans[0]}) > 2  # several buckets really exercised
  micros = bucketed.device_micro_batches(hb, plans, put)
  grads, out = bucketed.accumulate(graphdef, params, ref_params, micros[0], adv, active, step_cfg)
  count = out.loss.count
  return jax.tree.map(lambda g: g / count, grads), out


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_bucketed_gradient_and_loss_equal_padded(mesh_shape):
  c = make_config()
  graphdef, params = nnx.split(Transformer(MODEL, rngs=nnx.Rngs(0)))
  _, ref_params = nnx.split(Transformer(MODEL, rngs=nnx.Rngs(1)))
  step_cfg = grpo_step.make_step_config(c.optim, c.grpo, c.rods)
  batch = mixed_batch(0)
  want_grads, want_out = padded_gradients(graphdef, params, ref_params, batch, step_cfg)  # scaled by 1 / count
  if mesh_shape is None:
    put, ctx = jnp.asarray, None
  else:
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh_shape
    mesh = sharding.make_mesh(c.mesh)
    put = lambda x: learner_lib.global_array(x, sharding.batch_sharding(mesh, x.ndim))  # noqa: E731
    ctx = mesh
    params = jax.device_put(params, sharding.param_shardings(params, mesh))
    ref_params = jax.device_put(ref_params, sharding.param_shardings(ref_params, mesh))
  with jax.set_mesh(ctx) if ctx is not None else _null():
    grads, out = bucketed_gradients(graphdef, params, ref_params, batch, step_cfg, put)
  got_loss, got_metrics = losses.reduce(out)
  want_loss, want_metrics = losses.reduce(want_out)
  assert abs(float(want_loss)) > 1e-3
  assert float(got_loss) == pytest.approx(float(want_loss), rel=1e-5)
  assert rel_err(grads, want_grads) <= 1e-5
  for key in want_metrics:
    assert float(got_metrics[key]) == pytest.approx(float(want_metrics[key]), rel=1e-5, abs=1e-6), key


class _null:
  def __enter__(self):
    return None

  def __exit__(self, *exc):
    return False


@pytest.mark.parametrize("updates", [1, 2])
def test_learner_step_bucketed_equals_padded(updates):
  metrics, params = {}, {}
  for layout in ("padded", "bucketed"):
    c = make_config(layout=layout, updates_per_batch=updates)
    learner = learner_lib.GRPOLearner(Transformer(MODEL, rngs=nnx.Rngs(0)), c.optim, c.grpo, c.rods)
    _, ref_params = nnx.split(Transformer(MODEL, rngs=nnx.Rngs(1)))
    learner.state = learner.state._replace(ref_params=ref_params)
    for seed in (0, 1):
      metrics[layout], stats = learner.step(mixed_batch(seed))
    params[layout] = learner.params
    assert learner.num_updates == 2 * updates and stats.zero_std.tolist() == [False, False, True, False]
  assert metrics["bucketed"]["token_slots"] < (0.75 if updates == 1 else 0.85) * metrics["padded"]["token_slots"]
  for key, want in metrics["padded"].items():
    if key != "token_slots":
      assert metrics["bucketed"][key] == pytest.approx(want, rel=1e-4, abs=1e-6), key
  # up to four Adam steps: entries with |g| near Adam's eps amplify float32 noise (a step is ≈ lr·sign(g)), hence
  # an absolute tolerance of lr / 10
  for x, y in zip(jax.tree.leaves(params["bucketed"]), jax.tree.leaves(params["padded"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["padded", "bucketed"])
def test_stale_batch_with_sampler_behaviour_makes_the_ratio_and_clip_act(layout):
  """A batch whose sampler log-probs differ from the current policy's (as when it was sampled by an older policy):
  with behaviour="sampler" they are the behaviour policy, so ratio ≠ 1 and tokens are clipped; with the default
  behaviour (the current policy) the same batch trains at ratio 1; the sampler's own log-probs give ratio 1 too."""
  c = make_config(layout=layout, kl_coef=0.0, entropy_coef=0.0)
  graphdef, params = nnx.split(Transformer(MODEL, rngs=nnx.Rngs(0)))
  batch = mixed_batch(2)
  own = np.asarray(jax.jit(lambda p, t, v: grpo_step.logprobs.token_scores(graphdef, p, t, v).logps)(
      params, jnp.asarray(batch.tokens), jnp.asarray(batch.valid)))
  drift = np.random.default_rng(7).normal(0.0, 0.5, own.shape)  # log π_old − log π_θ per token
  stale_batch = batch._replace(sampler_logps=np.where(batch.loss_mask, own + drift, 0.0).astype(np.float32))
  fresh_batch = batch._replace(sampler_logps=np.where(batch.loss_mask, own, 0.0).astype(np.float32))

  def run(b, behaviour):
    learner = learner_lib.GRPOLearner(Transformer(MODEL, rngs=nnx.Rngs(0)), c.optim, c.grpo, c.rods,
                                      behaviour=behaviour)
    return learner.step(b)[0]

  m = run(stale_batch, "sampler")
  assert m["log_ratio_abs"] > 0.3 and m["clip_frac_low"] > 0.05 and m["clip_frac_high"] > 0.05
  # the staleness, logged (over every sampled token; log_ratio_abs only over rows of informative groups)
  assert m["sampler/logp_absdiff_mean"] == pytest.approx(m["log_ratio_abs"], rel=0.05)
  m0 = run(stale_batch, "current")
  assert m0["ratio_mean"] == pytest.approx(1.0) and m0["clip_frac_low"] + m0["clip_frac_high"] == 0.0
  m1 = run(fresh_batch, "sampler")
  assert m1["ratio_mean"] == pytest.approx(1.0, abs=1e-4) and m1["clip_frac_low"] + m1["clip_frac_high"] == 0.0
