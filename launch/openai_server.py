"""A tiny OpenAI-compatible chat-completions server that answers with this project's own sampler.

    python -m launch.openai_server --checkpoint_dir=/ckpt/qwen3-4b --port=8000
    # then: config.synthesis.backend="openai", config.synthesis.endpoint="http://127.0.0.1:8000/v1"

It serves ``POST /v1/chat/completions`` (non-streaming, n=1) and ``GET /v1/models``; the synthesis pipeline's
OpenAI backend talks to it exactly as it would talk to vLLM. ``make_server(complete, ...)`` is importable so tests can
serve any ``complete(messages) -> str`` in a thread. Request sampling parameters are accepted and ignored: decoding
settings are fixed when the server starts (``--temperature``, ``--top_p``, ``--max_new_tokens``).
"""
from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from typing import Callable

MAX_BODY_BYTES = 4 * 1024 * 1024


def _error(handler, code: int, message: str) -> None:
  body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode()
  handler.send_response(code)
  handler.send_header("Content-Type", "application/json")
  handler.send_header("Content-Length", str(len(body)))
  handler.end_headers()
  handler.wfile.write(body)


def _validate_messages(payload) -> list[dict] | str:
  if not isinstance(payload, dict):
    return "request body must be a JSON object"
  messages = payload.get("messages")
  if not isinstance(messages, list) or not messages:
    return "'messages' must be a non-empty list"
  out = []
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
      return f"messages[{i}] needs a role in system|user|assistant|tool"
    if not isinstance(m.get("content"), str):
      return f"messages[{i}].content must be a string"
    out.append({"role": m["role"], "content": m["content"]})
  return out


def make_server(complete: Callable[[list[dict]], str], host: str = "127.0.0.1", port: int = 0,
                model_name: str = "rods-jax") -> http.server.ThreadingHTTPServer:
  """An HTTP server (not yet serving: call ``serve_forever``) answering chat completions with ``complete``."""

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the trainer's logs are elsewhere
      del fmt, args

    def do_GET(self):  # pylint: disable=invalid-name
      if self.path.rstrip("/") != "/v1/models":
        return _error(self, 404, f"no route {self.path}")
      body = json.dumps({"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "rods_jax"}]})
      self._send(200, body.encode())

    def do_POST(self):  # pylint: disable=invalid-name
      if self.path.rstrip("/") != "/v1/chat/completions":
        return _error(self, 404, f"no route {self.path}")
      try:
        length = int(self.headers.get("Content-Length", "0"))
      except ValueError:
        return _error(self, 400, "bad Content-Length")
      if length <= 0 or length > MAX_BODY_BYTES:
        return _error(self, 413 if length > 0 else 400, f"body must be 1..{MAX_BODY_BYTES} bytes")
      try:
        payload = json.loads(self.rfile.read(length).decode("utf-8"))
      except (ValueError, UnicodeDecodeError):
        return _error(self, 400, "body is not valid JSON")
      messages = _validate_messages(payload)
      if isinstance(messages, str):
        return _error(self, 400, messages)
      if payload.get("stream"):
        return _error(self, 400, "stream=true is not supported")
      try:
        text = complete(messages)
      except Exception as e:  # pylint: disable=broad-except  (the server must keep serving)
        return _error(self, 500, f"generation failed: {type(e).__name__}: {e}")
      body = json.dumps({
          "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
          "model": str(payload.get("model", model_name)),
          "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}, ensure_ascii=False)
      self._send(200, body.encode("utf-8"))

    def _send(self, code: int, body: bytes) -> None:
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

  return http.server.ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(complete: Callable[[list[dict]], str], host: str = "127.0.0.1", port: int = 0,
                    model_name: str = "rods-jax") -> tuple[http.server.ThreadingHTTPServer, str]:
  """Starts ``make_server`` in a daemon thread; returns (server, base URL ``http://host:port/v1``)."""
  server = make_server(complete, host, port, model_name)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  h, p = server.server_address[:2]
  return server, f"http://{h}:{p}/v1"


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from rods_jax.rods.synthesis.backends import sampler as sampler_backend  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not f.checkpoint_dir:
    raise SystemExit("--checkpoint_dir is required (a local HF directory: config.json, safetensors, tokenizer)")
  from rods_jax.models import hf_loader  # pylint: disable=g-import-not-at-top
  model, model_cfg = hf_loader.load_hf_checkpoint(f.checkpoint_dir)
  tokenizer = hf_loader.load_tokenizer(f.checkpoint_dir)
  chat = sampler_backend.SamplerChat(model, model_cfg, tokenizer, sampler_backend.SamplerChatConfig(
      max_new_tokens=f.max_new_tokens, capacity=f.capacity, temperature=f.temperature, top_p=f.top_p), seed=f.seed)
  server = make_server(chat, f.host, f.port, f.model_name)
  print(f"serving {f.checkpoint_dir} at http://{f.host}:{server.server_address[1]}/v1", flush=True)
  server.serve_forever()


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint_dir", "", "local HF checkpoint directory")
  flags.DEFINE_string("host", "127.0.0.1", "bind address")
  flags.DEFINE_integer("port", 8000, "port (0 = any free port)")
  flags.DEFINE_string("model_name", "rods-jax", "model id reported by /v1/models")
  flags.DEFINE_integer("max_new_tokens", 512, "tokens per completion")
  flags.DEFINE_integer("capacity", 4096, "KV slots per request (prompt + completion)")
  flags.DEFINE_float("temperature", 1.0, "sampling temperature (0 = greedy)")
  flags.DEFINE_float("top_p", 0.7, "nucleus mass")
  flags.DEFINE_integer("seed", 0, "PRNG seed")
  app.run(main)
