"""Parity of this project's BFCL verdicts with bfcl's official checker, on perturbed ground-truth trajectories.

The reference is bfcl's ``multi_turn_checker`` + ``multi_turn_irrelevance_checker``. It ``eval``s call strings, so it
is only ever given strings rendered here from checked call dicts: names from the task's own function set (or one fixed
unknown name), arguments bounded JSON literals rendered through ``repr``. bfcl caches backend instances in its module
globals under ``<model_name>_<id>_<class>_instance``; every reference run uses a fresh unique model name and deletes
exactly its own entries afterwards, so runs are independent and memory does not grow.

Perturbations of the ground truth (each keeps every call offered at its turn, as a live parser would):
  drop       remove one call              duplicate  repeat one call right after itself
  clear      empty one turn               extra      insert a copy of a GT call (offered at that turn) elsewhere
  unknown    insert a call to an unknown tool
  swap       swap two same-typed arguments of one call (or perturb its only argument, type kept)
  shuffle    reorder the calls of one turn
"""
from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from rods_jax.envs.bfcl import backends, data, env
from rods_jax.envs.task import CATEGORIES, Task

KINDS = ("drop", "duplicate", "clear", "extra", "unknown", "swap", "shuffle")
UNKNOWN_TOOL = "unknown_tool_xyz"

Calls = list[list[dict[str, Any]]]


def call_string(call: dict[str, Any]) -> str:
  """``{"name": "mv", "arguments": {"source": "a"}}`` -> ``"mv(source='a')"`` (Python literal syntax via repr)."""
  args = ", ".join(f"{k}={v!r}" for k, v in call["arguments"].items())
  return f"{call['name']}({args})"


def _trusted_string(task: Task, call: Any, known: frozenset[str]) -> str:
  """Renders a call for bfcl's eval-based checker, refusing anything but a documented (or the fixed unknown) name
  with bounded JSON-literal arguments: the reference must never be a way to run code."""
  if not isinstance(call, dict) or set(call) - {"name", "arguments"}:
    raise ValueError(f"task {task.id}: call {str(call)[:80]!r} is not a {{'name', 'arguments'}} dict")
  name, args = call.get("name"), call.get("arguments", {})
  if name not in known and name != UNKNOWN_TOOL:
    raise ValueError(f"task {task.id}: call name {str(name)[:80]!r} is not a function of {task.classes}")
  backends.validate_arguments(name, args, backends.DispatchLimits())
  return call_string({"name": name, "arguments": args})


def official_verdict(task: Task, gt_strings: Sequence[Sequence[str]] | None, calls_per_turn: Calls) -> bool:
  """bfcl's verdict: multi_turn_checker valid AND multi_turn_irrelevance_checker valid.

  ``gt_strings``: the wheel's ground truth (``data.raw_ground_truth``), or None to render ``task.gt_calls`` (e.g. a
  synthesized task). ``calls_per_turn`` must have one entry per turn (bfcl marks a different turn count as
  force-terminated, i.e. failed). Every rendered call is checked first (documented name, literal arguments);
  anything else raises ValueError instead of reaching bfcl's ``eval``.
  """
  from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils  # pylint: disable=g-import-not-at-top
  from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import (  # pylint: disable=g-import-not-at-top
      multi_turn_checker, multi_turn_irrelevance_checker)
  known = frozenset(n for c in task.classes for n in data.function_names(c))
  if gt_strings is None:
    gt_strings = [[_trusted_string(task, dict(c), known) for c in turn] for turn in task.gt_calls]
  if len(calls_per_turn) != len(gt_strings):
    return False
  decoded = [[[_trusted_string(task, c, known)] for c in turn] for turn in calls_per_turn]
  entry = {"id": task.id, "initial_config": copy.deepcopy(task.initial_state),
           "involved_classes": list(task.classes)}
  model_name = f"rodsparity_{uuid.uuid4().hex}"
  try:
    ok = multi_turn_checker(decoded, [list(t) for t in gt_strings], entry, f"multi_turn_{task.category}",
                            model_name)["valid"]
    return bool(ok and multi_turn_irrelevance_checker(decoded, [list(t) for t in gt_strings])["valid"])
  finally:
    cache = vars(multi_turn_utils)
    for key in [k for k in cache if k.startswith(model_name)]:
      del cache[key]


def _positions(calls: Calls) -> list[tuple[int, int]]:
  return [(t, i) for t, turn in enumerate(calls) for i in range(len(turn))]


def _perturb_value(v: Any) -> Any:
  if isinstance(v, bool):
    return not v
  if isinstance(v, int):
    return v + 1
  if isinstance(v, float):
    return v + 1.5
  if isinstance(v, str):
    return v + "_x"
  if isinstance(v, list):
    return v[:-1] if v else ["x"]
  if isinstance(v, dict):
    return {k: _perturb_value(x) for k, x in v.items()}
  return "x"


