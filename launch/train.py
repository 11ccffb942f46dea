r"""Train one experiment arm: ``python -m launch.train --config=configs/rods.py --workdir=runs/rods``.

Any config field can be overridden on the command line (ml_collections config_flags)::

  python -m launch.train --config=configs/rods.py --config.rods.p_max=200 --workdir=runs/rods_p200
  python -m launch.train --config=configs/static.py:paper --config.model.checkpoint_dir=/ckpt/Qwen3-4B \
      --workdir=gs://bucket/static --distributed=auto            # every worker of a TPU VM slice
  python -m launch.train --config=configs/rods.py --workdir=/tmp/x --validate_only    # check and print the config

The run resumes from ``<workdir>/checkpoints`` when a checkpoint is there (same step, pool and RNG state);
``--max_steps`` stops after that many steps of this invocation (a later call continues).
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from launch import _cli, distributed

CHECKPOINT_SUBDIR = "checkpoints"  # the loop's layout (rods_jax.rods.loop.CHECKPOINT_DIR)


def define_flags(fv: flags.FlagValues, argv: list[str] | None = None) -> None:
  """This entry point's flags (defined only when run as a program, so modules stay importable side by side)."""
  # ``argv``: where config_flags looks for --config.* overrides (None = sys.argv; tests pass their own).
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/<arm>.py[:scale]).",
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, tensorboard/, eval/.",
                      flag_values=fv)
  flags.DEFINE_integer("max_steps", 0, "Stop after this many steps of this invocation (0 = no limit).",
                       flag_values=fv)
  flags.DEFINE_bool("validate_only", False, "Validate the config, print it and exit.", flag_values=fv)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
  distributed.define_flags(fv)


def prepare(config, workdir: str) -> int | None:
  """Validates ``config`` for this job's devices and reports the checkpoint the run will resume from."""
  import jax  # after distributed.initialize

  from rods_jax import checkpoint, config_validation

  config_validation.validate(config, jax.device_count())
  step = checkpoint.latest_step(os.path.join(workdir, CHECKPOINT_SUBDIR))
  if step is None:
    logging.info("arm=%s: new run in %s on %d devices (%d processes)", config.arm, workdir, jax.device_count(),
                 jax.process_count())
  else:
    logging.info("arm=%s: resuming %s from its step-%d checkpoint", config.arm, workdir, step)
  return step


def run(fv: flags.FlagValues):
  """Everything after flag parsing; returns the loop's final state (None with --validate_only)."""
  from rods_jax import config_validation, host_memory  # pylint: disable=g-import-not-at-top
  # The device-independent checks first: a user error costs no backend start and prints nothing else.
  config_validation.validate(fv.config, None)
  config_validation.check_paths(fv.config)
  if not fv.validate_only:  # before the backend starts in prepare()
    host_memory.configure_for_run(fv.config)
  distributed.initialize_from_flags(fv)
  config, workdir = fv.config, fv.workdir
  prepare(config, workdir)
  if fv.validate_only:
    print(config)
    return None
  from rods_jax.rods import loop  # heavy: imported only for a real run

  if loop.CHECKPOINT_DIR != CHECKPOINT_SUBDIR:
    raise RuntimeError(f"checkpoint layout changed: loop uses {loop.CHECKPOINT_DIR!r}")
  state = loop.train(config, workdir, max_steps=fv.max_steps if fv.max_steps > 0 else None)
  logging.info("finished at step %d, %d trajectories", state.step, state.trajectories)
  write_plots(config, workdir)
  return state


def write_plots(config, workdir: str) -> list[str]:
  """Process 0: the run's learning curve, zones and pool composition PNGs (rods_jax.metrics.plot_run) in workdir."""
  import jax  # pylint: disable=g-import-not-at-top

  from rods_jax import metrics  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return []
  written, skipped = metrics.plot_run(metrics.load_run(workdir), workdir, str(config.arm))
  for path in written:
    logging.info("wrote %s", path)
  for name, why in skipped.items():
    logging.info("plot %s not drawn: %s", name, why)
  return written


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rods_jax import console  # pylint: disable=g-import-not-at-top
  console.quiet_libraries(logging.get_verbosity())  # Orbax/JAX INFO only with --verbosity=1
  run(flags.FLAGS)


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  _cli.run(main)
