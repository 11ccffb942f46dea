"""BFCL backends per episode, and this project's safe dispatcher.

bfcl's own executor (``execute_multi_turn_func_call``) ``eval``s a rewritten call string and caches instances in its
module globals; it is never given model output here. Instead:

* ``make_backends`` builds fresh backend objects for one episode (``_load_scenario`` on a deep copy of the initial
  state, with the long_context flag), owned by the caller and shared with nobody.
* ``execute_call`` runs one call given as ``name`` + ``arguments`` (already-parsed JSON values): the name must be a
  function offered at that turn (a documented public method; dunder and ``_private`` names can never be offered), the
  arguments a dict of JSON literals within size limits, and the method is called directly with them. Nothing is ever
  turned into a string to evaluate.
* Results are serialised exactly like bfcl does (str as is, dict -> ``json.dumps`` (``str`` if that fails), anything
  else ``str``; an exception -> ``"Error during execution: <msg>"``), so bfcl's response_checker compares like with like.
"""
from __future__ import annotations

import copy
import dataclasses
import decimal
import json
import math
import re
from typing import Any, NamedTuple

from rods_jax.envs.bfcl import data

ERROR_PREFIX = "Error during execution: "
_DUNDER_RE = re.compile(r"__\w+__")


@dataclasses.dataclass(frozen=True)
class DispatchLimits:
  """Bounds on one call's arguments (the parser bounds whole messages; these guard direct ``execute_call`` users).

  Attributes:
    max_argument_chars: length of ``json.dumps(arguments)``; the longest BFCL ground-truth argument is 6,813 chars.
    max_depth: nesting depth of lists/dicts.
    max_abs_number: |x| bound on every number (largest in the BFCL ground truth: 987,654).
    max_precision: bound on a ``precision`` argument (MathAPI sets mpmath/decimal precision from it).
    max_exponent: bound on |exponent| of MathAPI.power (``10 ** 10 ** 9`` would hang the host).
  """
  max_argument_chars: int = 65_536
  max_depth: int = 8
  max_abs_number: float = 1e15
  max_precision: int = 1_000
  max_exponent: float = 10_000


class CallOutcome(NamedTuple):
  """One call: the serialised result the model sees, whether it was an error, and whether it was refused before
  reaching a backend (unknown / not offered name, invalid arguments)."""
  result: str
  error: bool
  rejected: bool = False


@dataclasses.dataclass
class Backends:
  """The live backend objects of one episode (or one side of a check) and who owns which function.

  Attributes:
    instances: class name -> backend object (mutable: calls change it; never shared between episodes).
    owner: documented function name -> class name (the 128 names are unique across the 8 classes).
  """
  instances: dict[str, Any]
  owner: dict[str, str]


def make_backends(classes: tuple[str, ...] | list[str], initial_state: dict[str, Any],
                  long_context: bool) -> Backends:
  """Fresh backend instances, one per class, each loaded from a deep copy of its initial state.

  Mirrors bfcl's executor: stateless classes (MathAPI) get no ``_load_scenario``; a class absent from the initial
  state loads ``{}``.
  """
  from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES  # pylint: disable=g-import-not-at-top
  instances = {}
  for name in classes:
    obj = data.backend_class(name)()
    if name not in STATELESS_CLASSES:
      state = initial_state.get(name, {})
      if not isinstance(state, dict):
        raise ValueError(f"initial_state[{name!r}] must be a dict, got {type(state).__name__}")
      try:
        obj._load_scenario(copy.deepcopy(state), long_context=long_context)  # pylint: disable=protected-access
      except Exception as e:  # pylint: disable=broad-except  (a synthesized state can be malformed in any way)
        raise ValueError(f"initial_state[{name!r}] cannot be loaded by {name}: {type(e).__name__}: {e}") from e
    instances[name] = obj
  return Backends(instances=instances, owner=function_owner(classes))


def function_owner(classes: tuple[str, ...] | list[str]) -> dict[str, str]:
  """Documented function name -> owning class."""
  out = {}
  for c in classes:
    for name in data.function_names(c):
      if name in out:
        raise ValueError(f"function {name!r} is offered by both {out[name]} and {c}")
      out[name] = c
  return out


def serialize_result(value: Any) -> str:
  """bfcl's serialisation (multi_turn_utils.execute_multi_turn_func_call): str kept, dict json.dumps'd, else str."""
  if type(value) == str:  # pylint: disable=unidiomatic-typecheck  (bfcl tests the exact type)
    return value
  if type(value) == dict:  # pylint: disable=unidiomatic-typecheck
    try:
      return json.dumps(value)
    except Exception:  # pylint: disable=broad-except  (bfcl falls back to str on any failure)
      return str(value)
  return str(value)


def is_error_result(value: Any) -> bool:
  """A backend reports a domain error as ``{"error": ...}``."""
  return isinstance(value, dict) and "error" in value


