"""Length-bucketed micro-batches: the learner pays for a batch's real tokens, not ``rows × max_trajectory_tokens``.

Host-side planning (numpy, no JAX). Within each optimizer update, rows are sorted by length (longest first) and cut
into micro-batches of R rows (``grpo.micro_batch``, as in the padded layout); a micro-batch whose longest row has n
tokens is cut to the bucket length

    L = min(T, ⌈n / bucket⌉ · bucket)

so a micro-batch costs R·L instead of R·T, and the shapes come from a fixed set of at most ⌈T / bucket⌉ (R, L)
pairs: compilations are bounded by that (a token budget with more rows per short micro-batch would multiply the
shapes, and on a 2-core CPU each new shape's compilation cost more than the rows it saved). Rows never need padding:
R divides every update's rows (validated with the config), so the index −1 (an empty row) only appears when a caller
plans a partial micro-batch.

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


def plan_update(row_ids: np.ndarray, lengths: np.ndarray, *, rows: int, bucket: int, max_len: int
                ) -> list[MicroBatchPlan]:
  """Micro-batches of ``rows`` rows of one optimizer update over rows ``row_ids`` (lengths = each row's valid
  tokens), longest first; a last partial micro-batch is filled with empty rows (−1)."""
  if bucket < 1 or rows < 1 or max_len < 1:
    raise ValueError(f"bucket={bucket}, rows={rows}, max_len={max_len} must be >= 1")
  order = np.asarray(row_ids, np.int64)[np.argsort(-np.asarray(lengths)[row_ids], kind="stable")]
  plans = []
  for i in range(0, len(order), rows):
    take = order[i:i + rows]
    idx = np.full((rows,), -1, np.int32)
    idx[:len(take)] = take
    plans.append(MicroBatchPlan(idx, bucket_length(int(lengths[take[0]]), bucket, max_len)))
  return plans


def update_of_rows(n_rows: int, updates: int, n_micro: int) -> np.ndarray:
  """The optimizer update each row belongs to, the padded layout's assignment (``learner._split``):
  row n = j·(U·n_micro) + u·n_micro + m  →  u = ⌊n / n_micro⌋ mod U."""
  return (np.arange(n_rows) // n_micro) % updates


def plan_batch(lengths: np.ndarray, *, updates: int, n_micro: int, rows: int, bucket: int, max_len: int
               ) -> list[list[MicroBatchPlan]]:
  """Per optimizer update, its bucketed micro-batches of ``rows`` rows (same rows per update as the padded
  layout, which has ``n_micro`` micro-batches per update)."""
  lengths = np.asarray(lengths)
  which = update_of_rows(len(lengths), updates, n_micro)
  return [plan_update(np.flatnonzero(which == u), lengths, rows=rows, bucket=bucket, max_len=max_len)
          for u in range(updates)]


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
