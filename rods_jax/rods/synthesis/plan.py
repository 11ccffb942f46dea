"""Plan stage: a candidate task with the seed's structure and new entities, values and state.

Two planners behind one interface (``plan(seed, rng, blocklist) -> Draft``):
* ``GeneratorPlanner`` — environments with a procedural generator (toolworld): ``generate(Φ-request, rng)`` builds a
  new world and a task whose functions (same classes, same per-turn shape), flow DAG, depth, turns and category equal
  the seed's structural profile.
* ``RenamePlanner`` — any environment (BFCL): the seed's calls and flow, with fresh entities / ids / numbers
  (``rename.py``) in the initial state, the queries and the arguments; flowing values are re-derived at execution.

The blocklist is the Execute stage's "action pruning": values whose edit broke execution keep the seed's value, and
functions that failed are avoided by planners that can choose functions.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from rods_jax.envs.task import Task
from rods_jax.rods.synthesis import flow, rename
from rods_jax.rods.synthesis.failures import SynthesisFailure


@dataclasses.dataclass(frozen=True)
class Blocklist:
  values: frozenset[str] = frozenset()  # repr() of seed values that must not be edited
  functions: frozenset[str] = frozenset()

  def extend(self, values=(), functions=()) -> "Blocklist":
    return Blocklist(self.values | {repr(v) for v in values}, self.functions | set(functions))


@dataclasses.dataclass(frozen=True)
class Draft:
  """A planned task before execution.

  Attributes:
    task: the candidate (new initial state, draft queries, ground truth whose flowing leaves are placeholders).
    flow_refs: (flat call index, argument, list path) -> where to read that leaf in an earlier call's new output.
    edits: the value edits applied (``rename.Edit``), used to repair a failed execution.
    forbidden: the seed's stated values that were replaced (must not reappear in the queries).
  """
  task: Task
  flow_refs: Mapping[tuple[int, str, tuple[int, ...]], flow.Locator]
  edits: tuple[rename.Edit, ...]
  forbidden: tuple[str, ...]


class Planner(Protocol):

  def plan(self, seed: Task, rng: np.random.Generator, blocklist: Blocklist) -> Draft:
    ...

  def repair(self, draft: Draft, failed_call: int, blocklist: Blocklist) -> Blocklist | None:
    """The blocklist after a failed execution at flat call ``failed_call``; None if nothing can be pruned."""
    ...


@dataclasses.dataclass(frozen=True)
class SeedAnalysis:
  outputs: tuple[str, ...]
  oks: tuple[bool, ...]
  sources: tuple[flow.ArgSource, ...]


def analyse(env, task: Task) -> SeedAnalysis:
  """Executes the task's ground truth on a fresh world and classifies every argument leaf (user / flow / fixed)."""
  world = env.new_world(task)
  outputs, oks = [], []
  for turn in task.gt_calls:
    for call in turn:
      res = world.execute(call["name"], call.get("arguments", {}))
      outputs.append(res.output)
      oks.append(bool(res.ok))
  return SeedAnalysis(tuple(outputs), tuple(oks), tuple(flow.argument_sources(task.turns, task.gt_calls, outputs)))


def flat_calls(task: Task) -> list[dict]:
  return [c for turn in task.gt_calls for c in turn]


def leaf(value: Any, path: tuple[int, ...]) -> Any:
  for i in path:
    value = value[i]
  return value


def set_leaf(value: Any, path: tuple[int, ...], new: Any) -> Any:
  """A copy of ``value`` with the leaf at ``path`` replaced (lists copied along the path)."""
  if not path:
    return new
  out = list(value)
  out[path[0]] = set_leaf(value[path[0]], path[1:], new)
  return out


def variant_id(seed: Task, rng: np.random.Generator, tag: str) -> str:
  salt = int(rng.integers(0, 2**62))
  digest = hashlib.sha1(f"{seed.id}|{salt}".encode()).hexdigest()[:10]
  return f"{seed.id}~{tag}{seed.lineage.generation + 1}-{digest}"


