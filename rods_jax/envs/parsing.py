"""Tool-call parsing and validation for the Qwen/Hermes format, safe against malformed and hostile model output.

An assistant message is either a final answer (no tool-call markup at all) or one or more blocks
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (text around the blocks is ignored, e.g. a thought).
Every block becomes either a validated ``ToolCall`` or a short error string meant as the policy's observation.

Safety rules (nothing here ever evaluates, formats or imports model text):
* strict JSON (``json.loads``; NaN/Infinity, non-finite floats and duplicate keys are rejected), so values are literals;
* the tool name must be one of the tools offered at this turn; argument names, required arguments and types are
  checked against that tool's JSON schema;
* size limits: characters per message, calls per message, string length, list length, nesting depth;
* strings with Python dunders (``__import__``), format/template fields (``{0.__class__}``, ``{x[0]}``, ``{name}``,
  ``{{config}}``), control characters and lone surrogates (``"\\udc80"``, not UTF-8 encodable) are rejected, so a
  backend that formats or logs a value cannot be steered by it, and every string downstream (tool output, rendered
  chat, tokenizer input, logs) stays valid UTF-8. Other text (even ``open('x', 'w')``) is inert data: it is stored or
  compared, never evaluated.
Error texts quote model text only through ``repr`` of a truncated slice, never through ``str.format``.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK_RE = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)
_DUNDER_RE = re.compile(r"__\w+__|__(import|class|globals|builtins|subclasses|dict|getattr|code)\b")
# A str.format / template field: braces around a space-free name ({0.__class__}, {x[0]}, {}, {cfg}) or Jinja {{...}}.
# Braces around text with spaces ("{experiment: 1}", BFCL scenario 30) are plain text.
_FORMAT_FIELD_RE = re.compile(r"\{[^{}\s]*\}|\{\{[^{}]*\}\}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# JSON's "\udc80" escape decodes to a lone surrogate, which no UTF-8 consumer (tokenizer, log, HTTP reply) accepts:
# rejecting it here, where model text becomes data, keeps every string downstream encodable.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")
# BFCL/Gorilla type names that appear in function docs, mapped to JSON-schema types.
_TYPE_ALIASES = {"dict": "object", "float": "number", "tuple": "array", "list": "array", "bool": "boolean",
                 "any": "any", "int": "integer", "str": "string"}


class Limits(NamedTuple):
  """Size limits on one assistant message (defaults mirror ``cfg.env``)."""
  max_message_chars: int = 2048
  max_calls_per_message: int = 4
  max_string_len: int = 200
  max_list_items: int = 5
  max_depth: int = 3  # nesting of lists/objects inside one argument value (a scalar is depth 0)
  max_name_chars: int = 64

  @classmethod
  def from_config(cls, env_cfg) -> "Limits":
    """Build from ``cfg.env`` (fields max_message_chars, max_calls_per_message, max_string_len, ...)."""
    kw = {}
    for field in cls._fields:
      if field in env_cfg:
        kw[field] = int(env_cfg[field])
        if kw[field] <= 0:
          raise ValueError(f"config.env.{field}={kw[field]} must be positive")
    return cls(**kw)


class ToolCall(NamedTuple):
  name: str
  arguments: dict[str, Any]

  def as_dict(self) -> dict[str, Any]:
    return {"name": self.name, "arguments": dict(self.arguments)}


class Block(NamedTuple):
  """One ``<tool_call>`` block: exactly one of ``call`` / ``error`` is set."""
  call: ToolCall | None
  error: str | None


class Parsed(NamedTuple):
  """Result of parsing one assistant message.

  ``answer`` is the message text when it holds no tool-call markup (a final answer), else None.
  ``blocks`` keeps every attempted call in message order (valid or not); ``calls``/``errors`` are views of it.
  ``errors`` may also hold a message-level error (oversized message, unbalanced tags) with no block.
  """
  calls: tuple[ToolCall, ...]
  answer: str | None
  errors: tuple[str, ...]
  blocks: tuple[Block, ...] = ()

  @property
  def n_attempted(self) -> int:
    """Number of tool calls the model tried to make (valid or not); >=1 whenever the message had call markup."""
    return max(len(self.blocks), 1 if self.answer is None else 0)


def tool_name(schema: Mapping[str, Any]) -> str:
  """Name of an OpenAI-style (``{"type": "function", "function": {...}}``) or bare (``{"name": ...}``) tool."""
  fn = schema.get("function", schema)
  return fn["name"]


def tool_parameters(schema: Mapping[str, Any]) -> Mapping[str, Any]:
  fn = schema.get("function", schema)
  return fn.get("parameters", {}) or {}


def tool_index(tools: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
  """name -> tool schema, from a list of schemas (as ``Episode.system_tools()`` returns) or an existing mapping."""
  if isinstance(tools, Mapping):
    return dict(tools)
  return {tool_name(t): t for t in tools}


def _short(s: Any, n: int = 40) -> str:
  text = s if isinstance(s, str) else type(s).__name__
  return repr(text[:n] + ("..." if len(text) > n else ""))


def _strict_loads(payload: str) -> Any:
  def reject_constant(c):
    raise ValueError(f"non-finite number {c}")

  def finite_float(s):
    v = float(s)
    if not math.isfinite(v):
      raise ValueError("non-finite number")
    return v

  def no_duplicates(pairs):
    d = {}
    for k, v in pairs:
      if k in d:
        raise ValueError(f"duplicate key {_short(k)}")
      d[k] = v
    return d

  return json.loads(payload, parse_constant=reject_constant, parse_float=finite_float,
                    object_pairs_hook=no_duplicates)


def _hostile(s: str) -> str | None:
  if _CONTROL_RE.search(s):
    return "control characters"
  if _SURROGATE_RE.search(s):
    return "a lone surrogate (not valid Unicode text)"
  if _DUNDER_RE.search(s):
    return "a Python dunder name"
  if _FORMAT_FIELD_RE.search(s):
    return "a format field"
  return None


def _check_value(value: Any, spec: Mapping[str, Any], path: str, limits: Limits, depth: int) -> str | None:
  """Type and size check of one argument value against a JSON-schema fragment. Returns an error or None."""
  if depth > limits.max_depth:
    return f"{path} is nested deeper than {limits.max_depth}"
  raw_type = spec.get("type", "any") if isinstance(spec, Mapping) else "any"
  types = raw_type if isinstance(raw_type, list) else [raw_type]
  types = [_TYPE_ALIASES.get(t, t) for t in types]
  if isinstance(value, str):
    if len(value) > limits.max_string_len:
      return f"{path} is longer than {limits.max_string_len} characters"
    bad = _hostile(value)
    if bad:
      return f"{path} contains {bad}"
  elif isinstance(value, list):
    if len(value) > limits.max_list_items:
      return f"{path} has more than {limits.max_list_items} items"
  elif isinstance(value, dict):
    if len(value) > limits.max_list_items * 4:
      return f"{path} has too many keys"
    for k in value:
      if len(k) > limits.max_name_chars or _hostile(k):
        return f"{path} has an invalid key {_short(k)}"
  ok = "any" in types
  for t in types:
    if ok:
      break
    if t == "string":
      ok = isinstance(value, str)
    elif t == "integer":
      ok = isinstance(value, int) and not isinstance(value, bool)
    elif t == "number":
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif t == "boolean":
      ok = isinstance(value, bool)
    elif t == "array":
      ok = isinstance(value, list)
    elif t == "object":
      ok = isinstance(value, dict)
    elif t == "null":
      ok = value is None
    elif t not in _JSON_TYPES:
      ok = True  # an exotic schema type: accept any literal (size checks above still apply)
  if not ok:
    return f"{path} must be of type {'/'.join(str(t) for t in types)}, got {_json_type(value)}"
  enum = spec.get("enum") if isinstance(spec, Mapping) else None
  if enum is not None and value not in enum:
    return f"{path} must be one of {list(enum)[:8]}"
  if isinstance(value, list):
    item_spec = spec.get("items", {}) if isinstance(spec, Mapping) else {}
    for i, item in enumerate(value):
      err = _check_value(item, item_spec, f"{path}[{i}]", limits, depth + 1)
      if err:
        return err
  elif isinstance(value, dict):
    props = spec.get("properties", {}) if isinstance(spec, Mapping) else {}
    for k, item in value.items():
      err = _check_value(item, props.get(k, {}), f"{path}.{k}", limits, depth + 1)
      if err:
        return err
  return None


def _json_type(v: Any) -> str:
  if isinstance(v, bool):
    return "boolean"
  if isinstance(v, int):
    return "integer"
  if isinstance(v, float):
    return "number"
  if isinstance(v, str):
    return "string"
  if isinstance(v, list):
    return "array"
  if isinstance(v, dict):
    return "object"
  return "null" if v is None else type(v).__name__


def _signature(schema: Mapping[str, Any]) -> str:
  params = tool_parameters(schema)
  props = params.get("properties", {})
  req = set(params.get("required", []))
  args = ", ".join(f"{k}{'' if k in req else '?'}: {_TYPE_ALIASES.get(v.get('type', 'any'), v.get('type', 'any'))}"
                   for k, v in props.items())
  return f"{tool_name(schema)}({args})"


def validate_call(obj: Any, tools: Mapping[str, Mapping[str, Any]], limits: Limits,
                  hints: bool = False) -> ToolCall | str:
  """Checks a decoded call ``{"name": str, "arguments": dict}`` against the offered tools.

  Returns the ``ToolCall`` or an error string (prefixed ``Error:``). Never raises on any input.
  """
  try:
    return _validate(obj, tools, limits, hints)
  except Exception as e:  # defensive: validation must never take the episode down
    return f"Error: invalid tool call ({type(e).__name__})"


def _validate(obj: Any, tools: Mapping[str, Mapping[str, Any]], limits: Limits, hints: bool) -> ToolCall | str:
  fmt_hint = ' Use {"name": "<tool>", "arguments": {...}}.' if hints else ""
  if not isinstance(obj, dict):
    return f"Error: a tool call must be a JSON object, got {_json_type(obj)}.{fmt_hint}"
  extra = set(obj) - {"name", "arguments"}
  if extra:
    return f"Error: unexpected key {_short(sorted(extra)[0])} in tool call.{fmt_hint}"
  name = obj.get("name")
  if not isinstance(name, str):
    return f"Error: tool call needs a string 'name'.{fmt_hint}"
  if name not in tools:
    hint = f" Available: {', '.join(sorted(tools))}." if hints else ""
    return f"Error: unknown tool {_short(name)}.{hint}"
  schema = tools[name]
  sig = f" Signature: {_signature(schema)}." if hints else ""
  args = obj.get("arguments", {})
  if not isinstance(args, dict):
    return f"Error: {name}: 'arguments' must be an object, got {_json_type(args)}.{sig}"
  params = tool_parameters(schema)
  props = params.get("properties", {})
  for k in args:
    if k not in props:
      return f"Error: {name}: unexpected argument {_short(k)}.{sig}"
  for k in params.get("required", []):
    if k not in args:
      return f"Error: {name}: missing required argument {k!r}.{sig}"
  for k, v in args.items():
    err = _check_value(v, props[k], k, limits, 0)
    if err:
      return f"Error: {name}: {err}.{sig}"
  return ToolCall(name, dict(args))


def parse_assistant(text: Any, allowed: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
                    limits: Limits = Limits(), hints: bool = False) -> Parsed:
  """Parses one assistant message against the tools offered at this turn. Never raises, never executes.

  Args:
    text: the raw assistant text (anything; non-strings become a message-level error).
    allowed: the tool schemas offered at this turn (list of OpenAI-style schemas, or name -> schema).
    limits: size limits.
    hints: add actionable hints (available tools, the signature, the expected format) to error messages.

  Returns:
    Parsed(calls, answer, errors, blocks). No markup -> ``answer`` is the text. Markup -> one block per
    ``<tool_call>...</tool_call>`` plus a message-level error for dangling or unbalanced tags.
  """
  try:
    tools = tool_index(allowed)
  except Exception:
    tools = {}
  try:
    return _parse(text, tools, limits, hints)
  except Exception as e:  # defensive: a parser bug must surface as a policy error, not a crashed rollout
    return Parsed((), None, (f"Error: could not parse the message ({type(e).__name__})",), ())


def _parse(text: Any, tools: Mapping[str, Mapping[str, Any]], limits: Limits, hints: bool) -> Parsed:
  if not isinstance(text, str):
    return Parsed((), None, ("Error: the message is not text",), ())
  if OPEN not in text and CLOSE not in text:
    return Parsed((), text, (), ())
  fmt = ' Format: <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>' if hints else ""
  if len(text) > limits.max_message_chars:
    return Parsed((), None, (f"Error: message longer than {limits.max_message_chars} characters",), ())
  payloads = _BLOCK_RE.findall(text)
  rest = _BLOCK_RE.sub("", text)
  msg_errors = []
  if OPEN in rest or CLOSE in rest:
    msg_errors.append(f"Error: unbalanced <tool_call> tags.{fmt}")
  blocks = []
  for i, payload in enumerate(payloads):
    if i >= limits.max_calls_per_message:
      blocks.append(Block(None, f"Error: too many calls in one message (at most {limits.max_calls_per_message})"))
      continue
    if OPEN in payload:
      blocks.append(Block(None, f"Error: nested <tool_call> tag.{fmt}"))
      continue
    try:
      obj = _strict_loads(payload.strip())
    except Exception as e:
      detail = str(e).split(":")[0][:60] if isinstance(e, (ValueError, RecursionError)) else type(e).__name__
      blocks.append(Block(None, f"Error: invalid JSON in tool call ({detail}).{fmt}"))
      continue
    res = validate_call(obj, tools, limits, hints)
    blocks.append(Block(res, None) if isinstance(res, ToolCall) else Block(None, res))
  calls = tuple(b.call for b in blocks if b.call is not None)
  errors = tuple(msg_errors) + tuple(b.error for b in blocks if b.error is not None)
  return Parsed(calls, None, errors, tuple(blocks))


def format_call(call: ToolCall | Mapping[str, Any], compact: bool = False) -> str:
  """The tool-call text of a call, arguments in their given order: Qwen style ``{"name": ..., "arguments": {...}}``,
  or without spaces when ``compact`` (the CPU lab's gold format, fewer tokens)."""
  if isinstance(call, ToolCall):
    call = call.as_dict()
  body = json.dumps({"name": call["name"], "arguments": call.get("arguments", {})},
                    ensure_ascii=False, separators=(",", ":") if compact else (", ", ": "))
  return f"{OPEN}{body}{CLOSE}"
