r"""A stand-alone synthesizer serving a directory exchange (multi-host, or a separate machine with a big generator).

The trainer (``config.synthesis.exchange_dir`` set, on a shared file system) writes seed requests there; this
process takes them, runs the synthesis pipeline of the config's environment and backend, and writes validated tasks
back. Run any number of them against the same directory (give each its own ``--worker_id``)::

  python -m launch.synthesize --config=configs/rods.py:paper --config.synthesis.exchange_dir=/shared/rods_x \
      --config.synthesis.endpoint=http://vllm-host:8000/v1 --worker_id=0
"""
from absl import app, flags, logging
from ml_collections import config_flags

from launch import _cli


def define_flags(fv: flags.FlagValues, argv: list[str] | None = None) -> None:
  # ``argv``: where config_flags looks for --config.* overrides (None = sys.argv; tests pass their own).
  config_flags.DEFINE_config_file("config", None, "The trainer's config file (same arm and overrides).",
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_integer("worker_id", 0, "Distinguishes the RNG streams of several workers.", flag_values=fv)
  flags.DEFINE_integer("max_requests", 0, "Exit after serving this many requests (0 = no limit).", flag_values=fv)
  flags.DEFINE_float("idle_timeout_s", 0.0, "Exit after this long without a request (0 = never).", flag_values=fv)
  flags.mark_flags_as_required(["config"], flag_values=fv)


def serve(config, worker_id: int, max_requests: int | None, idle_timeout_s: float | None) -> int:
  """Serves ``config.synthesis.exchange_dir`` until a limit is hit; returns the number of requests served."""
  from rods_jax import config_validation
  from rods_jax.rods import loop, synth_process
  from rods_jax.rods.queues import DirExchange

  config_validation.validate(config, None)  # this process uses no devices: skip the mesh checks
  if not config.synthesis.exchange_dir:
    raise ValueError("config.synthesis.exchange_dir='' must name the directory shared with the trainer")
  if not config.rods.synthesis:
    raise ValueError(f"config.rods.synthesis=False: arm {config.arm!r} does not synthesize")
  mode = loop.synthesis_mode(config)
  exchange = DirExchange(str(config.synthesis.exchange_dir), int(config.synthesis.request_queue_size),
                         int(config.synthesis.result_queue_size))
  logging.info("serving %s (mode %s, backend %s, worker %d)", exchange.root, mode, config.synthesis.backend,
               worker_id)
  # Seed streams: the trainer's own worker uses config.seed; stand-alone workers are offset by their id.
  seed = int(config.seed) * 1_000 + 1 + worker_id
  return synth_process.run_worker(exchange, synth_process.pipeline_factory(config, mode), seed,
                                  max_requests=max_requests, idle_timeout_s=idle_timeout_s)


def run(fv: flags.FlagValues) -> int:
  served = serve(fv.config, fv.worker_id, fv.max_requests if fv.max_requests > 0 else None,
                 fv.idle_timeout_s if fv.idle_timeout_s > 0 else None)
  logging.info("served %d requests", served)
  return served


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run(flags.FLAGS)


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  _cli.run(main)
