r"""Export a run's Orbax checkpoint as a Hugging Face directory that ``transformers`` loads as it is.

  python -m launch.export --workdir=runs/rods --out=/tmp/rods_hf                  # latest step
  python -m launch.export --workdir=runs/rods --out=/tmp/rods_hf --step=400 --dtype=bfloat16

Writes config.json + safetensors (``hf_loader.export_hf_checkpoint``), the run's tokenizer files with its chat
template, and generation_config.json (the rollout's stop tokens and sampling parameters), so
``AutoModelForCausalLM.from_pretrained(out)`` + ``AutoTokenizer.from_pretrained(out)`` reproduce the policy, and
``launch.evaluate --checkpoint_dir=out`` / ``launch.openai_server --checkpoint_dir=out`` serve it. The run's config is
its own ``<workdir>/config.json`` (written when the run started).
"""
import json
import os

from absl import app, flags, logging

from launch import distributed


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "Run directory (its config.json, checkpoints/, tokenizer/, warmup/).",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "Output HF directory (created).", flag_values=fv)
  flags.DEFINE_integer("step", -1, "Run checkpoint step (-1 = latest).", flag_values=fv)
  flags.DEFINE_string("dtype", "", "Storage dtype of the written tensors (e.g. bfloat16; '' = the parameters' own).",
                      flag_values=fv)
  flags.mark_flags_as_required(["workdir", "out"], flag_values=fv)
  distributed.define_flags(fv)


def _overlay(config, values: dict, prefix: str = "") -> None:
  """Sets ``values`` (JSON) on ``config`` in place; JSON lists become tuples where the field is a tuple."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  for key, value in values.items():
    if key not in config:
      raise ValueError(f"config.json: config.{prefix}{key} is not a field of configs/base.py (a run of another "
                       f"version?)")
    if isinstance(config[key], ml_collections.ConfigDict):
      _overlay(config[key], value, f"{prefix}{key}.")
    else:
      config[key] = _tuples(value) if isinstance(config[key], tuple) else value


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def run_config(workdir: str):
  """The config a run was started with (``<workdir>/config.json``) on configs/base.py's fields and types (fields
  newer than the run keep their defaults)."""
  from configs import base  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: --workdir must be a run directory written by launch.train")
  with open(path, encoding="utf-8") as f:
    values = json.load(f)
  config = base.get_config()
  _overlay(config, values)
  return config


def generation_config(tokenizer, rollout_cfg):
  """transformers.GenerationConfig of the rollout: its stop tokens (the end of a message and EOS) and sampling."""
  import transformers  # pylint: disable=g-import-not-at-top

  from rods_jax.rollout.engine import stop_token_ids  # pylint: disable=g-import-not-at-top
  temperature = float(rollout_cfg.temperature)
  sampling = {"do_sample": True, "temperature": temperature, "top_p": float(rollout_cfg.top_p)} if temperature > 0 \
      else {"do_sample": False}
  if temperature > 0 and int(rollout_cfg.top_k) > 0:
    sampling["top_k"] = int(rollout_cfg.top_k)
  return transformers.GenerationConfig(eos_token_id=list(stop_token_ids(tokenizer, tuple(rollout_cfg.stop_strings))),
                                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                       **sampling)


def export(workdir: str, out: str, step: int | None = None, dtype: str | None = None) -> str:
  """Writes the run's checkpoint ``step`` (None = latest) to ``out`` as an HF directory; returns the policy source
  ("step<N>"). A run without checkpoints is an error (there is nothing trained to export)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from launch import evaluate  # pylint: disable=g-import-not-at-top
  from rods_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from rods_jax.models import hf_loader  # pylint: disable=g-import-not-at-top
  from rods_jax.rods import loop  # pylint: disable=g-import-not-at-top

  config = run_config(workdir)
  if checkpoint.latest_step(os.path.join(workdir, loop.CHECKPOINT_DIR)) is None:
    raise FileNotFoundError(f"{os.path.join(workdir, loop.CHECKPOINT_DIR)}: no checkpoint to export")
  policy = evaluate.load_policy(config, workdir, step=step)
  hf_loader.export_hf_checkpoint(nnx.merge(policy.graphdef, policy.params), policy.model_cfg, out, dtype=dtype)
  if jax.process_index() == 0:
    policy.tokenizer.save_pretrained(out)  # tokenizer.json + tokenizer_config.json + the chat template
    generation_config(policy.tokenizer, config.rollout).save_pretrained(out)
  return policy.source


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rods_jax import console  # pylint: disable=g-import-not-at-top
  console.quiet_libraries(logging.get_verbosity())  # Orbax/JAX INFO only with --verbosity=1
  fv = flags.FLAGS
  distributed.initialize_from_flags(fv)
  source = export(fv.workdir, fv.out, None if fv.step < 0 else fv.step, fv.dtype if fv.dtype else None)
  logging.info("exported %s of %s to %s", source, fv.workdir, fv.out)
  print(f"wrote {fv.out} ({source})")


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)
