"""The synthesizer's view of an environment: structural profile Φ, planner choice, tool names, messages.

Φ comes from ``rods_jax.envs.profile`` (the environment engineer's extractor, the same one the loop logs), so "the
variant's profile matches the seed's" means the same thing everywhere.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from rods_jax.envs.task import Task
from rods_jax.rods.synthesis import failures, plan

PLANNERS = ("auto", "generator", "rename")


def class_of(env, task: Task):
  """function name -> API class: ``env.function_class`` (protocol), or BFCL's owner table for the task's classes."""
  if hasattr(env, "function_class"):
    return env.function_class
  if env.name == "bfcl":
    from rods_jax.envs.bfcl import backends  # pylint: disable=g-import-not-at-top
    return backends.function_owner(task.classes).__getitem__
  raise ValueError(f"environment {env.name} exposes no function_class(name); the profile Φ needs it")


def profile(env, task: Task, outputs: tuple[str, ...] | None = None) -> Any:
  """Φ(task) with ``rods_jax.envs.profile``; ``outputs`` (flat, in call order) saves re-executing the ground truth."""
  from rods_jax.envs import profile as profile_lib  # pylint: disable=g-import-not-at-top
  if outputs is None:
    outputs = plan.analyse(env, task).outputs
  it = iter(outputs)
  results = [[next(it) for _ in turn] for turn in task.gt_calls]
  return profile_lib.profile_from_results(task, results, class_of(env, task))


def profiles_match(a: Any, b: Any, tolerance: float) -> bool:
  from rods_jax.envs import profile as profile_lib  # pylint: disable=g-import-not-at-top
  return bool(profile_lib.profiles_match(a, b, tolerance))


def describe_mismatch(a: Any, b: Any) -> str:
  from rods_jax.envs import profile as profile_lib  # pylint: disable=g-import-not-at-top
  sim = profile_lib.profile_similarity(a, b)
  diffs = []
  for field in ("category", "turns", "classes", "edges", "depth", "cross_turn_edges"):
    va, vb = getattr(a, field, None), getattr(b, field, None)
    if va != vb:
      diffs.append(f"{field}: seed {va} vs new {vb}")
  return f"similarity {sim:.3f}; " + "; ".join(diffs[:3])


def depth(p: Any) -> int:
  return int(getattr(p, "depth", 1))


def cross_turn_edges(p: Any) -> int:
  edges = getattr(p, "cross_turn_edges", 0)
  return len(edges) if isinstance(edges, (list, tuple)) else int(edges)


def function_names(env, task: Task) -> tuple[str, ...]:
  names = set()
  for t in range(task.num_turns):
    for tool in env.tools_at(task, t):
      names.add(tool.get("function", tool).get("name"))
  return tuple(sorted(n for n in names if isinstance(n, str)))


def miss_func_message(env) -> str:
  """The environment's "functions were added" message of a miss_func recovery turn (used by the Augment stage)."""
  if env.name == "bfcl":
    from rods_jax.envs.bfcl import data  # pylint: disable=g-import-not-at-top
    return data.MISS_FUNC_MESSAGE
  return "I have updated some more functions you can choose from. What about now?"


def _toolworld_generate(env):
  import random  # pylint: disable=g-import-not-at-top
  from rods_jax.envs import toolworld  # pylint: disable=g-import-not-at-top

  def generate(prof, rng: np.random.Generator):
    try:
      return toolworld.generate(prof, random.Random(int(rng.integers(0, 2**63))))
    except toolworld.InfeasibleProfile as e:
      raise failures.SynthesisFailure(failures.PARAM_GEN_FAILED, f"toolworld generator: {e}") from e
  del env
  return generate


def make_planner(env, cfg, value_catalog: dict) -> plan.Planner:
  """cfg.planner: auto (toolworld → its generator, others → rename over ``value_catalog``) | generator | rename."""
  choice = str(cfg.planner)
  if choice not in PLANNERS:
    raise ValueError(f"config.synthesis.planner={choice!r} not in {PLANNERS}")
  if choice == "rename" or (choice == "auto" and env.name != "toolworld"):
    return plan.RenamePlanner(env, value_catalog)
  if env.name != "toolworld":
    raise ValueError(f"config.synthesis.planner='generator' needs an environment with a generator, not {env.name}")
  vary = _function_swap(env, float(cfg.profile_tolerance)) if float(cfg.profile_tolerance) > 0 else None
  return plan.GeneratorPlanner(_toolworld_generate(env), lambda seed: profile(env, seed), vary)


def _function_swap(env, tolerance: float):
  """A request variation for profile_tolerance > 0: one call's function replaced by another function of the same
  class (same turn, same flow edges, same category) while Φ-similarity stays >= 1 - tolerance."""
  from rods_jax.envs import profile as profile_lib  # pylint: disable=g-import-not-at-top
  from rods_jax.envs import toolworld  # pylint: disable=g-import-not-at-top

  def vary(prof, rng: np.random.Generator, blocklist: plan.Blocklist):
    if prof.category not in ("base", "long_context"):
      return None  # miss_* structures name the held-back function / parameter: keep them exact
    calls = [(t, k) for t, fns in enumerate(prof.turns) for k in range(len(fns))]
    for i in rng.permutation(len(calls)):
      t, k = calls[int(i)]
      name = prof.turns[t][k]
      cls = env.function_class(name)
      options = [f.name for f in toolworld.FUNCTIONS
                 if f.cls == cls and f.name != name and f.name not in blocklist.functions]
      if not options:
        continue
      alt = options[int(rng.integers(len(options)))]
      turns = [list(fns) for fns in prof.turns]
      turns[t][k] = alt
      new = profile_lib.build_profile(prof.category, turns, prof.edges, env.function_class)
      if profile_lib.profile_similarity(prof, new) >= 1.0 - tolerance:
        return new
    return None
  return vary


def catalog(env, cfg) -> dict:
  """Values seen at each (function, argument) in ``cfg.value_catalog_split`` ("" = none): swap candidates."""
  split = str(cfg.value_catalog_split)
  if not split or env.name == "toolworld":
    return {}
  from rods_jax.rods.synthesis import rename  # pylint: disable=g-import-not-at-top
  return rename.value_catalog(env.load_tasks(split))


def make_perturber(env, value_catalog: dict) -> plan.Planner:
  """The env_augment perturbation: toolworld re-draws the world entities; other environments rename."""
  if env.name == "toolworld":  # rerandomize = generate from the task's own profile: same calls, new world
    return plan.GeneratorPlanner(_toolworld_generate(env), lambda seed: profile(env, seed))
  return plan.RenamePlanner(env, value_catalog)


def expected_ok(planner: plan.Planner, seed: Task):
  """Per flat call, whether it must succeed: the seed's own outcome for rename plans (all True otherwise)."""
  if isinstance(planner, plan.RenamePlanner):
    return planner.analysis(seed).oks
  return None
