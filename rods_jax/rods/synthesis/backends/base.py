"""The one interface every language backend implements, and the typed requests the pipeline hands it.

Stages that write or judge language (Plan narrative, Rewrite, Judge, Refine) call a ``LanguageBackend``; everything
structural (which calls, which values, execution, gates) is done by the pipeline and the environment adapter, so a
backend can never make a task unexecutable — at worst its text is rejected and the failure is classified.

Backends signal unusable output by raising ``SynthesisFailure`` with a taxonomy kind (``query_verify_no_tag``,
``query_gen_failed``, ``no_pattern``, ``backend_error``); they never return partial garbage.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class TurnSpec:
  """What one user turn of the new task must say.

  Attributes:
    calls: the turn's ground-truth calls ``{"name", "arguments"}`` (empty for a deliberate "missing" turn).
    user_values: ``(argument, value)`` pairs the user must state (they come from the user's words, not from tools).
    flow_args: arguments whose values come from earlier tool outputs (the query must not spell them out).
    draft: the environment adapter's own wording for this turn with the new values ("" when it has none).
  """
  calls: tuple[dict[str, Any], ...]
  user_values: tuple[tuple[str, Any], ...]
  flow_args: tuple[str, ...]
  draft: str


@dataclasses.dataclass(frozen=True)
class PlanRequest:
  """Input of the planner's narrative: the seed's structure and the functions chosen for each turn."""
  env: str
  classes: tuple[str, ...]
  functions_per_turn: tuple[tuple[str, ...], ...]
  seed_queries: tuple[str, ...]
  skills: tuple[str, ...]  # e.g. "parameter extraction", "multi-step parameter passing", "cross-turn dependency"


@dataclasses.dataclass(frozen=True)
class LanguageRequest:
  """Input of rewrite / judge / refine: the narrative and per-turn specs of the planned, executed task."""
  env: str
  classes: tuple[str, ...]
  narrative: str
  turns: tuple[TurnSpec, ...]
  function_names: tuple[str, ...]  # every tool name offered (none may appear in a query)
  forbidden_values: tuple[str, ...]  # the seed's entity values that were replaced (none may appear)
  max_query_chars: int
  env_turns: tuple[int, ...] = ()  # turns holding the environment's message (miss_func recovery): not rewritten

  @property
  def num_turns(self) -> int:
    return len(self.turns)


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A judge decision. ``fixable`` = the queries can be refined (query_fixable) rather than gt_unfixable."""
  accept: bool
  reason: str
  fixable: bool = True
  bad_turns: tuple[int, ...] = ()


@runtime_checkable
class LanguageBackend(Protocol):
  """Plan narrative → rewrite all queries together → judge → (≤ max_refinements) refine."""

  def plan_narrative(self, request: PlanRequest) -> str:
    ...

  def rewrite_queries(self, request: LanguageRequest) -> tuple[str, ...]:
    ...

  def judge(self, request: LanguageRequest, queries: tuple[str, ...]) -> Verdict:
    ...

  def refine(self, request: LanguageRequest, queries: tuple[str, ...], verdict: Verdict) -> tuple[str, ...]:
    ...
