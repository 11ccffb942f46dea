"""Validation of a full run config before anything is built.

``validate(config, num_devices)`` raises ``ConfigError`` (a ``ValueError``) whose message starts with the offending
field (``config.mesh.data=3 ...``). It checks, in order: every key exists in ``configs/base.py`` with the base value's
type, and floats are finite (typos such as ``rods.pmax`` fail, with a suggestion); names that select code (arm, model
preset, environment, advantage, loss, aggregation, KL estimator, seed selection, synthesis backend, dtype) are known;
ranges; the arm's defining fields (``configs/arms.py``); and cross-field consistency (mesh vs device count, batch
vs data-parallel size, alpha_low < alpha_high, cache capacity vs trajectory budget, ...). Two more checks for the
launchers, before any work: ``check_override_names(argv)`` (``--config.<field>=`` flags naming no field, before
ml_collections parses them) and ``check_paths(config)`` (the local checkpoint / tokenizer directories the run reads
exist).
"""
from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

DTYPES = ("float32", "bfloat16")
SYNTHESIS_BACKENDS = ("template", "sampler", "openai")
ENV_SPLITS = {"toolworld": {"seed_split": ("seeds", "offline"), "test_split": ("test",),
                            "eval_split": ("test", "validation")},
              "bfcl": {"seed_split": ("train",), "test_split": ("test",), "eval_split": ("test",)}}


class ConfigError(ValueError):
  """A user error in the run config: the message names the field, the bad value and what is allowed (one line)."""


def _fail(field: str, value: Any, why: str) -> None:
  raise ConfigError(f"config.{field}={value!r} {why}")


def _unknown(label: str, known: Sequence[str], value: str = "") -> ConfigError:
  """``label`` (a dotted field, sections end in '.') is not among ``known``: names its first unknown part and
  suggests the closest name there, or lists what that section has."""
  pieces = label.rstrip(".").split(".")
  depth = next((i for i in range(1, len(pieces)) if ".".join(pieces[:i]) + "." not in known), len(pieces))
  bad = ".".join(pieces[:depth]) + ("." if depth < len(pieces) or label.endswith(".") else "")
  section = bad.rstrip(".").rpartition(".")[0]
  siblings = [k.rstrip(".") for k in known if k.rstrip(".").rpartition(".")[0] == section]
  close = difflib.get_close_matches(bad.rstrip("."), siblings, n=1)
  if close:
    fixed = ".".join([close[0], *pieces[depth:]])
    hint = f"; did you mean config.{fixed if fixed in known else close[0]}?"
  else:  # nothing close: list what the section has
    names = ", ".join(sorted(k.rpartition(".")[2] for k in siblings))
    hint = f"; config.{section} has {names}" if section else f"; config has {names}"
  shown = f"config.{label.rstrip('.')}" + (f"={value}" if value else "")
  return ConfigError(f"{shown} is not a known field (configs/base.py defines every field){hint}")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    name = f"{prefix}{key}"
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      out[name + "."] = None  # marks a section
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _check_keys_and_types(config, base) -> None:
  have, want = _flatten(config), _flatten(base)
  for name, value in have.items():
    if name not in want:
      raise _unknown(name, list(want))
    if name.endswith("."):
      continue
    expected = want[name]
    if expected is None or value is None:
      continue
    ok = (isinstance(value, bool) == isinstance(expected, bool)
          and (isinstance(value, type(expected)) or (isinstance(expected, float) and isinstance(value, int))))
    if not ok:
      _fail(name, value, f"has type {type(value).__name__}; configs/base.py has {type(expected).__name__}")
    if isinstance(value, float) and not math.isfinite(value):  # nan passes every `x < low` range check
      _fail(name, value, "must be a finite number")
  for name in want:
    if name not in have:
      raise ConfigError(f"config.{name.rstrip('.')} is missing (configs/base.py defines it)")


def check_override_names(argv: Sequence[str]) -> None:
  """ConfigError for the first ``--config.<field>=<value>`` (or ``--config.<field> <value>``) in ``argv`` whose
  field ``configs/base.py`` does not define, with a suggestion (ml_collections would raise a bare KeyError)."""
  from configs import base

  known = list(_flatten(base.get_config()))
  for i, arg in enumerate(argv):
    if not arg.startswith("--config."):
      continue
    name, eq, value = arg[len("--config."):].partition("=")
    if not eq and i + 1 < len(argv):
      value = argv[i + 1]
    if name not in known and name + "." not in known:
      raise _unknown(name, known, value)


# (field, a file the directory must hold): HF layout for checkpoints; any directory for a tokenizer
_PATH_FIELDS = (("model.checkpoint_dir", "config.json"), ("sft.init_checkpoint", "config.json"),
                ("model.tokenizer_dir", ""), ("synthesis.checkpoint_dir", "config.json"))


