"""Prompts for LLM language backends and robust parsers of their outputs.

The prompts follow the roles of the RODS paper's agents (App. C: Planner, Coherence Rewrite, Quality Judge,
Refine-Rewrite), written for this project. Parsers only extract text between tags: model output is never evaluated,
and anything that does not parse raises ``SynthesisFailure`` with a taxonomy kind.
"""
from __future__ import annotations

import json
import re

from rods_jax.rods.synthesis import failures
from rods_jax.rods.synthesis.backends.base import LanguageRequest, PlanRequest, Verdict

_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
MAX_OUTPUT_CHARS = 64_000  # longer completions are cut before parsing (bounded regex work)


def _strip(text) -> str:
  if not isinstance(text, str):
    raise failures.SynthesisFailure(failures.BACKEND_ERROR, f"completion is {type(text).__name__}, not text")
  return _THINK_RE.sub("", text[:MAX_OUTPUT_CHARS])


def tagged(text: str, tag: str) -> list[str]:
  """All ``<tag>...</tag>`` bodies (case-insensitive, whitespace-stripped), in order; reasoning blocks ignored."""
  return [m.strip() for m in re.findall(rf"<\s*{tag}\s*>(.*?)<\s*/\s*{tag}\s*>", _strip(text),
                                        re.DOTALL | re.IGNORECASE)]


def _calls_text(calls) -> str:
  if not calls:
    return "(no function call: the user must NOT give the assistant enough to act in this turn)"
  return "; ".join(f"{c['name']}({json.dumps(c.get('arguments', {}), ensure_ascii=False, sort_keys=True)})"
                   for c in calls)


SYSTEM = "You write data for training tool-use assistants. Follow the output format exactly."


def plan_messages(req: PlanRequest) -> list[dict]:
  turns = "\n".join(f"Turn {t + 1}: {', '.join(fns) if fns else '(no call)'}"
                    for t, fns in enumerate(req.functions_per_turn))
  seed = "\n".join(f"- {q}" for q in req.seed_queries)
  user = (f"You are the Planner. A new task uses the API classes {', '.join(req.classes)} and tests these skills: "
          f"{', '.join(req.skills)}.\nThe functions planned per user turn are:\n{turns}\n"
          f"The original task's user queries were (do not copy their entities):\n{seed}\n"
          "Write a short, realistic scenario (2-3 sentences) that motivates these requests in this order, with new "
          "people, files, places and amounts. Output only <narrative>...</narrative>.")
  return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _spec_lines(req: LanguageRequest) -> str:
  lines = []
  for t, spec in enumerate(req.turns):
    vals = ", ".join(f"{a}={json.dumps(v, ensure_ascii=False)}" for a, v in spec.user_values) or "none"
    flow = ", ".join(spec.flow_args) or "none"
    lines.append(f"Turn {t + 1}: calls {_calls_text(spec.calls)}\n  values the user must state: {vals}\n"
                 f"  values the assistant must take from earlier results (do not state them): {flow}")
  return "\n".join(lines)


def rewrite_messages(req: LanguageRequest) -> list[dict]:
  user = (f"You are the Coherence Rewrite agent. Scenario: {req.narrative}\n{_spec_lines(req)}\n"
          f"Write all {req.num_turns} user queries together, one per turn, as a natural conversation coherent with "
          "the scenario. Each query must imply every call of its turn and state every listed value exactly, must not "
          f"name any function or parameter, and must be at most {req.max_query_chars} characters. "
          f"Output exactly {req.num_turns} blocks <query>...</query> and nothing else.")
  return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def judge_messages(req: LanguageRequest, queries: tuple[str, ...]) -> list[dict]:
  qs = "\n".join(f"Query {t + 1}: {q}" for t, q in enumerate(queries))
  user = (f"You are the Quality Judge. Scenario: {req.narrative}\n{_spec_lines(req)}\n{qs}\n"
          "Check: each query matches its turn's calls and values; consistency with the scenario; coherence across "
          "turns; natural wording without function names or jargon. Output <reason>...</reason>"
          "<decision>accept</decision> or <decision>reject</decision>, then <fail_type>query_fixable</fail_type> or "
          "<fail_type>gt_unfixable</fail_type> and <bad_turns>comma-separated turn numbers</bad_turns> when rejecting.")
  return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def refine_messages(req: LanguageRequest, queries: tuple[str, ...], verdict: Verdict) -> list[dict]:
  qs = "\n".join(f"Query {t + 1}: {q}" for t, q in enumerate(queries))
  user = (f"You are the Refine-Rewrite agent. Scenario: {req.narrative}\n{_spec_lines(req)}\n{qs}\n"
          f"The judge rejected them: {verdict.reason}\nRewrite all {req.num_turns} queries fixing the problem. "
          f"Output exactly {req.num_turns} blocks <query>...</query> and nothing else.")
  return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_narrative(text: str) -> str:
  found = [n for n in tagged(text, "narrative") if n]
  if not found:
    raise failures.SynthesisFailure(failures.NO_PATTERN, "planner output has no <narrative> block")
  return found[0]


def parse_queries(text: str, num_turns: int) -> tuple[str, ...]:
  found = tagged(text, "query")
  if not found:
    raise failures.SynthesisFailure(failures.QUERY_VERIFY_NO_TAG, "rewrite output has no <query> block")
  if len(found) != num_turns:
    raise failures.SynthesisFailure(failures.QUERY_GEN_FAILED, f"expected {num_turns} <query> blocks, got {len(found)}")
  return tuple(found)


def parse_verdict(text: str, num_turns: int) -> Verdict:
  decisions = [d.lower() for d in tagged(text, "decision")]
  if not decisions or decisions[-1] not in ("accept", "reject"):
    raise failures.SynthesisFailure(failures.QUERY_VERIFY_NO_TAG, "judge output has no <decision>accept|reject</decision>")
  reason = " ".join(tagged(text, "reason"))[:500]
  if decisions[-1] == "accept":
    return Verdict(accept=True, reason=reason)
  fail_type = [f.lower() for f in tagged(text, "fail_type")]
  bad = set()
  for block in tagged(text, "bad_turns"):
    for tok in re.findall(r"\d+", block):
      if 1 <= int(tok) <= num_turns:
        bad.add(int(tok) - 1)
  return Verdict(accept=False, reason=reason, fixable=not (fail_type and fail_type[-1] == "gt_unfixable"),
                 bad_turns=tuple(sorted(bad)) if bad else tuple(range(num_turns)))
