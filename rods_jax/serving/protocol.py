"""The chat-completions request: validation and conversion to a chat-template conversation (pure functions).

``parse_request(body, cfg)`` turns the raw request bytes into a ``ChatRequest`` or raises ``ProtocolError(status,
message)`` with a one-line message. The body is checked before ``json.loads`` sees it: its size, and its nesting depth
(counted with numpy over the bytes outside strings, so a 100k-deep body costs no recursion); lone surrogates
(``"\\udc80"``) anywhere are refused, since they cannot be encoded as UTF-8 (neither by the tokenizer nor in a reply).

Assistant messages with ``tool_calls`` become text in the project's own tool-call format (``parsing.format_call``:
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``), the text a policy trained here samples and the parser
reads back, so any chat template renders them, including ones that know nothing of ``tool_calls``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, NamedTuple

import numpy as np

from rods_jax.envs import parsing

ROLES = ("system", "developer", "user", "assistant", "tool")
# Fields that would change the result and that this server does not implement: refused rather than ignored.
_UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}),
                "frequency_penalty": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0),
                "response_format": (None, {"type": "text"}), "functions": (None,), "function_call": (None,)}
_STRING_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class ProtocolError(ValueError):
  """A request the server refuses: HTTP ``status`` and a one-line ``message`` for the client."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
  """What a request may ask for, and the sampling defaults of fields it leaves out.

  Attributes:
    max_body_bytes: larger bodies get 413.
    max_json_depth: nesting of objects/arrays in the body (and in a tool call's arguments string).
    max_n: choices per request.
    max_tokens: the default and the largest ``max_tokens``.
    temperature, top_p: used when the request omits them.
    max_stop: stop strings per request (OpenAI allows 4).
  """
  max_body_bytes: int = 2 << 20
  max_json_depth: int = 64
  max_n: int = 8
  max_tokens: int = 512
  temperature: float = 1.0
  top_p: float = 1.0
  max_stop: int = 4

  def __post_init__(self):
    for name in ("max_body_bytes", "max_json_depth", "max_n", "max_tokens", "max_stop"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
    if not (math.isfinite(self.temperature) and self.temperature >= 0 and 0 < self.top_p <= 1):
      raise ValueError(f"temperature={self.temperature} must be finite and >= 0, top_p={self.top_p} in (0, 1]")


class ChatRequest(NamedTuple):
  """A validated request. ``messages`` are plain {"role", "content"} dicts for the chat template."""
  model: str
  messages: tuple[dict, ...]
  tools: tuple[dict, ...] | None
  parse_tools: bool  # tool_choice != "none": look for tool calls in the output
  n: int
  temperature: float
  top_p: float
  max_tokens: int
  stop: tuple[str, ...]
  seed: int | None
  stream: bool
  include_usage: bool  # stream_options.include_usage: a last chunk with the usage


def json_depth(raw: bytes) -> int:
  """Largest nesting of ``[``/``{`` in JSON text ``raw`` (brackets inside strings do not count); no recursion."""
  b = np.frombuffer(_STRING_RE.sub(b'""', raw), np.uint8)
  step = ((b == ord("[")) | (b == ord("{"))).astype(np.int32) - ((b == ord("]")) | (b == ord("}")))
  return int(np.max(np.cumsum(step), initial=0))


def _reject_constant(name: str):
  raise ValueError(f"{name} is not valid JSON")


def loads_limited(raw: bytes | str, max_depth: int, what: str) -> Any:
  """``json.loads`` after the depth check; NaN/Infinity refused. Raises ProtocolError(400) naming ``what``."""
  data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
  depth = json_depth(data)
  if depth > max_depth:
    raise ProtocolError(400, f"{what} is nested {depth} levels deep; at most {max_depth} are allowed")
  try:
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
  except (ValueError, UnicodeDecodeError) as e:
    raise ProtocolError(400, f"{what} is not valid JSON: {str(e)[:120]}") from None


def find_surrogate(value: Any) -> str | None:
  """Path of the first string (key or value) holding a lone surrogate, or None. Iterative: any depth."""
  stack = [("body", value)]
  while stack:
    path, v = stack.pop()
    if isinstance(v, str):
      if _SURROGATE_RE.search(v):
        return path
    elif isinstance(v, dict):
      for k, item in v.items():
        if _SURROGATE_RE.search(k):
          return f"{path} (a key)"
        stack.append((f"{path}.{k}", item))
    elif isinstance(v, list):
      stack.extend((f"{path}[{i}]", item) for i, item in enumerate(v))
  return None


def _text(content: Any, where: str, allow_none: bool) -> str:
  """A message content: a string, or a list of {"type": "text", "text": ...} parts (joined)."""
  if content is None and allow_none:
    return ""
  if isinstance(content, str):
    return content
  if isinstance(content, list) and all(
      isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
    return "".join(p["text"] for p in content)
  raise ProtocolError(400, f"{where}.content must be a string or a list of text parts")


def _tool_call_text(call: Any, where: str, max_depth: int) -> str:
  fn = call.get("function") if isinstance(call, dict) else None
  if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
    raise ProtocolError(400, f"{where} must be {{\"type\": \"function\", \"function\": {{\"name\": str, \"arguments\": "
                             "JSON string}}")
  args = loads_limited(fn["arguments"], max_depth, f"{where}.function.arguments")
  if not isinstance(args, dict):
    raise ProtocolError(400, f"{where}.function.arguments must encode a JSON object")
  return parsing.format_call({"name": fn["name"], "arguments": args})


def to_conversation(messages: Any, max_depth: int) -> tuple[dict, ...]:
  """OpenAI messages -> {"role", "content"} dicts for the chat template (``developer`` is rendered as ``system``)."""
  if not isinstance(messages, list) or not messages:
    raise ProtocolError(400, "'messages' must be a non-empty list")
  out = []
  for i, m in enumerate(messages):
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
      raise ProtocolError(400, f"{where} needs a role in {'|'.join(ROLES)}")
    role = "system" if m["role"] == "developer" else m["role"]
    calls = m.get("tool_calls") if role == "assistant" else None
    if calls is not None and (not isinstance(calls, list) or not calls):
      raise ProtocolError(400, f"{where}.tool_calls must be a non-empty list")
    content = _text(m.get("content"), where, allow_none=role == "assistant")
    if calls:
      content += "".join(_tool_call_text(c, f"{where}.tool_calls[{j}]", max_depth) for j, c in enumerate(calls))
    out.append({"role": role, "content": content})
  return tuple(out)


def _tools(tools: Any) -> tuple[dict, ...] | None:
  if tools is None:
    return None
  if not isinstance(tools, list):
    raise ProtocolError(400, "'tools' must be a list")
  for i, t in enumerate(tools):
    fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
      raise ProtocolError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
    if not isinstance(fn.get("parameters", {}), dict):
      raise ProtocolError(400, f"tools[{i}].function.parameters must be a JSON-schema object")
  return tuple(tools) if tools else None


def _number(payload: dict, key: str, default: float, lo: float, hi: float) -> float:
  v = payload.get(key)
  if v is None:
    return default
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
    raise ProtocolError(400, f"'{key}' must be a number in [{lo}, {hi}], got {json.dumps(v)[:40]}")
  return float(v)


def _integer(payload: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
  v = payload.get(key)
  if v is None:
    return default
  if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
    raise ProtocolError(400, f"'{key}' must be an integer in [{lo}, {hi}], got {json.dumps(v)[:40]}")
  return v


def _stop(v: Any, max_stop: int) -> tuple[str, ...]:
  stops = (v,) if isinstance(v, str) else v if v is not None else ()
  if not isinstance(stops, (list, tuple)) or len(stops) > max_stop or not all(isinstance(s, str) and s for s in stops):
    raise ProtocolError(400, f"'stop' must be a non-empty string or a list of at most {max_stop} of them")
  return tuple(stops)


def _parse_tool_choice(v: Any) -> bool:
  if v in (None, "auto"):
    return True
  if v == "none":
    return False
  raise ProtocolError(400, f"tool_choice={json.dumps(v)[:60]} is not supported (use \"auto\" or \"none\")")


def parse_request(body: bytes, cfg: ProtocolConfig) -> ChatRequest:
  """Validates a chat-completions body. Raises ProtocolError (413 too large, 400 anything else)."""
  if len(body) > cfg.max_body_bytes:
    raise ProtocolError(413, f"request body is {len(body)} bytes; at most {cfg.max_body_bytes} are allowed")
  payload = loads_limited(body, cfg.max_json_depth, "request body")
  if not isinstance(payload, dict):
    raise ProtocolError(400, "request body must be a JSON object")
  bad = find_surrogate(payload)
  if bad is not None:
    raise ProtocolError(400, f"{bad} holds a lone UTF-16 surrogate, which is not valid Unicode text")
  for key, allowed in _UNSUPPORTED.items():
    if key in payload and payload[key] not in allowed:
      raise ProtocolError(400, f"'{key}' is not supported by this server")
  model = payload.get("model", "")
  if not isinstance(model, str):
    raise ProtocolError(400, "'model' must be a string")
  stream = payload.get("stream", False)
  options = payload.get("stream_options", {})
  if options is None:  # clients send null for "no options"
    options = {}
  if not isinstance(stream, bool) or not isinstance(options, dict):
    raise ProtocolError(400, "'stream' must be a boolean and 'stream_options' an object")
  return ChatRequest(
      model=model, messages=to_conversation(payload.get("messages"), cfg.max_json_depth),
      tools=_tools(payload.get("tools")), parse_tools=_parse_tool_choice(payload.get("tool_choice")),
      n=_integer(payload, "n", 1, 1, cfg.max_n), temperature=_number(payload, "temperature", cfg.temperature, 0.0, 2.0),
      top_p=_number(payload, "top_p", cfg.top_p, 1e-6, 1.0),
      max_tokens=_integer(payload, "max_completion_tokens", _integer(payload, "max_tokens", cfg.max_tokens, 1,
                                                                     cfg.max_tokens), 1, cfg.max_tokens),
      stop=_stop(payload.get("stop"), cfg.max_stop), seed=_integer(payload, "seed", None, -(2**63), 2**63 - 1),
      stream=stream, include_usage=bool(options.get("include_usage", False)))
