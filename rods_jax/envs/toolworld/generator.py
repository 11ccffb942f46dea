"""toolworld task generator: sample a structural profile, then make a task with exactly that profile.

``sample_profile(rng)`` draws a realistic structure (docs/METHOD.md §10: skewed to 3-4 turns and depth 3-4, cross-turn
references, 1-3 calls per turn, at most two API classes). ``generate(profile, rng)`` builds a world, picks literal
arguments valid in the current state, routes every flow edge through the output field of its source call, renders the
user turns (literal values spelled out, flowed values referred to as "the <field>" in the same turn or "that <field>"
in a later one), executes the ground truth, and keeps the task only if the profile measured by ``rods_jax.envs.profile``
on the executed ground truth equals the requested one. ``rerandomize`` re-generates a task's profile in a new world:
same text structure, same functions and flow, new entities and values.

BFCL category semantics: miss_func — the turn before the injection turn asks for something that needs a held-back
function (ground truth []); the injection turn announces the function and its ground truth does the work.
miss_param — the request omits one value (ground truth []), the next turn supplies it. long_context — bigger worlds and
padded outputs.
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any, NamedTuple

from rods_jax.envs import profile as profile_lib
from rods_jax.envs.task import CATEGORIES, Lineage, Task
from rods_jax.envs.toolworld import apis
from rods_jax.envs.toolworld.world import ToolWorld, make_initial_state

GENERATOR_VERSION = 4  # bump when generated tasks change (invalidates split caches)
BASE_TURN_WEIGHTS = {1: 0.08, 2: 0.17, 3: 0.35, 4: 0.30, 5: 0.10}  # base / long_context
MISS_TURN_WEIGHTS = {1: 0.10, 2: 0.25, 3: 0.35, 4: 0.30}  # before the extra abstain turn of miss_func / miss_param
DEPTH_WEIGHTS = {1: 0.08, 2: 0.22, 3: 0.35, 4: 0.35}  # depth-4 requests fail more often, so ask more
CALL_WEIGHTS = {1: 0.45, 2: 0.40, 3: 0.15}
ANSWER = "done."
MISS_FUNC_ANSWER = "no tool for that."
CHAT_TEXT = "thanks, nothing else for now."
# (a, b): b's output merely echoes a value a took or made (the amount of a fresh transfer, the text of a message just
# sent), so the flow heuristic credits a, not b; sample_profile never lets such a b feed a later call.
# Flows that can never execute (a fresh contact has no messages).
NO_FLOW = frozenset({("add_contact", "last_message")})
ECHO = frozenset({("transfer", "tx_amount"), ("send_message", "read_message"), ("send_message", "last_message")})


class InfeasibleProfile(ValueError):
  """The requested profile cannot be realised in toolworld (unknown function, a flow no parameter can take, ...)."""


def class_of(name: str) -> str:
  if name not in apis.BY_NAME:
    raise InfeasibleProfile(f"unknown toolworld function {name!r}")
  return apis.BY_NAME[name].cls


def _weighted(rng: random.Random, weights: dict[int, float]) -> int:
  return rng.choices(list(weights), weights=list(weights.values()))[0]


# (src, dst) function pairs where some output field of src can feed a flow parameter of dst (an immutable table).
FLOW_PAIRS = frozenset((a.name, b.name) for a in apis.FUNCTIONS for b in apis.FUNCTIONS
                       if (a.name, b.name) not in NO_FLOW
                       and any(p.flow and p.kind in a.source_kinds() for p in b.params))


def _can_flow(src: apis.Fn, dst: apis.Fn) -> bool:
  return (src.name, dst.name) in FLOW_PAIRS


# ----------------------------------------------------------------------------------------------------------------------
# plan: which parameter of each call takes which parent's output field

class Slot(NamedTuple):
  parent: int  # flattened call index
  field: str


def plan_flows(fns: Sequence[apis.Fn], edges: Sequence[tuple[int, int]]) -> list[dict[str, Slot]]:
  """Per call, param -> Slot. Deterministic: each parent (ascending) feeds the first free flow param of a kind it
  outputs. Raises InfeasibleProfile when some parent has nothing to feed."""
  plan: list[dict[str, Slot]] = [{} for _ in fns]
  for i, j in sorted(edges, key=lambda e: (e[1], e[0])):
    kinds = fns[i].source_kinds()
    param = next((p for p in fns[j].params if p.flow and p.kind in kinds and p.name not in plan[j]), None)
    if param is None:
      raise InfeasibleProfile(f"{fns[i].name} (call {i}) has no output that {fns[j].name} (call {j}) can take")
    plan[j][param.name] = Slot(i, fns[i].field_for(param.kind))
  return plan


def _unambiguous(fns: Sequence[apis.Fn], plan: Sequence[dict[str, Slot]]) -> bool:
  """No call between a source and its consumer outputs the same field (so "the <field>" names one value)."""
  for j, slots in enumerate(plan):
    for slot in slots.values():
      if any(slot.field in dict(fns[k].sources) for k in range(slot.parent + 1, j)):
        return False
  return True


def _depths(n: int, edges: Sequence[tuple[int, int]]) -> list[int]:
  depth = [1] * n
  for i, j in sorted(edges, key=lambda e: e[1]):
    depth[j] = max(depth[j], depth[i] + 1)
  return depth


# ----------------------------------------------------------------------------------------------------------------------
# sample_profile

def sample_profile(rng: random.Random, category: str | None = None, num_turns: int | None = None,
                   depth: int | None = None, calls_per_turn: Sequence[int] | None = None,
                   classes: Sequence[str] | None = None) -> profile_lib.Profile:
  """A realistic structure (module docstring); any of the arguments pins that part of it.

  Args:
    rng: randomness.
    category: one of CATEGORIES (default: uniform).
    num_turns: user turns, counting the abstain turn of miss categories (base 1-5, miss 2-5).
    depth: dependency depth 1-4.
    calls_per_turn: calls of each turn that has calls (1-3 each; miss categories add one empty turn).
    classes: the API classes to draw functions from (default: the chain's, plus a second one 35 % of the time).
  """
  if category is not None and category not in CATEGORIES:
    raise ValueError(f"category {category!r} not in {CATEGORIES}")
  if classes is not None and (not classes or any(c not in apis.CLASSES for c in classes)):
    raise ValueError(f"classes {classes!r} must be a non-empty subset of {apis.CLASSES}")
  if calls_per_turn is not None and (not calls_per_turn or any(not 1 <= c <= 3 for c in calls_per_turn)):
    raise ValueError(f"calls_per_turn {calls_per_turn!r} must be a non-empty list of 1..3")
  for _ in range(1000):
    cat = category if category is not None else rng.choice(CATEGORIES)
    miss = cat in ("miss_func", "miss_param")
    if calls_per_turn is not None:
      n_base = len(calls_per_turn)
      if num_turns is not None and num_turns != n_base + miss:
        raise ValueError(f"num_turns={num_turns} disagrees with calls_per_turn {list(calls_per_turn)} for {cat}")
    elif num_turns is not None:
      n_base = num_turns - (1 if miss else 0)
    else:
      n_base = _weighted(rng, MISS_TURN_WEIGHTS if miss else BASE_TURN_WEIGHTS)
    if not 1 <= n_base <= (4 if miss else 5):
      raise ValueError(f"{n_base} turns with calls is out of range for category {cat}")
    d = depth if depth is not None else _weighted(rng, DEPTH_WEIGHTS)
    if not 1 <= d <= 4:
      raise ValueError(f"depth={d} must be in 1..4")
    max_calls = sum(calls_per_turn) if calls_per_turn is not None else 3 * n_base
    if d > max_calls:
      if depth is not None and (num_turns is not None or calls_per_turn is not None):
        raise ValueError(f"depth={depth} needs more than {max_calls} calls")
      continue
    if calls_per_turn is not None:
      counts = list(calls_per_turn)
    else:
      counts = [_weighted(rng, CALL_WEIGHTS) for _ in range(n_base)]
      while sum(counts) < d:
        counts[rng.choice([t for t in range(n_base) if counts[t] < 3])] += 1
    prof = _sample_structure(rng, cat, counts, d, classes)
    if prof is not None:
      return prof
  raise RuntimeError(f"could not sample a profile (category={category}, num_turns={num_turns}, depth={depth}, "
                     f"calls_per_turn={calls_per_turn}, classes={classes})")


def _sample_chain(rng: random.Random, d: int, allowed: Sequence[str] | None) -> list[apis.Fn] | None:
  pool = [f for f in apis.FUNCTIONS if allowed is None or f.cls in allowed]
  starts = [f for f in pool if d == 1 or f.sources]
  if not starts:
    return None
  chain = [rng.choice(starts)]
  while len(chain) < d:
    classes = {f.cls for f in chain}
    need_sources = len(chain) < d - 1
    options = [f for f in pool if _can_flow(chain[-1], f) and (f.sources or not need_sources)
               and (allowed is not None or len(classes) < 2 or f.cls in classes) and f not in chain
               and not (need_sources and (chain[-1].name, f.name) in ECHO)]
    if not options:
      return None
    chain.append(rng.choice(options))
  return chain


def _sample_structure(rng: random.Random, cat: str, counts: list[int], d: int,
                      allowed: Sequence[str] | None) -> profile_lib.Profile | None:
  n_calls = sum(counts)
  chain = _sample_chain(rng, d, allowed)
  if chain is None:
    return None
  slots = [None] * n_calls
  positions = sorted(rng.sample(range(n_calls), d))
  for pos, fn in zip(positions, chain):
    slots[pos] = fn
  edges = [(positions[k], positions[k + 1]) for k in range(d - 1)]
  if allowed is not None:
    classes = sorted(set(allowed))
  else:
    classes = sorted({f.cls for f in chain})
    if len(classes) == 1 and rng.random() < 0.35:
      classes.append(rng.choice([c for c in apis.CLASSES if c != classes[0]]))
  pool = [f for f in apis.FUNCTIONS if f.cls in classes]
  for j in range(n_calls):
    if slots[j] is not None:
      continue
    slots[j] = rng.choice(pool)
    if rng.random() < 0.5 and j > 0:
      depth_now = _depths(n_calls, edges)
      echoing = {b for a, b in edges if (slots[a].name, slots[b].name) in ECHO}
      parents = [i for i in range(j) if _can_flow(slots[i], slots[j]) and depth_now[i] + 1 <= d
                 and i not in echoing]
      if parents:
        edges.append((rng.choice(parents), j))
  fns = list(slots)
  try:
    plan = plan_flows(fns, edges)
  except InfeasibleProfile:
    return None
  if not _unambiguous(fns, plan) or max(_depths(n_calls, edges)) != d:
    return None
  turns, k = [], 0
  for c in counts:
    turns.append([f.name for f in fns[k:k + c]])
    k += c
  if cat in ("miss_func", "miss_param"):
    eligible = [t for t in range(len(turns)) if _miss_target(cat, turns, t, fns, plan) is not None]
    if not eligible:
      return None
    t = rng.choice(eligible)
    turns.insert(t, [])
  return profile_lib.build_profile(cat, turns, edges, class_of)


def _miss_target(cat: str, turns: Sequence[Sequence[str]], t: int, fns: Sequence[apis.Fn],
                 plan: Sequence[dict[str, Slot]]) -> tuple[int, str] | None:
  """The (call index, function or param name) made missing in turn t: miss_func -> the first function of turn t not
  called before it; miss_param -> the first literal parameter of turn t's calls. None if there is none."""
  start = sum(len(x) for x in turns[:t])
  if cat == "miss_func":
    before = {f for x in turns[:t] for f in x}
    for k, f in enumerate(turns[t]):
      if f not in before:
        return start + k, f
    return None
  for k in range(len(turns[t])):
    j = start + k
    for p in fns[j].params:
      if p.name not in plan[j]:
        return j, p.name
  return None


# ----------------------------------------------------------------------------------------------------------------------
# generate

def _literal(kind: str, value: Any) -> str:
  return apis.LITERAL.get(kind, "{}").format(value)


def _clause(fn: apis.Fn, args: dict, slots: dict[str, Slot], call_turn: Sequence[int], j: int,
            withheld: str | None = None) -> str:
  phrases = {}
  for p in fn.params:
    if p.name in slots:
      slot = slots[p.name]
      phrases[p.name] = ("the " if call_turn[slot.parent] == call_turn[j] else "that ") + slot.field
    elif p.name == withheld:
      noun = apis.NOUN[p.kind]
      phrases[p.name] = ("an " if noun[0] in "aeiou" else "a ") + noun
    else:
      phrases[p.name] = _literal(p.kind, args[p.name])
  return fn.text.format(**phrases)


def _join(clauses: Sequence[str]) -> str:
  return "; ".join(clauses) + "."


def generate(prof: profile_lib.Profile, rng: random.Random, task_id: str = "tw-gen",
             lineage: Lineage = Lineage(), max_attempts: int = 60) -> Task:
  """A toolworld task whose measured profile equals ``prof`` (raises InfeasibleProfile otherwise)."""
  unknown = [f for f in prof.functions() if f not in apis.BY_NAME]
  if unknown:
    raise InfeasibleProfile(f"unknown toolworld functions {unknown}")
  fns = [apis.BY_NAME[f] for f in prof.functions()]
  if prof.category not in CATEGORIES:
    raise InfeasibleProfile(f"category {prof.category!r} not in {CATEGORIES}")
  plan = plan_flows(fns, prof.edges)
  misses = _miss_plan(prof, fns, plan)
  classes = tuple(sorted({f.cls for f in fns}))
  long_context = prof.category == "long_context"
  for attempt in range(max_attempts):
    world_seed = rng.getrandbits(32)
    task = _attempt(prof, fns, plan, misses, classes, long_context, world_seed, random.Random(rng.getrandbits(32)),
                    task_id, lineage)
    if task is not None:
      return task
  raise InfeasibleProfile(f"no valid task for profile {prof.turns} edges {prof.edges} after {max_attempts} attempts")


def _miss_plan(prof, fns, plan) -> dict[int, tuple[int, str]]:
  """empty turn index -> (call index, missing function / withheld param) for miss categories."""
  misses = {}
  for t, fs in enumerate(prof.turns):
    if fs or prof.category not in ("miss_func", "miss_param"):
      continue
    if t + 1 >= prof.num_turns or not prof.turns[t + 1]:
      continue
    target = _miss_target(prof.category, prof.turns, t + 1, fns, plan)
    if target is None:
      raise InfeasibleProfile(f"turn {t + 1} has nothing to make missing for {prof.category}")
    misses[t] = target
  return misses


def _attempt(prof, fns, plan, misses, classes, long_context, world_seed, rng, task_id, lineage) -> Task | None:
  initial = make_initial_state(classes, random.Random(world_seed), long_context)
  world = ToolWorld(initial, long_context=False)
  call_turn = prof.call_turns()
  args_list, outputs = [], []
  for j, fn in enumerate(fns):
    fixed = {p: json.loads(outputs[s.parent])[s.field] for p, s in plan[j].items()}
    lits = fn.pick(world.state[fn.cls], rng, fixed)
    if lits is None:
      return None
    args = {p.name: (fixed[p.name] if p.name in fixed else lits[p.name]) for p in fn.params}
    res = world.execute(fn.name, args)
    if not res.ok:
      return None
    args_list.append(args)
    outputs.append(res.output)
  # texts and answers per turn
  turn_calls: list[list[int]] = [[] for _ in prof.turns]
  for j, t in enumerate(call_turn):
    turn_calls[t].append(j)
  texts, answers, missing = [], [], {}
  for t, calls in enumerate(turn_calls):
    if calls:
      texts.append(_join([_clause(fns[j], args_list[j], plan[j], call_turn, j) for j in calls]))
      answers.append(ANSWER)
      continue
    if t not in misses:
      texts.append(CHAT_TEXT)
      answers.append(ANSWER)
      continue
    j_miss, what = misses[t]
    nxt = turn_calls[t + 1]
    if prof.category == "miss_func":
      fn = apis.BY_NAME[what]
      texts.append(_join([_clause(fns[j], args_list[j], plan[j], call_turn, j) for j in nxt]))
      answers.append(MISS_FUNC_ANSWER)
      missing[str(t + 1)] = (what,)
    else:
      kind = next(p.kind for p in fns[j_miss].params if p.name == what)
      texts.append(_join([_clause(fns[j], args_list[j], plan[j], call_turn, j, what if j == j_miss else None)
                          for j in nxt]))
      answers.append(f"which {apis.NOUN[kind]}?")
      value = args_list[j_miss][what]
      if any(profile_lib.occurs(value, x) for x in texts):
        return None  # the "missing" value is still spelled out elsewhere in the request
  for t in list(misses):
    j_miss, what = misses[t]
    if prof.category == "miss_func":
      fn = apis.BY_NAME[what]
      texts[t + 1] = f"added tool {fn.name}({', '.join(p.name for p in fn.params)}). what about now?"
    else:
      kind = next(p.kind for p in fns[j_miss].params if p.name == what)
      texts[t + 1] = f"the {apis.NOUN[kind]} is {args_list[j_miss][what]}."
  gt = tuple(tuple({"name": fns[j].name, "arguments": args_list[j]} for j in calls) for calls in turn_calls)
  meta = {"profile": prof.to_dict(), "long_context": long_context, "world_seed": world_seed,
          "answers": answers, "generator_version": GENERATOR_VERSION}
  task = Task(id=task_id, env="toolworld", category=prof.category, classes=classes,
              initial_state=initial, turns=tuple(texts),
              gt_calls=gt, missing_functions=missing, lineage=lineage, meta=meta)
  results = _execute(task)
  if results is None:
    return None
  measured = profile_lib.profile_from_results(task, results, class_of)
  return task if measured == prof else None


def _execute(task: Task) -> list[list[str]] | None:
  """GT outputs of a task on a fresh world (None if any GT call fails)."""
  world = ToolWorld(task.initial_state, long_context=bool(task.meta.get("long_context", False)))
  out = []
  for turn in task.gt_calls:
    row = []
    for c in turn:
      res = world.execute(c["name"], c["arguments"])
      if not res.ok:
        return None
      row.append(res.output)
    out.append(row)
  return out


def rerandomize(task: Task, rng: random.Random) -> Task:
  """Same text structure, functions and flow (the task's profile), new world entities and values; same id/lineage."""
  if "profile" in task.meta:
    prof = profile_lib.Profile.from_dict(task.meta["profile"])
  else:  # e.g. a task made outside the generator: measure its profile from the executed ground truth
    results = _execute(task)
    if results is None:
      raise ValueError(f"task {task.id}: its ground truth does not execute, cannot rerandomize it")
    prof = profile_lib.profile_from_results(task, results, class_of)
  return generate(prof, rng, task_id=task.id, lineage=task.lineage)
