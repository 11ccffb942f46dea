r"""Run a lab study: every run from a committed warm-up checkpoint, in parallel processes, each run's results
committed as soon as it finishes.

  python -m launch.study --plan=pilot --out=runs/pilot --pilot_steps=100 --commit      # choose the regime
  python -m launch.study --plan=study --out=runs/study --total_trajectories=10240 --eval_every=2560 --commit

``--plan`` picks the run table (``launch.study_plans``: ``study``, ``pilot``, ``pass3``). Each run is
``python -m launch.train --config=configs/<arm>.py --workdir=<out>/<name> ...`` (same trajectory budget and
evaluation points within a plan, so curves share their x-axis), followed by ``launch.evaluate`` of its final
checkpoint on the first ``--final_eval_tasks`` tasks of the plan's split (test; validation for the pilot); the
warm-up checkpoint itself is evaluated the same way (``<out>/_warmup_eval``, with a copy of its
``sft_history.json``). A finished run's compact logs and final evaluation are copied into ``--results_dir`` (the
plan's: docs/runs, docs/pilot) and, with ``--commit``, committed there at once; runs already there are skipped.
So a study stopped at any moment (``--time_limit_s``, a lost machine) continues from what the repository holds;
unfinished runs also resume from their checkpoints in ``--out``. The ``offline`` arm does its own supervised stage
on the 16K offline split instead of starting from the warm-up.
"""
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from absl import app, flags, logging

from launch import study_plans, study_results

FLAGS = flags.FLAGS
flags.DEFINE_enum("plan", "study", study_plans.PLANS, "Run table (launch.study_plans).")
flags.DEFINE_string("out", "runs/study", "Directory holding one workdir per run.")
flags.DEFINE_string("warmup", "checkpoints/lab_warmup", "Warm-up checkpoint (HF layout) every GRPO arm starts from.")
flags.DEFINE_string("warmup_late", "", "pilot: a later, more depleted warm-up checkpoint; adds the pilot's centre "
                    "run from it ('' = none).")
flags.DEFINE_integer("pilot_steps", 100, "pilot: GRPO steps of every pilot run (budget = steps × rows per step).")
flags.DEFINE_string("results_dir", "", "Committed results: finished runs are copied here and skipped next time "
                    "('' = the plan's: docs/runs, docs/pilot, docs/runs_pass3).")
flags.DEFINE_bool("commit", False, "git-commit each finished run's results as soon as it is copied.")
flags.DEFINE_integer("total_trajectories", 10_240, "Trajectory budget of every arm (study, pass3).")
flags.DEFINE_integer("eval_every", 2_560, "Held-out evaluation every this many trajectories (study, pass3).")
flags.DEFINE_integer("time_limit_s", 3_600, "Stop (kill) runs still going after this long; they resume next time.")
flags.DEFINE_integer("parallel", 16, "Runs at once.")
flags.DEFINE_list("runs", None, "Subset of run names (default: the warm-up evaluation(s) and every run of the plan).")
flags.DEFINE_integer("offline_sft_steps", 400, "offline arm: supervised steps on the offline split's gold "
                     "trajectories (batch sft.batch_size) on top of the shared warm-up.")
flags.DEFINE_integer("final_eval_tasks", 400, "Greedy evaluation of each run's final checkpoint (and of the "
                     "warm-up) on this many tasks of the plan's split after training; 0 = none.")
flags.DEFINE_multi_string("override", [], "Extra --config.* overrides for every run, e.g. rollout.k=8.")

WARMUP_EVAL = "_warmup_eval"  # the warm-up checkpoint's own evaluation (launch.report reads this directory)
WARMUP_LATE_EVAL = "_warmup_late_eval"  # the pilot's later warm-up checkpoint, evaluated the same way


def _evaluate_args(workdir: str, warmup: str, extra: dict, split: str, checkpoint_dir: str = "") -> list[str]:
  # One protocol for the table: every run is scored under the static arm's config (the held-out evaluation reads
  # only its env, rollout and model sections), so env_augment's training-time error hints never reach its test
  # observations.
  args = [sys.executable, "-m", "launch.evaluate", "--config=configs/static.py", f"--workdir={workdir}",
          f"--max_tasks={FLAGS.final_eval_tasks}", "--k=1", f"--split={split}",
          f"--config.sft.init_checkpoint={warmup}", f"--config.model.tokenizer_dir={warmup}"]
  if checkpoint_dir:
    args += [f"--checkpoint_dir={checkpoint_dir}", f"--out_dir={workdir}"]
  return args + _overrides(extra)


