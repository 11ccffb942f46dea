"""Chat-completions response bodies: tool calls parsed from the output, completions, stream chunks, errors.

Tool calls are read with the project's own parser (``parsing.parse_assistant``, Qwen/Hermes ``<tool_call>`` blocks,
strict JSON, the names and argument types checked against the request's tools). As vLLM's Hermes parser does, an output
whose blocks do not all parse is returned as plain ``content`` (nothing is dropped) with the finish reason of the
generation. Bodies are JSON with ``ensure_ascii=True``, so no text can fail to encode.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any, NamedTuple, Sequence

from rods_jax.envs import parsing

_BLOCK_RE = re.compile(re.escape(parsing.OPEN) + r".*?" + re.escape(parsing.CLOSE), re.DOTALL)
# Serving limits: far looser than an episode's (those bound what a policy may send to a live backend).
SERVING_LIMITS = parsing.Limits(max_message_chars=1 << 20, max_calls_per_message=64, max_string_len=1 << 16,
                                max_list_items=4096, max_depth=32, max_name_chars=256)


class Choice(NamedTuple):
  """One finished choice: the assistant message fields and why it ended ("stop" | "length" | "tool_calls")."""
  content: str | None
  tool_calls: tuple[dict, ...]
  finish_reason: str


def dumps(obj: Any) -> str:
  return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


def new_id(prefix: str) -> str:
  return f"{prefix}{uuid.uuid4().hex[:24]}"


def split_tool_calls(text: str, tools: Sequence[dict], limits: parsing.Limits = SERVING_LIMITS
                     ) -> tuple[str | None, tuple[dict, ...]]:
  """(content, tool_calls) of an assistant output. tool_calls are OpenAI dicts (``id``, ``type``, ``function`` with
  ``arguments`` as a JSON string); content is the text around the blocks (None if empty), or the whole text when
  there is no call or any block fails to parse."""
  parsed = parsing.parse_assistant(text, tools, limits)
  if parsed.answer is not None or parsed.errors or not parsed.calls:
    return text, ()
  calls = tuple({"id": new_id("call_"), "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                for c in parsed.calls)
  rest = _BLOCK_RE.sub("", text).strip()
  return (rest if rest else None), calls  # OpenAI's content is null, not "", beside tool calls


def make_choice(text: str, finish_reason: str, tools: Sequence[dict] | None, parse_tools: bool) -> Choice:
  """The choice for a finished generation of ``text`` that ended with ``finish_reason`` ("stop" | "length")."""
  if not tools or not parse_tools:
    return Choice(text, (), finish_reason)
  content, calls = split_tool_calls(text, tools)
  return Choice(content, calls, "tool_calls" if calls else finish_reason)


def message(choice: Choice) -> dict:
  out = {"role": "assistant", "content": choice.content}
  if choice.tool_calls:
    out["tool_calls"] = list(choice.tool_calls)
  return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens}


def completion(completion_id: str, created: int, model: str, choices: Sequence[Choice], usage_: dict) -> dict:
  return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
          "choices": [{"index": i, "message": message(c), "logprobs": None, "finish_reason": c.finish_reason}
                      for i, c in enumerate(choices)],
          "usage": usage_}


def chunk(completion_id: str, created: int, model: str, index: int, delta: dict, finish_reason: str | None) -> dict:
  return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
          "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(completion_id: str, created: int, model: str, usage_: dict) -> dict:
  return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
          "choices": [], "usage": usage_}


def tool_call_deltas(calls: Sequence[dict]) -> dict:
  """The streamed delta carrying whole tool calls (each with its ``index``, as OpenAI's incremental format has)."""
  return {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}


def error(status: int, message: str) -> dict:
  kind = "invalid_request_error" if status < 500 else "server_error"
  return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def models(model_name: str, created: int) -> dict:
  return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "rods_jax"}]}


class DeltaStream:
  """Streamed content of one choice from its growing text. With tools, text from the first ``<tool_call>`` on (and a
  trailing partial ``<tool_call`` that may become one) is held back until the end, when ``finish`` decides between
  tool calls and plain content, as the non-streamed reply would."""

  def __init__(self, hold_tool_calls: bool):
    self._hold = hold_tool_calls
    self._sent = 0
    self._holding = False

  def push(self, text: str) -> str:
    """New content to send, given the choice's text so far (a prefix of its final text)."""
    if self._holding:
      return ""
    end = len(text)
    if self._hold:
      at = text.find(parsing.OPEN, self._sent)
      if at >= 0:
        self._holding, end = True, at
      else:
        end = len(text) - _partial_suffix(text, parsing.OPEN)
    out = text[self._sent:end]
    self._sent = max(self._sent, end)
    return out

  def finish(self, choice: Choice, text: str) -> list[dict]:
    """The deltas left to send once the choice is done (content not yet sent, or its tool calls)."""
    if choice.tool_calls:  # the content before the first block has been sent already
      return [tool_call_deltas(choice.tool_calls)]
    tail = text[self._sent:]
    self._sent = len(text)
    return [{"content": tail}] if tail else []


def _partial_suffix(text: str, marker: str) -> int:
  """Length of the longest proper prefix of ``marker`` that ``text`` ends with."""
  for k in range(min(len(marker) - 1, len(text)), 0, -1):
    if text.endswith(marker[:k]):
      return k
  return 0
