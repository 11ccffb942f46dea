"""BFCL multi-turn tasks, ground truth and function docs, read from the pinned ``bfcl-eval`` wheel.

Nothing here executes anything: the ground-truth call strings are parsed with ``ast`` and their arguments read with
``ast.literal_eval`` (literals only). Positional arguments are named through the backend method's signature, so every
ground-truth call becomes ``{"name": str, "arguments": {param: literal}}``.

The 4 categories (base, miss_func, miss_param, long_context) are perturbations of the same 200 scenarios; the scenario
index is the trailing integer of the id (``multi_turn_miss_param_17`` -> 17).
"""
from __future__ import annotations

import ast
import copy
import functools
import importlib
import importlib.resources
import inspect
import json
from typing import Any

from rods_jax.envs.task import CATEGORIES, Lineage, Task

BFCL_VERSION = "2026.3.23"  # backends changed across releases; scores are only comparable on this version
NUM_SCENARIOS = 200
ENV_NAME = "bfcl"
# bfcl_eval/constants/default_prompts.py: DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC (copied, not imported, so the
# text a task carries does not silently change with the wheel; a test checks it equals the wheel's constant).
MISS_FUNC_MESSAGE = "I have updated some more functions you can choose from. What about now?"

MULTI_TURN_CLASSES = ("GorillaFileSystem", "MathAPI", "MessageAPI", "TwitterAPI", "TicketAPI", "TradingBot",
                      "TravelAPI", "VehicleControlAPI")


def _data_dir():
  return importlib.resources.files("bfcl_eval") / "data"


def _read_jsonl(path) -> list[dict[str, Any]]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _check_category(category: str) -> None:
  if category not in CATEGORIES:
    raise ValueError(f"category {category!r} not in {CATEGORIES}")


def raw_entries(category: str) -> list[dict[str, Any]]:
  """The wheel's question entries of ``multi_turn_<category>`` (JSON Lines), in file order."""
  _check_category(category)
  return _read_jsonl(_data_dir() / f"BFCL_v4_multi_turn_{category}.json")


def raw_ground_truth(category: str) -> dict[str, list[list[str]]]:
  """id -> ground-truth call strings per turn (the official checker's input)."""
  _check_category(category)
  entries = _read_jsonl(_data_dir() / "possible_answer" / f"BFCL_v4_multi_turn_{category}.json")
  return {e["id"]: e["ground_truth"] for e in entries}


def scenario_index(task_id: str) -> int:
  """``multi_turn_<category>_<index>`` -> index."""
  tail = task_id.rsplit("_", 1)[-1]
  if not tail.isdigit():
    raise ValueError(f"BFCL id {task_id!r} does not end in a scenario index")
  return int(tail)


def backend_class(class_name: str) -> type:
  """The executable backend class of an API class (only the 8 multi-turn classes are allowed)."""
  if class_name not in MULTI_TURN_CLASSES:
    raise ValueError(f"API class {class_name!r} is not a BFCL multi-turn class {MULTI_TURN_CLASSES}")
  from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING  # pylint: disable=g-import-not-at-top
  return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)


@functools.cache
def _doc_text(class_name: str) -> str:
  # Cached as an immutable string (the wheel's file); callers always get freshly parsed objects.
  from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING  # pylint: disable=g-import-not-at-top
  path = _data_dir() / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]
  return path.read_text(encoding="utf-8")


def function_docs(class_name: str) -> list[dict[str, Any]]:
  """BFCL's function docs of one class (``{"name", "description", "parameters", "response"}``), fresh copies."""
  if class_name not in MULTI_TURN_CLASSES:
    raise ValueError(f"API class {class_name!r} is not a BFCL multi-turn class {MULTI_TURN_CLASSES}")
  return [json.loads(line) for line in _doc_text(class_name).splitlines() if line.strip()]


@functools.cache
def function_names(class_name: str) -> tuple[str, ...]:
  """The documented (= offered) function names of a class, in doc order (an immutable tuple)."""
  return tuple(d["name"] for d in function_docs(class_name))


def _to_openapi_types(schema: Any, mapping: dict[str, str]) -> Any:
  """Recursively rewrites every ``"type"`` of a Gorilla schema to its OpenAPI name (unknown types -> "string")."""
  if isinstance(schema, list):
    return [_to_openapi_types(s, mapping) for s in schema]
  if not isinstance(schema, dict):
    return schema
  out = {}
  for key, value in schema.items():
    if key == "type" and isinstance(value, str):
      out[key] = mapping.get(value, "string")
    elif key == "properties" and isinstance(value, dict):
      out[key] = {name: _to_openapi_types(sub, mapping) for name, sub in value.items()}
    elif key in ("items", "additionalProperties"):
      out[key] = _to_openapi_types(value, mapping)
    else:
      out[key] = copy.deepcopy(value)
  return out


def openai_tool(doc: dict[str, Any]) -> dict[str, Any]:
  """A BFCL function doc as an OpenAI-style tool ``{"type": "function", "function": {name, description, parameters}}``.

  ``GORILLA_TO_OPENAPI`` (dict -> object, float -> number, ...) is applied to every nested ``type``. The ``response``
  schema is left out (the model learns output shapes from the tool messages).
  """
  from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI  # pylint: disable=g-import-not-at-top
  params = _to_openapi_types(doc["parameters"], GORILLA_TO_OPENAPI)
  params["type"] = "object"
  return {"type": "function",
          "function": {"name": doc["name"], "description": doc["description"], "parameters": params}}


