"""The environment protocol and the generic turn-by-turn episode driver shared by toolworld and bfcl.

An environment supplies three things per task: a ``World`` factory (the live, stateful API backends of one side), the
tool schemas offered at each turn, and the task data. ``TurnEpisode`` does everything else, identically for every
environment: parse an assistant message (``parsing.parse_assistant``), execute the valid calls on the model's world,
and when a user turn closes, execute that turn's ground truth on a separate GT world and run the per-turn checks of
docs/METHOD.md §1 (``reward.turn_checks``). Episodes hold only their own worlds and counters: no module state, cheap to
create, safe to run hundreds at once.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from rods_jax.envs import parsing, reward
from rods_jax.envs.task import Task

KINDS = ("tool", "answer", "error")


class ExecResult(NamedTuple):
  """Output of one executed call: the observation text and whether the backend reported success."""
  output: str
  ok: bool


@runtime_checkable
class World(Protocol):
  """The live API backends of one side (model or ground truth) of an episode."""

  def execute(self, name: str, arguments: Mapping[str, Any]) -> ExecResult:
    """Runs one already-validated call. Must never raise: backend errors come back as ``ExecResult(msg, False)``."""
    ...

  def same_state(self, other: "World") -> bool:
    """True iff the checked (public) state of every class equals ``other``'s."""
    ...


class StepResult(NamedTuple):
  kind: str  # "tool" (>=1 call executed) | "answer" (final answer, closes the turn) | "error" (nothing executed)
  observations: list[str]  # one tool message per attempted call, in order (results and error texts)
  turn_closed: bool
  done: bool


class EpisodeResult(NamedTuple):
  turn_state: list[bool]  # r_t^state of the closed turns
  turn_exec: list[bool]  # r_t^exec of the closed turns
  progress: float  # R_P = (1/N) Σ_t r_t^state r_t^exec, N = task.num_turns (unfinished turns count 0)
  success: bool  # R_P == 1
  n_calls: int  # tool calls attempted (valid or not)
  n_errors: int  # error observations (rejected calls + backend errors)
  n_parse_errors: int  # rejected by the parser (invalid JSON, unknown tool, schema, size, hostile)
  turns_closed: int = 0


@runtime_checkable
class Episode(Protocol):
  turn: int
  done: bool

  def system_tools(self) -> list[dict]: ...
  def user_message(self) -> str: ...
  def step(self, assistant_text: str) -> StepResult: ...
  def force_close_turn(self) -> None: ...
  def result(self) -> EpisodeResult: ...


@runtime_checkable
class Environment(Protocol):
  """What the trainer, evaluator and synthesizer see. ``new_world``/``tools_at`` let shared code (profile Φ,
  synthesis critique) execute ground truth without knowing the environment."""
  name: str

  def load_tasks(self, split: str) -> list[Task]: ...
  def new_episode(self, task: Task) -> Episode: ...
  def score(self, task: Task, calls_per_turn: Sequence[Sequence[Mapping[str, Any]]]) -> EpisodeResult: ...
  def new_world(self, task: Task) -> World: ...
  def tools_at(self, task: Task, turn: int) -> list[dict]: ...
  def function_class(self, name: str) -> str: ...


