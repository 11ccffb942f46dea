"""Length-bucketed micro-batches: the learner pays for a batch's real tokens, not ``rows × max_trajectory_tokens``.

Host-side planning (numpy, no JAX). Within each optimizer update, rows are sorted by length (longest first) and cut
greedily into micro-batches; a micro-batch whose longest row has n tokens is cut to the bucket length

    L = min(T, ⌈n / bucket⌉ · bucket)

and holds up to R_L = ⌊budget / L⌋ rows (rounded down to the data-parallel row multiple), so every micro-batch costs
about the same memory as one padded micro-batch of the old layout (``budget = micro_batch · T``). The last
micro-batch of an update is padded with dummy rows (index −1, no token in the loss) only up to the next power-of-two
multiple of the row multiple. Shapes therefore come from a small fixed set (at most ⌈T / bucket⌉ lengths × log₂
row counts), so the number of compilations is bounded.

Why buckets and not sequence packing: the objective's aggregation is per row (seq-mean-token-mean), the sampler's
log-probs, loss mask and advantages are per row, and the model's attention needs no segment ids; a bucketed
micro-batch is an ordinary right-padded [R, L] batch, so the loss, the reference forward and the 8-device sharding
over (data, fsdp) are exactly the padded path's code on shorter arrays.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class MicroBatchPlan(NamedTuple):
  rows: np.ndarray  # [R] int32 row indices into the batch; -1 = a padding row (no token in the loss)
  length: int  # L: every row of this micro-batch is cut to its first L positions


def bucket_length(n_tokens: int, bucket: int, max_len: int) -> int:
  """L = min(T, ⌈max(n, 1) / bucket⌉ · bucket)."""
  return int(min(max_len, -(-max(int(n_tokens), 1) // bucket) * bucket))


def rows_per_micro_batch(length: int, token_budget: int, row_multiple: int) -> int:
  """R_L = max(m, ⌊⌊budget / L⌋ / m⌋ · m) for the row multiple m (the data-parallel size)."""
  return max(row_multiple, (token_budget // length) // row_multiple * row_multiple)


def padded_rows(n_rows: int, cap: int, row_multiple: int) -> int:
  """Rows a micro-batch of n ≤ cap rows is padded to: min(cap, the smallest m·2^j ≥ n)."""
  r = row_multiple
  while r < n_rows:
    r *= 2
  return min(r, cap)


def plan_update(row_ids: np.ndarray, lengths: np.ndarray, *, token_budget: int, bucket: int, max_len: int,
                row_multiple: int) -> list[MicroBatchPlan]:
  """Micro-batches of one optimizer update over rows ``row_ids`` (lengths = each row's valid tokens)."""
  if bucket < 1 or row_multiple < 1 or max_len < 1:
    raise ValueError(f"bucket={bucket}, row_multiple={row_multiple}, max_len={max_len} must be >= 1")
  order = np.asarray(row_ids, np.int64)[np.argsort(-np.asarray(lengths)[row_ids], kind="stable")]
  plans, i = [], 0
  while i < len(order):
    length = bucket_length(int(lengths[order[i]]), bucket, max_len)
    cap = rows_per_micro_batch(length, token_budget, row_multiple)
    take = order[i:i + cap]
    rows = np.full((padded_rows(len(take), cap, row_multiple),), -1, np.int32)
    rows[:len(take)] = take
    plans.append(MicroBatchPlan(rows, length))
    i += len(take)
  return plans


def update_of_rows(n_rows: int, updates: int, n_micro: int) -> np.ndarray:
  """The optimizer update each row belongs to, the padded layout's assignment (``learner._split``):
  row n = j·(U·n_micro) + u·n_micro + m  →  u = ⌊n / n_micro⌋ mod U."""
  return (np.arange(n_rows) // n_micro) % updates


def plan_batch(lengths: np.ndarray, *, updates: int, n_micro: int, token_budget: int, bucket: int, max_len: int,
               row_multiple: int) -> list[list[MicroBatchPlan]]:
  """Per optimizer update, its bucketed micro-batches (same rows per update as the padded layout)."""
  lengths = np.asarray(lengths)
  which = update_of_rows(len(lengths), updates, n_micro)
  return [plan_update(np.flatnonzero(which == u), lengths, token_budget=token_budget, bucket=bucket,
                      max_len=max_len, row_multiple=row_multiple) for u in range(updates)]


def gather_rows(x: np.ndarray, plan: MicroBatchPlan, fill=0) -> np.ndarray:
  """x[plan.rows, :L] with padding rows filled with ``fill`` ([N, T, ...] → [R, L, ...])."""
  idx = np.maximum(plan.rows, 0)
  out = np.asarray(x)[idx, :plan.length]
  if (plan.rows < 0).any():
    out = out.copy()
    out[plan.rows < 0] = fill
  return out


def padded_token_slots(plans: list[list[MicroBatchPlan]]) -> int:
  """Σ R·L over every micro-batch: the token positions the learner computes."""
  return int(sum(len(p.rows) * p.length for update in plans for p in update))