def tool_schemas(classes: tuple[str, ...] | list[str], exclude: frozenset[str] | set[str] = frozenset()
                 ) -> list[dict[str, Any]]:
  """OpenAI-style schemas of every function of ``classes`` except ``exclude`` (held-out functions)."""
  return [openai_tool(d) for c in classes for d in function_docs(c) if d["name"] not in exclude]


def _param_names(classes: tuple[str, ...]) -> dict[str, list[str]]:
  """function name -> positional parameter names of its backend method (to name positional GT arguments)."""
  out = {}
  for c in classes:
    cls = backend_class(c)
    for name in function_names(c):
      params = list(inspect.signature(getattr(cls, name)).parameters)
      out[name] = params[1:]  # drop self
  return out


def parse_call_string(call: str, param_names: dict[str, list[str]]) -> dict[str, Any]:
  """``"mv(source='a', destination='b')"`` -> ``{"name": "mv", "arguments": {"source": "a", "destination": "b"}}``.

  Only a plain call of a known function with literal arguments is accepted (``ast.literal_eval``; nothing runs).
  Positional arguments are named from the backend signature. Tuples become lists (JSON form).
  """
  node = ast.parse(call.strip(), mode="eval").body
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
    raise ValueError(f"ground-truth call {call!r} is not a plain function call")
  name = node.func.id
  if name not in param_names:
    raise ValueError(f"ground-truth call {call!r}: unknown function {name!r}")
  positional = param_names[name]
  if len(node.args) > len(positional):
    raise ValueError(f"ground-truth call {call!r}: {len(node.args)} positional args for {positional}")
  args: dict[str, Any] = {}
  for pname, value in zip(positional, node.args):
    args[pname] = ast.literal_eval(value)
  for kw in node.keywords:
    if kw.arg is None or kw.arg in args:
      raise ValueError(f"ground-truth call {call!r}: bad or repeated keyword {kw.arg!r}")
    args[kw.arg] = ast.literal_eval(kw.value)
  return {"name": name, "arguments": json.loads(json.dumps(args))}


def _fix_early_gt_use(missing: dict[str, tuple[str, ...]], gt: tuple[tuple[dict[str, Any], ...], ...]
                      ) -> tuple[dict[str, tuple[str, ...]], list[str]]:
  """Un-holds a held-out function that the task's own ground truth calls before its release turn.

  BFCL's executor accepts any method at any turn, so such a GT is valid there, but an episode that only accepts the
  functions offered at the turn could never reproduce it. In 2026.3.23 this affects one task (multi_turn_miss_func_49
  calls ``tail`` at turn 1, held back until turn 3); the function is then offered from the start and the change is
  recorded in ``meta["errata"]``.
  """
  errata = []
  fixed = {}
  for k, names in missing.items():
    early = {c["name"] for turn in gt[:int(k)] for c in turn} & set(names)
    for name in sorted(early):
      errata.append(f"{name} is called by the ground truth before its release turn {k}; offered from turn 0")
    fixed[k] = tuple(n for n in names if n not in early)
  return fixed, errata


def entry_to_task(entry: dict[str, Any], ground_truth: list[list[str]], category: str,
                  origin: str = "seed") -> Task:
  """One wheel entry + its ground truth -> Task.

  * turns: the user message of each turn; a miss_func held-out turn (empty in the wheel) gets MISS_FUNC_MESSAGE.
  * missing_functions: the wheel's ``missed_function`` (turn -> names held back until that turn).
  * meta: long_context flag, scenario index, bfcl version and the wheel's ``excluded_function`` (kept for reference;
    BFCL itself never reads it).
  """
  tid = entry["id"]
  classes = tuple(entry["involved_classes"])
  if len(entry["question"]) != len(ground_truth):
    raise ValueError(f"{tid}: {len(entry['question'])} turns but {len(ground_truth)} ground-truth turns")
  missing = {str(k): tuple(v) for k, v in entry.get("missed_function", {}).items()}
  turns = []
  for t, messages in enumerate(entry["question"]):
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if not users:
      if str(t) not in missing:
        raise ValueError(f"{tid}: turn {t} has no user message and is not a missing-function turn")
      turns.append(MISS_FUNC_MESSAGE)
    else:
      turns.append("\n".join(users))
  pnames = _param_names(classes)
  gt = tuple(tuple(parse_call_string(c, pnames) for c in turn) for turn in ground_truth)
  missing, errata = _fix_early_gt_use(missing, gt)
  return Task(
      id=tid, env=ENV_NAME, category=category, classes=classes,
      initial_state=copy.deepcopy(entry.get("initial_config", {})), turns=tuple(turns), gt_calls=gt,
      missing_functions=missing, lineage=Lineage(origin=origin),
      meta={"long_context": category == "long_context", "scenario": scenario_index(tid),
            "bfcl_version": BFCL_VERSION, "excluded_function": list(entry.get("excluded_function", [])),
            "errata": errata})


def load_all_tasks(category: str) -> list[Task]:
  """All 200 tasks of a category, ordered by scenario index."""
  gts = raw_ground_truth(category)
  tasks = [entry_to_task(e, gts[e["id"]], category) for e in raw_entries(category)]
  return sorted(tasks, key=lambda t: t.meta["scenario"])