def check_paths(c) -> None:
  """ConfigError unless every local directory the run reads exists (and a checkpoint has its config.json).
  Empty fields are unused; URLs (``gs://...``) are left to the run, which reads them through its own client."""
  for field, marker in _PATH_FIELDS:
    section, name = field.split(".")
    value = str(c[section][name])
    if field == "synthesis.checkpoint_dir" and not (c.rods.synthesis and c.synthesis.backend == "sampler"):
      continue
    if not value or "://" in value:
      continue
    what = "a local Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer files)" if marker else \
        "a local tokenizer directory"
    if not os.path.isdir(value):
      _fail(field, value, f"is not a directory; expected {what}")
    if marker and not os.path.isfile(os.path.join(value, marker)):
      _fail(field, value, f"has no {marker}; expected {what}")


def _one_of(field: str, value: Any, known) -> None:
  if value not in known:
    _fail(field, value, f"is not one of {sorted(known)}")


def _check_names(c) -> None:
  from configs import arms  # the arm table lives with the arm configs
  from rods_jax import envs
  from rods_jax.models import presets
  from rods_jax.rl import advantages, losses
  from rods_jax.rods import posterior_table, selector

  _one_of("arm", c.arm, arms.ARMS)
  _one_of("model.preset", c.model.preset, presets.PRESETS)
  _one_of("model.dtype", c.model.dtype, DTYPES)
  _one_of("model.param_dtype", c.model.param_dtype, DTYPES)
  _one_of("env.name", c.env.name, envs.ENVIRONMENTS)
  splits = ENV_SPLITS[c.env.name]
  _one_of("env.seed_split", c.env.seed_split, splits["seed_split"])
  _one_of("env.test_split", c.env.test_split, splits["test_split"])
  _one_of("train.eval_split", c.train.eval_split, splits["eval_split"])
  _one_of("grpo.advantage", c.grpo.advantage, advantages.ADVANTAGES)
  _one_of("grpo.loss", c.grpo.loss, losses.LOSSES)
  _one_of("grpo.aggregation", c.grpo.aggregation, losses.AGGREGATIONS)
  _one_of("grpo.kl_estimator", c.grpo.kl_estimator, losses.KL_ESTIMATORS)
  _one_of("grpo.layout", c.grpo.layout, ("bucketed", "padded"))
  _one_of("rods.seed_selection", c.rods.seed_selection, selector.SELECTIONS)
  _one_of("rods.detector", c.rods.detector, posterior_table.DETECTORS)
  _one_of("synthesis.backend", c.synthesis.backend, SYNTHESIS_BACKENDS)


def _at_least(field: str, value, low) -> None:
  if value < low:
    _fail(field, value, f"must be >= {low}")


def _in_unit(field: str, value, *, low_open=False, high_open=False) -> None:
  lo_ok = value > 0 if low_open else value >= 0
  hi_ok = value < 1 if high_open else value <= 1
  if not (lo_ok and hi_ok):
    _fail(field, value, f"must lie in {'(' if low_open else '['}0, 1{')' if high_open else ']'}")


