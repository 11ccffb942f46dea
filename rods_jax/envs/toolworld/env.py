"""The toolworld Environment: fixed splits (cached on disk), episodes, offline scoring, gold trajectories."""
from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from rods_jax.envs import parsing, protocol
from rods_jax.envs.task import CATEGORIES, Lineage, Task
from rods_jax.envs.toolworld import apis, generator
from rods_jax.envs.toolworld.world import ToolWorld

# split -> (size, lineage origin). Category blocks of size/4 each; every task has its own RNG stream
# random.Random("toolworld/v<version>/<split>/<index>"), so splits never share a stream. "validation" is for choices
# made during a study (held-out curves, pilots), so the test split is touched by final evaluations only.
SPLITS = MappingProxyType({"seeds": (400, "seed"), "test": (400, "test"), "offline": (16_000, "offline"),
                           "validation": (200, "validation")})
MAX_ATTEMPTS_PER_PROFILE = 20


def default_cache_dir() -> str:
  """$RODS_JAX_CACHE, else $XDG_CACHE_HOME/rods_jax, else ~/.cache/rods_jax."""
  if os.environ.get("RODS_JAX_CACHE"):
    return os.environ["RODS_JAX_CACHE"]
  if os.environ.get("XDG_CACHE_HOME"):
    return os.path.join(os.environ["XDG_CACHE_HOME"], "rods_jax")
  return os.path.join(os.path.expanduser("~"), ".cache", "rods_jax")


