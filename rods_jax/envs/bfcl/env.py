"""The BFCL multi-turn environment: worlds, tools per turn, live episodes and offline scoring.

* ``BfclWorld`` — one side (model or ground truth) of an episode: fresh backends (``backends.make_backends``), calls
  through the safe dispatcher, and ``same_state`` = bfcl's own ``state_checker`` (so the state verdict is the official
  one by construction).
* ``tools_at(task, turn)`` — OpenAI-style schemas offered at a turn: every function of the task's classes minus the
  miss_func functions held back until a later turn.
* ``BfclEpisode`` — the live episode: protocol.TurnEpisode (parser, per-turn checks) with BFCL's miss_func message: the
  user message of a turn that releases held-out functions carries their schemas (same OpenAI form as the system
  tools), as BFCL's prompting handler does (``"{functions}\\n" + message``); the system prompt cannot change
  mid-episode under token-in/token-out. ``system_tools()`` also grows at that turn, for renderers that re-send tools.
* ``score(task, calls_per_turn)`` — offline scoring of decoded calls with BFCL semantics: calls go straight to the safe
  dispatcher (name offered at that turn, JSON-literal arguments within ``DispatchLimits``), without the live parser's
  schema typing. BFCL's own executor does not type-check either, and its ground truth relies on that (e.g.
  ``close_ticket(ticket_id='ticket_001')`` against an integer parameter, multi_turn_*_173), so this is what matches the
  official checker.

Per-turn checks (docs/METHOD.md §1, ``envs.reward.turn_checks``): a turn with ground truth passes iff the model
called at least once, the model state equals the GT state after the turn (bfcl ``state_checker``), and the turn's GT
results are a sub-multiset of the model's results of all turns so far (bfcl ``response_checker`` semantics). A turn
with empty GT passes iff the model made no call. R_P has the fixed denominator N (unfinished turns count 0).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rods_jax.envs import parsing, protocol, reward
from rods_jax.envs.bfcl import backends, data
from rods_jax.envs.bfcl.split import split_indices
from rods_jax.envs.task import CATEGORIES, Lineage, Task


def _long_context(task: Task) -> bool:
  return bool(task.meta.get("long_context", task.category == "long_context"))


def held_out_at(task: Task, turn: int) -> frozenset[str]:
  """Functions not yet offered at ``turn`` (released at turn k means offered from turn k on)."""
  return frozenset(name for k, names in task.missing_functions.items() if int(k) > turn for name in names)


def released_at(task: Task, turn: int) -> tuple[str, ...]:
  """Functions first offered at ``turn`` (the miss_func recovery turn), in the task's order."""
  return tuple(task.missing_functions.get(str(turn), ()))


def offered_names(task: Task, turn: int) -> frozenset[str]:
  """Names of the functions offered at ``turn``."""
  hidden = held_out_at(task, turn)
  return frozenset(n for c in task.classes for n in data.function_names(c) if n not in hidden)


def tools_at(task: Task, turn: int) -> list[dict[str, Any]]:
  """OpenAI-style tool schemas offered at ``turn`` (doc order, held-out functions removed)."""
  return data.tool_schemas(task.classes, exclude=held_out_at(task, turn))


class BfclWorld:
  """Live backends of one side of a BFCL episode (implements ``protocol.World``)."""

  def __init__(self, task: Task, limits: backends.DispatchLimits = backends.DispatchLimits()):
    self.backends = backends.make_backends(task.classes, task.initial_state, _long_context(task))
    self._allowed = frozenset(self.backends.owner)
    self._limits = limits

  def execute(self, name: str, arguments: Mapping[str, Any]) -> protocol.ExecResult:
    args = dict(arguments) if isinstance(arguments, Mapping) else arguments
    out = backends.execute_call(self.backends, self._allowed, name, args, self._limits)
    return protocol.ExecResult(out.result, not out.error)

  def same_state(self, other: "BfclWorld") -> bool:
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import state_checker  # pylint: disable=g-import-not-at-top
    return bool(state_checker(self.backends.instances, other.backends.instances)["valid"])


class BfclEpisode(protocol.TurnEpisode):
  """A live BFCL episode; the miss_func recovery turn's user message carries the released tools' schemas."""

  def user_message(self) -> str:
    text = super().user_message()
    new = released_at(self.task, self.turn)
    if not new:
      return text
    schemas = [s for s in tools_at(self.task, self.turn) if parsing.tool_name(s) in new]
    return json.dumps(schemas, ensure_ascii=False) + "\n" + text


def load_tasks(category: str, split: str) -> list[Task]:
  """The 100 tasks of ``category`` in ``split`` ("train" | "test"), by scenario index (see split.py).

  Train tasks have lineage origin "seed", test tasks "test".
  """
  if category not in CATEGORIES:
    raise ValueError(f"category {category!r} not in {CATEGORIES}")
  keep = set(split_indices(split))
  origin = "seed" if split == "train" else "test"
  return [t.replace(lineage=Lineage(origin=origin))
          for t in data.load_all_tasks(category) if t.meta["scenario"] in keep]


