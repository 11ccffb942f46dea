"""Augment stage (optional): turn a validated base-structure task into a miss_func / miss_param variant (BFCL semantics).

* miss_func: a function needed at turn t is held back. Turn t keeps the query but its ground truth becomes [] (the
  agent must not act); an inserted recovery turn t+1 carries the environment's "functions updated" message, releases
  the function (``missing_functions[str(t+1)]``) and holds the original calls.
* miss_param: one value the user states at turn t is blurred out of the query; ground truth [] (the agent should ask);
  an inserted clarification turn t+1 states the value and holds the original calls.

Used when the planner produced a task of another category than the seed's; the resulting profile is checked again.
"""
from __future__ import annotations

import re

import numpy as np

from rods_jax.envs.task import Task
from rods_jax.rods.synthesis import failures, querycheck
from rods_jax.rods.synthesis.failures import StageEvent

AUGMENTABLE = ("miss_func", "miss_param")


def _insert(task: Task, t: int, first_query: str, second_query: str) -> tuple[tuple[str, ...], tuple]:
  turns = task.turns[:t] + (first_query, second_query) + task.turns[t + 1:]
  gt = task.gt_calls[:t] + ((), task.gt_calls[t]) + task.gt_calls[t + 1:]
  return turns, gt


def make_miss_func(task: Task, t: int, message: str) -> Task:
  """Holds back the first function of turn t (never used before t) until an inserted recovery turn t+1."""
  if not task.gt_calls[t]:
    raise ValueError(f"turn {t} of {task.id} has no calls to hold back")
  name = task.gt_calls[t][0]["name"]
  if any(c["name"] == name for turn in task.gt_calls[:t] for c in turn):
    raise ValueError(f"{name} is already used before turn {t}")
  turns, gt = _insert(task, t, task.turns[t], message)
  shifted = {str(int(k) + 1 if int(k) > t else int(k)): v for k, v in task.missing_functions.items()}
  shifted[str(t + 1)] = (name,)
  return task.replace(category="miss_func", turns=turns, gt_calls=gt, missing_functions=shifted)


def make_miss_param(task: Task, t: int, arg: str, value) -> Task:
  """Blurs ``value`` out of turn t's query; an inserted clarification turn t+1 states it and carries the calls."""
  forms = querycheck.value_strings(value)
  if not forms or not querycheck.mentions(task.turns[t], value):
    raise ValueError(f"value {value!r} of {arg} is not stated in turn {t}")
  blurred = task.turns[t]
  for f in sorted(forms, key=len, reverse=True):
    blurred = re.sub(re.escape(f), "the one I have in mind", blurred, flags=re.IGNORECASE)
  if any(querycheck.mentions(blurred, v) for v in [value]) and querycheck.value_strings(value):
    raise ValueError(f"could not blur {value!r} out of turn {t}")
  clarification = f"Sorry, I forgot to say: the {arg.replace('_', ' ')} is {forms[0]}."
  turns, gt = _insert(task, t, blurred, clarification)
  shifted = {str(int(k) + 1 if int(k) > t else int(k)): v for k, v in task.missing_functions.items()}
  return task.replace(category="miss_param", turns=turns, gt_calls=gt, missing_functions=shifted)


def augment(env_message: str, task: Task, category: str, rng: np.random.Generator, log: list[StageEvent],
            user_values_per_turn=None) -> Task:
  """A ``category`` variant of ``task`` at a random admissible turn (raises SynthesisFailure if there is none)."""
  order = [int(i) for i in rng.permutation(task.num_turns)]
  for t in order:
    try:
      if category == "miss_func":
        out = make_miss_func(task, t, env_message)
      elif category == "miss_param":
        values = user_values_per_turn[t] if user_values_per_turn is not None else ()
        out = None
        for arg, value in values:
          try:
            out = make_miss_param(task, t, arg, value)
            break
          except ValueError:
            continue
        if out is None:
          continue
      else:
        raise ValueError(f"cannot augment to category {category!r}")
    except ValueError:
      continue
    log.append(StageEvent("augment", True, f"{category} at turn {t}"))
    return out
  raise failures.SynthesisFailure(failures.DECOMPOSE_FAILED, f"no turn of {task.id} admits a {category} variant")
