r"""Run the lab study (issue 7): every arm from one warm-up checkpoint, in parallel processes, same budget.

  python -m launch.study --out=runs/study --warmup=runs/warmup/warmup --total_trajectories=10240 \
      --eval_every=2560 --time_limit_s=3600

Each run is ``python -m launch.train --config=configs/<arm>.py --workdir=<out>/<name> ...`` with the same
trajectory budget and evaluation points, so every curve shares its x-axis (trajectories consumed), followed by
``launch.evaluate`` of its final checkpoint on the first ``--final_eval_tasks`` test tasks (the report's table);
the warm-up checkpoint itself is evaluated the same way (``<out>/_warmup_eval``, the "before GRPO" row, with a copy
of its ``sft_history.json``: the calibration table). Runs resume from their checkpoints: calling the study again
continues unfinished runs (a long study can be split into parts). The ``offline`` arm does its own supervised stage
on the 16K offline split instead of starting from the warm-up.
"""
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/study", "Directory holding one workdir per run.")
flags.DEFINE_string("warmup", "runs/warmup/warmup", "Warm-up checkpoint (HF layout) every GRPO arm starts from.")
flags.DEFINE_integer("total_trajectories", 10_240, "Trajectory budget of every arm.")
flags.DEFINE_integer("eval_every", 2_560, "Held-out evaluation every this many trajectories.")
flags.DEFINE_integer("time_limit_s", 3_600, "Stop (kill) runs still going after this long; they resume next time.")
flags.DEFINE_integer("parallel", 16, "Runs at once.")
flags.DEFINE_list("runs", None, "Subset of run names (default: all of STUDY).")
flags.DEFINE_integer("offline_sft_steps", 400, "offline arm: supervised steps on the offline split's gold "
                     "trajectories (batch sft.batch_size) on top of the shared warm-up.")
flags.DEFINE_integer("final_eval_tasks", 400, "Greedy evaluation of each run's final checkpoint (and of the "
                     "warm-up) on this many test tasks after training; 0 = none.")
flags.DEFINE_multi_string("override", [], "Extra --config.* overrides for every run, e.g. rollout.k=8.")

# name -> (config file, per-run overrides). Three seeds for static and rods (mean ± s.e.), one for the rest, and
# the P_max sweep {0, 50, 200, 400} (400 is the rods arm itself).
STUDY = {
    **{f"static_s{s}": ("static", {"seed": s}) for s in range(3)},
    **{f"rods_s{s}": ("rods", {"seed": s}) for s in range(3)},
    "dynamic_sampling_s0": ("dynamic_sampling", {"seed": 0}),
    "env_augment_s0": ("env_augment", {"seed": 0}),
    "random_seed_s0": ("random_seed", {"seed": 0}),
    "no_retire_s0": ("no_retire", {"seed": 0}),
    "static_pool_s0": ("static_pool", {"seed": 0}),
    "offline_s0": ("offline", {"seed": 0}),
    **{f"pmax{p}_s0": ("rods", {"seed": 0, "rods.p_max": p}) for p in (0, 50, 200)},
}


WARMUP_EVAL = "_warmup_eval"  # the warm-up checkpoint's own evaluation (launch.report reads this directory)


def _evaluate_args(workdir: str, warmup: str, extra: dict, checkpoint_dir: str = "") -> list[str]:
  # One protocol for the table: every run is scored under the static arm's config (the held-out evaluation reads
  # only its env, rollout and model sections), so env_augment's training-time error hints never reach its test
  # observations.
  args = [sys.executable, "-m", "launch.evaluate", "--config=configs/static.py", f"--workdir={workdir}",
          f"--max_tasks={FLAGS.final_eval_tasks}", "--k=1", f"--config.sft.init_checkpoint={warmup}",
          f"--config.model.tokenizer_dir={warmup}"]
  if checkpoint_dir:
    args += [f"--checkpoint_dir={checkpoint_dir}", f"--out_dir={workdir}"]
  return args + _overrides(extra)


