"""Unbiased pass@k and pass^k from n samples per task with c successes (Chen et al. 2021; Yao et al. 2024, τ-bench).

    pass@k = E[any of k draws without replacement succeeds] = 1 − C(n − c, k) / C(n, k)
    pass^k = E[all k draws succeed]                          = C(c, k) / C(n, k)

Both are exact (integer binomials, one division), defined for 1 ≤ k ≤ n.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _check(n: int, c: int, k: int) -> None:
  if not 0 <= c <= n:
    raise ValueError(f"successes c={c} must be in [0, n={n}]")
  if not 1 <= k <= n:
    raise ValueError(f"k={k} must be in [1, n={n}] (n = samples per task)")


def pass_at_k(n: int, c: int, k: int) -> float:
  """1 − C(n−c, k)/C(n, k): probability that at least one of k of the n samples (without replacement) succeeds."""
  _check(n, c, k)
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
  """C(c, k)/C(n, k): probability that all k of k samples drawn from the n (without replacement) succeed."""
  _check(n, c, k)
  return math.comb(c, k) / math.comb(n, k)


def mean_pass_at_k(success: np.ndarray, k: int) -> float:
  """Mean over tasks of pass@k from a [tasks, n] boolean success matrix."""
  s = np.asarray(success, bool)
  n = s.shape[1]
  return float(np.mean([pass_at_k(n, int(c), k) for c in s.sum(1)])) if s.size else float("nan")


def mean_pass_hat_k(success: np.ndarray, k: int) -> float:
  """Mean over tasks of pass^k from a [tasks, n] boolean success matrix."""
  s = np.asarray(success, bool)
  n = s.shape[1]
  return float(np.mean([pass_hat_k(n, int(c), k) for c in s.sum(1)])) if s.size else float("nan")


def default_ks(n: int) -> Sequence[int]:
  """1, powers of two below n, and n itself."""
  ks = {1, n}
  p = 2
  while p < n:
    ks.add(p)
    p *= 2
  return sorted(ks)
