"""Structure-preserving re-instantiation of a task: new entities and values, same calls and parameter flow.

Used as the planner for environments without a procedural generator (BFCL) and as the ``perturb`` mode of any
environment. An *edit* maps one value the user states (a quoted name, an entity of the initial state, an id, a
number) to a fresh value of the same shape (``final_report.pdf`` → ``amber_ledger.pdf``, ``NVDA`` → ``QKTR``,
``83912`` → ``50417``, ``50`` → ``37``). Edits are applied consistently to the initial state (keys, values and inside
longer strings), to the user queries and to the ground-truth arguments; values that flow from tool outputs are not
edited but re-derived when the new ground truth is executed (``flow.Locator``).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rods_jax.rods.synthesis import flow

WORDS = ("amber", "anchor", "apex", "arbor", "atlas", "aurora", "basil", "beacon", "birch", "bison", "bloom", "breeze",
         "brook", "cactus", "canyon", "cedar", "cinder", "clover", "cobalt", "comet", "coral", "cosmos", "crest",
         "delta", "dune", "ember", "falcon", "fern", "fjord", "flint", "garnet", "glacier", "granite", "grove", "harbor",
         "hazel", "heron", "indigo", "iris", "ivory", "jade", "juniper", "kelp", "lagoon", "lantern", "lark", "ledger",
         "lilac", "linden", "lotus", "lunar", "magnet", "maple", "marble", "meadow", "mesa", "mint", "moss", "nectar",
         "nimbus", "north", "oasis", "olive", "onyx", "opal", "orbit", "orchard", "otter", "pebble", "pepper", "pine",
         "plume", "prism", "quartz", "quill", "raven", "reef", "ridge", "river", "saffron", "sage", "sapphire",
         "sierra", "slate", "solstice", "sparrow", "spruce", "summit", "tango", "thistle", "tidal", "timber", "topaz",
         "tulip", "tundra", "velvet", "vista", "walnut", "willow", "zephyr")
NAMES = ("Amara", "Bastian", "Celine", "Dario", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kaia", "Lorenzo",
         "Mira", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Soren", "Talia", "Ulric", "Vera", "Wendell", "Yara",
         "Zane")
SENTENCES = ("Great team meeting today, thanks everyone.", "Heading out for a long walk by the river.",
             "The new garden beds are finally planted.", "Looking forward to the weekend market.",
             "Finished the quarterly summary ahead of schedule.", "Trying a new recipe for dinner tonight.",
             "The library extended its opening hours.", "Our volunteer cleanup starts at nine.",
             "Just wrapped up a great book on sailing.", "Coffee with an old friend this morning.",
             "The bridge repairs are almost done.", "Practising piano scales every evening.",
             "Please review the draft before Friday.", "The spring fair tickets are now available.",
             "Remember to water the plants on the balcony.", "The museum opens a new exhibit next week.")
_RUN_RE = re.compile(r"[A-Za-z]+|[0-9]+|[^A-Za-z0-9]+")
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


@dataclasses.dataclass(frozen=True)
class Edit:
  old: Any
  new: Any
  in_state: bool  # the old value is an entity of the initial state (renamed there too)


def _fresh_word(rng: np.random.Generator, taken: set[str], length_hint: int) -> str:
  for _ in range(64):
    w = WORDS[int(rng.integers(len(WORDS)))]
    if w not in taken:
      return w
  return f"{WORDS[int(rng.integers(len(WORDS)))]}{int(rng.integers(10, 99))}"


def _fresh_date(old: str, rng: np.random.Generator) -> str | None:
  import datetime  # pylint: disable=g-import-not-at-top
  try:
    d = datetime.date.fromisoformat(old)
  except ValueError:
    return None
  return (d + datetime.timedelta(days=int(rng.integers(1, 120)))).isoformat()


def fresh_string(old: str, rng: np.random.Generator, taken: set[str]) -> str:
  """A new string of the same shape: ISO dates shifted, sentences replaced by sentences, letter runs → words / names
  / capitals, digit runs → digits, separators kept."""
  if _DATE_RE.match(old):
    new = _fresh_date(old, rng)
    if new is not None:
      return new
  if len(old.split()) >= 3:
    options = [x for x in SENTENCES if x not in taken and x != old]
    if options:
      return options[int(rng.integers(len(options)))]
  for _ in range(16):
    parts = []
    runs = _RUN_RE.findall(old)
    is_ext = [i > 0 and runs[i - 1] == "." and i == len(runs) - 1 for i in range(len(runs))]
    for run, ext in zip(runs, is_ext):
      if ext or not run.isalnum():
        parts.append(run)  # separators and file extensions stay
      elif run.isdigit():
        first = str(int(rng.integers(1, 10))) if len(run) > 1 else str(int(rng.integers(0, 10)))
        parts.append(first + "".join(str(int(d)) for d in rng.integers(0, 10, size=len(run) - 1)))
      elif run.isupper() and len(run) <= 5:
        parts.append("".join(chr(ord("A") + int(c)) for c in rng.integers(0, 26, size=len(run))))
      elif run[0].isupper() and run[1:].islower():
        parts.append(NAMES[int(rng.integers(len(NAMES)))])
      elif run.isupper():
        parts.append(_fresh_word(rng, taken, len(run)).upper())
      else:
        parts.append(_fresh_word(rng, taken, len(run)))
    new = "".join(parts)
    if new != old and new not in taken:
      return new
  return f"{old}_{int(rng.integers(100, 999))}"


def fresh_number(old: int | float, rng: np.random.Generator) -> int | float:
  """A different number of the same type and magnitude: ints in [max(1, n/2), 2n], floats ×U[0.5, 1.5] (same decimals)."""
  if isinstance(old, int):
    lo, hi = max(1, old // 2), max(2, old * 2)
    if old < 0:
      lo, hi = old * 2, min(-1, old // 2)
    for _ in range(16):
      new = int(rng.integers(lo, hi + 1))
      if new != old:
        return new
    return old + 1
  text = repr(old)
  decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 2
  for _ in range(16):
    new = round(old * float(rng.uniform(0.5, 1.5)), decimals)
    if new != old:
      return float(new)
  return float(old + 1)


def state_strings(state: Any, depth: int = 0) -> set[str]:
  """Entity-like strings of an initial state ``{class: {attribute: value}}``: dict keys below the attribute level
  (file names, stock symbols, card ids), and string leaves that are not a single alphabetic word (single words such
  as ``Buy`` / ``Open`` / ``economy`` are enum values, not entities)."""
  out: set[str] = set()
  if isinstance(state, dict):
    for k, v in state.items():
      if depth >= 2:
        out.add(str(k))
      out |= state_strings(v, depth + 1)
  elif isinstance(state, list):
    for v in state:
      out |= state_strings(v, depth + 1)
  elif isinstance(state, str) and not state.isalpha():
    out.add(state)
  return out


def state_numbers(state: Any) -> set[float]:
  out: set[float] = set()
  if isinstance(state, dict):
    for v in state.values():
      out |= state_numbers(v)
  elif isinstance(state, list):
    for v in state:
      out |= state_numbers(v)
  elif isinstance(state, (int, float)) and not isinstance(state, bool):
    out.add(float(state))
  return out


def _quoted(text: str, value: str) -> bool:
  return any(f"{q}{value}{q}" in text for q in ("'", '"', "`"))


def value_catalog(tasks: Iterable[Any]) -> dict[tuple[str, str], tuple[Any, ...]]:
  """(function, argument) -> the distinct string values the ground truth of ``tasks`` passes there, sorted.

  Backends with fixed tables (BFCL's cities, airports, stock symbols, travel classes) accept exactly such values, so a
  swap within the catalog gives a new task the backend can still execute.
  """
  out: dict[tuple[str, str], set] = {}
  for task in tasks:
    for turn in task.gt_calls:
      for call in turn:
        for arg, value in call.get("arguments", {}).items():
          if isinstance(value, str) and len(value) >= 2:
            out.setdefault((call["name"], arg), set()).add(value)
  return {k: tuple(sorted(v)) for k, v in out.items()}


def candidate_edits(turns: Sequence[str], initial_state: Mapping[str, Any], sources: Sequence[flow.ArgSource],
                    values: Mapping[tuple[int, str, tuple[int, ...]], Any], blocked: Iterable[str],
                    rng: np.random.Generator, call_names: Sequence[str] = (),
                    catalog: Mapping[tuple[str, str], Sequence[Any]] | None = None) -> list[Edit]:
  """The edits of one plan: every user-stated leaf that names an entity or is a number gets a fresh value.

  A string is an entity if the user quotes it, or it is a key / leaf of the initial state, or (≥ 4 chars) occurs inside
  a state string; it gets a fresh value of the same shape. Other user-stated strings (cities, symbols, options served
  from a backend's fixed tables) are swapped for another value the catalog has seen at the same (function, argument),
  when there is one; otherwise they are left alone.
  """
  text = "\n".join(turns)
  strings = state_strings(initial_state)
  numbers = state_numbers(initial_state)
  blocked = set(blocked)  # repr() of values that must keep the seed's value
  taken = set(strings) | set(text.split())
  edits: dict[str, Edit] = {}
  for src in sources:
    if src.kind != flow.USER:
      continue
    v = values[(src.call, src.arg, src.path)]
    key = repr(v)
    if key in edits or key in blocked:
      continue
    if isinstance(v, str):
      if len(v) < 2 or text.lower().count(v.lower()) != text.count(v):
        continue  # also written in another case ("Zeta" for ZETA): a rename could not update every mention
      in_state = v in strings or (len(v) >= 4 and any(v in s for s in strings))
      entity = in_state or (_quoted(text, v) and not (v.isalpha() and v.islower()))
      if entity:
        new = fresh_string(v, rng, taken)
      else:
        name = call_names[src.call] if src.call < len(call_names) else ""
        options = [o for o in (catalog or {}).get((name, src.arg), ()) if o != v and o.lower() not in text.lower()]
        if not options:
          continue
        new = options[int(rng.integers(len(options)))]
      taken.add(new)
      edits[key] = Edit(v, new, in_state)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      in_state = float(v) in numbers
      if in_state and abs(v) < 100:
        continue  # a small number in the state (a count, a flag, a low id) is too ambiguous to rename there
      edits[key] = Edit(v, fresh_number(v, rng), in_state)
  return list(edits.values())


def _sub_text(text: str, edits: Sequence[Edit]) -> str:
  """Replaces every edit's surface form in text (whole tokens for numbers; longest strings first; one pass)."""
  forms: dict[str, str] = {}
  for e in edits:
    if isinstance(e.old, str):
      forms[e.old] = e.new
    elif isinstance(e.old, int):
      forms[str(e.old)] = str(e.new)
    else:
      forms[repr(e.old)] = repr(e.new)
      if e.old.is_integer():
        forms[str(int(e.old))] = str(int(e.new)) if float(e.new).is_integer() else repr(e.new)
  if not forms:
    return text
  alts = []
  for f in sorted(forms, key=len, reverse=True):
    if f[0].isdigit() or f[0] == "-":
      alts.append(rf"(?<![\w.]){re.escape(f)}(?![\w]|\.\d)")
    elif f[0].isalnum() and f[-1].isalnum():
      alts.append(rf"(?<![A-Za-z0-9_]){re.escape(f)}(?![A-Za-z0-9_])")
    else:
      alts.append(re.escape(f))
  pattern = re.compile("|".join(alts))
  return pattern.sub(lambda m: forms[m.group(0)], text)


def apply_to_state(state: Any, edits: Sequence[Edit]) -> Any:
  """Renames entity edits in keys, exact leaves and inside longer strings; renames id-like numbers in exact leaves."""
  str_edits = [e for e in edits if isinstance(e.old, str) and e.in_state]
  num_edits = {float(e.old): e for e in edits if not isinstance(e.old, str) and e.in_state}

  def rec(x):
    if isinstance(x, dict):
      return {(_sub_text(k, str_edits) if isinstance(k, str) else k): rec(v) for k, v in x.items()}
    if isinstance(x, list):
      return [rec(v) for v in x]
    if isinstance(x, str):
      return _sub_text(x, str_edits)
    if isinstance(x, (int, float)) and not isinstance(x, bool) and float(x) in num_edits:
      new = num_edits[float(x)].new
      return type(x)(new)
    return x

  return rec(state)


def apply_to_value(value: Any, edits: Sequence[Edit]) -> Any:
  """An argument leaf after the edits: exact matches replaced; strings containing an entity renamed inside."""
  for e in edits:
    if flow.same_value(value, e.old) and type(value) is type(e.old):
      return e.new
  if isinstance(value, str):
    return _sub_text(value, [e for e in edits if isinstance(e.old, str)])
  return value


def apply_to_text(text: str, edits: Sequence[Edit]) -> str:
  return _sub_text(text, edits)
