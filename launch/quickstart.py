r"""The quick start: the CPU lab end to end in a few minutes, then a before/after table.

  python -m launch.quickstart --workdir=runs/quickstart        # (what `make quickstart` runs)

1. builds the lab tokenizer and ``lab_tiny`` from scratch and runs a short supervised warm-up of ``--sft_steps`` on
   the 400 toolworld seeds, or starts from a warm-up checkpoint (``--init_checkpoint``, e.g. a pinned
   ``checkpoints/lab_warmup`` made by ``launch.pin_checkpoint``; none is committed yet);
2. RODS (configs/rods.py): K rollouts per task, GRPO, boundary detection, template synthesis, dynamic buffer;
3. held-out greedy evaluation before and after RODS on a category-balanced subset of the test split;
4. prints the table and writes plots (learning curve, zone fractions, pool composition) into the workdir.

The sizes are the CPU-lab defaults shrunk to minutes; every field can be overridden (``--config.rods.p_max=50``).
The run resumes from its checkpoints if interrupted.
"""
import glob
import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/rods.py", "Arm config (default: RODS, CPU lab).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Run directory.")
_INIT = flags.DEFINE_string("init_checkpoint", "", "Warm-up checkpoint (HF layout and "
                            "tokenizer) RODS starts from; '' = build the lab from scratch and warm up --sft_steps.")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", 120, "Supervised warm-up steps without --init_checkpoint.")
_TRAJECTORIES = flags.DEFINE_integer("trajectories", 768, "GRPO trajectory budget (tasks_per_step * k per step).")
_EVAL_TASKS = flags.DEFINE_integer("eval_tasks", 60, "Held-out tasks evaluated (balanced over the 4 categories).")

CATEGORIES = ("base", "miss_func", "miss_param", "long_context")


def quick_config(config):
  """The CPU-lab config shrunk to minutes: the committed warm-up (or a few SFT steps), a small GRPO budget,
  evaluation before and after."""
  if _INIT.value:
    if not os.path.exists(os.path.join(_INIT.value, "config.json")):
      raise app.UsageError(f"--init_checkpoint={_INIT.value!r} has no config.json (run from the repository root, "
                           "or pass --init_checkpoint='' to warm up from scratch)")
    config.sft.init_checkpoint = os.path.abspath(_INIT.value)
    config.model.tokenizer_dir = os.path.abspath(_INIT.value)  # the tokenizer the checkpoint was trained with
  config.sft.steps = _SFT_STEPS.value  # not run when sft.init_checkpoint is set
  config.sft.seq_len = 384  # SFT pads every batch to seq_len: 384 instead of 512 saves a quarter of its time
  config.sft.eval_every = max(1, _SFT_STEPS.value // 3)
  config.sft.eval_tasks = 32
  config.train.total_trajectories = _TRAJECTORIES.value
  config.train.eval_every_trajectories = _TRAJECTORIES.value  # at 0 (after warm-up) and at the end
  config.train.eval_max_tasks = _EVAL_TASKS.value
  config.rollout.max_trajectory_tokens = 384  # 3 % of gold lab trajectories are longer; halves the update's cost
  config.rollout.cache_capacity = 448
  config.rods.seed_limit = 64  # an epoch of 8 steps, so the buffer reaches epoch boundaries within minutes
  config.optim.lr = 1e-4  # a from-scratch 1M-parameter policy moves too little at the paper's 1e-6
  config.logging.progress_bar = True
  return config


def table(before: dict, after: dict) -> str:
  rows = [("overall", "eval/success", "eval/progress")] + [(c, f"eval/{c}/success", f"eval/{c}/progress")
                                                           for c in CATEGORIES]
  out = [f"{'held-out (greedy)':<20}{'success before':>15}{'success after':>15}{'R_P before':>12}{'R_P after':>11}"]
  for name, s, p in rows:
    if s in before and s in after:
      out.append(f"{name:<20}{100 * before[s]:>14.1f}%{100 * after[s]:>14.1f}%{before[p]:>12.3f}{after[p]:>11.3f}")
  return "\n".join(out)


def main(argv):
  del argv
  from rods_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from rods_jax.rods import loop  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)  # progress bars and the table, not Orbax's per-save INFO lines
  config = quick_config(_CONFIG.value)
  workdir = os.path.abspath(_WORKDIR.value)
  from rods_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.configure_for_run(config)  # before the backend starts
  t0 = time.time()
  state = loop.train(config, workdir)
  evals = sorted(glob.glob(os.path.join(workdir, loop.EVAL_DIR, "eval_*.json")))
  if len(evals) < 2:
    raise RuntimeError(f"expected evaluations before and after training in {workdir}/{loop.EVAL_DIR}, found {evals}")
  with open(evals[0]) as f:
    before = json.load(f)
  with open(evals[-1]) as f:
    after = json.load(f)
  records = metrics_lib.load_run(workdir)
  plots, skipped = metrics_lib.plot_run(records, workdir, config.arm)
  for name, why in skipped.items():  # e.g. no synthesized task injected yet in a very short run
    print(f"(plot {name} skipped: {why})")
  last = next((r for r in reversed(records) if 'pool/size' in r), {})
  print()
  print(f"rods_jax quick start: arm={config.arm}, {state.step} GRPO steps, {state.trajectories} trajectories, "
        f"{time.time() - t0:.0f}s")
  print(f"pool: {last.get('pool/seeds', '?')} seeds + {last.get('pool/generated', 0)} generated; synthesis accepted "
        f"{last.get('synth/accepted', 0)}, injected {last.get('synth/injected', 0)}")
  print(table(before, after))
  start = f"the warm-up {config.sft.init_checkpoint}" if _INIT.value else "after supervised warm-up"
  print(f"before = {start} ({before['trajectories']} trajectories); after = {after['trajectories']} "
        f"GRPO trajectories. {before['eval/n_tasks']} held-out toolworld tasks.")
  print("plots:", *plots, sep="\n  ")


if __name__ == "__main__":
  app.run(main)
