"""The rollout engine's output: numpy trajectories ready for the learner (token-in / token-out)."""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np


class RolloutBatch(NamedTuple):
  """B tasks x K rollouts, row n = b*K + k; every array is numpy. T = cfg.rollout.max_trajectory_tokens.

  Attributes:
    tokens: [N, T] int32, the exact ids of each trajectory (prompt, sampled, template/environment deltas), 0-padded.
    loss_mask: [N, T] bool, True ONLY on tokens the policy sampled.
    valid: [N, T] bool, True on the first ``lengths[n]`` positions.
    sampler_logps: [N, T] float32, sampler_logps[n, t] = log p(tokens[n, t] | tokens[n, :t]) under the sampling
      policy (``rollout.sampling.token_logps`` convention: log softmax(z / τ), τ = temperature or 1 if greedy,
      before top-k/top-p); 0 where loss_mask is False.
    rewards: [B, K] float32, progress reward R_P.
    success: [B, K] bool, R_P == 1.
    task_ids: [B] str.
    categories: [B] str.
    n_calls, n_errors, n_parse_errors: [N] int32 per-row counts from the episode.
    turns_closed: [N] int32, user turns closed (by an answer or the step limit).
    truncated: [N] bool, the row ran out of its token budget (its unfinished turns count 0).
    lengths: [N] int32.
    timings: wall seconds per phase: "prefill", "decode", "tools" (host: environment + rendering), "total". With
      rollout.cohorts > 1 the phases are summed over the concurrent cohorts (busy time; they may exceed "total").
    stats: counters: "prefill_calls", "prefill_rows" (rows that carried tokens), "decode_calls", "decode_steps",
      "sampled_tokens", "prefill_tokens".
    messages: per row, the conversation as chat messages (assistant contents are the decoded sampled text). A row
      that finished decodes to exactly ``render(messages)``; a row that ended otherwise (truncated, or a finished
      row whose closing tokens did not fit) decodes to ``render(messages, generation prompt)`` followed by its last
      sampled message, whose closing delta is not in the tokens.
  """
  tokens: np.ndarray
  loss_mask: np.ndarray
  valid: np.ndarray
  sampler_logps: np.ndarray
  rewards: np.ndarray
  success: np.ndarray
  task_ids: np.ndarray
  categories: np.ndarray
  n_calls: np.ndarray
  n_errors: np.ndarray
  n_parse_errors: np.ndarray
  turns_closed: np.ndarray
  truncated: np.ndarray
  lengths: np.ndarray
  timings: dict[str, float]
  stats: dict[str, int]
  messages: tuple[tuple[dict[str, Any], ...], ...]

  @property
  def num_rows(self) -> int:
    return int(self.tokens.shape[0])


def select_groups(batches: Sequence[RolloutBatch], picks: Sequence[tuple[int, int]], k: int) -> RolloutBatch:
  """A RolloutBatch made of groups ``(batch index, task index)`` of several RolloutBatches (row n = b·K + k), in
  ``picks`` order; timings and stats are summed over all ``batches``."""
  first = batches[0]
  rows = [(bi, b * k + j) for bi, b in picks for j in range(k)]
  fields = {}
  for name in first._fields:
    v0 = getattr(first, name)
    if name in ("timings", "stats"):
      fields[name] = {key: sum(getattr(b, name).get(key, 0) for b in batches) for key in v0}
    elif name == "messages":
      fields[name] = tuple(batches[bi].messages[n] for bi, n in rows)
    elif name in ("rewards", "success", "task_ids", "categories"):
      fields[name] = np.stack([np.asarray(getattr(batches[bi], name))[b] for bi, b in picks])
    else:
      fields[name] = np.stack([np.asarray(getattr(batches[bi], name))[n] for bi, n in rows])
  return type(first)(**fields)


def concat(batches: Sequence[RolloutBatch], k: int) -> RolloutBatch:
  """The batches' groups one after another (each batch holds K rows per task)."""
  return select_groups(batches, [(bi, b) for bi, x in enumerate(batches) for b in range(len(x.task_ids))], k)
