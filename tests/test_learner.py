"""GRPO learner: exact gradient accumulation, the update vs an independent reference, 8-device sharding == 1 device,
zero-signal batches, and reward rising on a trivially learnable task."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from rods_jax import sharding
from rods_jax.models import Transformer, forward_fn, get_preset
from rods_jax.rl import grpo_step
from rods_jax.rl import learner as learner_lib
from rods_jax.rl import losses

VOCAB = 32
MODEL = get_preset("lab_tiny", vocab_size=VOCAB, hidden=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8,
                   mlp_dim=64)
B, K, T = 4, 4, 12


def make_model(seed: int = 0) -> Transformer:
  return Transformer(MODEL, rngs=nnx.Rngs(seed))


def make_config(**grpo):
  c = base.get_config()
  c.grpo.micro_batch = 4  # 16 rows -> 4 micro-batches
  c.grpo.kl_coef = 0.05
  c.grpo.entropy_coef = 0.01
  c.grpo.logit_chunk = 5  # chunked LM head (11 predicted positions -> 3 chunks, one padded); the reference is not
  c.optim.lr = 1e-2
  c.optim.weight_decay = 0.1
  for key, value in grpo.items():
    setattr(c.grpo, key, value)
  return c


def random_batch(seed: int) -> grpo_step.TrainBatch:
  rng = np.random.default_rng(seed)
  n = B * K
  lengths = rng.integers(6, T + 1, n)
  valid = np.arange(T)[None, :] < lengths[:, None]  # right padding
  tokens = np.where(valid, rng.integers(0, VOCAB, (n, T)), 0).astype(np.int32)
  loss_mask = valid & (rng.random((n, T)) < 0.6) & (np.arange(T)[None, :] >= 2)
  rewards = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], (B, K)).astype(np.float32)
  rewards[1] = 1.0  # a zero-variance group
  rewards[2, :2] = [0.0, 1.0]
  sampler = np.where(loss_mask, -rng.uniform(0.5, 4.0, (n, T)), 0.0).astype(np.float32)
  return grpo_step.TrainBatch(tokens, loss_mask, valid, sampler, rewards)


# ----------------------------------------------------------------------------------------------------------------------
# an independent full-batch reference: plain forward, one-hot log-probs, the float64-verified objective, plain optax
# ----------------------------------------------------------------------------------------------------------------------
def reference_scores(graphdef, params, batch):
  logits = forward_fn(graphdef, params, jnp.asarray(batch.tokens), jnp.broadcast_to(jnp.arange(T), (B * K, T)),
                      jnp.asarray(batch.valid))
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  onehot = jax.nn.one_hot(batch.tokens[:, 1:], VOCAB)
  logps = jnp.pad(jnp.sum(onehot * logp_all[:, :-1], -1), ((0, 0), (1, 0)))
  shifted_logits = jnp.pad(logits[:, :-1], ((0, 0), (1, 0), (0, 0)))  # distribution that predicted token t
  return logps, shifted_logits


def reference_loss(params, graphdef, ref_params, batch, cfg):
  logps, shifted_logits = reference_scores(graphdef, params, batch)
  ref_logps, _ = reference_scores(graphdef, ref_params, batch)
  mask = jnp.asarray(batch.loss_mask & batch.valid)
  return losses.grpo_objective(logps, jax.lax.stop_gradient(logps), jax.lax.stop_gradient(ref_logps),
                               jnp.asarray(batch.rewards), mask, cfg, logits=shifted_logits)


def tree_allclose(a, b, rtol, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_accumulated_step_equals_full_batch_reference():
  c = make_config()
  graphdef, params = nnx.split(make_model(0))
  _, ref_params = nnx.split(make_model(1))  # a reference that differs from the policy: KL is non-trivial
  batch = random_batch(0)

  # 1. gradient: 4 accumulated micro-batches == the full-batch reference gradient
  step_cfg = grpo_step.make_step_config(c.optim, c.grpo, c.rods)
  cfg = step_cfg.grpo_cfg()

  @jax.jit
  def accumulated(params, ref_params, batch):
    prep = grpo_step.prepare(batch, cfg, 0.2, 0.85)
    rows = {k: v[0] for k, v in prep.rows.items()}  # update 0 of 1
    rows["ref"] = grpo_step.forward_logps(graphdef, ref_params, rows, 1.0)
    return grpo_step.accumulate_gradients(graphdef, params, rows, cfg)

  grads, out = accumulated(params, ref_params, jax.tree.map(jnp.asarray, batch))
  ref_fn = jax.jit(jax.value_and_grad(lambda p, r, bt: reference_loss(p, graphdef, r, bt, c.grpo), has_aux=True))
  (want_loss, want_metrics), want_grads = ref_fn(params, ref_params, batch)
  got_loss, got_metrics = losses.reduce(out)
  assert float(got_loss) == pytest.approx(float(want_loss), rel=1e-5)
  assert abs(float(want_loss)) > 1e-3
  tree_allclose(grads, want_grads, rtol=2e-4, atol=1e-7)
  for key in ("kl", "entropy", "pg_loss", "tokens"):
    assert float(got_metrics[key]) == pytest.approx(float(want_metrics[key]), rel=1e-5, abs=1e-6), key

  # 2. the learner's whole step == plain optax AdamW on the reference gradient
  learner = learner_lib.GRPOLearner(make_model(0), c.optim, c.grpo, c.rods)
  learner.state = learner.state._replace(ref_params=ref_params)
  metrics, stats = learner.step(batch)
  tx = optax.chain(optax.clip_by_global_norm(c.optim.grad_clip),
                   optax.adamw(c.optim.lr, b1=c.optim.b1, b2=c.optim.b2, weight_decay=c.optim.weight_decay,
                               mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  upd, _ = tx.update(want_grads, tx.init(params), params)
  want_params = optax.apply_updates(params, upd)
  # Adam step 1 is ≈ lr·g/(|g|+ε): entries with |g| near ε amplify float32 noise, hence atol = 1 % of lr
  tree_allclose(learner.params, want_params, rtol=1e-5, atol=1e-2 * c.optim.lr)
  assert metrics["grad_norm"] == pytest.approx(float(optax.global_norm(want_grads)), rel=1e-4)
  assert metrics["loss"] == pytest.approx(float(want_loss), rel=1e-5)
  assert metrics["frac_zero_std"] == pytest.approx(0.25)
  assert learner.num_updates == 1 and metrics["skipped"] == 0.0
  np.testing.assert_allclose(stats.mean, batch.rewards.mean(1), rtol=1e-6)
  assert stats.zero_std.tolist() == [False, True, False, False]
  assert metrics["ratio_mean"] == pytest.approx(1.0) and metrics["clip_frac_high"] == 0.0  # on-policy
  # sampler-vs-trainer mismatch: sampler log-probs given as the trainer's own => ~0
  own, _ = reference_scores(graphdef, params, batch)
  batch2 = batch._replace(sampler_logps=np.where(batch.loss_mask, np.asarray(own), 0.0).astype(np.float32))
  learner2 = learner_lib.GRPOLearner(make_model(0), c.optim, c.grpo, c.rods)
  metrics2, _ = learner2.step(batch2)
  assert metrics2["sampler/logp_absdiff_max"] < 1e-4
  assert metrics["sampler/logp_absdiff_mean"] > 0.1


def test_8_devices_data_fsdp_tensor_equals_one_device():
  c = make_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  mesh = sharding.make_mesh(c.mesh)
  single = learner_lib.GRPOLearner(make_model(0), c.optim, c.grpo, c.rods)
  multi = learner_lib.GRPOLearner(make_model(0), c.optim, c.grpo, c.rods, mesh)
  embed_spec = multi.params["embed"].sharding.spec
  for seed in (1, 2, 3):
    m1, s1 = single.step(random_batch(seed))
    m8, s8 = multi.step(random_batch(seed))
    for key in m1:
      assert m8[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), key
    np.testing.assert_array_equal(s1.zone, s8.zone)
  tree_allclose(multi.params, single.params, rtol=1e-4, atol=1e-2 * c.optim.lr)  # Adam: see the test above
  assert multi.num_updates == single.num_updates == 3
  # parameters stay sharded over the mesh (nothing silently replicated by the step)
  assert multi.params["embed"].sharding.spec == embed_spec and embed_spec != jax.sharding.PartitionSpec()
  assert len(multi.params["embed"].sharding.device_set) == 8


def test_batch_without_signal_leaves_params_and_optimizer_untouched():
  c = make_config()
  learner = learner_lib.GRPOLearner(make_model(0), c.optim, c.grpo, c.rods)
  before = jax.tree.map(np.asarray, (learner.params, learner.state.opt_state))
  batch = random_batch(4)
  batch = batch._replace(rewards=np.full((B, K), 0.5, np.float32))
  metrics, stats = learner.step(batch)
  after = jax.tree.map(np.asarray, (learner.params, learner.state.opt_state))
  tree_allclose(after, before, rtol=0, atol=0)
  assert metrics["skipped"] == 1.0 and metrics["frac_zero_std"] == 1.0 and learner.num_updates == 0
  assert metrics["loss"] == 0.0 and all(np.isfinite(v) for v in metrics.values())
  assert stats.zero_std.all()


def test_bad_configs_and_batches_fail_naming_the_field():
  c = make_config(micro_batch=3)
  learner = learner_lib.GRPOLearner(make_model(0), c.optim, c.grpo, c.rods)
  with pytest.raises(ValueError, match="config.grpo.micro_batch=3"):
    learner.step(random_batch(0))
  with pytest.raises(ValueError, match="config.grpo.advantage='nope'"):
    learner_lib.GRPOLearner(make_model(0), c.optim, make_config(advantage="nope").grpo, c.rods)
  with pytest.raises(ValueError, match="config.grpo.updates_per_batch=3"):
    grpo_step.plan_layout(16, 4, 3)
  bad = random_batch(0)
  with pytest.raises(ValueError, match="batch.rewards"):
    learner.step(bad._replace(rewards=bad.rewards[:3]))


# ----------------------------------------------------------------------------------------------------------------------
# a trivially learnable task: reward = fraction of sampled tokens equal to TARGET
# ----------------------------------------------------------------------------------------------------------------------
TARGET, BOS, GEN_T = 7, 1, 8


def make_sampler(graphdef, n):
  @jax.jit
  def sample(params, key):
    tokens = jnp.full((n, GEN_T), BOS, jnp.int32)
    logps = jnp.zeros((n, GEN_T), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(GEN_T), (n, GEN_T))
    valid = jnp.ones((n, GEN_T), bool)

    def body(t, carry):  # full forward every step (causal: positions >= t do not affect position t-1)
      tokens, logps, key = carry
      key, sub = jax.random.split(key)
      logits = jax.lax.dynamic_index_in_dim(forward_fn(graphdef, params, tokens, positions, valid), t - 1, 1, False)
      tok = jax.random.categorical(sub, logits)
      lp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], 1)[:, 0]
      return tokens.at[:, t].set(tok), logps.at[:, t].set(lp), key

    tokens, logps, _ = jax.lax.fori_loop(1, GEN_T, body, (tokens, logps, key))
    return tokens, logps

  return sample


def test_reward_rises_on_a_trivially_learnable_task():
  c = make_config(kl_coef=0.0, entropy_coef=0.0, updates_per_batch=2, micro_batch=16, logit_chunk=0)
  c.optim.lr = 2e-2
  c.optim.weight_decay = 0.0
  n_tasks, k = 4, 8
  learner = learner_lib.GRPOLearner(make_model(0), c.optim, c.grpo, c.rods)
  assert learner.state.ref_params is None  # kl_coef 0: no reference kept
  sample = make_sampler(learner.graphdef, n_tasks * k)
  key = jax.random.key(0)
  rewards_seen, ratios = [], []
  for _ in range(12):
    key, sub = jax.random.split(key)
    tokens, logps = jax.device_get(sample(learner.params, sub))
    rewards = (tokens[:, 1:] == TARGET).mean(1).reshape(n_tasks, k).astype(np.float32)
    mask = np.ones_like(tokens, bool)
    mask[:, 0] = False
    batch = grpo_step.TrainBatch(tokens, mask, np.ones_like(mask), logps, rewards)
    metrics, _ = learner.step(batch)
    rewards_seen.append(float(rewards.mean()))
    ratios.append(metrics["log_ratio_abs"])
    assert metrics["sampler/logp_absdiff_max"] < 1e-4  # the trainer re-scores its own samples exactly
  assert np.mean(rewards_seen[:3]) < 0.15
  assert np.mean(rewards_seen[-3:]) > 0.5, rewards_seen
  # two optimizer steps per batch: the second update is off-policy, so the importance ratio moves off 1
  assert learner.num_updates == 24
  assert min(ratios) > 0


# ----------------------------------------------------------------------------------------------------------------------
# train benchmark (rods_jax.rl.bench)
# ----------------------------------------------------------------------------------------------------------------------
def test_flop_count_matches_a_hand_count_and_benchmark_reports_consistent_figures():
  from rods_jax.rl import bench
  d, h, kv, dh, f, layers = MODEL.hidden, MODEL.n_heads, MODEL.n_kv_heads, MODEL.head_dim, MODEL.mlp_dim, MODEL.n_layers
  per_layer = d * h * dh + 2 * d * kv * dh + h * dh * d + 3 * d * f  # q, k, v, o, gate/up/down
  want_p = layers * per_layer + VOCAB * d  # tied embedding: counted once, as the LM head
  _, params = nnx.split(make_model(0))
  assert bench.matmul_params(MODEL, params) == want_p
  untied = get_preset("lab_tiny", vocab_size=VOCAB, hidden=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8,
                      mlp_dim=64, tie_embeddings=False)
  _, p_untied = nnx.split(Transformer(untied, rngs=nnx.Rngs(0)))
  assert bench.matmul_params(untied, p_untied) == want_p  # input table is a gather; the separate head counts
  n, t = 8, 16
  attn = 4 * layers * h * dh * t * t * n
  assert bench.step_flops(MODEL, want_p, n, t, True) == 4 * (2 * want_p * n * t + attn)
  assert bench.step_flops(MODEL, want_p, n, t, False) == 3 * (2 * want_p * n * t + attn)

  c = make_config()  # the learner tests' config and shapes: the compiled step is reused from the jit cache
  out = bench.train_benchmark(MODEL, batch=B * K, seq=T, repeats=2, warmup=1, grpo_cfg=c.grpo, optim_cfg=c.optim,
                              matmul_size=128, group_size=K)
  assert out["tokens_per_s"] == pytest.approx(B * K * T / (out["step_ms"] / 1e3), rel=1e-9)
  assert out["mfu"] == pytest.approx(out["achieved_gflops"] / out["peak_gflops"], rel=1e-9)
  assert out["flops_per_step"] == bench.step_flops(MODEL, want_p, B * K, T, True)
  assert out["peak_gflops"] > 0 and 0 < out["mfu"] and out["step_ms"] > 0