def _check_ranges(c) -> None:
  r, g, o, rods = c.rollout, c.grpo, c.optim, c.rods
  for name in ("tasks_per_step", "max_steps_per_turn", "max_tokens_per_message", "max_trajectory_tokens",
               "cache_capacity", "kv_bucket"):
    _at_least(f"rollout.{name}", r[name], 1)
  _at_least("rollout.temperature", r.temperature, 0.0)
  _in_unit("rollout.top_p", r.top_p, low_open=True)
  _at_least("rollout.top_k", r.top_k, 0)
  _in_unit("grpo.clip_low", g.clip_low, high_open=True)
  _at_least("grpo.clip_high", g.clip_high, 0.0)
  _at_least("grpo.kl_coef", g.kl_coef, 0.0)
  if g.eps <= 0:
    _fail("grpo.eps", g.eps, "must be > 0")
  _at_least("grpo.zero_std_tol", g.zero_std_tol, 0.0)
  _at_least("grpo.micro_batch", g.micro_batch, 1)
  _at_least("grpo.updates_per_batch", g.updates_per_batch, 1)
  _at_least("grpo.bucket_tokens", g.bucket_tokens, 1)
  for prefix, lr in (("optim.lr", o.lr), ("sft.lr", c.sft.lr)):
    if lr <= 0:
      _fail(prefix, lr, "must be > 0")
  _in_unit("optim.b1", o.b1, high_open=True)
  _in_unit("optim.b2", o.b2, high_open=True)
  _at_least("optim.warmup_steps", o.warmup_steps, 0)
  _at_least("optim.weight_decay", o.weight_decay, 0.0)
  _at_least("optim.grad_clip", o.grad_clip, 0.0)
  _at_least("sft.steps", c.sft.steps, 0)
  _at_least("sft.batch_size", c.sft.batch_size, 1)
  _at_least("sft.seq_len", c.sft.seq_len, 1)
  for name in ("alpha_low", "alpha_high", "retire_high", "retire_low", "burn_in_low"):
    _in_unit(f"rods.{name}", rods[name])
  _in_unit("rods.beta", rods.beta, low_open=True)
  _at_least("rods.p_max", rods.p_max, 0)
  _at_least("rods.seeds_per_step", rods.seeds_per_step, 0)
  _at_least("rods.seeds_per_category", rods.seeds_per_category, 1)
  _at_least("rods.cooldown_steps", rods.cooldown_steps, 0)
  _at_least("rods.stale_epochs", rods.stale_epochs, 1)
  _at_least("rods.static_pool_size", rods.static_pool_size, 0)
  _at_least("rods.dynamic_sampling_max_rounds", rods.dynamic_sampling_max_rounds, 1)
  _in_unit("rods.posterior_decay", rods.posterior_decay)
  _at_least("rods.posterior_prior_strength", rods.posterior_prior_strength, 0.0)
  _in_unit("rods.posterior_confidence", rods.posterior_confidence)
  _at_least("synthesis.max_attempts", c.synthesis.max_attempts, 1)
  _at_least("synthesis.max_refinements", c.synthesis.max_refinements, 0)
  _in_unit("synthesis.profile_tolerance", c.synthesis.profile_tolerance)
  _at_least("synthesis.request_queue_size", c.synthesis.request_queue_size, 1)
  _at_least("synthesis.result_queue_size", c.synthesis.result_queue_size, 1)
  _at_least("synthesis.lag_steps", c.synthesis.lag_steps, -1)
  _at_least("train.total_trajectories", c.train.total_trajectories, 1)
  _at_least("train.eval_every_trajectories", c.train.eval_every_trajectories, 1)
  _at_least("train.eval_k", c.train.eval_k, 1)
  _at_least("train.eval_max_tasks", c.train.eval_max_tasks, 1)
  _at_least("checkpoint.every_steps", c.checkpoint.every_steps, 1)
  _at_least("checkpoint.keep", c.checkpoint.keep, 1)
  _at_least("logging.every_steps", c.logging.every_steps, 1)
  _at_least("env.max_string_len", c.env.max_string_len, 1)
  _at_least("env.max_calls_per_message", c.env.max_calls_per_message, 1)
  _at_least("env.max_message_chars", c.env.max_message_chars, 1)


def resolve_mesh(mesh_cfg, num_devices: int) -> dict[str, int]:
  """Axis sizes {data, fsdp, tensor} with fsdp=-1 resolved; ValueError naming the field when they cannot fit."""
  sizes = {}
  for axis in ("data", "fsdp", "tensor"):
    value = mesh_cfg[axis]
    if value == 0 or value < -1 or (value == -1 and axis != "fsdp"):
      allowed = "a positive int or -1 (all remaining devices)" if axis == "fsdp" else "a positive int"
      _fail(f"mesh.{axis}", value, f"must be {allowed}")
    sizes[axis] = value
  fixed = sizes["data"] * sizes["tensor"] * (1 if sizes["fsdp"] == -1 else sizes["fsdp"])
  if sizes["fsdp"] == -1:
    if num_devices % fixed:
      _fail("mesh.data", sizes["data"], f"x config.mesh.tensor={sizes['tensor']} = {fixed} does not divide the "
            f"{num_devices} devices (config.mesh.fsdp=-1 takes the rest)")
    sizes["fsdp"] = num_devices // fixed
  elif fixed != num_devices:
    _fail("mesh.data", sizes["data"], f"x config.mesh.fsdp={sizes['fsdp']} x config.mesh.tensor={sizes['tensor']} = "
          f"{fixed} != {num_devices} devices")
  return sizes


