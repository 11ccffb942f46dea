"""Deterministic checks of user queries against the ground truth they must describe.

Two levels:
* ``verify_queries`` — hard rules applied to every backend's rewrite (right count, non-empty, length, no function
  names, no prompt-leak patterns). Failing them is ``query_verify_failed``.
* ``rule_verdict`` — the template judge: additionally every value the user must state appears in the queries up to
  its turn, and none of the seed's replaced values survives. Failing it is fixable by refinement.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from rods_jax.rods.synthesis.backends.base import LanguageRequest, Verdict

# Patterns the paper's Quality Judge rejects automatically (App. C.4), plus tag / code leakage.
LEAK_PATTERNS = (r"thought process", r"construct query", r"step \d+\s*:", r"</?\s*(query|decision|reason|think)\b",
                 r"```", r"tool_call", r"<\|", r"\|>",  # chat-template special tokens (<|im_start|>) must never
                 r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # reach the policy's context from generated text; nor controls
_LEAK_RE = re.compile("|".join(LEAK_PATTERNS), re.IGNORECASE)


def value_strings(value: Any) -> list[str]:
  """Surface forms a user would write for an argument value (empty list = not checkable, e.g. booleans)."""
  if isinstance(value, bool) or value is None:
    return []
  if isinstance(value, int):
    return [str(value)]
  if isinstance(value, float):
    if value.is_integer():
      return [str(int(value)), repr(value)]
    return [repr(value), f"{value:g}"]
  if isinstance(value, str):
    v = value.strip()
    return [v] if len(v) >= 2 else []
  return []


def leaf_values(value: Any) -> Iterable[Any]:
  """Scalar leaves of a (nested) argument value."""
  if isinstance(value, dict):
    for v in value.values():
      yield from leaf_values(v)
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from leaf_values(v)
  else:
    yield value


def mentions(text: str, value: Any) -> bool:
  """True if some surface form of ``value`` occurs in ``text`` (numbers as whole numbers, strings case-insensitive)."""
  forms = value_strings(value)
  if not forms:
    return True
  low = text.lower()
  for f in forms:
    if isinstance(value, (int, float)):
      if re.search(rf"(?<![\w.]){re.escape(f)}(?![\w]|\.\d)", text):
        return True
    elif f.lower() in low:
      return True
  return False


def mentions_function(text: str, name: str) -> bool:
  """A function is named if its identifier appears as ``name(`` or, for snake_case names, anywhere as a word."""
  if re.search(rf"\b{re.escape(name)}\s*\(", text):
    return True
  return "_" in name and re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


def verify_queries(request: LanguageRequest, queries: tuple[str, ...]) -> list[str]:
  """Hard rules for any backend's queries. Returns the list of problems ("" problems = valid)."""
  problems = []
  if len(queries) != request.num_turns:
    return [f"expected {request.num_turns} queries, got {len(queries)}"]
  for t, (q, spec) in enumerate(zip(queries, request.turns)):
    if t in request.env_turns:
      continue
    if not isinstance(q, str) or not q.strip():
      problems.append(f"turn {t}: empty query")
      continue
    if len(q) > request.max_query_chars:
      problems.append(f"turn {t}: query has {len(q)} chars > {request.max_query_chars}")
    named = [n for n in request.function_names if mentions_function(q, n)]
    if named:
      problems.append(f"turn {t}: names function(s) {named}")
    if _LEAK_RE.search(q):
      problems.append(f"turn {t}: contains a prompt/markup leak pattern")
    del spec
  return problems


def rule_verdict(request: LanguageRequest, queries: tuple[str, ...]) -> Verdict:
  """The template judge: hard rules + value alignment (each user value stated by its turn) + no stale seed values."""
  problems = verify_queries(request, queries)
  if problems:
    return Verdict(accept=False, reason="; ".join(problems), fixable=len(queries) == request.num_turns,
                   bad_turns=tuple(sorted({int(m.group(1)) for p in problems for m in [re.match(r"turn (\d+)", p)] if m})))
  bad, reasons = set(), []
  seen = ""
  for t, (q, spec) in enumerate(zip(queries, request.turns)):
    seen = f"{seen}\n{q}"
    for arg, value in spec.user_values:
      for leaf in leaf_values(value):
        if not mentions(seen, leaf):
          bad.add(t)
          reasons.append(f"turn {t}: value {leaf!r} of {arg!r} not stated")
    if t in request.env_turns:
      continue
    for old in request.forbidden_values:
      if mentions(q, old) and not any(mentions(str(v), old) for _, v in spec.user_values):
        bad.add(t)
        reasons.append(f"turn {t}: still mentions the seed's value {old!r}")
  if bad:
    return Verdict(accept=False, reason="; ".join(reasons), fixable=True, bad_turns=tuple(sorted(bad)))
  return Verdict(accept=True, reason="all rule checks passed")
