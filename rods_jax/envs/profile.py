"""Structural profile Φ of a task, computed from its EXECUTED ground truth (docs/METHOD.md §4), for any environment.

Φ holds: the functions called per user turn (in order) and their API classes (the API topology); the parameter-flow
DAG; its longest chain (dependency depth, 1 = no flow); the number of turns; the category; the number of cross-turn edges.

Parameter flow (a heuristic over values and text): call j depends on an earlier call i iff some argument
value v of j (a string of length >= 2 or a number with |v| >= 10; leaves of lists/dicts too) does not occur in the user
text of turns 0..turn(j), and occurs in the output of call i; the edge goes from the EARLIEST such i. "Occurs" is a
whole-token match (not preceded/followed by a letter, digit or '_'), so F1 does not occur in F12.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from rods_jax.envs.task import CATEGORIES, Task


@dataclasses.dataclass(frozen=True)
class Profile:
  """Φ(x). Calls are numbered in order over the whole task (flattened over turns); edges are (src, dst) call indices.

  Attributes:
    category: base | miss_func | miss_param | long_context.
    turns: per user turn, the functions called, in order (() for a turn whose ground truth is empty).
    classes: per user turn, the sorted distinct API classes of those functions.
    edges: sorted parameter-flow edges (i, j), i < j.
    depth: number of calls on the longest flow chain (1 = no flow; 0 = no calls).
    cross_turn_edges: edges whose two calls lie in different turns.
  """
  category: str
  turns: tuple[tuple[str, ...], ...]
  classes: tuple[tuple[str, ...], ...]
  edges: tuple[tuple[int, int], ...]
  depth: int
  cross_turn_edges: int

  @property
  def num_turns(self) -> int:
    return len(self.turns)

  @property
  def num_calls(self) -> int:
    return sum(len(t) for t in self.turns)

  @property
  def calls_per_turn(self) -> tuple[int, ...]:
    return tuple(len(t) for t in self.turns)

  def call_turns(self) -> list[int]:
    """Turn index of every flattened call."""
    return [t for t, fns in enumerate(self.turns) for _ in fns]

  def functions(self) -> list[str]:
    return [f for t in self.turns for f in t]

  def to_dict(self) -> dict[str, Any]:
    return {"category": self.category, "turns": [list(t) for t in self.turns],
            "classes": [list(c) for c in self.classes], "edges": [list(e) for e in self.edges],
            "depth": self.depth, "cross_turn_edges": self.cross_turn_edges}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Profile":
    return cls(category=d["category"], turns=tuple(tuple(t) for t in d["turns"]),
               classes=tuple(tuple(c) for c in d["classes"]), edges=tuple(tuple(e) for e in d["edges"]),
               depth=int(d["depth"]), cross_turn_edges=int(d["cross_turn_edges"]))


def chain_depth(num_calls: int, edges: Iterable[tuple[int, int]]) -> int:
  """Longest path in the flow DAG counted in calls: depth(j) = 1 + max(depth(i) for i -> j), max over j."""
  parents: dict[int, list[int]] = {}
  for i, j in edges:
    if not 0 <= i < j < num_calls:
      raise ValueError(f"edge ({i}, {j}) is not a forward edge among {num_calls} calls")
    parents.setdefault(j, []).append(i)
  depth = [0] * num_calls
  for j in range(num_calls):
    depth[j] = 1 + max((depth[i] for i in parents.get(j, ())), default=0)
  return max(depth, default=0)


def build_profile(category: str, turns: Sequence[Sequence[str]], edges: Iterable[tuple[int, int]],
                  class_of: Callable[[str], str]) -> Profile:
  """A Profile from its free parts; classes, depth and cross-turn edges are derived."""
  if category not in CATEGORIES:
    raise ValueError(f"profile category {category!r} not in {CATEGORIES}")
  turns = tuple(tuple(t) for t in turns)
  edges = tuple(sorted({(int(i), int(j)) for i, j in edges}))
  n = sum(len(t) for t in turns)
  call_turn = [t for t, fns in enumerate(turns) for _ in fns]
  depth = chain_depth(n, edges)
  return Profile(category=category, turns=turns, classes=tuple(tuple(sorted({class_of(f) for f in t})) for t in turns),
                 edges=edges, depth=depth, cross_turn_edges=sum(call_turn[i] != call_turn[j] for i, j in edges))


def _leaves(v: Any) -> Iterable[Any]:
  if isinstance(v, Mapping):
    for x in v.values():
      yield from _leaves(x)
  elif isinstance(v, (list, tuple)):
    for x in v:
      yield from _leaves(x)
  else:
    yield v


def _flowable(v: Any) -> bool:
  if isinstance(v, bool) or v is None:
    return False
  if isinstance(v, (int, float)):
    return abs(v) >= 10
  return isinstance(v, str) and len(v.strip()) >= 2


def _spellings(v: Any) -> list[str]:
  if isinstance(v, float) and v.is_integer():
    return [repr(v), str(int(v))]
  if isinstance(v, int):
    return [str(v), f"{v}.0"]
  return [str(v)]


def _is_word_char(c: str) -> bool:
  return c.isascii() and (c.isalnum() or c == "_")


def occurs(value: Any, text: str) -> bool:
  """Whole-token occurrence of a value's spelling(s) in text (neighbours must not be ASCII letters, digits or '_')."""
  for s in _spellings(value):
    start = text.find(s)
    while start >= 0:
      end = start + len(s)
      if (start == 0 or not _is_word_char(text[start - 1])) and (end == len(text) or not _is_word_char(text[end])):
        return True
      start = text.find(s, start + 1)
  return False


