r"""Run the lab study (issue 7): every arm from one warm-up checkpoint, in parallel processes, same budget.

  python -m launch.study --out=runs/study --warmup=runs/warmup/warmup --total_trajectories=10240 \
      --eval_every=2560 --time_limit_s=3600

Each run is ``python -m launch.train --config=configs/<arm>.py --workdir=<out>/<name> ...`` with the same
trajectory budget and evaluation points, so every curve shares its x-axis (trajectories consumed). Runs resume from
their checkpoints: calling the study again continues unfinished runs (a long study can be split into parts).
The ``offline`` arm does its own supervised stage on the 16K offline split instead of starting from the warm-up.
"""
import os
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


def command(name: str) -> list[str]:
  """The run's command line. ``offline`` first continues the shared warm-up with supervised training on the
  offline split's gold trajectories (``launch.warmup --init_from``), then runs static GRPO on that split."""
  arm, extra = STUDY[name]
  workdir = os.path.join(FLAGS.out, name)
  warmup = os.path.abspath(FLAGS.warmup)
  if arm == "offline":
    sft = os.path.join(workdir, "offline_sft")
    pre = [sys.executable, "-m", "launch.warmup", f"--config=configs/{arm}.py", f"--workdir={sft}",
           f"--init_from={warmup}", f"--config.sft.steps={FLAGS.offline_sft_steps}", "--config.sft.warmup_steps=0",
           "--config.sft.select_by_zones=False"]
    warmup = os.path.join(os.path.abspath(sft), "warmup")
  args = [sys.executable, "-m", "launch.train", f"--config=configs/{arm}.py",
          f"--workdir={os.path.join(FLAGS.out, name)}",
          f"--config.train.total_trajectories={FLAGS.total_trajectories}",
          f"--config.train.eval_every_trajectories={FLAGS.eval_every}",
          "--config.logging.progress_bar=False", f"--config.sft.init_checkpoint={warmup}",
          f"--config.model.tokenizer_dir={warmup}"]
  for k, v in extra.items():
    args.append(f"--config.{k}={v}")
  for o in FLAGS.override:
    args.append(f"--config.{o}")
  if arm == "offline":
    quote = lambda a: "'" + a.replace("'", "'\\''") + "'"
    return ["bash", "-c", f"test -e {quote(warmup)}/config.json || {' '.join(map(quote, pre))}; "
            f"exec {' '.join(map(quote, args))}"]
  return args


def main(argv):
  del argv
  names = FLAGS.runs or list(STUDY)
  unknown = [n for n in names if n not in STUDY]
  if unknown:
    raise app.UsageError(f"unknown runs {unknown}; known: {sorted(STUDY)}")
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