def _check_consistency(c, num_devices: int | None) -> None:
  from configs import arms

  for dotted, required in arms.ARMS[c.arm].items():
    section, field = dotted.split(".")
    if c[section][field] != required:
      _fail(dotted, c[section][field], f"contradicts config.arm={c.arm!r}, which requires {required!r} "
            "(configs/arms.py)")
  if num_devices is None:  # device-independent checks only (sweep planning, a stand-alone synthesizer)
    dp = 1
  else:
    mesh = resolve_mesh(c.mesh, num_devices)
    dp = mesh["data"] * mesh["fsdp"]
  # The trainer recomputes log π at grpo.temperature; PPO ratios are only meaningful if that is the sampler's.
  if c.rollout.temperature > 0 and c.grpo.temperature != c.rollout.temperature:
    _fail("grpo.temperature", c.grpo.temperature, f"differs from config.rollout.temperature="
          f"{c.rollout.temperature}: the trainer's log-probs must use the sampling temperature")
  if c.rollout.k < 2:
    _fail("rollout.k", c.rollout.k, "must be >= 2: group-relative advantages and the boundary detector need K >= 2 "
          "rollouts per task")
  rows = c.rollout.tasks_per_step * c.rollout.k
  if rows % dp:
    _fail("rollout.tasks_per_step", c.rollout.tasks_per_step,
          f"x config.rollout.k={c.rollout.k} = {rows} rows is not divisible by data x fsdp = {dp}")
  # The learner's layout (rods_jax.rl.grpo_step.plan_layout): U updates of N/U rows, each in micro-batches of
  # min(micro_batch, N/U) rows, every micro-batch split over the data-parallel devices.
  if rows % c.grpo.updates_per_batch:
    _fail("grpo.updates_per_batch", c.grpo.updates_per_batch, f"does not divide the {rows} rows of a step "
          "(rollout.tasks_per_step x rollout.k)")
  per_update = rows // c.grpo.updates_per_batch
  micro = min(c.grpo.micro_batch, per_update)
  if per_update % micro:
    _fail("grpo.micro_batch", c.grpo.micro_batch, f"does not divide the {per_update} rows per update")
  if micro % dp:
    _fail("grpo.micro_batch", c.grpo.micro_batch, f"gives micro-batches of {micro} rows, not divisible by "
          f"data x fsdp = {dp}")
  if c.sft.steps > 0 and c.sft.batch_size % dp:
    _fail("sft.batch_size", c.sft.batch_size, f"is not divisible by data x fsdp = {dp}")
  if c.rods.alpha_low >= c.rods.alpha_high:
    _fail("rods.alpha_low", c.rods.alpha_low, f"must be < config.rods.alpha_high={c.rods.alpha_high}")
  if c.rods.retire_high < c.rods.alpha_high:
    _fail("rods.retire_high", c.rods.retire_high, f"must be >= config.rods.alpha_high={c.rods.alpha_high} "
          "(else boundary tasks would be retired as mastered)")
  if c.rollout.cache_capacity < c.rollout.max_trajectory_tokens:
    _fail("rollout.cache_capacity", c.rollout.cache_capacity,
          f"must be >= config.rollout.max_trajectory_tokens={c.rollout.max_trajectory_tokens}")
  if c.rollout.cohorts < 1:
    _fail("rollout.cohorts", c.rollout.cohorts, "must be >= 1")
  if c.rollout.cohorts > 1 and num_devices is not None and num_devices > 1:
    _fail("rollout.cohorts", c.rollout.cohorts, f"> 1 needs one device, not {num_devices}: concurrent programs "
          "with collectives can deadlock (spread rows over the mesh instead)")
  if c.train.overlap and num_devices is not None and num_devices > 1:
    _fail("train.overlap", c.train.overlap, f"needs one device, not {num_devices}: the rollout and the update would "
          "run as concurrent programs with collectives, which can deadlock")
  if c.rollout.max_tokens_per_message > c.rollout.max_trajectory_tokens:
    _fail("rollout.max_tokens_per_message", c.rollout.max_tokens_per_message,
          f"exceeds config.rollout.max_trajectory_tokens={c.rollout.max_trajectory_tokens}")
  if c.rods.synthesis and c.synthesis.backend == "openai":
    if not c.synthesis.endpoint:
      _fail("synthesis.endpoint", c.synthesis.endpoint, "must be set for synthesis.backend='openai'")
    if not c.synthesis.model_name:
      _fail("synthesis.model_name", c.synthesis.model_name, "must be set for synthesis.backend='openai'")
  if c.model.preset != "lab_tiny" and not (c.model.checkpoint_dir or c.model.tokenizer_dir):
    _fail("model.tokenizer_dir", c.model.tokenizer_dir, f"must be set (or config.model.checkpoint_dir) for preset "
          f"{c.model.preset!r}: only lab_tiny builds its own tokenizer")
  if c.train.total_trajectories < rows:
    _fail("train.total_trajectories", c.train.total_trajectories, f"is less than one step's {rows} trajectories")


def validate(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
  """Raises ValueError naming the first bad field of ``config`` for a run on ``num_devices`` devices.

  ``num_devices=None`` skips the checks that depend on the device count (mesh shape, batch divisibility).
  """
  from configs import base

  if num_devices is not None and num_devices < 1:
    raise ConfigError(f"num_devices={num_devices} must be >= 1")
  _check_keys_and_types(config, base.get_config())
  _check_names(config)
  _check_ranges(config)
  _check_consistency(config, num_devices)
