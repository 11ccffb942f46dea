"""The names metrics are written under: verl's where verl logs the same value, the project's own for what only RODS has.

``to_public(metrics)`` maps the producers' internal keys (the learner's ``grpo/*``, the loop's ``reward/*`` and
``rollout/*``, the writer's ``time/*``) to one public name per value; docs/METRICS.md is the table. Keys it does not
know (zones, pool, synthesis, eval, anything new) pass through unchanged. It is idempotent, so it also reads logs
written before the renaming (``rods_jax.metrics.read_jsonl`` applies it).

A skipped step (every group zero-variance, no update made: ``actor/skipped`` = 1) has no loss, entropy, KL or gradient;
``to_public`` omits those keys instead of passing on the learner's zeros, which would read as a collapse on a curve.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# internal key -> public key (one value, one name)
RENAMES: Mapping[str, str] = {
    # actor: verl's actor/* family
    "grpo/entropy": "actor/entropy",
    "grpo/kl": "actor/kl_loss",
    "grpo/pg_loss": "actor/pg_loss",
    "grpo/loss": "actor/loss",
    "grpo/grad_norm": "actor/grad_norm",
    "grpo/lr": "actor/lr",
    "grpo/clip_frac_dual": "actor/pg_clipfrac_lower",  # verl: the dual-clip fraction
    "grpo/clip_frac_low": "actor/pg_clipfrac_low",
    "grpo/clip_frac_high": "actor/pg_clipfrac_high",
    "grpo/ratio_mean": "actor/ratio_mean",
    "grpo/ratio_max": "actor/ratio_max",
    "grpo/ratio_min": "actor/ratio_min",
    "grpo/log_ratio_abs": "actor/log_ratio_abs",
    "grpo/update_norm": "actor/update_norm",
    "grpo/tokens": "actor/loss_tokens",
    "grpo/updates": "actor/updates",
    "grpo/skipped": "actor/skipped",
    "grpo/token_slots": "actor/token_slots",  # positions the update's forward computes (real tokens + padding)
    # rewards and advantages: verl's critic/* family
    "reward/mean": "critic/score/mean",
    "reward/std": "critic/score/std",
    "reward/max": "critic/score/max",
    "reward/min": "critic/score/min",
    "grpo/adv_abs_mean": "critic/advantages/abs_mean",
    # lengths: verl's response_length/* (policy-sampled tokens per trajectory) and clip_ratio (ran out of budget)
    "rollout/response_tokens_mean": "response_length/mean",
    "rollout/response_tokens_max": "response_length/max",
    "rollout/response_tokens_min": "response_length/min",
    "rollout/truncated": "response_length/clip_ratio",
    # sampler-vs-trainer log-prob mismatch on the sampled tokens
    "grpo/sampler/logp_diff_mean": "rollout/logp_diff_mean",
    "grpo/sampler/logp_absdiff_mean": "rollout/logp_absdiff_mean",
    "grpo/sampler/logp_absdiff_max": "rollout/logp_absdiff_max",
    # phase timings: verl's timing_s/*
    "time/rollout": "timing_s/gen",
    "time/update": "timing_s/update_actor",
}
# Internal keys that repeat another key's value: dropped when the twin is present, else renamed to it (old logs).
TWINS: Mapping[str, str] = {
    "grpo/reward_mean": "critic/score/mean",
    "reward/group_mean": "critic/score/mean",
    "grpo/reward_std": "critic/score/std",
    "grpo/frac_zero_std": "zones/zero_std",
    "grpo/zones/hard": "zones/hard",
    "grpo/zones/boundary": "zones/boundary",
    "grpo/zones/mastered": "zones/mastered",
    "grpo/seq_len_mean": "rollout/length",
    "grpo/sampled_tokens_mean": "response_length/mean",
}
TIME_PREFIX, PUBLIC_TIME_PREFIX = "time/", "timing_s/"
SKIPPED = "actor/skipped"
# Meaningless on a skipped step (computed over no token, or no update made).
UNDEFINED_WHEN_SKIPPED = ("actor/entropy", "actor/kl_loss", "actor/pg_loss", "actor/loss", "actor/grad_norm",
                          "actor/update_norm", "actor/pg_clipfrac", "actor/pg_clipfrac_low", "actor/pg_clipfrac_high",
                          "actor/pg_clipfrac_lower", "actor/ratio_mean", "actor/ratio_max", "actor/ratio_min",
                          "actor/log_ratio_abs")


def public_name(key: str) -> str:
  """The public name of one internal key (unknown keys are their own public name)."""
  if key in RENAMES:
    return RENAMES[key]
  if key.startswith(TIME_PREFIX):
    return PUBLIC_TIME_PREFIX + key[len(TIME_PREFIX):]
  return key


def to_public(metrics: Mapping[str, Any]) -> dict[str, Any]:
  """``metrics`` under public names, in their order: renamed, twins merged, verl's ``actor/pg_clipfrac`` (both clip
  sides, disjoint events over the same tokens) added, and a skipped step's undefined keys left out."""
  out: dict[str, Any] = {}
  for key, value in metrics.items():
    if key in TWINS:
      continue
    name = public_name(key)
    if name in out and out[name] != value:
      raise ValueError(f"metrics {key!r} and another key both map to {name!r} with different values")
    out[name] = value
  for key, twin in TWINS.items():
    if key in metrics and twin not in out:
      out[twin] = metrics[key]
  low, high = out.get("actor/pg_clipfrac_low"), out.get("actor/pg_clipfrac_high")
  if "actor/pg_clipfrac" not in out and low is not None and high is not None:
    out["actor/pg_clipfrac"] = low + high
  skipped = out.get(SKIPPED)
  if skipped is not None and skipped >= 1:
    for key in UNDEFINED_WHEN_SKIPPED:
      out.pop(key, None)
  return out
