"""launch.report: the numbers in docs/results.json are what the compact logs say (fresh synthetic runs)."""
import gzip
import json
import math
import os

import numpy as np

from launch import report


def _write_run(root, name, records, events, budget):
  d = os.path.join(root, name)
  os.makedirs(d)
  with gzip.open(os.path.join(d, "metrics.jsonl.gz"), "wt") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  with gzip.open(os.path.join(d, "events.jsonl.gz"), "wt") as f:
    for e in events:
      f.write(json.dumps(e) + "\n")
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump({"train": {"total_trajectories": budget}}, f)


def test_arm_table_and_mechanism_match_a_direct_computation(tmp_path):
  rng = np.random.default_rng(7)
  truth = {}
  for name in ("static_s0", "static_s1", "rods_s0"):
    recs, events = [], []
    for step in range(1, 6):
      frac = rng.dirichlet([1, 1, 1])
      var = rng.uniform(0.001, 0.05, size=3)
      recs.append({"step": step, "trajectories": 64 * step, **{f"zones/{z}": float(f) for z, f in
                                                               zip(("hard", "boundary", "mastered"), frac)},
                   **{f"zones/var_{z}": float(v) for z, v in zip(("hard", "boundary", "mastered"), var)}})
    acc = float(rng.uniform(0, 1))
    recs.append({"step": 5, "trajectories": 320, "eval/success": acc, "eval/progress": acc / 2,
                 "eval/base/success": acc})
    if name.startswith("rods"):
      events = [{"event": "first_obs", "rbar": float(x)} for x in rng.uniform(0, 1, 9)]
    truth[name] = (recs, events, acc)
    _write_run(tmp_path, name, recs, events, budget=320)
  runs = report.load(str(tmp_path))
  arms = report.arm_table(runs, str(tmp_path))
  s = [100 * truth[f"static_s{i}"][2] for i in range(2)]
  assert math.isclose(arms["static"]["accuracy_mean"], np.mean(s))
  assert math.isclose(arms["static"]["accuracy_se"], np.std(s, ddof=1) / math.sqrt(2))
  assert arms["static"]["n_seeds"] == 2 and arms["rods"]["n_seeds"] == 1 and arms["rods"]["complete"]
  assert arms["static"]["supervised_trajectories"] == 0
  mech = report.mechanism(runs)
  num = {z: 0.0 for z in ("hard", "boundary", "mastered")}
  den = dict(num)
  for recs, _, _ in truth.values():
    for r in recs:
      for z in num:
        if f"zones/{z}" in r:
          num[z] += r[f"zones/{z}"] * r[f"zones/var_{z}"]
          den[z] += r[f"zones/{z}"]
  other = (num["hard"] + num["mastered"]) / (den["hard"] + den["mastered"])
  assert math.isclose(mech["variance_ratio_boundary"], num["boundary"] / den["boundary"] / other)
  assert math.isclose(mech["injected_first_rbar_median"], np.median([e["rbar"] for e in truth["rods_s0"][1]]))


def test_offline_supervised_stage_is_counted_in_the_trajectory_accounting(tmp_path):
  """compact() keeps the offline arm's own supervised stage; the table counts steps × sft.batch_size gold
  trajectories for it."""
  study, runs_dir = tmp_path / "study", tmp_path / "runs"
  run = study / "offline_s0"
  os.makedirs(run / "offline_sft" / "warmup")
  steps = int(np.random.default_rng(3).integers(5, 40))
  with open(run / "offline_sft" / "warmup" / "sft_history.json", "w") as f:
    json.dump({"best_step": steps, "history": [{"step": i + 1, "tokens": 100.0} for i in range(steps)]}, f)
  with open(run / "config.json", "w") as f:
    json.dump({"train": {"total_trajectories": 64}, "sft": {"batch_size": 24}}, f)
  with open(run / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 1, "trajectories": 64, "eval/success": 0.5, "eval/progress": 0.6}) + "\n")
  assert report.compact(str(study), str(runs_dir)) == ["offline_s0"]
  arms = report.arm_table(report.load(str(runs_dir)), str(runs_dir))
  assert arms["offline"]["supervised_trajectories"] == 24 * steps and arms["offline"]["trajectories"] == 64
