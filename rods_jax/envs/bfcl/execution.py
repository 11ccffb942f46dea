"""Helpers for the synthesizer: execute call lists on fresh BFCL backends and inspect the resulting state.

``execute_calls`` runs ``calls_per_turn`` turn by turn on one fresh set of backends built from a task's initial state
(availability per turn enforced like a live episode, unless ``check_offered=False``) and returns every call's result
string (bfcl serialisation), error flag and whether it changed the checked (public) state, plus the final state.

``mutating_functions()`` reads ``mutating.json``: per function, whether it was observed changing the checked state
when the ground truth of all 800 tasks was executed (``observe_mutations()`` regenerates it; a test checks they
agree). Functions never called by the ground truth are listed as "unobserved" (MathAPI is stateless, so all of its
functions are read-only). Note ``cd`` only moves the private
working directory: it changes later results but never the checked state, so it is not "mutating".
"""
from __future__ import annotations

import datetime
import importlib.resources
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rods_jax.envs.bfcl import backends, data, env
from rods_jax.envs.task import CATEGORIES, Task


class Execution(NamedTuple):
  """Per turn, per call: result string, error flag, checked-state change; and the state after the last call."""
  results: list[list[str]]
  errors: list[list[bool]]
  mutated: list[list[bool]]
  final_state: dict[str, dict[str, Any]]  # class -> public attributes (live objects, comparable with ==)


def _as_task(task_like: Task | Mapping[str, Any]) -> Task:
  """A Task, or a mapping with ``classes``, ``initial_state`` and optionally ``missing_functions``, ``long_context``."""
  if isinstance(task_like, Task):
    return task_like
  if not isinstance(task_like, Mapping):
    raise TypeError(f"task_like must be a Task or a mapping, got {type(task_like).__name__}")
  for key in ("classes", "initial_state"):
    if key not in task_like:
      raise ValueError(f"task_like is missing the key {key!r}")
  long_context = bool(task_like.get("long_context", False))
  return Task(id=str(task_like.get("id", "draft")), env=data.ENV_NAME,
              category="long_context" if long_context else "base", classes=tuple(task_like["classes"]),
              initial_state=dict(task_like["initial_state"]), turns=(), gt_calls=(),
              missing_functions={str(k): tuple(v) for k, v in task_like.get("missing_functions", {}).items()},
              meta={"long_context": long_context})


def execute_calls(task_like: Task | Mapping[str, Any], calls_per_turn: Sequence[Sequence[Mapping[str, Any]]],
                  check_offered: bool = True, limits: backends.DispatchLimits = backends.DispatchLimits()
                  ) -> Execution:
  """Executes ``calls_per_turn`` (lists of ``{"name", "arguments"}``) on fresh backends; never raises on bad calls."""
  task = _as_task(task_like)
  world = backends.make_backends(task.classes, task.initial_state,
                                 bool(task.meta.get("long_context", task.category == "long_context")))
  all_names = frozenset(world.owner)
  results, errors, mutated = [], [], []
  for t, calls in enumerate(calls_per_turn):
    allowed = env.offered_names(task, t) if check_offered else all_names
    r_t, e_t, m_t = [], [], []
    for call in calls:
      name = call.get("name") if isinstance(call, Mapping) else None
      args = call.get("arguments", {}) if isinstance(call, Mapping) else None
      owner = world.owner.get(name) if isinstance(name, str) else None
      before = backends.public_state(world.instances[owner]) if owner else None
      out = backends.execute_call(world, allowed, name, args, limits)
      r_t.append(out.result)
      e_t.append(out.error)
      m_t.append(owner is not None and backends.public_state(world.instances[owner]) != before)
    results.append(r_t)
    errors.append(e_t)
    mutated.append(m_t)
  final = {c: backends.public_state(obj) for c, obj in world.instances.items()}
  return Execution(results, errors, mutated, final)


def to_jsonable(value: Any, _depth: int = 0) -> Any:
  """A JSON-able view of backend state (objects -> their public attributes plus ``__class__``; no parent links)."""
  if _depth > 64:
    return "<too deep>"
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v, _depth + 1) for k, v in value.items()}
  if isinstance(value, (list, tuple, set, frozenset)):
    items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
    return [to_jsonable(v, _depth + 1) for v in items]
  if isinstance(value, (datetime.date, datetime.time, datetime.datetime)):
    return value.isoformat()
  if hasattr(value, "__dict__"):
    out = {"__class__": type(value).__name__}
    out.update({k: to_jsonable(v, _depth + 1) for k, v in vars(value).items()
                if not k.startswith("_") and k != "parent"})
    return out
  return str(value)


def observe_mutations() -> dict[str, dict[str, list[str]]]:
  """Executes the ground truth of all 800 tasks; per class, functions seen mutating / only read / never called."""
  seen_mut: set[str] = set()
  seen: set[str] = set()
  for category in CATEGORIES:
    for task in data.load_all_tasks(category):
      ex = execute_calls(task, [list(turn) for turn in task.gt_calls])
      for turn, flags in zip(task.gt_calls, ex.mutated):
        for call, m in zip(turn, flags):
          seen.add(call["name"])
          if m:
            seen_mut.add(call["name"])
  from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES  # pylint: disable=g-import-not-at-top
  out = {}
  for cls in data.MULTI_TURN_CLASSES:
    names = data.function_names(cls)
    if cls in STATELESS_CLASSES:  # no state at all: read-only by construction
      seen.update(names)
    out[cls] = {"mutating": [n for n in names if n in seen_mut],
                "read_only": [n for n in names if n in seen and n not in seen_mut],
                "unobserved": [n for n in names if n not in seen]}
  return out


def mutating_functions() -> dict[str, dict[str, list[str]]]:
  """The shipped observation table (mutating.json): class -> {"mutating", "read_only", "unobserved"} name lists."""
  text = (importlib.resources.files("rods_jax.envs.bfcl") / "mutating.json").read_text(encoding="utf-8")
  return json.loads(text)["classes"]
