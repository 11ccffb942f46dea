"""Where each ground-truth argument value comes from, and how to find it again in a new execution's output.

An argument leaf of call j is
* ``user``  if a surface form of it occurs in the user text up to j's turn (the user states it),
* ``flow``  otherwise, if it occurs in the output of an earlier call i (parameter flow i → j, the profile's DAG edge),
* ``fixed`` otherwise (implied by the task: defaults, enums, values the user paraphrases).

A flow value is re-derived in a new execution by a ``Locator``: its JSON path in call i's output when the output is
JSON, else its token index in the output text. This keeps multi-step parameter passing intact when the upstream values
change.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

from rods_jax.rods.synthesis import querycheck

USER, FLOW, FIXED = "user", "flow", "fixed"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_.\-/]+")


@dataclasses.dataclass(frozen=True)
class Locator:
  """Where a value sits in one call's output: ``call`` is the flat index of the producing call."""
  call: int
  json_path: tuple[Any, ...] | None  # keys / indices into json.loads(output)
  token_index: int | None  # index among _TOKEN_RE tokens of the output text
  as_type: str  # "str" | "int" | "float" (type of the argument value to rebuild)


@dataclasses.dataclass(frozen=True)
class ArgSource:
  """Source of one argument (whole value) of one call: ``path`` = () for the argument itself, or list indices."""
  call: int  # flat index of the consuming call
  arg: str
  path: tuple[int, ...]  # index path inside a list-valued argument
  kind: str  # USER | FLOW | FIXED
  locator: Locator | None


def same_value(a: Any, b: Any) -> bool:
  """Equality tolerant to int/float/str representation (e.g. 12446 == "12446", 2.0 == 2)."""
  if isinstance(a, bool) or isinstance(b, bool):
    return a is b
  if isinstance(a, (int, float)) and isinstance(b, (int, float)):
    return float(a) == float(b)
  if isinstance(a, (int, float)) and isinstance(b, str) or isinstance(a, str) and isinstance(b, (int, float)):
    try:
      return float(a) == float(b)
    except ValueError:
      return False
  return a == b


def _json_find(obj: Any, value: Any, path: tuple) -> tuple | None:
  if isinstance(obj, dict):
    for k, v in obj.items():
      found = _json_find(v, value, path + (k,))
      if found is not None:
        return found
    return None
  if isinstance(obj, list):
    for i, v in enumerate(obj):
      found = _json_find(v, value, path + (i,))
      if found is not None:
        return found
    return None
  return path if same_value(obj, value) else None


def _parse_json(text: str) -> Any:
  try:
    return json.loads(text)
  except (ValueError, TypeError):
    return None


def _type_name(value: Any) -> str:
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, int):
    return "int"
  if isinstance(value, float):
    return "float"
  return "str"


def locate(output: str, value: Any, call: int) -> Locator | None:
  """Finds ``value`` in one call's output (JSON leaf first, then a whole token of the text)."""
  if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
    return None
  parsed = _parse_json(output)
  if isinstance(parsed, (dict, list)):
    path = _json_find(parsed, value, ())
    if path is not None:
      return Locator(call, path, None, _type_name(value))
  forms = querycheck.value_strings(value)
  tokens = _TOKEN_RE.findall(output)
  for i, tok in enumerate(tokens):
    if tok in forms or same_value(value, tok) and not isinstance(value, str):
      return Locator(call, None, i, _type_name(value))
  return None


def resolve(output: str, loc: Locator) -> Any:
  """The value at ``loc`` in a (new) output, cast to the argument's type; None if it is not there."""
  value: Any = None
  if loc.json_path is not None:
    obj = _parse_json(output)
    try:
      for key in loc.json_path:
        obj = obj[key]
    except (KeyError, IndexError, TypeError):
      return None
    value = obj
  else:
    tokens = _TOKEN_RE.findall(output)
    if loc.token_index is None or loc.token_index >= len(tokens):
      return None
    value = tokens[loc.token_index]
  try:
    if loc.as_type == "int":
      f = float(value)
      return int(f) if f.is_integer() else None
    if loc.as_type == "float":
      return float(value)
    if loc.as_type == "str":
      return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
  except (TypeError, ValueError):
    return None
  return value


def _leaves(value: Any, path: tuple[int, ...] = ()):
  if isinstance(value, list):
    for i, v in enumerate(value):
      yield from _leaves(v, path + (i,))
  else:
    yield path, value


def argument_sources(turns: Sequence[str], gt_calls: Sequence[Sequence[dict]],
                     outputs: Sequence[str]) -> list[ArgSource]:
  """Classifies every argument leaf of the ground truth (see module docstring).

  Args:
    turns: user text per turn.
    gt_calls: calls per turn.
    outputs: the executed output of every call, flat in call order.
  """
  sources = []
  flat = 0
  user_text = ""
  for t, calls in enumerate(gt_calls):
    user_text = f"{user_text}\n{turns[t]}"
    for call in calls:
      for arg, value in call.get("arguments", {}).items():
        if isinstance(value, dict):
          sources.append(ArgSource(flat, arg, (), FIXED, None))
          continue
        for path, leaf in _leaves(value):
          if querycheck.value_strings(leaf) and querycheck.mentions(user_text, leaf):
            sources.append(ArgSource(flat, arg, path, USER, None))
            continue
          loc = None
          for i in range(flat):
            loc = locate(outputs[i], leaf, i)
            if loc is not None:
              break
          sources.append(ArgSource(flat, arg, path, FLOW if loc is not None else FIXED, loc))
      flat += 1
  return sources
