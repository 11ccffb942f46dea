"""Failure taxonomy of the synthesis pipeline and the counters the loop logs.

The names follow the RODS paper's error taxonomy (App. E: the first four are "patchable" by the Execute stage), extended
with the critique-stage outcomes this pipeline distinguishes. Every ``synthesize`` call ends either with an accepted task
or with exactly one of these names.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Mapping

# Paper taxonomy (App. E).
PARAM_GEN_FAILED = "param_gen_failed"  # no argument values could be generated for a planned call
DECOMPOSE_FAILED = "decompose_failed"  # a planned step could not be turned into concrete calls
FUNC_SAMPLE_FAILED = "func_sample_failed"  # no usable function left for a planned slot (blocklist exhausted the class)
VM_EXEC_FAILED = "vm_exec_failed"  # the ground truth still failed to execute after max_attempts patch/re-plan cycles
DUPLICATE_FUNC = "duplicate_func"  # the plan repeats a call that makes the task degenerate
QUERY_GEN_FAILED = "query_gen_failed"  # the language backend produced no usable queries (empty / wrong count)
QUERY_VERIFY_FAILED = "query_verify_failed"  # queries name functions, leak jargon or do not describe the ground truth
QUERY_VERIFY_NO_TAG = "query_verify_no_tag"  # backend output without the <query> / <decision> tags
CONVERSATION_CONSTRUCT_FAILED = "conversation_construct_failed"  # the validated pieces do not form a valid Task
NO_PROMPTS = "no_prompts"  # the seed has no user turns
NO_PATTERN = "no_pattern"  # the seed has no ground-truth calls to mirror, or the planner output had no usable tags
PIPELINE_EXCEPTION = "pipeline_exception"  # an unexpected exception inside a stage (caught, never propagated)
# Critique-stage outcomes.
GATE_FAILED = "gate_failed"  # fresh re-execution / tool availability / parameter complexity / gold R_P = 1 gate
JUDGE_REJECTED = "judge_rejected"  # the judge rejected the task and the refinement budget was spent (or gt_unfixable)
PROFILE_MISMATCH = "profile_mismatch"  # Φ(new task) differs from Φ(seed) beyond cfg.profile_tolerance
NOT_NOVEL = "not_novel"  # the variant reuses the seed's entities/values (no new state)
BACKEND_ERROR = "backend_error"  # the language backend itself failed (HTTP error, timeout, sampler error)

PAPER_TAXONOMY = (PARAM_GEN_FAILED, DECOMPOSE_FAILED, FUNC_SAMPLE_FAILED, VM_EXEC_FAILED, DUPLICATE_FUNC,
                  QUERY_GEN_FAILED, QUERY_VERIFY_FAILED, QUERY_VERIFY_NO_TAG, CONVERSATION_CONSTRUCT_FAILED,
                  NO_PROMPTS, NO_PATTERN, PIPELINE_EXCEPTION)
FAILURES = PAPER_TAXONOMY + (GATE_FAILED, JUDGE_REJECTED, PROFILE_MISMATCH, NOT_NOVEL, BACKEND_ERROR)
PATCHABLE = (PARAM_GEN_FAILED, DECOMPOSE_FAILED, FUNC_SAMPLE_FAILED, VM_EXEC_FAILED)


class SynthesisFailure(Exception):
  """Raised inside a stage to end the synthesis with one classified failure."""

  def __init__(self, kind: str, detail: str):
    if kind not in FAILURES:
      raise ValueError(f"unknown synthesis failure kind {kind!r}; expected one of {FAILURES}")
    super().__init__(f"{kind}: {detail}")
    self.kind = kind
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class StageEvent:
  """One line of a synthesis stage log."""
  stage: str  # plan | execute | rewrite | critique | judge | refine | augment | profile | accept
  ok: bool
  detail: str = ""


class SynthesisStats:
  """Counter of synthesis outcomes: attempts, accepted and failures by kind (what the loop logs).

  ``record`` takes anything with ``.failure`` and ``.stage_log`` (a SynthesisResult). ``as_dict`` is flat and
  JSON-able: ``{"attempts": n, "executed": e, "accepted": a, "failed/<kind>": c, ...}``.
  """

  def __init__(self):
    self._counts: collections.Counter = collections.Counter()

  def record(self, result) -> None:
    self._counts["attempts"] += 1
    if any(e.stage == "execute" and e.ok for e in getattr(result, "stage_log", ())):
      self._counts["executed"] += 1  # the ground truth ran (the funnel: requested → executed → accepted)
    if result.failure is None:
      self._counts["accepted"] += 1
    else:
      self._counts[f"failed/{result.failure}"] += 1

  def update(self, results: Iterable) -> None:
    for r in results:
      self.record(r)

  def merge(self, other: "SynthesisStats") -> None:
    self._counts.update(other._counts)

  @property
  def attempts(self) -> int:
    return self._counts["attempts"]

  @property
  def accepted(self) -> int:
    return self._counts["accepted"]

  def failures(self) -> dict[str, int]:
    return {k.split("/", 1)[1]: v for k, v in self._counts.items() if k.startswith("failed/")}

  def yield_rate(self) -> float:
    return self.accepted / self.attempts if self.attempts else 0.0

  @property
  def executed(self) -> int:
    return self._counts["executed"]

  def as_dict(self) -> dict[str, int]:
    d = {"attempts": self.attempts, "executed": self.executed, "accepted": self.accepted}
    d.update({f"failed/{k}": v for k, v in sorted(self.failures().items())})
    return d

  def state_dict(self) -> dict[str, int]:
    return dict(self._counts)

  def load_state_dict(self, state: Mapping[str, int]) -> None:
    self._counts = collections.Counter({str(k): int(v) for k, v in state.items()})

  def __repr__(self) -> str:
    return f"SynthesisStats({self.as_dict()})"
