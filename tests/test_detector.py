"""Boundary detector statistics against a float64 numpy reference on fresh random reward matrices."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from rods_jax.rods import detector


def _reference(rewards, lo, hi, tol):
  r = np.asarray(rewards, np.float64)
  mean = r.mean(axis=1)
  var = ((r - mean[:, None]) ** 2).mean(axis=1)
  phi = 4.0 * mean * (1.0 - mean)
  zone = np.where(mean < lo, 0, np.where(mean > hi, 2, 1))
  zero_std = np.sqrt(var) <= tol
  return mean, var, phi, zone, zero_std


@pytest.mark.parametrize("b,k", [(1, 2), (7, 4), (32, 16), (5, 3)])
def test_group_statistics_matches_numpy_reference(b, k):
  rng = np.random.default_rng(1000 + b * k)
  # Mix of continuous R_P values and fractions of turns (how R_P really looks), so zones are all populated.
  cont = rng.uniform(0.0, 1.0, size=(b, k))
  discrete = rng.integers(0, 5, size=(b, k)) / 4.0
  rewards = np.where(rng.uniform(size=(b, k)) < 0.5, cont, discrete).astype(np.float32)
  stats = jax.jit(detector.group_statistics, static_argnums=(1, 2, 3))(jnp.asarray(rewards), 0.2, 0.85, 1e-6)
  mean, var, phi, zone, zero_std = _reference(rewards, 0.2, 0.85, 1e-6)
  np.testing.assert_allclose(np.asarray(stats.mean), mean, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(stats.var), var, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(stats.phi), phi, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(stats.zone), zone)
  np.testing.assert_array_equal(np.asarray(stats.zero_std), zero_std)
  assert stats.zone.dtype == jnp.int32


def test_zone_thresholds_are_inclusive_for_the_boundary():
  # r̄ exactly at α⁻ and α⁺ is boundary; just outside is hard / mastered (docs/METHOD.md §2).
  rewards = np.array([[0.2, 0.2], [0.85, 0.85], [0.1999, 0.1999], [0.8501, 0.8501], [0.0, 1.0]], np.float32)
  stats = detector.group_statistics(jnp.asarray(rewards), np.float32(0.2), np.float32(0.85), 1e-6)
  np.testing.assert_array_equal(np.asarray(stats.zone), [1, 1, 0, 2, 1])
  np.testing.assert_allclose(np.asarray(stats.phi)[4], 1.0)
  np.testing.assert_allclose(np.asarray(stats.var)[4], 0.25)


def test_all_equal_rewards_have_zero_variance_and_are_flagged():
  rng = np.random.default_rng(7)
  vals = rng.uniform(size=6).astype(np.float32)
  rewards = np.repeat(vals[:, None], 8, axis=1)
  stats = detector.group_statistics(jnp.asarray(rewards), 0.2, 0.85, 1e-6)
  np.testing.assert_allclose(np.asarray(stats.var), 0.0, atol=1e-12)
  assert bool(np.all(np.asarray(stats.zero_std)))
  np.testing.assert_allclose(np.asarray(stats.mean), vals, rtol=1e-6)


def test_k_equal_one_is_rejected_with_a_clear_error():
  with pytest.raises(ValueError, match="K >= 2"):
    detector.group_statistics(jnp.ones((4, 1)), 0.2, 0.85, 1e-6)


def test_wrong_rank_is_rejected():
  with pytest.raises(ValueError, match=r"\[B, K\]"):
    detector.group_statistics(jnp.ones((4,)), 0.2, 0.85, 1e-6)
