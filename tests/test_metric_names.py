"""Public metric names: the verl-style renaming, one name per value, no loss/entropy/grad_norm on a skipped step, old
logs read under today's names; checked in the JSONL, in the TensorBoard event files and in an offline W&B run."""
import gzip
import json
import os
import re

import ml_collections
import numpy as np
import pytest

from rods_jax import metric_names
from rods_jax import metrics as metrics_lib
from test_metrics import _read_events

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _learner_like(rng, skipped: bool) -> dict:
  """A step's metrics as the loop hands them to the writer (internal names), with fresh random values."""
  m = {k: float(rng.random()) for k in metric_names.RENAMES if not k.startswith("time/")}
  m["grpo/skipped"] = 1.0 if skipped else 0.0
  m["reward/mean"] = m["grpo/reward_mean"] = m["reward/group_mean"] = float(rng.random())
  m["reward/std"] = m["grpo/reward_std"] = float(rng.random())
  m["zones/zero_std"] = m["grpo/frac_zero_std"] = float(rng.random())
  for z in ("hard", "boundary", "mastered"):
    m[f"zones/{z}"] = m[f"grpo/zones/{z}"] = float(rng.random())
  m["rollout/length"] = m["grpo/seq_len_mean"] = float(rng.integers(10, 500))
  m["grpo/sampled_tokens_mean"] = m["rollout/response_tokens_mean"]
  m["pool/size"], m["staleness/mean"], m["trajectories"] = 64, float(rng.random()), int(rng.integers(1, 10_000))
  return m


def test_renames_merge_twins_and_pass_unknown_keys_through():
  rng = np.random.default_rng(5)
  m = _learner_like(rng, skipped=False)
  out = metric_names.to_public({**m, "time/rollout": 1.5, "time/engine_decode": 0.25})
  for old, new in metric_names.RENAMES.items():
    if old in m:
      assert out[new] == m[old] and old not in out, old
  assert out["timing_s/gen"] == 1.5 and out["timing_s/engine_decode"] == 0.25
  for old in metric_names.TWINS:
    assert old not in out
  assert out["critic/score/mean"] == m["reward/mean"] and out["zones/zero_std"] == m["zones/zero_std"]
  # verl's pg_clipfrac counts both clip sides (disjoint events over the same tokens)
  assert out["actor/pg_clipfrac"] == pytest.approx(m["grpo/clip_frac_low"] + m["grpo/clip_frac_high"])
  assert out["staleness/mean"] == m["staleness/mean"] and out["pool/size"] == 64  # unknown keys unchanged
  assert metric_names.to_public(out) == out  # idempotent: public names are fixed points
  # a twin alone (an old log without its kept twin) is renamed to it, not lost
  assert metric_names.to_public({"grpo/frac_zero_std": 0.25}) == {"zones/zero_std": 0.25}
  with pytest.raises(ValueError, match="critic/score/mean"):
    metric_names.to_public({"reward/mean": 0.5, "critic/score/mean": 0.25})


def test_skipped_step_has_no_loss_entropy_or_grad_norm():
  rng = np.random.default_rng(6)
  out = metric_names.to_public(_learner_like(rng, skipped=True))
  for key in metric_names.UNDEFINED_WHEN_SKIPPED:
    assert key not in out, key
  assert out["actor/skipped"] == 1.0 and "actor/lr" in out and "critic/score/mean" in out
  assert "actor/entropy" in metric_names.to_public(_learner_like(rng, skipped=False))


def test_docs_name_every_public_key():
  doc = open(os.path.join(_REPO, "docs", "METRICS.md"), encoding="utf-8").read()
  named = set(re.findall(r"`([\w/@^<>*]+)`", doc))
  for old, new in metric_names.RENAMES.items():
    assert new in named and (old in named or old.startswith(("grpo/ratio_", "time/"))), (old, new)
  for old, twin in metric_names.TWINS.items():
    assert twin in named and (old in named or old.startswith("grpo/zones/")), old
  assert "actor/pg_clipfrac" in named and "vs_trajectories/<name>" in named