def perturb(task: Task, kind: str, rng: np.random.Generator) -> Calls | None:
  """One random perturbation of ``task``'s ground truth; None when ``kind`` does not apply to this task."""
  calls: Calls = [[copy.deepcopy(c) for c in turn] for turn in task.gt_calls]
  pos = _positions(calls)
  n_turns = len(calls)
  if kind == "drop":
    if not pos:
      return None
    t, i = pos[rng.integers(len(pos))]
    del calls[t][i]
  elif kind == "duplicate":
    if not pos:
      return None
    t, i = pos[rng.integers(len(pos))]
    calls[t].insert(i + 1, copy.deepcopy(calls[t][i]))
  elif kind == "clear":
    turns = [t for t in range(n_turns) if calls[t]]
    if not turns:
      return None
    calls[turns[rng.integers(len(turns))]] = []
  elif kind == "extra":
    t = int(rng.integers(n_turns))
    offered = env.offered_names(task, t)
    pool = [c for turn in task.gt_calls for c in turn if c["name"] in offered]
    if not pool:
      return None
    calls[t].insert(int(rng.integers(len(calls[t]) + 1)), copy.deepcopy(pool[rng.integers(len(pool))]))
  elif kind == "unknown":
    t = int(rng.integers(n_turns))
    calls[t].insert(int(rng.integers(len(calls[t]) + 1)), {"name": UNKNOWN_TOOL, "arguments": {}})
  elif kind == "swap":
    with_args = [(t, i) for t, i in pos if calls[t][i]["arguments"]]
    if not with_args:
      return None
    t, i = with_args[rng.integers(len(with_args))]
    args = calls[t][i]["arguments"]
    keys = list(args)
    pairs = [(a, b) for ai, a in enumerate(keys) for b in keys[ai + 1:]
             if type(args[a]) is type(args[b]) and args[a] != args[b]]
    if pairs:
      a, b = pairs[rng.integers(len(pairs))]
      args[a], args[b] = args[b], args[a]
    else:
      k = keys[rng.integers(len(keys))]
      args[k] = _perturb_value(args[k])
  elif kind == "shuffle":
    turns = [t for t in range(n_turns) if len(calls[t]) >= 2]
    if not turns:
      return None
    t = turns[rng.integers(len(turns))]
    order = rng.permutation(len(calls[t]))
    if np.all(order == np.arange(len(order))):
      order = order[::-1]
    calls[t] = [calls[t][j] for j in order]
  else:
    raise ValueError(f"perturbation kind {kind!r} not in {KINDS}")
  return calls


class ParityReport(NamedTuple):
  checked: int  # trajectories compared (GT + perturbations)
  agree: int
  ours_pass: int
  official_pass: int
  gt_full: int  # tasks whose GT scores R_P = 1 and success here
  tasks: int
  seconds_ours: float
  seconds_official: float
  disagreements: list[tuple[str, str]]  # (task id, perturbation kind)


def run_parity(tasks: Sequence[Task], kinds_per_task: int, seed: int) -> ParityReport:
  """For each task: the GT (must be R_P = 1 here and valid officially) and ``kinds_per_task`` random perturbations
  (distinct kinds, drawn per task from a generator seeded by (seed, category, scenario)); compares success verdicts."""
  if not 1 <= kinds_per_task <= len(KINDS):
    raise ValueError(f"kinds_per_task={kinds_per_task} must be in [1, {len(KINDS)}]")
  gts = {c: data.raw_ground_truth(c) for c in {t.category for t in tasks}}
  checked = agree = ours_pass = official_pass = gt_full = 0
  t_ours = t_official = 0.0
  disagreements = []
  for task in tasks:
    rng = np.random.default_rng([seed, CATEGORIES.index(task.category), int(task.meta["scenario"])])
    kinds = list(rng.permutation(KINDS))
    trajectories = [("gt", [list(t) for t in task.gt_calls])]
    for kind in kinds:
      if len(trajectories) > kinds_per_task:
        break
      calls = perturb(task, str(kind), rng)
      if calls is not None:
        trajectories.append((str(kind), calls))
    for kind, calls in trajectories:
      t0 = time.perf_counter()
      res = env.score(task, calls)
      t1 = time.perf_counter()
      ref = official_verdict(task, gts[task.category][task.id], calls)
      t_official += time.perf_counter() - t1
      t_ours += t1 - t0
      if kind == "gt":
        gt_full += int(res.success and res.progress == 1.0)
      checked += 1
      agree += int(res.success == ref)
      ours_pass += int(res.success)
      official_pass += int(ref)
      if res.success != ref:
        disagreements.append((task.id, kind))
  return ParityReport(checked, agree, ours_pass, official_pass, gt_full, len(tasks), t_ours, t_official,
                      disagreements)


def stacked_perturbation(task: Task, n_kinds: int, rng: np.random.Generator) -> Calls | None:
  """``n_kinds`` random perturbations applied one after another (each to the previous result); None if none applied."""
  current, calls = task, None
  for kind in rng.choice(KINDS, n_kinds):
    out = perturb(current, str(kind), rng)
    if out is not None:
      calls = out
      current = current.replace(gt_calls=tuple(tuple(t) for t in out))
  return calls


def run_stacked_parity(tasks: Sequence[Task], n: int, seed: int) -> tuple[int, int, list[str]]:
  """``n`` trajectories, each a random task with a stack of 2-4 perturbations: (checked, agree, disagreeing ids)."""
  rng = np.random.default_rng(seed)
  gts = {c: data.raw_ground_truth(c) for c in {t.category for t in tasks}}
  checked = agree = 0
  bad = []
  for _ in range(n):
    task = tasks[int(rng.integers(len(tasks)))]
    calls = stacked_perturbation(task, int(rng.integers(2, 5)), rng)
    if calls is None:
      continue
    ours = env.score(task, calls).success
    checked += 1
    if ours == official_verdict(task, gts[task.category][task.id], calls):
      agree += 1
    else:
      bad.append(task.id)
  return checked, agree, bad