class TurnEpisode:
  """The generic episode driver (see module docstring). Environments construct it in ``new_episode``.

  Args:
    task: the task.
    new_world: makes a fresh World for the task (called twice: model side and GT side).
    tools_at: turn index -> tool schemas offered at that turn (miss_func holds some back until their turn).
    limits: parser size limits.
    hints: EnvTuning-style actionable hints in error observations.
  """

  def __init__(self, task: Task, new_world: Callable[[Task], World], tools_at: Callable[[int], list[dict]],
               limits: parsing.Limits = parsing.Limits(), hints: bool = False):
    self.task = task
    self._model = new_world(task)
    self._gt = new_world(task)
    self._tools_at = tools_at
    self._limits = limits
    self._hints = hints
    self.turn = 0
    self.done = task.num_turns == 0
    self._tools = tools_at(0) if not self.done else []
    self._tool_index = parsing.tool_index(self._tools)
    self._model_results: list[str] = []  # cumulative over turns (the response check is cumulative)
    self._calls_this_turn = 0
    self._turn_state: list[bool] = []
    self._turn_exec: list[bool] = []
    self._n_calls = 0
    self._n_errors = 0
    self._n_parse_errors = 0

  # --- what the rollout engine reads ---
  def system_tools(self) -> list[dict]:
    """Tool schemas offered at the current turn."""
    return list(self._tools)

  def user_message(self) -> str:
    if self.done:
      raise IndexError(f"task {self.task.id}: episode is done, no user message")
    return self.task.turns[self.turn]

  def step(self, assistant_text: str) -> StepResult:
    """Parses and executes one assistant message. Never raises on any text."""
    if self.done:
      return StepResult("error", ["Error: the episode is over"], False, True)
    parsed = parsing.parse_assistant(assistant_text, self._tool_index, self._limits, self._hints)
    if parsed.answer is not None:
      self._close_turn()
      return StepResult("answer", [], True, self.done)
    observations = []
    executed = 0
    msg_errors = len(parsed.errors) - sum(b.error is not None for b in parsed.blocks)
    observations.extend(parsed.errors[:msg_errors])
    self._n_parse_errors += len(parsed.errors)
    self._n_errors += len(parsed.errors)
    for block in parsed.blocks:
      if block.call is None:
        observations.append(block.error)
        continue
      res = self._run(block.call)
      executed += 1
      observations.append(res.output)
    n = parsed.n_attempted
    self._n_calls += n
    self._calls_this_turn += n
    return StepResult("tool" if executed else "error", observations, False, False)

  def force_close_turn(self) -> None:
    """Closes the current turn without an answer (step limit / truncation); its checks run as usual."""
    if not self.done:
      self._close_turn()

  def result(self) -> EpisodeResult:
    n = self.task.num_turns
    progress = reward.progress_reward(self._turn_state, self._turn_exec, n) if n else 0.0
    return EpisodeResult(list(self._turn_state), list(self._turn_exec), progress, n > 0 and progress == 1.0,
                         self._n_calls, self._n_errors, self._n_parse_errors, len(self._turn_state))

  # --- offline scoring ---
  def submit_calls(self, calls: Sequence[Any]) -> list[str]:
    """Validates and executes decoded calls (``{"name", "arguments"}`` dicts) as one message; returns observations."""
    observations = []
    for obj in calls:
      self._n_calls += 1
      self._calls_this_turn += 1
      res = parsing.validate_call(obj, self._tool_index, self._limits, self._hints)
      if isinstance(res, str):
        self._n_parse_errors += 1
        self._n_errors += 1
        observations.append(res)
      else:
        observations.append(self._run(res).output)
    return observations

  # --- internals ---
  def _run(self, call: parsing.ToolCall) -> ExecResult:
    try:
      res = self._model.execute(call.name, call.arguments)
    except Exception as e:  # a World must not raise; if one does, the episode survives and the call counts as error
      res = ExecResult(f"Error: {call.name} failed ({type(e).__name__})", False)
    if not res.ok:
      self._n_errors += 1
    self._model_results.append(res.output)
    return res

  def _close_turn(self) -> None:
    t = self.turn
    gt_results = [self._gt.execute(c["name"], c.get("arguments", {})).output for c in self.task.gt_calls[t]]
    state_equal = self._model.same_state(self._gt) if gt_results else True
    s, e = reward.turn_checks(gt_results, self._model_results, state_equal, self._calls_this_turn)
    self._turn_state.append(s)
    self._turn_exec.append(e)
    self._calls_this_turn = 0
    self.turn += 1
    if self.turn >= self.task.num_turns:
      self.done = True
      self._tools = []
    else:
      self._tools = self._tools_at(self.turn)
    self._tool_index = parsing.tool_index(self._tools)


def score_calls(episode: TurnEpisode, calls_per_turn: Sequence[Sequence[Any]]) -> EpisodeResult:
  """Offline scoring: feeds ``calls_per_turn[t]`` as turn t's calls, then closes the turn. Missing turns count 0.

  ``calls_per_turn`` longer than the task is an error (the turn count must match the task's).
  """
  task = episode.task
  if len(calls_per_turn) > task.num_turns:
    raise ValueError(f"task {task.id}: calls_per_turn has {len(calls_per_turn)} turns, the task has {task.num_turns}")
  for calls in calls_per_turn:
    episode.submit_calls(list(calls))
    episode.force_close_turn()
  return episode.result()


def execute_ground_truth(env: Environment, task: Task) -> list[list[ExecResult]]:
  """Runs the task's ground truth turn by turn on one fresh world; per turn the results of its calls.

  Used by the structural profile and by the synthesizer's execute/critique stages. Calls are not checked against
  ``tools_at`` here (the synthesizer checks availability separately).
  """
  world = env.new_world(task)
  return [[world.execute(c["name"], c.get("arguments", {})) for c in turn] for turn in task.gt_calls]