def flow_edges(turns: Sequence[str], calls: Sequence[Sequence[Mapping[str, Any]]],
               results: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
  """The parameter-flow edges (module docstring) of executed calls; ``results[t][k]`` = output of call k of turn t."""
  flat_calls = [c for t in calls for c in t]
  flat_results = [r for t in results for r in t]
  call_turn = [t for t, cs in enumerate(calls) for _ in cs]
  if len(flat_results) != len(flat_calls):
    raise ValueError(f"{len(flat_calls)} calls but {len(flat_results)} results")
  edges = set()
  for j, c in enumerate(flat_calls):
    user_text = "\n".join(turns[:call_turn[j] + 1])
    for v in _leaves(c.get("arguments", {})):
      if not _flowable(v) or occurs(v, user_text):
        continue
      src = next((i for i in range(j) if occurs(v, flat_results[i])), None)
      if src is not None:
        edges.add((src, j))
  return sorted(edges)


def profile_from_results(task: Task, results: Sequence[Sequence[str]], class_of: Callable[[str], str]) -> Profile:
  """Φ of a task given the outputs of its executed ground truth."""
  edges = flow_edges(task.turns, task.gt_calls, results)
  return build_profile(task.category, [[c["name"] for c in t] for t in task.gt_calls], edges, class_of)


def profile(task: Task, env) -> Profile:
  """Φ(task): executes the ground truth in ``env`` (``env.new_world``) and applies the flow heuristic.

  The API class of a function comes from ``env.function_class(name)``.
  """
  from rods_jax.envs.protocol import execute_ground_truth  # local: protocol imports nothing from here
  results = [[r.output for r in turn] for turn in execute_ground_truth(env, task)]
  return profile_from_results(task, results, env.function_class)


def _ratio(a: float, b: float) -> float:
  return 1.0 if a == b else 1.0 - abs(a - b) / max(abs(a), abs(b))


def _jaccard(a: Counter, b: Counter) -> float:
  union = sum((a | b).values())
  return 1.0 if union == 0 else sum((a & b).values()) / union


def _flow_pairs(p: Profile) -> Counter:
  fns, ct = p.functions(), p.call_turns()
  return Counter((fns[i], fns[j], ct[i] != ct[j]) for i, j in p.edges)


SIMILARITY_WEIGHTS = MappingProxyType({"category": 0.15, "turns": 0.15, "functions": 0.2, "classes": 0.1,
                                       "depth": 0.15, "flow": 0.15, "cross_turn": 0.1})


def profile_similarity(a: Profile, b: Profile) -> float:
  """Weighted mean of per-component agreements, in [0, 1]; 1 iff the structural parts agree.

  category: [a == b]; turns, depth, cross-turn edges: 1 - |a - b| / max(a, b); functions: multiset Jaccard of
  (turn, function) pairs; classes: Jaccard of the class sets; flow: multiset Jaccard of (src fn, dst fn, cross-turn)
  edges. Weights in SIMILARITY_WEIGHTS (sum 1).
  """
  parts = {
      "category": float(a.category == b.category),
      "turns": _ratio(a.num_turns, b.num_turns),
      "functions": _jaccard(Counter((t, f) for t, fs in enumerate(a.turns) for f in fs),
                            Counter((t, f) for t, fs in enumerate(b.turns) for f in fs)),
      "classes": _jaccard(Counter({c for t in a.classes for c in t}), Counter({c for t in b.classes for c in t})),
      "depth": _ratio(a.depth, b.depth),
      "flow": _jaccard(_flow_pairs(a), _flow_pairs(b)),
      "cross_turn": _ratio(a.cross_turn_edges, b.cross_turn_edges),
  }
  return sum(SIMILARITY_WEIGHTS[k] * v for k, v in parts.items())


def profiles_match(a: Profile, b: Profile, tolerance: float = 0.0) -> bool:
  """tolerance 0: exact structural equality (functions per turn, edges, category); else similarity >= 1 - tol."""
  if tolerance < 0 or tolerance > 1:
    raise ValueError(f"profile tolerance must be in [0, 1], got {tolerance}")
  if tolerance == 0:
    return a == b
  return profile_similarity(a, b) >= 1.0 - tolerance
