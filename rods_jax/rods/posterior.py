"""Per-task Beta posterior over a task's success rate p, across steps (the ``posterior`` boundary detector).

Pure float64 numpy functions. A task's evidence is a pair (a, b) of pseudo-counts; a continuous reward R ∈ [0, 1]
counts as a fractional success (R successes and 1 − R failures). Forgetting is applied when new evidence arrives, so
the stored (a, b) is always the posterior as of the task's latest observation; with decay d = 0 it holds that
observation alone (a = K r̄, b = K (1 − r̄)), and the decisions below reduce to the one-step rule.
"""
from __future__ import annotations

import numpy as np
from scipy import special

HARD, BOUNDARY, MASTERED = 0, 1, 2  # the same codes as rods_jax.rods.detector


def update(a, b, sum_r, n, decay: float, steps):
  """One observation of ``n`` rollouts with reward sum ``sum_r``, ``steps`` policy updates after the previous one.

    a' = d^Δ a + Σ_k R_k
    b' = d^Δ b + Σ_k (1 − R_k) = d^Δ b + n − Σ_k R_k          (d = decay, Δ = steps; 0^0 = 1)
  """
  w = np.power(np.float64(decay), np.asarray(steps, np.float64))
  sum_r = np.asarray(sum_r, np.float64)
  return w * np.asarray(a, np.float64) + sum_r, w * np.asarray(b, np.float64) + (np.asarray(n, np.float64) - sum_r)


def shrunk_prior(a_parent, b_parent, strength: float):
  """Prior of a new variant: the parent's posterior mean, worth ``strength`` pseudo-rollouts.

    m = a_p / (a_p + b_p);   a_0 = s m,   b_0 = s (1 − m)      (s = strength)
  """
  m = mean(a_parent, b_parent)
  return strength * m, strength * (1.0 - m)


def mean(a, b):
  """Posterior mean E[p] = a / (a + b)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return a / (a + b)


def expected_phi(a, b):
  """E[4 p (1 − p)] under Beta(a, b) = 4 a b / ((a + b)(a + b + 1)).

  The posterior expectation of the paper's φ, not φ of the point estimate: it is lower when the posterior is wide.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  n = a + b
  return 4.0 * a * b / (n * (n + 1.0))


def sd(a, b):
  """Posterior standard deviation sqrt(a b / ((a + b)² (a + b + 1)))."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  n = a + b
  return np.sqrt(a * b / (n * n * (n + 1.0)))


def prob_below(a, b, t):
  """P(p ≤ t) = I_t(a, b), the regularized incomplete beta function (a = 0: all mass at 0; b = 0: all at 1)."""
  return special.betainc(np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(t, np.float64))


def prob_above(a, b, t):
  """P(p > t) = 1 − I_t(a, b)."""
  return 1.0 - prob_below(a, b, t)


def zones(m, alpha_low: float, alpha_high: float):
  """The paper's zones applied to the posterior mean m: hard m < α⁻; mastered m > α⁺; boundary otherwise."""
  m = np.asarray(m, np.float64)
  return np.where(m < alpha_low, HARD, np.where(m > alpha_high, MASTERED, BOUNDARY)).astype(np.int32)


def confidently_above(a, b, t: float, confidence: float):
  """The paper's "r̄ > t" read from the posterior: E[p] > t and P(p > t) ≥ c (c = confidence).

  c = 0 leaves the mean rule (with d = 0: the one-step rule); c = 0.9 asks for 90 % posterior mass past t.
  """
  return (mean(a, b) > t) & (prob_above(a, b, t) >= confidence)


def confidently_below(a, b, t: float, confidence: float):
  """The paper's "r̄ < t" read from the posterior: E[p] < t and P(p < t) ≥ c."""
  return (mean(a, b) < t) & (prob_below(a, b, t) >= confidence)
