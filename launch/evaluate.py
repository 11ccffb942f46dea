r"""Held-out evaluation of a run's latest checkpoint (or any HF-layout checkpoint) on the test split (or, with
``--split=validation``, on toolworld's validation split: for choices made before a study's final evaluation).

  python -m launch.evaluate --config=configs/rods.py --workdir=runs/rods                  # latest run checkpoint, greedy
  python -m launch.evaluate --config=configs/rods.py --workdir=runs/rods --step=400 --k=8  # sampled: pass@j, pass^j
  python -m launch.evaluate --config=configs/static.py:paper --checkpoint_dir=/ckpt/Qwen3-4B --workdir=runs/base

Runs ``rods_jax.eval.evaluate`` (success and mean R_P overall and per category; unbiased pass@j and pass^j when
sampled) and writes ``<out_dir>/standalone_<source>[_validation]_<mode>_k<k>.json`` (default out_dir: ``<workdir>/eval``).
"""
import os
from typing import Any, NamedTuple

from absl import app, flags, logging
from ml_collections import config_flags

from launch import _cli, distributed


def define_flags(fv: flags.FlagValues, argv: list[str] | None = None) -> None:
  # ``argv``: where config_flags looks for --config.* overrides (None = sys.argv; tests pass their own).
  config_flags.DEFINE_config_file("config", None, "The run's config file (and overrides).", flag_values=fv,
                                  lock_config=False, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "Run directory (its checkpoints/, tokenizer/, warmup/ are used).",
                      flag_values=fv)
  flags.DEFINE_string("checkpoint_dir", "", "Evaluate this HF-layout directory (weights + its own tokenizer) "
                      "instead of the run's own checkpoints.", flag_values=fv)
  flags.DEFINE_integer("step", -1, "Run checkpoint step (-1 = latest).", flag_values=fv)
  flags.DEFINE_integer("k", 0, "Rollouts per task (1 = greedy, > 1 = sampled; 0 = config.train.eval_k).",
                       flag_values=fv)
  flags.DEFINE_integer("max_tasks", 0, "Evaluate the first N test tasks (0 = config.train.eval_max_tasks).",
                       flag_values=fv)
  flags.DEFINE_string("out_dir", "", "Directory of the output JSON (default: <workdir>/eval).", flag_values=fv)
  flags.DEFINE_string("split", "", "Held-out split ('' = config.env.test_split; validation: toolworld's split for "
                      "pilots and other choices made before the final evaluation).", flag_values=fv)
  flags.DEFINE_integer("chunk", 64, "Tasks per rollout call.", flag_values=fv)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
  distributed.define_flags(fv)


def apply_flags(config, k: int, max_tasks: int):
  """Evaluation overrides on ``config`` (in place): samples per task and number of test tasks."""
  if k < 0 or max_tasks < 0:
    raise ValueError(f"--k={k} and --max_tasks={max_tasks} must be >= 0")
  if k:
    config.train.eval_k = k
  if max_tasks:
    config.train.eval_max_tasks = max_tasks
  return config


class Policy(NamedTuple):
  graphdef: Any
  params: Any  # nnx.State on the config's mesh
  model_cfg: Any
  tokenizer: Any
  source: str  # "step<N>" (run checkpoint), the HF directory's name, or "init"
  mesh: Any  # the config's mesh (the engine spreads its rollout rows over it)


