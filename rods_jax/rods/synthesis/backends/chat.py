"""A LanguageBackend over any chat-completion function ``complete(messages) -> str``.

The sampler backend (this project's own model) and the OpenAI-compatible HTTP backend only differ in ``complete``;
prompts and parsing are shared (``prompts.py``). A scripted ``complete`` makes the LLM path testable.
"""
from __future__ import annotations

from typing import Callable

from rods_jax.rods.synthesis import failures
from rods_jax.rods.synthesis.backends import prompts
from rods_jax.rods.synthesis.backends.base import LanguageRequest, PlanRequest, Verdict

CompleteFn = Callable[[list[dict]], str]


class ChatBackend:
  """LanguageBackend whose four stages are prompts to ``complete``; malformed output raises a classified failure."""

  def __init__(self, complete: CompleteFn):
    self._complete = complete

  def _ask(self, messages: list[dict]) -> str:
    try:
      return self._complete(messages)
    except failures.SynthesisFailure:
      raise
    except Exception as e:  # a broken backend is a counted failure, never a crash of the synthesizer
      raise failures.SynthesisFailure(failures.BACKEND_ERROR, f"{type(e).__name__}: {e}") from e

  def plan_narrative(self, request: PlanRequest) -> str:
    return prompts.parse_narrative(self._ask(prompts.plan_messages(request)))

  def rewrite_queries(self, request: LanguageRequest) -> tuple[str, ...]:
    return prompts.parse_queries(self._ask(prompts.rewrite_messages(request)), request.num_turns)

  def judge(self, request: LanguageRequest, queries: tuple[str, ...]) -> Verdict:
    return prompts.parse_verdict(self._ask(prompts.judge_messages(request, queries)), request.num_turns)

  def refine(self, request: LanguageRequest, queries: tuple[str, ...], verdict: Verdict) -> tuple[str, ...]:
    return prompts.parse_queries(self._ask(prompts.refine_messages(request, queries, verdict)), request.num_turns)
