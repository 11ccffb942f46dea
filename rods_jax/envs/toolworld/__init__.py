"""toolworld: a procedural, BFCL-shaped multi-turn tool-use environment compact enough for the CPU lab.

Five stateful API classes (files, bank, travel, chat, shop; 7 functions each), tasks of 1-5 user turns with 1-3 calls
per turn, dependency depth 1-4, cross-turn references and BFCL's four categories. See generator.py for the semantics.
"""
from rods_jax.envs.toolworld.apis import CLASSES, FUNCTIONS
from rods_jax.envs.toolworld.env import SPLITS, ToolWorldEnv, gold_messages, split_task, task_stats
from rods_jax.envs.toolworld.generator import InfeasibleProfile, generate, rerandomize, sample_profile
from rods_jax.envs.toolworld.world import ToolWorld


def make(env_cfg) -> ToolWorldEnv:
  """The registry hook used by ``rods_jax.envs.make_env("toolworld", cfg.env)``."""
  return ToolWorldEnv(env_cfg)


__all__ = ["CLASSES", "FUNCTIONS", "SPLITS", "ToolWorldEnv", "ToolWorld", "gold_messages", "split_task", "task_stats",
           "InfeasibleProfile", "generate", "rerandomize", "sample_profile", "make"]
