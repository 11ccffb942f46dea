"""Execute stage: run a draft's ground truth in a fresh world, re-deriving flowing values; repair and retry.

The ground truth is executed before any query text is final (paper §3.3 II). A failed call triggers a repair — the
planner reverts the edits that broke it (the minimal initial-state patch) or blocklists the failing function — and a
new attempt, at most ``max_attempts`` executions in all; then the seed is dropped with ``vm_exec_failed``.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Sequence

import numpy as np

from rods_jax.envs.task import Task
from rods_jax.rods.synthesis import failures, flow
from rods_jax.rods.synthesis.failures import StageEvent
from rods_jax.rods.synthesis.plan import Blocklist, Draft, Planner, set_leaf


@dataclasses.dataclass(frozen=True)
class ExecTrace:
  """A resolved ground truth and its execution: ``failed`` is the flat index of the first bad call, or None."""
  task: Task
  outputs: tuple[str, ...]
  oks: tuple[bool, ...]
  failed: int | None
  error: str


def run(env, draft: Draft, expected_ok: Sequence[bool] | None = None) -> ExecTrace:
  """Executes ``draft.task``'s ground truth turn by turn on one fresh world, filling flowing leaves as it goes.

  A call fails if the world reports an error where the seed's call succeeded (``expected_ok``; default all True), or
  a flowing value cannot be found in its producer's new output.
  """
  task = draft.task
  world = env.new_world(task)
  outputs: list[str] = []
  oks: list[bool] = []
  turns = []
  j = 0
  for turn in task.gt_calls:
    new_turn = []
    for call in turn:
      args = copy.deepcopy(dict(call.get("arguments", {})))
      for (cj, arg, path), loc in draft.flow_refs.items():
        if cj != j:
          continue
        value = flow.resolve(outputs[loc.call], loc)
        if value is None:
          return _partial(task, turns, new_turn, outputs, oks, j, f"flowing value {arg} not found in call {loc.call}'s output")
        args[arg] = set_leaf(args[arg], path, value)
      new_call = {"name": call["name"], "arguments": args}
      new_turn.append(new_call)
      try:
        res = world.execute(call["name"], args)
        out, ok = res.output, bool(res.ok)
      except Exception as e:  # a World must not raise; if one does, it is this call's failure
        out, ok = f"Error: {type(e).__name__}: {e}", False
      outputs.append(out)
      oks.append(ok)
      want = True if expected_ok is None else expected_ok[j]
      if ok != want:
        return _partial(task, turns, new_turn, outputs, oks, j, f"{call['name']} -> {out[:160]}")
      j += 1
    turns.append(tuple(new_turn))
  return ExecTrace(task.replace(gt_calls=tuple(turns)), tuple(outputs), tuple(oks), None, "")


def _partial(task, turns, new_turn, outputs, oks, j, error) -> ExecTrace:
  done = list(turns) + [tuple(new_turn)]
  rest = task.gt_calls[len(done):]
  return ExecTrace(task.replace(gt_calls=tuple(done) + tuple(rest)), tuple(outputs), tuple(oks), j, error)


def plan_and_execute(env, planner: Planner, seed: Task, rng: np.random.Generator, max_attempts: int,
                     expected_ok: Sequence[bool] | None, log: list[StageEvent],
                     check: Callable[[ExecTrace], str | None]) -> tuple[Draft, ExecTrace]:
  """Plan → Execute with repair, ≤ ``max_attempts`` executions in all.

  ``check`` (the profile comparison) returns a problem description for an executed trace, or None; a trace that
  fails it is re-planned with fresh values. Raises SynthesisFailure(vm_exec_failed | profile_mismatch | ...).
  """
  if max_attempts < 1:
    raise ValueError(f"synthesis.max_attempts must be >= 1, got {max_attempts}")
  blocklist = Blocklist()
  draft = None
  last_kind, last = failures.VM_EXEC_FAILED, ""
  attempt = 0
  while attempt < max_attempts:
    if draft is None:
      try:
        draft = planner.plan(seed, rng, blocklist)
      except failures.SynthesisFailure:
        raise
      except (ValueError, KeyError, IndexError, TypeError) as e:
        raise failures.SynthesisFailure(failures.PARAM_GEN_FAILED, f"planner: {type(e).__name__}: {e}") from e
      log.append(StageEvent("plan", True, f"attempt {attempt + 1}: {len(draft.edits)} edits, "
                                          f"{len(draft.flow_refs)} flowing values"))
    trace = run(env, draft, expected_ok)
    attempt += 1
    if trace.failed is None:
      log.append(StageEvent("execute", True, f"attempt {attempt}: {len(trace.outputs)} calls ok"))
      problem = check(trace)
      if problem is None:
        log.append(StageEvent("profile", True, "Φ(new) matches Φ(seed)"))
        return draft, trace
      log.append(StageEvent("profile", False, problem))
      last_kind, last = failures.PROFILE_MISMATCH, problem
      draft = None  # re-plan with fresh values, same blocklist
      continue
    last_kind, last = failures.VM_EXEC_FAILED, trace.error
    log.append(StageEvent("execute", False, f"attempt {attempt}: call {trace.failed}: {trace.error}"))
    new_blocklist = planner.repair(draft, trace.failed, blocklist)
    if new_blocklist is None:
      break
    log.append(StageEvent("patch", True, f"blocklist +{sorted(new_blocklist.values - blocklist.values)}"
                                         f" +{sorted(new_blocklist.functions - blocklist.functions)}"))
    blocklist = new_blocklist
    draft = None
  raise failures.SynthesisFailure(last_kind, f"after {attempt} attempts: {last}")