def checkpoint_tokenizer(checkpoint_dir: str):
  """The tokenizer saved in the HF directory ``checkpoint_dir``; an error when it has none (a tokenizer taken from
  elsewhere could silently have another vocabulary)."""
  from rods_jax.models import hf_loader  # pylint: disable=g-import-not-at-top
  if not any(os.path.exists(os.path.join(checkpoint_dir, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
    raise ValueError(f"--checkpoint_dir={checkpoint_dir}: no tokenizer files (tokenizer.json / "
                     f"tokenizer_config.json) next to the weights; write them with `python -m launch.export`")
  return hf_loader.load_tokenizer(checkpoint_dir)


def load_policy(config, workdir: str, checkpoint_dir: str = "", step: int | None = None) -> Policy:
  """The policy to evaluate: ``checkpoint_dir`` (HF layout, with its own tokenizer), else the run's checkpoint
  ``step`` (None = latest), else the model the run starts from (its warm-up, ``sft.init_checkpoint`` or the config's
  model). A tokenizer with more tokens than the model's vocabulary is an error."""
  import jax
  from flax import nnx

  from rods_jax import checkpoint, config_validation, sharding
  from rods_jax.models import hf_loader
  from rods_jax.rods import loop

  config_validation.validate(config, jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  # An HF directory is one source of truth: its weights and its own tokenizer (the config's model is not used).
  tokenizer = (checkpoint_tokenizer(checkpoint_dir) if checkpoint_dir else loop.build_tokenizer(config, workdir))
  warmup = os.path.join(workdir, loop.WARMUP_DIR)
  # The architecture (and, for an HF directory, the weights) comes from the same place the run started from.
  init_dir = checkpoint_dir or config.sft.init_checkpoint or (
      warmup if os.path.exists(os.path.join(warmup, "config.json")) else "")
  model, model_cfg = loop.build_model(config, tokenizer, mesh, init_dir)
  hf_loader.check_vocab(tokenizer, model_cfg, checkpoint_dir or init_dir or "the config's model")
  graphdef, params = nnx.split(sharding.shard_model(model, mesh))
  if checkpoint_dir:
    return Policy(graphdef, params, model_cfg, tokenizer, os.path.basename(os.path.normpath(checkpoint_dir)), mesh)
  ckpt_dir = os.path.join(workdir, loop.CHECKPOINT_DIR)
  if checkpoint.latest_step(ckpt_dir) is None:
    if step is not None:
      raise FileNotFoundError(f"--step={step}: no checkpoints in {ckpt_dir}")
    logging.warning("no checkpoint in %s: evaluating the initial policy (%s)", ckpt_dir, init_dir or "from scratch")
    return Policy(graphdef, params, model_cfg, tokenizer, "init", mesh)
  with checkpoint.CheckpointManager(ckpt_dir, config.checkpoint) as manager:
    step = manager.latest_step() if step is None else step
    params = manager.restore_params(params, step)
  return Policy(graphdef, params, model_cfg, tokenizer, f"step{step}", mesh)


def evaluate(config, workdir: str, checkpoint_dir: str = "", step: int | None = None, out_dir: str | None = None,
             chunk: int = 64, split: str | None = None):
  """``rods_jax.eval.evaluate`` of ``load_policy(...)`` on held-out ``split`` (None: the config's test split) ->
  (EvalResult, source).

  ``config.train.eval_k`` rollouts per task: 1 = greedy, more = sampled at the rollout temperature."""
  import jax

  from rods_jax import config_validation, envs
  from rods_jax import eval as eval_lib
  from rods_jax.rollout.engine import MultiTurnEngine
  from rods_jax.rollout.render import ChatRenderer

  split = config.env.test_split if split is None else split
  known = config_validation.ENV_SPLITS[config.env.name]["eval_split"]
  if split not in known:
    raise ValueError(f"--split={split!r} is not a held-out split of {config.env.name} {known}")
  policy = load_policy(config, workdir, checkpoint_dir, step)
  env = envs.make_env(config.env.name, config.env)
  k = int(config.train.eval_k)
  mode = "greedy" if k == 1 else "sampled"
  logging.info("evaluating %s on %s/%s (%s, k=%d)", policy.source, config.env.name, split, mode, k)
  engine = MultiTurnEngine(policy.graphdef, policy.tokenizer, ChatRenderer(policy.tokenizer), config.rollout,
                           policy.model_cfg, mesh=policy.mesh)
  tasks = env.load_tasks(split)[:int(config.train.eval_max_tasks)]
  rollout_fn = eval_lib.engine_rollout_fn(engine, policy.params, env, config.rollout)
  # A validation evaluation is named apart, so it can never be read as (or overwrite) the test split's.
  tag = f"standalone_{policy.source}" + ("" if split == config.env.test_split else f"_{split}")
  result = eval_lib.evaluate(rollout_fn, tasks, mode=mode, k=k, rng=jax.random.key(int(config.seed)), chunk=chunk,
                             out_dir=out_dir, tag=tag,
                             extra={"source": policy.source, "arm": config.arm, "env": config.env.name,
                                    "split": split})
  return result, policy.source


def run(fv: flags.FlagValues):
  """Evaluates per the flags, writes the JSON (process 0), prints the metrics and returns the EvalResult."""
  from rods_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.configure_for_run(fv.config)  # before the backend starts
  distributed.initialize_from_flags(fv)
  config = apply_flags(fv.config, fv.k, fv.max_tasks)
  out_dir = fv.out_dir or os.path.join(fv.workdir, "eval")
  result, _ = evaluate(config, fv.workdir, fv.checkpoint_dir, None if fv.step < 0 else fv.step, out_dir, fv.chunk,
                       fv.split if fv.split else None)
  if result.path is not None:
    for key in sorted(result.metrics):
      value = result.metrics[key]
      print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")
    print(f"wrote {result.path}")
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rods_jax import console  # pylint: disable=g-import-not-at-top
  console.quiet_libraries(logging.get_verbosity())  # Orbax/JAX INFO only with --verbosity=1
  run(flags.FLAGS)


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  _cli.run(main)