class RenamePlanner:
  """Structure-preserving planner for any environment (see module docstring)."""

  def __init__(self, env, catalog: Mapping[tuple[str, str], tuple[Any, ...]] | None = None,
               analysis_cache_size: int = 1024):
    self._env = env
    self._catalog = dict(catalog) if catalog is not None else {}
    self._cache: dict[str, SeedAnalysis] = {}
    self._cache_size = analysis_cache_size

  def analysis(self, seed: Task) -> SeedAnalysis:
    key = seed.to_json()
    if key not in self._cache:
      if len(self._cache) >= self._cache_size:
        self._cache.pop(next(iter(self._cache)))
      self._cache[key] = analyse(self._env, seed)
    return self._cache[key]

  def plan(self, seed: Task, rng: np.random.Generator, blocklist: Blocklist) -> Draft:
    an = self.analysis(seed)
    calls = flat_calls(seed)
    values = {(s.call, s.arg, s.path): leaf(calls[s.call]["arguments"][s.arg], s.path) for s in an.sources}
    edits = rename.candidate_edits(seed.turns, seed.initial_state, an.sources, values, blocklist.values, rng,
                                   call_names=[c["name"] for c in calls], catalog=self._catalog)
    refs = {(s.call, s.arg, s.path): s.locator for s in an.sources if s.kind == flow.FLOW}
    new_calls = []
    for j, call in enumerate(calls):
      args = dict(call.get("arguments", {}))
      for s in an.sources:
        if s.call != j or (s.call, s.arg, s.path) in refs:
          continue
        args[s.arg] = set_leaf(args[s.arg], s.path, rename.apply_to_value(leaf(args[s.arg], s.path), edits))
      new_calls.append({"name": call["name"], "arguments": args})
    it = iter(new_calls)
    gt = tuple(tuple(next(it) for _ in turn) for turn in seed.gt_calls)
    task = seed.replace(
        initial_state=rename.apply_to_state(seed.initial_state, edits),
        turns=tuple(rename.apply_to_text(q, edits) for q in seed.turns), gt_calls=gt)
    forbidden = tuple(str(e.old) for e in edits if isinstance(e.old, str))
    return Draft(task=task, flow_refs=refs, edits=tuple(edits), forbidden=forbidden)

  def repair(self, draft: Draft, failed_call: int, blocklist: Blocklist) -> Blocklist | None:
    """Reverts the edits the failing call uses; else every edit used up to it; else the state renames."""
    calls = flat_calls(draft.task)

    def used(upto: range) -> list[rename.Edit]:
      out = []
      for e in draft.edits:
        for j in upto:
          if _mentions_value(calls[j]["arguments"], e.new):
            out.append(e)
            break
      return out

    for group in (used(range(failed_call, failed_call + 1)), used(range(failed_call + 1)),
                  [e for e in draft.edits if e.in_state]):
      fresh = [e.old for e in group if repr(e.old) not in blocklist.values]
      if fresh:
        return blocklist.extend(values=fresh)
    return None


def _mentions_value(obj: Any, value: Any) -> bool:
  if isinstance(obj, dict):
    return any(_mentions_value(v, value) for v in obj.values())
  if isinstance(obj, list):
    return any(_mentions_value(v, value) for v in obj)
  if isinstance(obj, str) and isinstance(value, str):
    return value in obj
  return flow.same_value(obj, value) and not isinstance(obj, bool)


class GeneratorPlanner:
  """Planner over an environment's procedural generator ``generate(profile, rng) -> Task`` (toolworld).

  Args:
    generate: the environment's generator (raises SynthesisFailure when a profile is infeasible).
    request: seed task -> the structural request the generator takes (Φ of the seed).
    vary: optional (request, rng, blocklist) -> a request with other functions of the same classes testing the same
      skills (within the profile tolerance), or None; tried first, the seed's exact request is the fallback.
  """

  def __init__(self, generate: Callable[[Any, np.random.Generator], Task], request: Callable[[Task], Any],
               vary: Callable[[Any, np.random.Generator, Blocklist], Any] | None = None):
    self._generate = generate
    self._request = request
    self._vary = vary

  def plan(self, seed: Task, rng: np.random.Generator, blocklist: Blocklist) -> Draft:
    request = self._request(seed)
    if self._vary is not None:
      varied = self._vary(request, rng, blocklist)
      if varied is not None:
        try:
          return Draft(task=self._generate(varied, rng), flow_refs={}, edits=(), forbidden=())
        except SynthesisFailure:
          pass  # the varied structure is infeasible in this environment: fall back to the seed's own
    return Draft(task=self._generate(request, rng), flow_refs={}, edits=(), forbidden=())

  def repair(self, draft: Draft, failed_call: int, blocklist: Blocklist) -> Blocklist | None:
    name = flat_calls(draft.task)[failed_call]["name"]
    return blocklist.extend(functions=[name])
