"""The study's documented commands end to end, tiny: launch.warmup -> launch.study (a GRPO arm and the offline arm,
which continues the warm-up with launch.warmup --init_from) -> launch.report --import_runs. Entry points that only
run in long experiments rot unnoticed otherwise (launch.warmup from scratch once raised a TypeError)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout=600):
  out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       check=False)
  assert out.returncode == 0, (args[0], out.stdout[-2000:], out.stderr[-3000:])
  return out.stdout


def test_warmup_study_report_pipeline(tmp_path):
  _run(["launch.warmup", "--config=configs/static.py", f"--workdir={tmp_path / 'warm'}", "--config.sft.steps=2",
        "--config.sft.eval_every=0", "--config.sft.batch_size=8"])
  small = ["rollout.tasks_per_step=2", "rollout.k=4", "train.eval_max_tasks=4", "rods.seed_limit=8",
           "sft.batch_size=8"]
  printed = _run(["launch.study", f"--out={tmp_path / 'study'}", f"--warmup={tmp_path / 'warm' / 'warmup'}",
                  "--total_trajectories=16", "--eval_every=16", "--parallel=2", "--offline_sft_steps=2",
                  "--runs=_warmup_eval,rods_s0,offline_s0", "--final_eval_tasks=4", f"--results_dir={tmp_path / 'runs'}",
                  *[f"--override={o}" for o in small]])
  assert "rods_s0                  0 (copied)" in printed and "offline_s0               0 (copied)" in printed, printed
  # each finished run was copied into the results directory by the study itself
  assert all((tmp_path / "runs" / run / "final_eval.json").exists() for run in ("rods_s0", "offline_s0"))
  # the offline arm trained on the offline split after its own supervised continuation
  assert os.path.exists(tmp_path / "study" / "offline_s0" / "offline_sft" / "warmup" / "config.json")
  docs = tmp_path / "docs"
  docs.mkdir()
  _run(["launch.report", f"--import_runs={tmp_path / 'study'}", f"--runs_dir={tmp_path / 'runs'}",
        f"--docs={docs}", f"--benchmarks={tmp_path / 'none'}"])
  with open(docs / "results.json") as f:
    res = json.load(f)
  assert set(res["arms"]) == {"rods", "offline"}
  # each run's final checkpoint and the warm-up were evaluated by the study itself (the table's source)
  for run in ("rods_s0", "offline_s0"):
    with open(tmp_path / "runs" / run / "final_eval.json") as f:
      assert json.load(f)["n_tasks"] == 4
  with open(tmp_path / "runs" / "warmup_final_eval.json") as f:
    assert json.load(f)["n_tasks"] == 4
  with open(tmp_path / "runs" / "warmup_sft_history.json") as f:  # the calibration table's source, copied along
    assert [h["step"] for h in json.load(f)["history"]] == [1, 2]
  assert res["arms"]["rods"]["trajectories"] == 16 and res["arms"]["rods"]["n_seeds"] == 1
  assert (docs / "figures" / "learning_curves.png").exists()