def test_committed_old_logs_read_under_public_names():
  from launch import report
  runs = report.load(os.path.join(_REPO, "docs", "runs_pass3"))
  recs = runs["rods_s0"]["records"]
  raw = [json.loads(x) for x in gzip.open(os.path.join(_REPO, "docs", "runs_pass3", "rods_s0", "metrics.jsonl.gz"), "rt")]
  train = [(r, o) for r, o in zip(recs, raw) if "reward/mean" in o]
  assert train and all(r["critic/score/mean"] == o["reward/mean"] for r, o in train)
  assert all(r["zones/zero_std"] == o["zones/zero_std"] and "grpo/frac_zero_std" not in r for r, o in train)
  assert all(r["actor/kl_loss"] == o["grpo/kl"] for r, o in train)


def _cfg(tensorboard: bool, wandb: bool) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(every_steps=1, progress_bar=False, tensorboard=tensorboard, wandb=wandb,
                                        wandb_project="rods_jax_test"))


def test_tensorboard_has_documented_names_against_step_and_trajectories(tmp_path):
  rng = np.random.default_rng(7)
  steps = [_learner_like(rng, skipped=False), _learner_like(rng, skipped=True), _learner_like(rng, skipped=False)]
  for i, m in enumerate(steps):
    m["trajectories"] = 64 * (i + 1)
  with metrics_lib.MetricWriter(tmp_path, _cfg(True, False)) as writer:
    for i, m in enumerate(steps, start=1):
      writer.write(i, m, timings={"rollout": float(rng.random()), "update": float(rng.random())})
  events = _read_events(tmp_path / metrics_lib.TENSORBOARD_DIR)
  tags = {tag for tag, _ in events}
  for name in ("actor/entropy", "actor/kl_loss", "actor/pg_clipfrac", "actor/grad_norm", "actor/lr",
               "critic/score/mean", "critic/score/max", "critic/score/min", "critic/advantages/abs_mean",
               "response_length/mean", "response_length/max", "response_length/min", "response_length/clip_ratio",
               "timing_s/gen", "timing_s/update_actor", "zones/boundary", "zones/zero_std", "pool/size"):
    assert name in tags and metrics_lib.TB_TRAJECTORY_PREFIX + name in tags, name
  assert not any(t.startswith(("grpo/", "reward/", "time/")) for t in tags)
  for step, m in enumerate(steps, start=1):
    assert events[("critic/score/mean", step)] == pytest.approx(m["reward/mean"], rel=1e-6)
    assert events[("vs_trajectories/critic/score/mean", 64 * step)] == pytest.approx(m["reward/mean"], rel=1e-6)
  assert events[("actor/entropy", 1)] == pytest.approx(steps[0]["grpo/entropy"], rel=1e-6)
  for key in ("actor/entropy", "actor/grad_norm", "actor/loss", "actor/kl_loss"):  # the skipped step: nothing
    assert (key, 2) not in events and (metrics_lib.TB_TRAJECTORY_PREFIX + key, 128) not in events
  assert events[("actor/skipped", 2)] == 1.0
  (rec2,) = [r for r in metrics_lib.read_jsonl(tmp_path / metrics_lib.JSONL_NAME) if r["step"] == 2]
  assert "actor/entropy" not in rec2 and rec2["actor/skipped"] == 1.0


def test_wandb_offline_run_logs_public_names(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  rng = np.random.default_rng(8)
  normal, skipped = _learner_like(rng, skipped=False), _learner_like(rng, skipped=True)
  with metrics_lib.MetricWriter(tmp_path / "run", _cfg(False, True)) as writer:
    writer.write(1, normal)
    writer.write(2, skipped)
    writer.write_config(ml_collections.ConfigDict({"rods": {"p_max": 400}}))
    run = writer.wandb_run
    summary, config = dict(run.summary), dict(run.config)
  assert summary["critic/score/mean"] == skipped["reward/mean"] and summary["step"] == 2
  assert summary["actor/entropy"] == normal["grpo/entropy"]  # the skipped step logged none (no 0.0)
  assert not any(k.startswith(("grpo/", "reward/")) for k in summary)
  assert config == {"rods": {"p_max": 400}}
  files = [f for d, _, fs in os.walk(tmp_path / "run" / "wandb") for f in fs if f.endswith(".wandb")]
  assert files  # the offline run's transaction log, for `wandb sync`