def _overrides(extra: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in extra.items()] + [f"--config.{o}" for o in FLAGS.override]


def command(name: str) -> list[str]:
  """The run's command line: ``launch.train`` then (``--final_eval_tasks``) ``launch.evaluate`` of its final
  checkpoint. ``offline`` first continues the shared warm-up with supervised training on the offline split's gold
  trajectories (``launch.warmup --init_from``), then runs static GRPO on that split. ``WARMUP_EVAL`` evaluates the
  warm-up checkpoint only."""
  warmup = os.path.abspath(FLAGS.warmup)
  if name == WARMUP_EVAL:  # with the warm-up's history (the report's calibration table)
    out = os.path.join(FLAGS.out, name)
    evaluate = _evaluate_args(out, warmup, {}, checkpoint_dir=warmup)
    return ["bash", "-c", f"set -e; mkdir -p {shlex.quote(out)}; cp {shlex.quote(warmup)}/sft_history.json "
            f"{shlex.quote(out)}/; {shlex.join(evaluate)}"]
  arm, extra = STUDY[name]
  workdir = os.path.join(FLAGS.out, name)
  steps = []
  if arm == "offline":
    sft = os.path.join(workdir, "offline_sft")
    pre = [sys.executable, "-m", "launch.warmup", f"--config=configs/{arm}.py", f"--workdir={sft}",
           f"--init_from={warmup}", f"--config.sft.steps={FLAGS.offline_sft_steps}", "--config.sft.warmup_steps=0",
           "--config.sft.select_by_zones=False"]
    warmup = os.path.join(os.path.abspath(sft), "warmup")
    # resumable: the supervised stage runs once (its checkpoint is written at the end)
    steps.append(f"test -e {shlex.quote(warmup)}/config.json || {shlex.join(pre)}")
  train = [sys.executable, "-m", "launch.train", f"--config=configs/{arm}.py", f"--workdir={workdir}",
           f"--config.train.total_trajectories={FLAGS.total_trajectories}",
           f"--config.train.eval_every_trajectories={FLAGS.eval_every}",
           "--config.logging.progress_bar=False", f"--config.sft.init_checkpoint={warmup}",
           f"--config.model.tokenizer_dir={warmup}"] + _overrides(extra)
  steps.append(shlex.join(train))
  if FLAGS.final_eval_tasks > 0:
    steps.append(shlex.join(_evaluate_args(workdir, warmup, extra)))
  if len(steps) == 1:
    return train
  return ["bash", "-c", "set -e; " + "; ".join(steps)]


def main(argv):
  del argv
  if FLAGS.final_eval_tasks < 0:
    raise app.UsageError(f"--final_eval_tasks={FLAGS.final_eval_tasks} must be >= 0")
  names = FLAGS.runs or ([WARMUP_EVAL] if FLAGS.final_eval_tasks else []) + list(STUDY)
  unknown = [n for n in names if n not in STUDY and n != WARMUP_EVAL]
  if unknown:
    raise app.UsageError(f"unknown runs {unknown}; known: {[WARMUP_EVAL] + sorted(STUDY)}")
  os.makedirs(FLAGS.out, exist_ok=True)
  pending, running, done = list(names), {}, {}
  t0 = time.time()
  while pending or running:
    while pending and len(running) < FLAGS.parallel:
      name = pending.pop(0)
      log = open(os.path.join(FLAGS.out, f"{name}.log"), "a")
      running[name] = (subprocess.Popen(command(name), stdout=log, stderr=subprocess.STDOUT), log)
      logging.info("started %s", name)
    for name, (proc, log) in list(running.items()):
      if proc.poll() is not None:
        done[name] = proc.returncode
        log.close()
        del running[name]
        logging.info("%s finished rc=%d after %.0fs", name, proc.returncode, time.time() - t0)
    if time.time() - t0 > FLAGS.time_limit_s:
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
    time.sleep(2)
  for name in names:
    print(f"{name:24s} {done.get(name)}")


if __name__ == "__main__":
  app.run(main)
