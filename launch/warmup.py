r"""Supervised warm-up of the lab model, once, shared by every experiment arm.

  python -m launch.warmup --config=configs/static.py --workdir=runs/warmup

Builds the lab tokenizer and runs ``rods_jax.rl.sft.warm_up`` with zone-based checkpoint choice (docs/METHOD.md §10: the
boundary is transient, so the checkpoint is picked by measured seed zone fractions, not a step count). Writes an HF
directory to ``<workdir>/warmup`` that arms start from with ``--config.sft.init_checkpoint=<workdir>/warmup``, and
prints the zone fractions measured at every evaluation.
"""
import json
import os

from absl import flags, logging
from ml_collections import config_flags

from launch import _cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (its sft/rollout/env sections are used).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; the warm-up checkpoint goes to <workdir>/warmup.")
_INIT_FROM = flags.DEFINE_string("init_from", "", "Continue supervised training from this HF-layout checkpoint (its "
                                  "tokenizer too) instead of the preset from scratch.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  from rods_jax import config_validation, console, envs, host_memory, sharding  # pylint: disable=g-import-not-at-top
  console.quiet_libraries(logging.get_verbosity())  # Orbax/JAX INFO only with --verbosity=1
  from rods_jax.rods import loop  # pylint: disable=g-import-not-at-top

  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  host_memory.configure_for_run(config)  # before the backend starts
  config_validation.validate(config, jax.device_count())
  config_validation.check_paths(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  env = envs.make_env(config.env.name, config.env)
  if _INIT_FROM.value:
    from rods_jax.models import hf_loader  # pylint: disable=g-import-not-at-top
    from rods_jax.rl import sft  # pylint: disable=g-import-not-at-top
    tokenizer = hf_loader.load_tokenizer(_INIT_FROM.value)
    model, model_cfg = hf_loader.load_hf_checkpoint(_INIT_FROM.value, mesh=mesh, dtype=config.model.dtype,
                                                    param_dtype=config.model.param_dtype)
    out = os.path.join(workdir, loop.WARMUP_DIR)
    parent_path = os.path.join(_INIT_FROM.value, "sft_history.json")
    parent = None
    if os.path.exists(parent_path):  # a continuation: keep the step count (new batches) and one cumulative history
      with open(parent_path) as f:
        parent = json.load(f)
    sft.warm_up(model, model_cfg, env, tokenizer, config, out, mesh=mesh, parent_history=parent,
                parent_dir=os.path.abspath(_INIT_FROM.value))
  else:
    tokenizer = loop.build_tokenizer(config, workdir)
    # Every seed of the split, as the --init_from branch (sft.warm_up's default): the one warm-up all arms share.
    out = loop.warm_start_dir(config, workdir, env, tokenizer, mesh, env.load_tasks(config.env.seed_split))
  with open(os.path.join(out, "sft_history.json")) as f:
    hist = json.load(f)
  print(f"warm-up checkpoint: {out} (selected step {hist.get('best_step')}, score {hist.get('best_score')})")
  print(f"{'step':>6} {'loss':>8} {'hard':>6} {'bound':>6} {'mast':>6} {'r_mean':>7}")
  for h in hist["history"]:
    if "eval" in h:
      e = h["eval"]
      print(f"{h['step']:>6} {h['loss']:>8.4f} {e['hard']:>6.2f} {e['boundary']:>6.2f} {e['mastered']:>6.2f} "
            f"{e['reward_mean']:>7.3f}")


if __name__ == "__main__":
  _cli.run(main)
