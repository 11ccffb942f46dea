"""Critique stage, deterministic admission gates (paper App. G) before the judge.

(a) re-execution of the final ground truth in a fresh world from the final initial state reproduces every output;
(b) tool availability: every ground-truth call is offered at its turn (miss_func holds tools back);
(c) parameter complexity: string arguments ≤ max_string_len chars, lists ≤ max_list_len items (nested too);
(d) the gold trajectory scores R_P = 1 with the environment's own checker.
"""
from __future__ import annotations

from typing import Any, Sequence

from rods_jax.envs.task import Task


def _complexity(value: Any, where: str, max_str: int, max_list: int) -> list[str]:
  if isinstance(value, str):
    return [f"{where}: string of {len(value)} chars > {max_str}"] if len(value) > max_str else []
  if isinstance(value, (list, tuple)):
    out = [f"{where}: list of {len(value)} items > {max_list}"] if len(value) > max_list else []
    for i, v in enumerate(value):
      out += _complexity(v, f"{where}[{i}]", max_str, max_list)
    return out
  if isinstance(value, dict):
    out = []
    for k, v in value.items():
      out += _complexity(v, f"{where}.{k}", max_str, max_list)
    return out
  return []


def complexity_problems(task: Task, max_string_len: int, max_list_len: int) -> list[str]:
  out = []
  for t, turn in enumerate(task.gt_calls):
    for c in turn:
      for k, v in c.get("arguments", {}).items():
        out += _complexity(v, f"turn {t} {c['name']}.{k}", max_string_len, max_list_len)
  return out


def availability_problems(env, task: Task) -> list[str]:
  out = []
  for t, turn in enumerate(task.gt_calls):
    if not turn:
      continue
    offered = {tool.get("function", tool).get("name") for tool in env.tools_at(task, t)}
    for c in turn:
      if c["name"] not in offered:
        out.append(f"turn {t}: {c['name']} is not offered at this turn")
  return out


def reexecution_problems(env, task: Task, outputs: Sequence[str]) -> list[str]:
  world = env.new_world(task)
  j = 0
  for t, turn in enumerate(task.gt_calls):
    for c in turn:
      try:
        res = world.execute(c["name"], c.get("arguments", {}))
      except Exception as e:  # a World must not raise; count it as a gate failure
        return [f"turn {t}: {c['name']} raised {type(e).__name__}"]
      if j >= len(outputs) or res.output != outputs[j]:
        return [f"turn {t}: {c['name']} output differs on fresh re-execution"]
      j += 1
  return []


def gate_problems(env, task: Task, outputs: Sequence[str], max_string_len: int, max_list_len: int) -> list[str]:
  """All gate failures (empty = admitted to the judge)."""
  problems = complexity_problems(task, max_string_len, max_list_len)
  problems += availability_problems(env, task)
  if problems:
    return problems
  problems += reexecution_problems(env, task, outputs)
  if problems:
    return problems
  result = env.score(task, task.gt_calls)
  if result.progress != 1.0:
    problems.append(f"gold trajectory scores R_P = {result.progress:.3f} != 1")
  return problems
