"""OpenAI-compatible chat-completions client (urllib only): how a user plugs in a large generator served by vLLM.

    backend = OpenAIBackend(OpenAIClientConfig(endpoint="http://gen-node:8000/v1", model="Qwen/Qwen3-32B"))

Any HTTP / JSON / protocol problem raises ``SynthesisFailure(backend_error)`` (counted by the pipeline), after
``retries`` retries with exponential backoff for transient errors (connection refused, 429, 5xx).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.error
import urllib.request

from rods_jax.rods.synthesis import failures
from rods_jax.rods.synthesis.backends.chat import ChatBackend


@dataclasses.dataclass(frozen=True)
class OpenAIClientConfig:
  endpoint: str  # base URL including the version prefix, e.g. http://127.0.0.1:8000/v1
  model: str
  temperature: float = 1.0  # paper App. J: temperature 1.0, top_p 0.7
  top_p: float = 0.7
  max_tokens: int = 512
  timeout_s: float = 60.0
  retries: int = 2
  api_key_env: str = ""  # name of an environment variable holding a bearer token ("" = no Authorization header)

  def __post_init__(self):
    if not self.endpoint.startswith(("http://", "https://")):
      raise ValueError(f"synthesis.endpoint must be an http(s) URL, got {self.endpoint!r}")
    if self.max_tokens <= 0:
      raise ValueError(f"synthesis.max_new_tokens must be > 0, got {self.max_tokens}")


def _retryable(e: Exception) -> bool:
  if isinstance(e, urllib.error.HTTPError):
    return e.code == 429 or e.code >= 500
  return isinstance(e, (urllib.error.URLError, TimeoutError, ConnectionError))


def chat_completion(cfg: OpenAIClientConfig, messages: list[dict]) -> str:
  """POST {endpoint}/chat/completions and return ``choices[0].message.content``."""
  body = json.dumps({"model": cfg.model, "messages": messages, "temperature": cfg.temperature, "top_p": cfg.top_p,
                     "max_tokens": cfg.max_tokens, "n": 1, "stream": False}).encode("utf-8")
  headers = {"Content-Type": "application/json", "Accept": "application/json"}
  if cfg.api_key_env:
    key = os.environ.get(cfg.api_key_env, "")
    if key:
      headers["Authorization"] = f"Bearer {key}"
  url = cfg.endpoint.rstrip("/") + "/chat/completions"
  last = None
  for attempt in range(cfg.retries + 1):
    try:
      req = urllib.request.Request(url, data=body, headers=headers, method="POST")
      with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
        payload = json.loads(resp.read().decode("utf-8"))
      break
    except Exception as e:  # classified below; never propagated raw
      last = e
      if attempt < cfg.retries and _retryable(e):
        time.sleep(min(0.25 * 2**attempt, 4.0))
        continue
      raise failures.SynthesisFailure(failures.BACKEND_ERROR, f"POST {url}: {type(e).__name__}: {e}") from e
  else:  # pragma: no cover - the loop always breaks or raises
    raise failures.SynthesisFailure(failures.BACKEND_ERROR, f"POST {url}: {last}")
  try:
    content = payload["choices"][0]["message"]["content"]
  except (KeyError, IndexError, TypeError) as e:
    raise failures.SynthesisFailure(failures.BACKEND_ERROR, f"malformed chat-completions response: {str(payload)[:200]}") from e
  if content is None:
    content = ""
  if not isinstance(content, str):
    raise failures.SynthesisFailure(failures.BACKEND_ERROR, f"message.content is {type(content).__name__}")
  return content


class OpenAIBackend(ChatBackend):
  """ChatBackend over an OpenAI-compatible /chat/completions endpoint."""

  def __init__(self, cfg: OpenAIClientConfig):
    self.cfg = cfg
    super().__init__(lambda messages: chat_completion(cfg, messages))
