r"""Held-out evaluation of a run's latest checkpoint (or any HF-layout checkpoint) on the test split.

  python -m launch.evaluate --config=configs/rods.py --workdir=runs/rods                  # latest run checkpoint
  python -m launch.evaluate --config=configs/rods.py --workdir=runs/rods --step=400 --k=8  # pass@8 / pass^8
  python -m launch.evaluate --config=configs/static.py:paper --checkpoint_dir=/ckpt/Qwen3-4B --workdir=runs/base

Writes ``<workdir>/eval/standalone_<source>.json`` (or ``--out``) with success and mean R_P overall and per
category, pass@k and pass^k, and prints them.
"""
import json
import os
from typing import Any, NamedTuple

from absl import app, flags, logging
from ml_collections import config_flags

from launch import distributed


def define_flags(fv: flags.FlagValues, argv: list[str] | None = None) -> None:
  # ``argv``: where config_flags looks for --config.* overrides (None = sys.argv; tests pass their own).
  config_flags.DEFINE_config_file("config", None, "The run's config file (and overrides).", flag_values=fv,
                                  lock_config=False, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "Run directory (its checkpoints/, tokenizer/, warmup/ are used).",
                      flag_values=fv)
  flags.DEFINE_string("checkpoint_dir", "", "Evaluate this HF-layout directory instead of the run's own "
                      "checkpoints.", flag_values=fv)
  flags.DEFINE_integer("step", -1, "Run checkpoint step (-1 = latest).", flag_values=fv)
  flags.DEFINE_integer("k", 0, "Samples per task (1 = greedy; 0 = config.train.eval_k).", flag_values=fv)
  flags.DEFINE_integer("max_tasks", 0, "Evaluate the first N test tasks (0 = config.train.eval_max_tasks).",
                       flag_values=fv)
  flags.DEFINE_string("out", "", "Output JSON path (default: <workdir>/eval/standalone_<source>.json).",
                      flag_values=fv)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
  distributed.define_flags(fv)


class _Learner(NamedTuple):
  params: Any


class _EvalParts(NamedTuple):
  """The fields rods_jax.rods.loop.evaluate reads; the same evaluation code as the training run's."""
  config: Any
  env: Any
  engine: Any
  learner: _Learner
  test_tasks: list


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


def load_policy(config, workdir: str, checkpoint_dir: str = "", step: int | None = None) -> Policy:
  """The policy to evaluate: ``checkpoint_dir`` (HF layout), else the run's checkpoint ``step`` (None = latest),
  else the model the run starts from (its warm-up, ``sft.init_checkpoint`` or the config's model)."""
  import jax
  from flax import nnx

  from rods_jax import checkpoint, config_validation, sharding
  from rods_jax.rods import loop

  config_validation.validate(config, jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  tokenizer = loop.build_tokenizer(config, workdir)
  warmup = os.path.join(workdir, loop.WARMUP_DIR)
  # The architecture (and, for an HF directory, the weights) comes from the same place the run started from.
  init_dir = checkpoint_dir or config.sft.init_checkpoint or (
      warmup if os.path.exists(os.path.join(warmup, "config.json")) else "")
  model, model_cfg = loop.build_model(config, tokenizer, mesh, init_dir)
  graphdef, params = nnx.split(sharding.shard_model(model, mesh))
  if checkpoint_dir:
    return Policy(graphdef, params, model_cfg, tokenizer, os.path.basename(os.path.normpath(checkpoint_dir)))
  ckpt_dir = os.path.join(workdir, loop.CHECKPOINT_DIR)
  if checkpoint.latest_step(ckpt_dir) is None:
    if step is not None:
      raise FileNotFoundError(f"--step={step}: no checkpoints in {ckpt_dir}")
    logging.warning("no checkpoint in %s: evaluating the initial policy (%s)", ckpt_dir, init_dir or "from scratch")
    return Policy(graphdef, params, model_cfg, tokenizer, "init")
  with checkpoint.CheckpointManager(ckpt_dir, config.checkpoint) as manager:
    step = manager.latest_step() if step is None else step
    params = manager.restore_params(params, step)
  return Policy(graphdef, params, model_cfg, tokenizer, f"step{step}")


def evaluate(config, workdir: str, checkpoint_dir: str = "", step: int | None = None) -> tuple[dict, str]:
  """(metrics, source) of ``load_policy(...)`` on the config's test split, with the training run's evaluation."""
  import jax

  from rods_jax import envs
  from rods_jax.rods import loop
  from rods_jax.rollout.engine import MultiTurnEngine
  from rods_jax.rollout.render import ChatRenderer

  policy = load_policy(config, workdir, checkpoint_dir, step)
  env = envs.make_env(config.env.name, config.env)
  logging.info("evaluating %s on %s/%s", policy.source, config.env.name, config.env.test_split)
  engine = MultiTurnEngine(policy.graphdef, policy.tokenizer, ChatRenderer(policy.tokenizer), config.rollout,
                           policy.model_cfg)
  tasks = env.load_tasks(config.env.test_split)[:int(config.train.eval_max_tasks)]
  parts = _EvalParts(config=config, env=env, engine=engine, learner=_Learner(policy.params), test_tasks=tasks)
  return loop.evaluate(parts, jax.random.key(int(config.seed))), policy.source


def run(fv: flags.FlagValues) -> dict:
  """Evaluates per the flags, writes the JSON (process 0) and returns the metrics."""
  distributed.initialize_from_flags(fv)
  import jax

  config = apply_flags(fv.config, fv.k, fv.max_tasks)
  workdir = fv.workdir
  metrics, source = evaluate(config, workdir, fv.checkpoint_dir, None if fv.step < 0 else fv.step)
  out = fv.out or os.path.join(workdir, "eval", f"standalone_{source}.json")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
      json.dump({"source": source, **metrics}, f, indent=1, sort_keys=True)
    for key in sorted(metrics):
      print(f"{key:32s} {metrics[key]:.4f}" if isinstance(metrics[key], float) else f"{key:32s} {metrics[key]}")
    print(f"wrote {out}")
  return metrics


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run(flags.FLAGS)


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)
