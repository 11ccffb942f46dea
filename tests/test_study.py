"""launch.study without training: the run tables, the command lines, and the interruption-proof results directory
(a finished run is copied and committed at once; a run already there is skipped) with fake runs."""
import gzip
import json
import os
import subprocess
import sys

import pytest
from absl import app, flags

from launch import report, study, study_plans, study_results

FAKE_RUN = r'''
import json, os, sys
workdir, rc, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
  for step in (1, 2):
    f.write(json.dumps({"step": step, "trajectories": 8 * step, "reward/mean": 0.5, "not/kept": 1}) + "\n")
with open(os.path.join(workdir, "config.json"), "w") as f:
  json.dump({"train": {"total_trajectories": 16}}, f)
with open(os.path.join(workdir, "eval", f"standalone_step2{tag}_greedy_k1.json"), "w") as f:
  json.dump({"source": "step2", "n_tasks": 2, "metrics": {"success": 0.5, "progress": 0.5},
             "per_task": [{"id": "a", "n": 1, "successes": 1}, {"id": "b", "n": 1, "successes": 0}]}, f)
sys.exit(rc)
'''


def _git(root, *args):
  return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def repo(tmp_path):
  root = tmp_path / "repo"
  root.mkdir()
  _git(root, "init", "-q")
  _git(root, "config", "user.email", "t@t")
  _git(root, "config", "user.name", "t")
  (root / "README").write_text("x")
  _git(root, "add", "README")
  _git(root, "commit", "-qm", "init")
  return root


def _fake(tmp_path, out, name, rc=0, tag=""):
  script = tmp_path / "fake_run.py"
  script.write_text(FAKE_RUN)
  return [sys.executable, str(script), str(out / name), str(rc), tag]


def test_finished_runs_are_copied_committed_and_then_skipped(tmp_path, repo):
  out, results = tmp_path / "study", repo / "docs" / "runs"
  root = study_results.repo_root(str(results))
  (repo / "unrelated.txt").write_text("staged, not the study's")
  _git(repo, "add", "unrelated.txt")
  finish = study.Finisher(str(out), str(results), "test", root, "study")
  commands = {"static_s0": _fake(tmp_path, out, "static_s0"), "rods_s0": _fake(tmp_path, out, "rods_s0", rc=3)}
  done = study.execute(commands, str(out), 2, 600, finish)
  assert done == {"static_s0": "0 (copied, committed)", "rods_s0": 3}
  assert study_results.is_done(str(results), "static_s0") and not study_results.is_done(str(results), "rods_s0")
  assert not os.path.exists(results / "rods_s0")  # a failed run leaves nothing in the results
  # the copy is what launch.report reads: only the report's keys, and the final evaluation per task
  runs = report.load(str(results))
  assert [r["step"] for r in runs["static_s0"]["records"]] == [1, 2]
  assert all("not/kept" not in r for r in runs["static_s0"]["records"])
  assert report.load_final_eval(str(results), "static_s0")["per_task"] == {"a": 1.0, "b": 0.0}
  # committed at once, only the run's files (what else was staged stays staged)
  assert _git(repo, "log", "-1", "--format=%s").startswith("study: static_s0 finished")
  assert sorted(_git(repo, "show", "--name-only", "--format=", "HEAD").split()) == sorted(
      f"docs/runs/static_s0/{f}" for f in study_results.RUN_FILES)
  assert _git(repo, "diff", "--cached", "--name-only").split() == ["unrelated.txt"]
  # a run that exits 0 without its final evaluation is reported, not copied
  no_eval = [sys.executable, "-c", f"import os; os.makedirs({str(out / 'dynamic_sampling_s0')!r}, exist_ok=True)"]
  done = study.execute({"dynamic_sampling_s0": no_eval}, str(out), 1, 600, finish)
  assert done["dynamic_sampling_s0"].startswith("0 but not copied: dynamic_sampling_s0: finished but")