def _overrides(extra: dict) -> list[str]:
  # A key given twice would be decided by flag order; a run's own value (a pilot cell, a seed) must not be lost.
  clash = sorted({o.split("=", 1)[0] for o in FLAGS.override} & set(extra))
  if clash:
    raise app.UsageError(f"--override of {clash} clashes with the run's own value (set it with the study's flags "
                         "or in launch.study_plans)")
  return [f"--config.{k}={v}" for k, v in extra.items()] + [f"--config.{o}" for o in FLAGS.override]


def _warmup_path(which: str) -> str:
  path = FLAGS.warmup_late if which == "warmup_late" else FLAGS.warmup
  if not os.path.exists(os.path.join(path, "config.json")):
    raise app.UsageError(f"--{which}={path!r} is not an HF checkpoint directory (no config.json)")
  return os.path.abspath(path)


def command(name: str, plan: study_plans.Plan) -> list[str]:
  """The run's command line: ``launch.train`` then (``--final_eval_tasks``) ``launch.evaluate`` of its final
  checkpoint on the plan's split. ``offline`` first continues the shared warm-up with supervised training on the
  offline split's gold trajectories (``launch.warmup --init_from``), then runs static GRPO on that split. A warm-up
  evaluation (``WARMUP_EVAL``, ``WARMUP_LATE_EVAL``) evaluates that checkpoint only."""
  if name in study_results.WARMUP_EVALS:  # with the warm-up's history (the report's calibration table)
    warmup = _warmup_path("warmup_late" if name == WARMUP_LATE_EVAL else "warmup")
    out = os.path.join(FLAGS.out, name)
    evaluate = _evaluate_args(out, warmup, {}, plan.split, checkpoint_dir=warmup)
    return ["bash", "-c", f"set -e; mkdir -p {shlex.quote(out)}; cp {shlex.quote(warmup)}/sft_history.json "
            f"{shlex.quote(out)}/; {shlex.join(evaluate)}"]
  run = plan.runs[name]
  warmup = _warmup_path(run.warmup)
  workdir = os.path.join(FLAGS.out, name)
  steps = []
  if run.arm == "offline":
    sft = os.path.join(workdir, "offline_sft")
    pre = [sys.executable, "-m", "launch.warmup", f"--config=configs/{run.arm}.py", f"--workdir={sft}",
           f"--init_from={warmup}", f"--config.sft.steps={FLAGS.offline_sft_steps}", "--config.sft.warmup_steps=0",
           "--config.sft.select_by_zones=False"]
    warmup = os.path.join(os.path.abspath(sft), "warmup")
    # resumable: the supervised stage runs once (its checkpoint is written at the end)
    steps.append(f"test -e {shlex.quote(warmup)}/config.json || {shlex.join(pre)}")
  # the plan's budget (a pilot row sets its own) — one value per key, the run's winning
  budget = {"train.total_trajectories": FLAGS.total_trajectories, "train.eval_every_trajectories": FLAGS.eval_every}
  train = [sys.executable, "-m", "launch.train", f"--config=configs/{run.arm}.py", f"--workdir={workdir}",
           "--config.logging.progress_bar=False", f"--config.sft.init_checkpoint={warmup}",
           f"--config.model.tokenizer_dir={warmup}"] + _overrides({**budget, **run.overrides})
  steps.append(shlex.join(train))
  if FLAGS.final_eval_tasks > 0:
    steps.append(shlex.join(_evaluate_args(workdir, warmup, run.overrides, plan.split)))
  if len(steps) == 1:
    return train
  return ["bash", "-c", "set -e; " + "; ".join(steps)]


def run_names(plan: study_plans.Plan) -> list[str]:
  """``--runs``, else the warm-up evaluation(s) (with ``--final_eval_tasks``) and every run of the plan."""
  warm = [WARMUP_EVAL] + ([WARMUP_LATE_EVAL] if any(r.warmup == "warmup_late" for r in plan.runs.values()) else [])
  names = FLAGS.runs or (warm if FLAGS.final_eval_tasks else []) + list(plan.runs)
  unknown = [n for n in names if n not in plan.runs and n not in warm]
  if unknown:
    raise app.UsageError(f"unknown runs {unknown} for --plan={FLAGS.plan}; known: {warm + sorted(plan.runs)}")
  return names