def score(task: Task, calls_per_turn: Sequence[Sequence[Mapping[str, Any]]],
          limits: backends.DispatchLimits = backends.DispatchLimits()) -> protocol.EpisodeResult:
  """Scores decoded calls (``calls_per_turn[t]`` = list of ``{"name", "arguments"}``) with BFCL semantics.

  Every turn is checked (no early exit); state is cumulative. ``calls_per_turn`` may be shorter than the task
  (missing turns count 0), never longer. Malformed calls become error results, never exceptions; calls refused
  before reaching a backend (unknown / not offered name, invalid arguments) are counted in ``n_parse_errors``.
  """
  if task.env != data.ENV_NAME:
    raise ValueError(f"task {task.id}: env {task.env!r} is not {data.ENV_NAME!r}")
  if len(calls_per_turn) > task.num_turns:
    raise ValueError(f"task {task.id}: calls_per_turn has {len(calls_per_turn)} turns, the task has {task.num_turns}")
  for t, calls in enumerate(calls_per_turn):
    if not isinstance(calls, (list, tuple)):
      raise ValueError(f"task {task.id}: calls_per_turn[{t}] must be a list of calls, got {type(calls).__name__}")
  model, gt = BfclWorld(task, limits), BfclWorld(task, limits)
  model_results: list[str] = []
  turn_state, turn_exec = [], []
  n_calls = n_errors = n_rejected = 0
  for t, calls in enumerate(calls_per_turn):
    allowed = offered_names(task, t)
    for call in calls:
      name = call.get("name") if isinstance(call, Mapping) else None
      args = call.get("arguments", {}) if isinstance(call, Mapping) else None
      out = backends.execute_call(model.backends, allowed, name, args, limits)
      model_results.append(out.result)
      n_calls += 1
      n_errors += out.error
      n_rejected += out.rejected
    gt_results = [gt.execute(c["name"], c["arguments"]).output for c in task.gt_calls[t]]
    state_equal = model.same_state(gt) if gt_results else True
    s, e = reward.turn_checks(gt_results, model_results, state_equal, len(calls))
    turn_state.append(s)
    turn_exec.append(e)
  progress = reward.progress_reward(turn_state, turn_exec, task.num_turns)
  return protocol.EpisodeResult(turn_state, turn_exec, progress, progress == 1.0, n_calls, n_errors, n_rejected,
                                len(turn_state))


class BfclEnv:
  """The ``bfcl`` environment (implements ``protocol.Environment``); built by ``make(cfg.env)``."""
  name = data.ENV_NAME

  def __init__(self, limits: parsing.Limits, hints: bool, dispatch: backends.DispatchLimits):
    self._limits = limits
    self._hints = hints
    self._dispatch = dispatch

  def load_tasks(self, split: str) -> list[Task]:
    """All 4 categories of ``split`` (400 tasks), category-major."""
    return [t for c in CATEGORIES for t in load_tasks(c, split)]

  def new_world(self, task: Task) -> BfclWorld:
    return BfclWorld(task, self._dispatch)

  def tools_at(self, task: Task, turn: int) -> list[dict[str, Any]]:
    return tools_at(task, turn)

  def function_class(self, name: str) -> str:
    """The API class that owns a BFCL function (names are unique across the 8 classes)."""
    owner = backends.function_owner(data.MULTI_TURN_CLASSES)
    if name not in owner:
      raise KeyError(f"unknown BFCL function {name!r}")
    return owner[name]

  def new_episode(self, task: Task) -> BfclEpisode:
    return BfclEpisode(task, self.new_world, lambda turn: tools_at(task, turn), self._limits, self._hints)

  def score(self, task: Task, calls_per_turn: Sequence[Sequence[Mapping[str, Any]]]) -> protocol.EpisodeResult:
    return score(task, calls_per_turn, self._dispatch)


def make(env_cfg) -> BfclEnv:
  """Builds the environment from ``cfg.env`` (parser limits from the bfcl_* fields, see configs/base.py)."""
  limits = parsing.Limits(
      max_message_chars=int(env_cfg.bfcl_max_message_chars),
      max_calls_per_message=int(env_cfg.max_calls_per_message),
      max_string_len=int(env_cfg.bfcl_max_string_len),
      max_list_items=int(env_cfg.bfcl_max_list_items),
      max_depth=int(env_cfg.bfcl_max_depth))
  for field, value in limits._asdict().items():
    if value <= 0:
      raise ValueError(f"config.env: parser limit {field}={value} must be positive")
  return BfclEnv(limits, bool(env_cfg.error_hints), backends.DispatchLimits())
