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
    # a continuation of the shared warm-up (its 7 steps are not this arm's own)
    json.dump({"best_step": steps, "continued_from": {"steps": 7, "dir": "w", "best_step": 7},
               "history": [{"step": i + 1, "tokens": 100.0} for i in range(steps + 7)]}, f)
  with open(run / "config.json", "w") as f:
    json.dump({"train": {"total_trajectories": 64}, "sft": {"batch_size": 24}}, f)
  with open(run / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 1, "trajectories": 64, "eval/success": 0.5, "eval/progress": 0.6}) + "\n")
  assert report.compact(str(study), str(runs_dir)) == ["offline_s0"]
  arms = report.arm_table(report.load(str(runs_dir)), str(runs_dir))
  assert arms["offline"]["supervised_trajectories"] == 24 * steps and arms["offline"]["trajectories"] == 64


def test_full_split_final_evaluations_and_paired_differences(tmp_path):
  """With a launch.evaluate JSON per run, the arm's accuracy is the full-split one (not the in-training subset), and
  the paired rods − static difference equals a direct per-task computation."""
  rng = np.random.default_rng(19)
  study, runs_dir = tmp_path / "study", tmp_path / "runs"
  ids = [f"t{i}" for i in range(40)]
  per = {}
  for name in ("static_s0", "static_s1", "rods_s0", "rods_s1"):
    run = study / name
    os.makedirs(run / "eval")
    with open(run / "metrics.jsonl", "w") as f:
      f.write(json.dumps({"step": 3, "trajectories": 192, "eval/success": 0.99, "eval/progress": 0.99,
                          "eval/n_tasks": 10}) + "\n")
    with open(run / "config.json", "w") as f:
      json.dump({"train": {"total_trajectories": 192}, "sft": {"batch_size": 8}}, f)
    succ = rng.integers(0, 2, len(ids))
    per[name] = dict(zip(ids, succ.astype(float)))
    metrics = {"success": float(succ.mean()), "progress": float(succ.mean()) / 2, "n_tasks": len(ids)}
    for step in (1, 3):  # the latest step's evaluation is the one used
      with open(run / "eval" / f"standalone_step{step}_greedy_k1.json", "w") as f:
        json.dump({"source": f"step{step}", "n_tasks": len(ids), "metrics": metrics if step == 3 else
                   {**metrics, "success": 0.0}, "per_task": [{"id": t, "n": 1, "successes": int(per[name][t]),
                                                             "category": "base", "progress": 0.0} for t in ids]}, f)
  report.compact(str(study), str(runs_dir))
  arms = report.arm_table(report.load(str(runs_dir)), str(runs_dir))
  static = [100 * np.mean(list(per[f"static_s{i}"].values())) for i in range(2)]
  assert math.isclose(arms["static"]["accuracy_mean"], np.mean(static)) and arms["static"]["eval_tasks"] == 40
  c = report.paired_difference(str(runs_dir), arms, "rods", "static")
  d = [100 * ((per["rods_s0"][t] + per["rods_s1"][t]) / 2 - (per["static_s0"][t] + per["static_s1"][t]) / 2)
       for t in ids]
  assert math.isclose(c["diff_mean"], np.mean(d)) and math.isclose(c["diff_se"], np.std(d, ddof=1) / math.sqrt(40))
  assert report.paired_difference(str(runs_dir), arms, "rods", "offline") is None  # no such arm