def split_task(split: str, index: int) -> Task:
  """Task ``index`` of a fixed split (deterministic; independent of every other task)."""
  if split not in SPLITS:
    raise ValueError(f"toolworld split {split!r} not in {tuple(SPLITS)}")
  size, origin = SPLITS[split]
  if not 0 <= index < size:
    raise IndexError(f"toolworld split {split} has {size} tasks, index {index}")
  category = CATEGORIES[index * len(CATEGORIES) // size]
  rng = random.Random(f"toolworld/v{generator.GENERATOR_VERSION}/{split}/{index}")
  for _ in range(200):
    prof = generator.sample_profile(rng, category)
    try:
      return generator.generate(prof, rng, task_id=f"tw-{split}-{index:05d}", lineage=Lineage(origin=origin),
                                max_attempts=MAX_ATTEMPTS_PER_PROFILE)
    except generator.InfeasibleProfile:
      continue
  raise RuntimeError(f"toolworld: could not generate {split}[{index}]")


def generate_split(split: str) -> list[Task]:
  if split not in SPLITS:
    raise ValueError(f"toolworld split {split!r} not in {tuple(SPLITS)}")
  return [split_task(split, i) for i in range(SPLITS[split][0])]


def load_split(split: str, cache_dir: str) -> list[Task]:
  """A fixed split, from ``<cache_dir>/toolworld/v<version>/<split>.jsonl`` or generated and cached (atomic write)."""
  path = os.path.join(cache_dir, "toolworld", f"v{generator.GENERATOR_VERSION}", f"{split}.jsonl")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      tasks = [Task.from_json(line) for line in f if line.strip()]
    if len(tasks) == SPLITS[split][0]:
      return tasks
  tasks = generate_split(split)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    for t in tasks:
      f.write(t.to_json() + "\n")
  os.replace(tmp, path)
  return tasks


class ToolWorldEnv:
  """toolworld behind the Environment protocol (see rods_jax/envs/protocol.py).

  Args:
    env_cfg: ``cfg.env`` (limits, error_hints, cache_dir).
  """
  name = "toolworld"

  def __init__(self, env_cfg):
    self._limits = parsing.Limits.from_config(env_cfg)
    self._hints = bool(env_cfg.error_hints)
    cache = env_cfg.get("cache_dir", "")
    self._cache_dir = cache if cache else default_cache_dir()

  def load_tasks(self, split: str) -> list[Task]:
    if split not in SPLITS:
      raise ValueError(f"config.env split {split!r} is not a toolworld split {tuple(SPLITS)}")
    return load_split(split, self._cache_dir)

  def _check(self, task: Task) -> None:
    if task.env != "toolworld":
      raise ValueError(f"task {task.id} is a {task.env!r} task, not toolworld")
    unknown = [c for c in task.classes if c not in apis.CLASSES]
    if unknown:
      raise ValueError(f"task {task.id}: unknown toolworld classes {unknown}")

  def new_world(self, task: Task) -> ToolWorld:
    self._check(task)
    return ToolWorld(task.initial_state, long_context=bool(task.meta.get("long_context", False)), hints=self._hints)

  def tools_at(self, task: Task, turn: int) -> list[dict]:
    """Schemas of the task's classes, minus functions held back until a later turn (miss_func)."""
    held = {f for t, fs in task.missing_functions.items() if turn < int(t) for f in fs}
    return [f.schema() for c in task.classes for f in apis.BY_CLASS[c] if f.name not in held]

  def function_class(self, name: str) -> str:
    if name not in apis.BY_NAME:
      raise KeyError(f"unknown toolworld function {name!r}")
    return apis.BY_NAME[name].cls

  def new_episode(self, task: Task) -> protocol.TurnEpisode:
    self._check(task)
    return protocol.TurnEpisode(task, self.new_world, lambda turn: self.tools_at(task, turn), self._limits,
                                self._hints)

  def score(self, task: Task, calls_per_turn: Sequence[Sequence[Mapping[str, Any]]]) -> protocol.EpisodeResult:
    return protocol.score_calls(self.new_episode(task), calls_per_turn)

  def gold_messages(self, task: Task) -> list[dict[str, str]]:
    return gold_messages(task)


def format_gold_call(call: Mapping[str, Any]) -> str:
  """The canonical (gold) call text: compact JSON, arguments in the schema's parameter order (task JSON stores them
  sorted)."""
  fn = apis.BY_NAME.get(call["name"])
  args = call.get("arguments", {})
  if fn is not None and set(args) == {p.name for p in fn.params}:
    args = {p.name: args[p.name] for p in fn.params}
  return parsing.format_call({"name": call["name"], "arguments": args}, compact=True)


def gold_messages(task: Task) -> list[dict[str, str]]:
  """The gold conversation (no system message; tools go to the chat template): per turn the user message, then for
  every GT call an assistant message with exactly one ``<tool_call>`` and the tool message with its output, then the
  final answer (``task.meta['answers']``; "done." when absent)."""
  world = ToolWorld(task.initial_state, long_context=bool(task.meta.get("long_context", False)))
  answers = task.meta.get("answers", [generator.ANSWER] * task.num_turns)
  msgs = []
  for t, calls in enumerate(task.gt_calls):
    msgs.append({"role": "user", "content": task.turns[t]})
    for c in calls:
      msgs.append({"role": "assistant", "content": format_gold_call(c)})
      msgs.append({"role": "tool", "content": world.execute(c["name"], c["arguments"]).output})
    msgs.append({"role": "assistant", "content": answers[t]})
  return msgs


def task_stats(tasks: Sequence[Task]) -> dict[str, Any]:
  """Histograms of depth, turns, category, calls per task and cross-turn edges (from meta['profile'])."""
  from collections import Counter
  profs = [t.meta["profile"] for t in tasks]
  return {
      "n": len(tasks),
      "depth": dict(sorted(Counter(p["depth"] for p in profs).items())),
      "turns": dict(sorted(Counter(len(p["turns"]) for p in profs).items())),
      "category": dict(sorted(Counter(t.category for t in tasks).items())),
      "calls": dict(sorted(Counter(sum(len(x) for x in p["turns"]) for p in profs).items())),
      "cross_turn_edges": dict(sorted(Counter(p["cross_turn_edges"] for p in profs).items())),
      "mean_turns": sum(len(p["turns"]) for p in profs) / max(len(profs), 1),
      "mean_depth": sum(p["depth"] for p in profs) / max(len(profs), 1),
      "classes": dict(sorted(Counter(len(t.classes) for t in tasks).items())),
  }


def dumps_stats(stats: Mapping[str, Any]) -> str:
  return json.dumps(stats, indent=1)
