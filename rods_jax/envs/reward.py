"""Per-turn checks and the progress reward (docs/METHOD.md §1), as pure functions over plain Python values."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def multiset_contains(needed: Sequence[str], pool: Sequence[str]) -> bool:
  """True iff every item of ``needed`` occurs in ``pool`` at least as often (multiset inclusion, order ignored).

  needed ⊆ pool  <=>  ∀x: count_needed(x) <= count_pool(x)
  """
  have = Counter(pool)
  for x, n in Counter(needed).items():
    if have[x] < n:
      return False
  return True


def turn_checks(gt_results: Sequence[str], model_results_cumulative: Sequence[str], state_equal: bool,
                n_model_calls_in_turn: int) -> tuple[bool, bool]:
  """(r^state, r^exec) for one closed user turn, BFCL semantics.

  Non-empty ground truth:  r^state = [state_model == state_gt] ,
                           r^exec  = [GT results of the turn ⊆ model results of all turns so far]
                                     ∧ [model called ≥ 1 in the turn].
  Empty ground truth (missing function / parameter): r^state = r^exec = [model made no call in the turn].
  """
  if not gt_results:
    silent = n_model_calls_in_turn == 0
    return silent, silent
  responded = n_model_calls_in_turn > 0 and multiset_contains(gt_results, model_results_cumulative)
  return bool(state_equal), responded


def progress_reward(turn_state: Sequence[bool], turn_exec: Sequence[bool], num_turns: int) -> float:
  """R_P = (1/N) Σ_t r_t^state · r_t^exec with the fixed denominator N = number of user turns.

  ``turn_state``/``turn_exec`` cover the closed turns only; unfinished turns count 0.
  """
  if num_turns <= 0:
    raise ValueError(f"num_turns must be positive, got {num_turns}")
  if len(turn_state) != len(turn_exec) or len(turn_state) > num_turns:
    raise ValueError(f"turn_state ({len(turn_state)}) / turn_exec ({len(turn_exec)}) must have equal length "
                     f"<= num_turns ({num_turns})")
  return sum(1.0 for s, e in zip(turn_state, turn_exec) if s and e) / num_turns
