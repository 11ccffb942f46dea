"""Deterministic template backend (the CPU lab's backend): no model, same input → same text.

* narrative: one sentence built from the planned classes and functions;
* rewrite: the environment adapter's draft for each turn (the seed's wording carried over to the new values, or the
  environment generator's own phrasing) and, where there is none, a template sentence built from the turn's calls;
* judge: the rule checks of ``querycheck.rule_verdict``;
* refine: states the missing values explicitly in the offending turns.
"""
from __future__ import annotations

from typing import Any

from rods_jax.rods.synthesis import querycheck
from rods_jax.rods.synthesis.backends.base import LanguageRequest, PlanRequest, TurnSpec, Verdict


def _words(identifier: str) -> str:
  return identifier.replace("_", " ").replace(".", " ").strip()


def _value_text(value: Any) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)):
    return ", ".join(_value_text(v) for v in value)
  if isinstance(value, dict):
    return ", ".join(f"{_words(k)} {_value_text(v)}" for k, v in value.items())
  return str(value)


def template_query(spec: TurnSpec) -> str:
  """A plain request sentence for one turn: 'Please <fn words> with <arg words> <value>, ... and then ...'."""
  parts = []
  user = dict(spec.user_values)
  for call in spec.calls:
    args = [f"{_words(k)} {_value_text(v)}" for k, v in call.get("arguments", {}).items() if k in user]
    flow = [_words(k) for k in call.get("arguments", {}) if k in spec.flow_args]
    phrase = _words(call["name"])
    if args:
      phrase += " with " + ", ".join(args)
    if flow:
      phrase += " using the " + " and ".join(flow) + " from before"
    parts.append(phrase)
  if not parts:
    return "Can you help me with this?"
  return "Please " + ", and then ".join(parts) + "."


class TemplateBackend:
  """LanguageBackend with templates and rule checks; see the module docstring."""

  def plan_narrative(self, request: PlanRequest) -> str:
    fns = sorted({f for turn in request.functions_per_turn for f in turn})
    return (f"A user working with {', '.join(request.classes)} has {len(request.functions_per_turn)} requests "
            f"that need {', '.join(_words(f) for f in fns)}.")

  def rewrite_queries(self, request: LanguageRequest) -> tuple[str, ...]:
    return tuple(spec.draft if spec.draft.strip() else template_query(spec) for spec in request.turns)

  def judge(self, request: LanguageRequest, queries: tuple[str, ...]) -> Verdict:
    return querycheck.rule_verdict(request, queries)

  def refine(self, request: LanguageRequest, queries: tuple[str, ...], verdict: Verdict) -> tuple[str, ...]:
    out = list(queries)
    for t in verdict.bad_turns:
      if t >= len(out):
        continue
      spec = request.turns[t]
      q = out[t]
      if spec.calls and any(querycheck.mentions(q, old) for old in request.forbidden_values):
        q = template_query(spec)  # the draft kept a stale value: fall back to the pure template sentence
      missing = [(a, v) for a, v in spec.user_values
                 if not all(querycheck.mentions("\n".join(out[:t] + [q]), leaf) for leaf in querycheck.leaf_values(v))]
      if missing:
        q = q.rstrip() + " (" + ", ".join(f"{_words(a)}: {_value_text(v)}" for a, v in missing) + ")"
      out[t] = q
    return tuple(out)