def pending_commands(names: list[str], plan: study_plans.Plan, results_dir: str) -> dict[str, list[str]]:
  """name -> command line of the runs of ``names`` not yet complete in ``results_dir`` (every bad path or name
  fails here, before the first run starts)."""
  commands = {}
  for name in names:
    if study_results.is_done(results_dir, name):
      logging.info("%s: already in %s, skipped", name, results_dir)
    else:
      commands[name] = command(name, plan)
  return commands


class Finisher(NamedTuple):
  """What happens to a run that exited 0: copied from ``out`` into ``results_dir`` (its final ``split``
  evaluation), and committed in ``git_root`` unless that is ''."""
  out: str
  results_dir: str
  split: str
  git_root: str
  label: str  # the commit message's prefix (the plan)

  def __call__(self, name: str) -> str:
    try:  # a failure here is reported with the run and leaves the other runs going
      paths = study_results.save(os.path.join(self.out, name), name, self.results_dir, self.split)
      if not self.git_root:
        return "0 (copied)"
      study_results.commit(paths, f"{self.label}: {name} finished (compact logs and final {self.split} "
                           "evaluation)", self.git_root)
      return "0 (copied, committed)"
    except FileNotFoundError as e:
      return f"0 but not copied: {e}"
    except subprocess.CalledProcessError as e:
      return f"0, copied, commit failed: {e.stderr.strip()}"


def execute(commands: dict[str, list[str]], out: str, parallel: int, time_limit_s: float,
            finish: Callable[[str], str] | None) -> dict[str, Any]:
  """Runs ``commands`` (name -> argv, logs in ``<out>/<name>.log``), ``parallel`` at once; each that exits 0 is
  handed to ``finish`` as soon as it does (None: nothing is copied). Past ``time_limit_s`` the runs still going are
  stopped (they resume next time) and no more start. Returns name -> status."""
  os.makedirs(out, exist_ok=True)
  done: dict[str, Any] = {}
  pending, running = list(commands), {}
  t0 = time.time()
  while pending or running:
    while pending and len(running) < parallel:
      name = pending.pop(0)
      log = open(os.path.join(out, f"{name}.log"), "a")
      running[name] = (subprocess.Popen(commands[name], stdout=log, stderr=subprocess.STDOUT), log)
      logging.info("started %s", name)
    for name, (proc, log) in list(running.items()):
      if proc.poll() is not None:
        log.close()
        del running[name]
        ok = proc.returncode == 0
        done[name] = (finish(name) if finish is not None else 0) if ok else proc.returncode
        logging.info("%s finished rc=%d after %.0fs: %s", name, proc.returncode, time.time() - t0, done[name])
    if time.time() - t0 > time_limit_s:
      for name, (proc, log) in running.items():
        proc.terminate()
        try:
          proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
          proc.kill()
        log.close()
        done[name] = "stopped (resumable)"
        logging.warning("%s stopped at the time limit; rerun the study to continue it", name)
      running = {}
      pending = []
    time.sleep(0.5)
  return done


def main(argv):
  del argv
  if FLAGS.final_eval_tasks < 0:
    raise app.UsageError(f"--final_eval_tasks={FLAGS.final_eval_tasks} must be >= 0")
  plan = study_plans.make(FLAGS.plan, pilot_steps=FLAGS.pilot_steps, late_warmup=bool(FLAGS.warmup_late))
  results_dir = FLAGS.results_dir if FLAGS.results_dir else os.path.join(study_plans.ROOT, plan.results_dir)
  git_root = study_results.repo_root(results_dir) if FLAGS.commit else ""  # fails before any run starts
  names = run_names(plan)
  commands = pending_commands(names, plan, results_dir)
  # Without a final evaluation a run is never complete in the results directory: nothing is copied.
  finish = Finisher(FLAGS.out, results_dir, plan.split, git_root, FLAGS.plan) if FLAGS.final_eval_tasks else None
  done = execute(commands, FLAGS.out, FLAGS.parallel, FLAGS.time_limit_s, finish)
  for name in names:
    print(f"{name:24s} {done.get(name, 'skipped (already in ' + results_dir + ')')}")


if __name__ == "__main__":
  app.run(main)