def test_a_resumed_study_skips_only_what_the_results_directory_holds(tmp_path):
  """Runs whose compact logs and final evaluation are in the results directory are not started again; a run with
  logs but no final evaluation is."""
  warm = tmp_path / "warm"
  warm.mkdir()
  (warm / "config.json").write_text("{}")
  results = tmp_path / "results"
  os.makedirs(results / "static_s0")
  for f in study_results.RUN_FILES:
    (results / "static_s0" / f).write_text("{}")
  os.makedirs(results / "rods_s0")
  (results / "rods_s0" / "metrics.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))  # logs without final evaluation
  flags.FLAGS(["study", f"--warmup={warm}", f"--out={tmp_path / 'out'}"])
  try:
    plan = study_plans.make("study", pilot_steps=1, late_warmup=False)
    pending = study.pending_commands(["_warmup_eval", "static_s0", "rods_s0"], plan, str(results))
  finally:
    flags.FLAGS.unparse_flags()
  assert list(pending) == ["_warmup_eval", "rods_s0"]
  assert f"--workdir={tmp_path / 'out' / 'rods_s0'}" in pending["rods_s0"][2]


def test_plans_hold_the_issue_tables(tmp_path):
  runs = study_plans.study(str(tmp_path))  # no configs/rods_posterior.py there
  assert sorted(runs) == sorted([f"{a}_s{s}" for a in ("static", "rods", "dynamic_sampling") for s in range(3)]
                                + ["offline_s0", "env_augment_s0", "random_seed_s0"])
  assert all(r.overrides["train.eval_split"] == "validation" for r in runs.values())
  os.makedirs(tmp_path / "configs")
  (tmp_path / "configs" / "rods_posterior.py").write_text("")
  assert {f"rods_posterior_s{s}" for s in range(3)} <= set(study_plans.study(str(tmp_path)))
  plan = study_plans.make("pilot", pilot_steps=100, late_warmup=True)
  assert plan.split == "validation" and plan.results_dir == "docs/pilot"
  assert {r.arm for r in plan.runs.values()} == {"static"}
  rows = {r.overrides["rollout.tasks_per_step"] * r.overrides["rollout.k"] for r in plan.runs.values()}
  assert max(rows) >= 256 and {r.overrides["rods.seed_limit"] for r in plan.runs.values()} == {16, 32, 64}
  assert {r.overrides["optim.lr"] for r in plan.runs.values()} == set(study_plans.PILOT_LRS)
  assert [n for n, r in plan.runs.items() if r.warmup == "warmup_late"] == ["pilot_lr0.0003_r256_p32_late"]
  for r in plan.runs.values():  # >= 100 steps each, whatever its rows per step; curves on the validation split
    o = r.overrides
    assert o["train.total_trajectories"] == 100 * o["rollout.tasks_per_step"] * o["rollout.k"]
    assert o["train.eval_split"] == "validation"
  assert not any(r.warmup == "warmup_late" for r in study_plans.make("pilot", pilot_steps=5, late_warmup=False)
                 .runs.values())
  with pytest.raises(ValueError, match="--plan='nope'"):
    study_plans.make("nope", pilot_steps=1, late_warmup=False)


def test_pilot_command_evaluates_on_validation_with_one_value_per_key(tmp_path):
  warm = tmp_path / "warm"
  warm.mkdir()
  (warm / "config.json").write_text("{}")
  flags.FLAGS(["study", "--plan=pilot", f"--warmup={warm}", f"--out={tmp_path / 'out'}", "--pilot_steps=10",
               "--override=rollout.max_trajectory_tokens=384"])
  try:
    plan = study_plans.make("pilot", pilot_steps=10, late_warmup=False)
    argv = study.command("pilot_lr0.001_r256_p32", plan)
    warm_argv = study.command(study.WARMUP_EVAL, plan)
    with pytest.raises(app.UsageError, match="--warmup_late=''"):
      study.command("x", plan._replace(runs={"x": study_plans.Run("static", {}, "warmup_late")}))
    flags.FLAGS.override = ["optim.lr=1e-4"]  # would silently replace the pilot cell's own learning rate
    with pytest.raises(app.UsageError, match=r"--override of \['optim.lr'\] clashes"):
      study.command("pilot_lr0.001_r256_p32", plan)
  finally:
    flags.FLAGS.unparse_flags()
  train, evaluate = argv[2][len("set -e; "):].split("; ")
  assert train.count("--config.train.total_trajectories=") == 1 and "--config.train.total_trajectories=2560" in train
  assert "--config.optim.lr=0.001" in train and "--config.train.eval_split=validation" in train
  assert "--config.rollout.max_trajectory_tokens=384" in train
  assert "launch.evaluate" in evaluate and "--split=validation" in evaluate
  assert "--split=validation" in warm_argv[2] and "--checkpoint_dir=" in warm_argv[2]


def test_warmup_evaluation_copy_reads_its_own_split(tmp_path):
  warm, results = tmp_path / "_warmup_eval", tmp_path / "results"
  warm.mkdir()
  (warm / "sft_history.json").write_text(json.dumps({"best_step": 1, "history": []}))
  for tag, n in (("", 400), ("_validation", 200)):
    (warm / f"standalone_lab_warmup{tag}_greedy_k1.json").write_text(json.dumps(
        {"source": "lab_warmup", "n_tasks": n, "metrics": {"success": 0.3}, "per_task": []}))
  study_results.save(str(warm), "_warmup_eval", str(results), "validation")
  assert json.loads((results / "warmup_final_eval.json").read_text())["n_tasks"] == 200
  study_results.save(str(warm), "_warmup_eval", str(results), "test")
  assert json.loads((results / "warmup_final_eval.json").read_text())["n_tasks"] == 400
  assert study_results.is_done(str(results), "_warmup_eval")


def test_every_planned_run_config_validates():
  """Each run of each plan, as launch.train would build it (arm config + the run's overrides), passes validation."""
  import importlib

  from rods_jax import config_validation
  for name in study_plans.PLANS:
    plan = study_plans.make(name, pilot_steps=100, late_warmup=True)
    for run_name, run in plan.runs.items():
      config = importlib.import_module(f"configs.{run.arm}").get_config("lab")
      for key, value in run.overrides.items():
        *sections, leaf = key.split(".")
        node = config
        for s in sections:
          node = node[s]
        node[leaf] = value
      try:
        config_validation.validate(config, 1)
      except ValueError as e:
        raise AssertionError(f"{name}/{run_name}: {e}") from e