def _check_value(value: Any, limits: DispatchLimits, depth: int, path: str) -> None:
  if depth > limits.max_depth:
    raise ValueError(f"argument {path} nests deeper than {limits.max_depth}")
  if isinstance(value, str):
    if _DUNDER_RE.search(value):
      # Never evaluated here, but a value that spells Python internals is never a legitimate BFCL argument.
      raise ValueError(f"argument {path} contains a Python dunder name")
    return
  if value is None or isinstance(value, bool):
    return
  if isinstance(value, (int, float)):
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"argument {path} is not a finite number")
    if abs(value) > limits.max_abs_number:
      raise ValueError(f"argument {path} exceeds |x| <= {limits.max_abs_number:g}")
    return
  if isinstance(value, list):
    for i, v in enumerate(value):
      _check_value(v, limits, depth + 1, f"{path}[{i}]")
    return
  if isinstance(value, dict):
    for k, v in value.items():
      if not isinstance(k, str) or _DUNDER_RE.search(k):
        raise ValueError(f"argument {path} has an invalid key {str(k)[:40]!r}")
      _check_value(v, limits, depth + 1, f"{path}.{k}")
    return
  raise ValueError(f"argument {path} has type {type(value).__name__}; only JSON literals are accepted")


def validate_arguments(name: str, arguments: Any, limits: DispatchLimits) -> None:
  """Raises ValueError (naming the argument) unless ``arguments`` is a dict of bounded JSON literals."""
  if not isinstance(arguments, dict):
    raise ValueError(f"arguments of {name} must be an object, got {type(arguments).__name__}")
  for key in arguments:
    if not isinstance(key, str) or not key.isidentifier() or key.startswith("_"):
      raise ValueError(f"argument name {key!r} of {name} is not a valid parameter name")
  try:
    size = len(json.dumps(arguments, allow_nan=False))
  except (TypeError, ValueError, RecursionError) as e:
    raise ValueError(f"arguments of {name} are not JSON literals ({type(e).__name__})") from None
  if size > limits.max_argument_chars:
    raise ValueError(f"arguments of {name} are {size} chars, over the limit of {limits.max_argument_chars}")
  for key, value in arguments.items():
    _check_value(value, limits, 1, key)
  precision = arguments.get("precision")
  if isinstance(precision, (int, float)) and abs(precision) > limits.max_precision:
    raise ValueError(f"argument precision of {name} exceeds {limits.max_precision}")
  exponent = arguments.get("exponent")
  if name == "power" and isinstance(exponent, (int, float)) and abs(exponent) > limits.max_exponent:
    raise ValueError(f"argument exponent of power exceeds {limits.max_exponent:g}")


def execute_call(backends: Backends, allowed: frozenset[str] | set[str], name: Any, arguments: Any,
                 limits: DispatchLimits = DispatchLimits()) -> CallOutcome:
  """Executes one call safely; never raises for bad input, never evaluates text.

  ``allowed`` is the set of function names offered at this turn. Any rejection (unknown / not offered / private name,
  bad arguments, an exception inside the backend) becomes an ``"Error during execution: ..."`` observation.
  """
  if not isinstance(name, str) or name not in allowed or name.startswith("_"):
    shown = name[:64] if isinstance(name, str) else repr(type(name).__name__)
    # bfcl's eval reports an unknown name as a NameError with this text.
    return CallOutcome(f"{ERROR_PREFIX}name '{shown}' is not defined", True, True)
  if name not in backends.owner:
    return CallOutcome(f"{ERROR_PREFIX}name '{name}' is not defined", True, True)
  try:
    validate_arguments(name, arguments, limits)
  except (ValueError, TypeError, OverflowError) as e:
    return CallOutcome(f"{ERROR_PREFIX}{e}", True, True)
  method = getattr(backends.instances[backends.owner[name]], name)
  mp_dps = _mpmath_dps()
  try:
    # MathAPI sets decimal/mpmath precision globally; scope it to this call so nothing leaks into the process.
    with decimal.localcontext():
      value = method(**copy.deepcopy(arguments))
      # Serialising can fail too (an int past Python's 4300-digit str limit), so it is inside the guard.
      return CallOutcome(serialize_result(value), is_error_result(value))
  except Exception as e:  # pylint: disable=broad-except  (any backend failure is an observation, as in bfcl)
    return CallOutcome(f"{ERROR_PREFIX}{e}", True)
  finally:
    _restore_mpmath_dps(mp_dps)


def _mpmath_dps() -> int | None:
  try:
    import mpmath  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return mpmath.mp.dps


def _restore_mpmath_dps(dps: int | None) -> None:
  if dps is not None:
    import mpmath  # pylint: disable=g-import-not-at-top
    mpmath.mp.dps = dps


def public_state(instance: Any) -> dict[str, Any]:
  """The part of a backend that bfcl's state_checker compares: every attribute not starting with ``_`` (deep copy)."""
  return copy.deepcopy({k: v for k, v in vars(instance).items() if not k.startswith("_")})
