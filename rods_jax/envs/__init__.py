"""Environments: the Task type, the Environment/Episode protocol, tool-call parsing, progress reward, profile Φ.

``make_env(name, env_cfg)`` is the registry. Each environment package ``rods_jax.envs.<name>`` exposes
``make(env_cfg) -> Environment``; packages are imported lazily so that toolworld never imports bfcl (or vice versa).
"""
from __future__ import annotations

import importlib

ENVIRONMENTS = ("toolworld", "bfcl")


def make_env(name: str, env_cfg):
  """Builds the environment ``name`` ("toolworld" | "bfcl") from ``cfg.env``."""
  if name not in ENVIRONMENTS:
    raise ValueError(f"config.env.name={name!r} is not one of {ENVIRONMENTS}")
  module = importlib.import_module(f"rods_jax.envs.{name}")
  if not hasattr(module, "make"):
    raise ValueError(f"rods_jax.envs.{name} does not define make(env_cfg) -> Environment")
  return module.make(env_cfg)
