"""Advantages and the GRPO policy loss against an independent float64 numpy implementation of the same objective."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from rods_jax.rl import advantages as adv_lib
from rods_jax.rl import losses


def grpo_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = base.get_config().grpo
  for k, v in overrides.items():
    setattr(cfg, k, v)
  return cfg


# ----------------------------------------------------------------------------------------------------------------------
# numpy float64 reference (written from the formulas, shares no code with rods_jax)
# ----------------------------------------------------------------------------------------------------------------------
def np_advantages(r, name, eps, ddof):
  r = np.asarray(r, np.float64)
  b, k = r.shape
  out = np.zeros_like(r)
  for i in range(b):
    for j in range(k):
      if name == "grpo":
        out[i, j] = (r[i, j] - r[i].mean()) / (np.std(r[i], ddof=ddof) + eps)
      elif name == "rloo":
        others = [r[i, m] for m in range(k) if m != j]
        out[i, j] = r[i, j] - sum(others) / len(others)
      elif name == "drgrpo":
        out[i, j] = r[i, j] - r[i].mean()
  return out


def np_objective(logp, old, ref, rewards, mask, ent, cfg):
  """Returns (loss, dloss/dlogp) in float64; the gradient is analytic, per token."""
  logp, old, ref, ent = (np.asarray(x, np.float64) for x in (logp, old, ref, ent))
  mask = np.asarray(mask, np.float64)
  b, k = rewards.shape
  adv = np_advantages(rewards, cfg.advantage, cfg.eps, cfg.std_ddof).reshape(-1)
  active = np.repeat(np.std(np.asarray(rewards, np.float64), axis=1) > cfg.zero_std_tol, k)
  m = mask * active[:, None]
  n, t = logp.shape
  ell = np.zeros((n, t))
  dell = np.zeros((n, t))
  lo, hi = 1 - cfg.clip_low, 1 + cfg.clip_high
  for i in range(n):
    a = adv[i]
    for j in range(t):
      rho = np.exp(logp[i, j] - old[i, j])
      unclipped, clipped = -a * rho, -a * min(max(rho, lo), hi)
      if unclipped >= clipped:
        pg, dpg = unclipped, -a * rho
      else:
        pg, dpg = clipped, 0.0
      if cfg.clip_ratio_c and a < 0 and -a * cfg.clip_ratio_c < pg:
        pg, dpg = -a * cfg.clip_ratio_c, 0.0
      d = ref[i, j] - logp[i, j]
      if cfg.kl_estimator == "low_var_kl":
        kl, dkl = np.exp(d) - d - 1, -np.exp(d) + 1
      elif cfg.kl_estimator == "k1":
        kl, dkl = -d, 1.0
      else:
        kl, dkl = 0.5 * d * d, -d
      ell[i, j] = pg + cfg.kl_coef * kl - cfg.entropy_coef * ent[i, j]
      dell[i, j] = dpg + cfg.kl_coef * dkl
  row_tok = m.sum(1)
  rows = row_tok > 0
  if cfg.aggregation == "token-mean":
    w = m / m.sum()
  elif cfg.aggregation == "seq-mean-token-mean":
    w = np.where(rows[:, None], m / np.maximum(row_tok, 1)[:, None], 0) / rows.sum()
  else:
    w = m / rows.sum()
  return float((ell * w).sum()), dell * w


def random_inputs(seed, b=4, k=4, t=12, spread=0.4):
  rng = np.random.default_rng(seed)
  n = b * k
  logp = -rng.uniform(0.05, 3.0, (n, t))
  old = logp + rng.normal(0, spread, (n, t))  # ratios both below 0.8 and above 1.28: every clip branch is hit
  ref = logp + rng.normal(0, spread, (n, t))
  rewards = rng.choice([0.0, 0.25, 0.5, 1.0], size=(b, k))
  rewards[0] = 0.5  # a zero-variance group
  if b >= 4:
    rewards[1] = 0.5 + rng.normal(0, 1e-9, k)  # constant within the tolerance
  rewards[-1, :2] = [0.0, 1.0]  # at least one group with signal
  mask = rng.random((n, t)) < 0.7
  mask[-3] = False  # a row with no sampled tokens
  ent = rng.uniform(0, 2, (n, t))
  return logp, old, ref, rewards, mask, ent


def jax_objective(logp, old, ref, rewards, mask, ent, cfg):
  def f(lp):
    adv = adv_lib.compute_advantages(jnp.asarray(rewards), cfg).reshape(-1)
    active = losses.active_rows_from_rewards(jnp.asarray(rewards), cfg.zero_std_tol)
    out = losses.get_loss(cfg.loss)(lp, jnp.asarray(old), jnp.asarray(ref), adv, jnp.asarray(mask), cfg,
                                    active_rows=active, entropy=jnp.asarray(ent))
    return losses.reduce(out)[0]

  # one compiled program per call is far cheaper than compiling every primitive op-by-op
  val, grad = jax.jit(jax.value_and_grad(f))(jnp.asarray(logp))
  return float(val), np.asarray(grad)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


# ----------------------------------------------------------------------------------------------------------------------
def test_numpy_reference_gradient_matches_finite_differences():
  """The analytic numpy gradient is itself checked by float64 central differences."""
  cfg = grpo_cfg(kl_coef=0.3, entropy_coef=0.01, clip_ratio_c=1.5)
  logp, old, ref, rewards, mask, ent = random_inputs(1, b=3, k=3, t=5)
  _, g = np_objective(logp, old, ref, rewards, mask, ent, cfg)
  h = 1e-6
  fd = np.zeros_like(logp)
  for idx in np.ndindex(*logp.shape):
    lp1, lp2 = logp.copy(), logp.copy()
    lp1[idx] += h
    lp2[idx] -= h
    fd[idx] = (np_objective(lp1, old, ref, rewards, mask, ent, cfg)[0] -
               np_objective(lp2, old, ref, rewards, mask, ent, cfg)[0]) / (2 * h)
  assert rel_err(g, fd) < 1e-6


@pytest.mark.parametrize("aggregation,kl_estimator,advantage", [
    ("token-mean", "low_var_kl", "grpo"),
    ("seq-mean-token-mean", "low_var_kl", "grpo"),
    ("seq-mean-token-sum", "low_var_kl", "rloo"),
    ("seq-mean-token-mean", "low_var_kl", "grpo-dual"),
    ("seq-mean-token-mean", "k1", "drgrpo"),
    ("token-mean", "k2", "grpo"),
])
def test_loss_and_gradient_match_float64_numpy(aggregation, kl_estimator, advantage):
  dual = advantage.endswith("-dual")
  cfg = grpo_cfg(aggregation=aggregation, kl_estimator=kl_estimator, advantage=advantage.removesuffix("-dual"),
                 kl_coef=0.05, entropy_coef=0.003, clip_ratio_c=1.5 if dual else 0.0)
  for seed in (10, 11):
    inputs = random_inputs(seed)
    want_loss, want_grad = np_objective(*inputs, cfg)
    with jax.enable_x64(True):
      got_loss, got_grad = jax_objective(*inputs, cfg)
    assert abs(got_loss - want_loss) <= 1e-6 * abs(want_loss), (got_loss, want_loss)
    assert rel_err(got_grad, want_grad) <= 1e-6
    # production dtype (float32) agrees to float32 precision
    f32 = [np.asarray(x, np.float32) if x.dtype == np.float64 else x for x in inputs]
    got32, grad32 = jax_objective(*f32, cfg)
    assert abs(got32 - want_loss) <= 1e-4 * abs(want_loss)
    assert rel_err(grad32, want_grad) <= 1e-4


def test_clip_branches_are_all_exercised():
  """The random inputs really hit both clip sides (else the parity test would not cover clipping)."""
  logp, old, ref, rewards, mask, ent = random_inputs(10)
  cfg = grpo_cfg(clip_ratio_c=1.5)
  adv = adv_lib.compute_advantages(jnp.asarray(rewards), cfg).reshape(-1)
  _, metrics = jax.jit(lambda *xs: losses.reduce(losses.ppo_clip(*xs, cfg)))(
      jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32), adv,
      jnp.asarray(mask))
  assert 0.02 < float(metrics["clip_frac_low"]) < 0.5
  assert 0.02 < float(metrics["clip_frac_high"]) < 0.5
  assert 0.003 < float(metrics["clip_frac_dual"]) < 0.5  # ρ > 1.5 with A < 0: rarer
  assert float(metrics["ratio_min"]) < 0.8 and float(metrics["ratio_max"]) > 1.28


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_zero_variance_groups_contribute_nothing_and_do_not_dilute(aggregation):
  cfg = grpo_cfg(aggregation=aggregation, kl_coef=0.1)
  rng = np.random.default_rng(3)
  b, k, t = 5, 4, 9
  logp = -rng.uniform(0.1, 2, (b * k, t)).astype(np.float32)
  old = (logp + rng.normal(0, 0.3, logp.shape)).astype(np.float32)
  ref = (logp + rng.normal(0, 0.3, logp.shape)).astype(np.float32)
  mask = rng.random(logp.shape) < 0.8
  rewards = rng.uniform(0, 1, (b, k)).astype(np.float32)
  rewards[1] = 1.0
  rewards[3] = 0.0
  keep = np.array([0, 2, 4])
  rows = np.concatenate([np.arange(g * k, (g + 1) * k) for g in keep])

  def run(lp, o, r, rw, m):
    def f(x):
      return losses.grpo_objective(x, jnp.asarray(o), jnp.asarray(r), jnp.asarray(rw), jnp.asarray(m), cfg)

    (loss, metrics), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(lp))
    return float(loss), metrics, np.asarray(grad)

  full_loss, full_metrics, full_grad = run(logp, old, ref, rewards, mask)
  sub_loss, sub_metrics, sub_grad = run(logp[rows], old[rows], ref[rows], rewards[keep], mask[rows])
  assert full_loss == pytest.approx(sub_loss, rel=1e-6)
  np.testing.assert_allclose(full_grad[rows], sub_grad, rtol=1e-6, atol=1e-9)
  zero_rows = np.setdiff1d(np.arange(b * k), rows)
  assert np.all(full_grad[zero_rows] == 0.0)  # no KL leak either
  assert float(full_metrics["frac_zero_std"]) == pytest.approx(2 / 5)
  assert float(sub_metrics["frac_zero_std"]) == 0.0
  assert float(full_metrics["kl"]) == pytest.approx(float(sub_metrics["kl"]), rel=1e-6)


def test_all_groups_zero_variance_gives_zero_loss_not_nan():
  cfg = grpo_cfg()
  logp = -jnp.ones((4, 3))

  def f(x):
    return losses.grpo_objective(x, logp - 0.1, logp + 0.1, jnp.ones((2, 2)), jnp.ones((4, 3)), cfg)

  (loss, metrics), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(logp)
  assert float(loss) == 0.0 and float(metrics["frac_zero_std"]) == 1.0
  assert np.all(np.isfinite(np.asarray(grad))) and np.all(np.asarray(grad) == 0)
  assert all(np.isfinite(float(v)) for v in metrics.values())


@functools.lru_cache(maxsize=1)
def _default_field_result():
  """The baseline of the field test, computed once for all its cases."""
  logp, old, ref, rewards, mask, ent = random_inputs(21)
  rewards[2] = [0.5, 0.5, 0.5, 0.51]
  return jax_objective(logp, old, ref, rewards, mask, ent, grpo_cfg(kl_coef=0.05))


@pytest.mark.parametrize("field,value", [
    ("clip_low", 0.05), ("clip_high", 0.6), ("clip_ratio_c", 1.5), ("kl_coef", 0.5), ("kl_estimator", "k1"), ("kl_estimator", "k2"),
    ("aggregation", "token-mean"), ("aggregation", "seq-mean-token-sum"), ("eps", 0.5), ("zero_std_tol", 0.05),
    ("advantage", "rloo"), ("advantage", "drgrpo"), ("std_ddof", 0), ("entropy_coef", 0.1),
])
def test_every_loss_config_field_changes_the_result(field, value):
  logp, old, ref, rewards, mask, ent = random_inputs(21)
  rewards[2] = [0.5, 0.5, 0.5, 0.51]  # std ≈ 0.004: active at the default tolerance, masked at 0.05
  inputs = (logp, old, ref, rewards, mask, ent)
  changed = grpo_cfg(**{"kl_coef": 0.05, field: value})
  l0, g0 = _default_field_result()
  l1, g1 = jax_objective(*inputs, changed)
  assert abs(l1 - l0) > 1e-4 * abs(l0) or rel_err(g1, g0) > 1e-3
  # and the changed run still matches the reference
  want, want_g = np_objective(*inputs, changed)
  assert l1 == pytest.approx(want, rel=1e-4)
  assert rel_err(g1, want_g) < 1e-4


def test_loss_field_is_used_and_unknown_names_fail_naming_them():
  logp, old, ref, rewards, mask, ent = random_inputs(0)
  with pytest.raises(ValueError, match="config.grpo.loss='nope'"):
    jax_objective(logp, old, ref, rewards, mask, ent, grpo_cfg(loss="nope"))
  with pytest.raises(ValueError, match="config.grpo.advantage='ppo'"):
    adv_lib.compute_advantages(jnp.ones((2, 3)), grpo_cfg(advantage="ppo"))
  with pytest.raises(ValueError, match="config.grpo.aggregation='mean'"):
    jax_objective(logp, old, ref, rewards, mask, ent, grpo_cfg(aggregation="mean"))
  with pytest.raises(ValueError, match="config.grpo.kl_estimator='k9'"):
    jax_objective(logp, old, ref, rewards, mask, ent, grpo_cfg(kl_estimator="k9"))
  with pytest.raises(ValueError, match="ref_logps has shape"):
    losses.ppo_clip(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.zeros(2), jnp.ones((2, 3)),
                    grpo_cfg())
  with pytest.raises(ValueError, match="K >= 2"):
    adv_lib.compute_advantages(jnp.ones((3, 1)), grpo_cfg())
  with pytest.raises(ValueError, match="already registered"):
    adv_lib.register_advantage("grpo")(lambda r, c: r)


@pytest.mark.parametrize("name", ["grpo", "rloo", "drgrpo"])
def test_advantages_match_numpy(name):
  rng = np.random.default_rng(7)
  cfg = grpo_cfg(advantage=name)
  for ddof in (0, 1):
    cfg.std_ddof = ddof
    r = rng.uniform(0, 1, (6, 5))
    r[0] = 0.25  # exactly representable, so the group mean is exact
    with jax.enable_x64(True):
      got = np.asarray(adv_lib.compute_advantages(jnp.asarray(r), cfg))
    want = np_advantages(r, name, cfg.eps, ddof)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[0], 0.0, atol=1e-9)  # a constant group (up to the mean's rounding)
  assert adv_lib.ADVANTAGES[name] is adv_lib.get_advantage(name)


def test_accumulated_halves_equal_full_batch():
  """combine() of two row halves == the full batch, for loss, gradient and every metric."""
  cfg = grpo_cfg(aggregation="seq-mean-token-mean", kl_coef=0.1)
  logp, old, ref, rewards, mask, ent = (np.asarray(x, np.float32) if x.dtype == np.float64 else x
                                        for x in random_inputs(5))
  adv = adv_lib.compute_advantages(jnp.asarray(rewards), cfg).reshape(-1)
  active = losses.active_rows_from_rewards(jnp.asarray(rewards), cfg.zero_std_tol)

  def out(lp, sl):
    return losses.ppo_clip(lp, jnp.asarray(old[sl]), jnp.asarray(ref[sl]), adv[sl], jnp.asarray(mask[sl]), cfg,
                           active_rows=active[sl], entropy=jnp.asarray(ent[sl]))

  a, b = slice(0, 7), slice(7, None)

  @jax.jit
  def run(lp):
    full_loss, full_m = losses.reduce(out(lp, slice(None)))
    acc = losses.combine(out(lp[a], a), out(lp[b], b))
    acc_loss, acc_m = losses.reduce(acc)
    # gradient: Σ over halves of ∇total / Σ count == ∇ full
    g = [jax.grad(lambda x, s=s: out(x, s).loss.total)(lp[s]) for s in (a, b)]
    g_acc = jnp.concatenate(g) / acc.loss.count
    g_full = jax.grad(lambda x: losses.reduce(out(x, slice(None)))[0])(lp)
    return full_loss, full_m, acc_loss, acc_m, g_acc, g_full

  full_loss, full_m, acc_loss, acc_m, g_acc, g_full = run(jnp.asarray(logp))
  assert float(acc_loss) == pytest.approx(float(full_loss), rel=1e-6)
  for key in full_m:
    assert float(acc_m[key]) == pytest.approx(float(full_m[key]), rel=1e-5, abs=1e-7), key
  np.testing.assert_allclose(np.asarray(g_acc), np.asarray(g_full), rtol=1e-5, atol=1e-9)


def test_entropy_from_logits_matches_numpy_and_policy_loss_reports_it():
  rng = np.random.default_rng(2)
  logits = rng.normal(0, 3, (3, 4, 11))
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want = -(p * np.log(p)).sum(-1)
  with jax.enable_x64(True):
    got = np.asarray(jax.jit(losses.token_entropy)(jnp.asarray(logits)))
  np.testing.assert_allclose(got, want, rtol=1e-10)
  lp = jnp.asarray(-rng.uniform(0.1, 1, (3, 4)), jnp.float32)
  mask = jnp.asarray([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
  _, metrics = jax.jit(lambda lp, m, z: losses.policy_loss(lp, lp, lp, jnp.ones(3), m, grpo_cfg(), logits=z))(
      lp, mask, jnp.asarray(logits, jnp.float32))
  assert float(metrics["entropy"]) == pytest.approx(float(want[np.asarray(mask)].mean()), rel=1e-5)
  assert float(metrics["tokens"]) == 3.0
  assert float(metrics["ratio_mean"]) == pytest.approx(1.0)
