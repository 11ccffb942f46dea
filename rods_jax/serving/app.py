"""The OpenAI-compatible ASGI app (starlette): ``POST /v1/chat/completions`` (streaming or not) and ``GET /v1/models``.

A request is read with a size limit and read deadlines (a client that stalls in its headers is disconnected, one
that stalls mid-body gets 408), validated
(``protocol``), rendered with the model's chat template (``ChatRenderer``, tools included) in a worker thread, checked
against the KV capacity (prompt + max_tokens, else 400), and queued on the ``BatchScheduler`` (503 when its queue is
full). Replies come from ``responses``. ``serve_in_thread`` runs the app with uvicorn for tests and notebooks.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import AsyncIterator

import jinja2
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from rods_jax.rollout.render import ChatRenderer, is_plain_json
from rods_jax.rollout.sampling import SamplingParams
from rods_jax.serving import protocol, responses
from rods_jax.serving.protocol import ChatRequest, ProtocolError
from rods_jax.serving.scheduler import BatchScheduler, GenRequest, QueueFull


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  """model_name: the id /v1/models reports (and replies carry); capacity: KV slots per row, so a prompt may have at
  most capacity - max_tokens tokens; read_timeout_s: time allowed to send the whole body; protocol: request limits."""
  model_name: str = "rods-jax"
  capacity: int = 4096
  read_timeout_s: float = 30.0
  protocol: protocol.ProtocolConfig = protocol.ProtocolConfig()

  def __post_init__(self):
    if self.capacity <= self.protocol.max_tokens:
      raise ValueError(f"capacity={self.capacity} must exceed max_tokens={self.protocol.max_tokens} (the prompt needs "
                       "room too)")
    if not self.read_timeout_s > 0:
      raise ValueError(f"read_timeout_s={self.read_timeout_s} must be > 0")


def _json(status: int, body: dict) -> Response:
  return Response(responses.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
  return _json(status, responses.error(status, message))


async def _read_body(request: Request, cfg: ServerConfig) -> bytes:
  limit = cfg.protocol.max_body_bytes
  declared = request.headers.get("content-length")
  if declared is not None and (not declared.isdigit() or int(declared) > limit):
    raise ProtocolError(413 if declared.isdigit() else 400,
                        f"Content-Length {declared[:20]!r}: the body must be at most {limit} bytes")

  async def read() -> bytes:
    chunks, size = [], 0
    async for part in request.stream():
      size += len(part)
      if size > limit:
        raise ProtocolError(413, f"request body exceeds {limit} bytes")
      chunks.append(part)
    return b"".join(chunks)

  try:
    return await asyncio.wait_for(read(), cfg.read_timeout_s)
  except asyncio.TimeoutError:
    raise ProtocolError(408, f"the request body did not arrive within {cfg.read_timeout_s} s") from None


def max_token_chars(tokenizer) -> int:
  """An upper bound on the characters one token decodes to: the longest vocabulary entry (a byte-level entry has
  one character per byte, so it is never shorter than its decoded text)."""
  return max(len(t) for t in tokenizer.get_vocab())


def _prompt_ids(renderer: ChatRenderer, lock: threading.Lock, req: ChatRequest, max_chars: int) -> tuple[int, ...]:
  try:
    with lock:  # one render at a time: a tokenizer does not promise thread safety
      text = renderer.render(req.messages, req.tools, generation_prompt=True,
                             plain_tools=req.tools is None or is_plain_json(req.tools))
  except (jinja2.TemplateError, ValueError, TypeError) as e:
    raise ProtocolError(400, f"the chat template cannot render these messages: {type(e).__name__}: "
                             f"{str(e)[:200]}") from None
  if len(text) > max_chars:  # surely too many tokens: refused before tokenizing (its time and memory)
    raise ProtocolError(400, f"the prompt has {len(text)} characters, more than fit in the server's KV capacity "
                             f"(at most {max_chars})")
  with lock:
    return tuple(renderer.encode(text))


def build_app(renderer: ChatRenderer, scheduler: BatchScheduler, cfg: ServerConfig) -> Starlette:
  """The app. ``renderer`` renders prompts with the served model's chat template; ``scheduler`` runs generation."""
  lock = threading.Lock()
  # A normalizer (NFC) can merge a few characters into one before tokenizing, hence the margin.
  max_chars = 4 * cfg.capacity * max_token_chars(renderer.tokenizer)
  created = int(time.time())

  async def models(request: Request) -> Response:
    del request
    return _json(200, responses.models(cfg.model_name, created))

  async def chat_completions(request: Request) -> Response:
    try:
      req = protocol.parse_request(await _read_body(request, cfg), cfg.protocol)
      prompt = await run_in_threadpool(_prompt_ids, renderer, lock, req, max_chars)
      if len(prompt) + req.max_tokens > cfg.capacity:
        raise ProtocolError(400, f"the prompt has {len(prompt)} tokens; with max_tokens={req.max_tokens} that needs "
                                 f"{len(prompt) + req.max_tokens} KV slots and the server has {cfg.capacity}")
    except ProtocolError as e:
      return _error(e.status, e.message)
    gen = GenRequest(req.messages, req.tools, prompt, req.n, SamplingParams(req.temperature, req.top_p),
                     req.max_tokens, req.stop, req.seed, req.stream)
    if req.stream:
      return _stream(req, gen, scheduler, cfg)
    try:
      future = scheduler.submit(gen)
    except QueueFull as e:
      return _error(503, str(e))
    try:
      results = await asyncio.wrap_future(future)
    except Exception as e:  # pylint: disable=broad-except  (the server keeps serving; the client is told why)
      return _error(500, f"generation failed: {type(e).__name__}: {str(e)[:200]}")
    choices = [responses.make_choice(c.text, c.finish_reason, req.tools, req.parse_tools) for c in results]
    usage = responses.usage(len(prompt), sum(len(c.token_ids) for c in results))
    return _json(200, responses.completion(responses.new_id("chatcmpl-"), int(time.time()), cfg.model_name,
                                           choices, usage))

  async def not_found(request: Request, exc) -> Response:
    return _error(getattr(exc, "status_code", 404), f"no route {request.method} {request.url.path}")

  routes = [Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"])]
  app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
  app.state.server_config = cfg  # what uvicorn_config reads (the header deadline)
  return app


def _sse(obj: dict) -> str:
  return f"data: {responses.dumps(obj)}\n\n"


def _stream(req: ChatRequest, gen: GenRequest, scheduler: BatchScheduler, cfg: ServerConfig) -> Response:
  """An SSE reply: a role chunk per choice, content deltas as segments are decoded, the tool calls and finish reason
  of each choice, the usage (``stream_options.include_usage``), then ``data: [DONE]``."""
  loop = asyncio.get_running_loop()
  events: asyncio.Queue = asyncio.Queue()

  def on_text(choice: int, text: str) -> None:  # called in the scheduler's thread
    try:
      loop.call_soon_threadsafe(events.put_nowait, (choice, text))
    except RuntimeError:  # the event loop is closed (server shutting down): no one is listening, the batch goes on
      pass

  try:
    future = scheduler.submit(gen, on_text)
  except QueueFull as e:
    return _error(503, str(e))
  future.add_done_callback(lambda _: loop.call_soon_threadsafe(events.put_nowait, None))
  cid, created, model = responses.new_id("chatcmpl-"), int(time.time()), cfg.model_name
  hold = bool(req.tools) and req.parse_tools

  async def body() -> AsyncIterator[str]:
    streams = [responses.DeltaStream(hold) for _ in range(req.n)]
    for i in range(req.n):
      yield _sse(responses.chunk(cid, created, model, i, {"role": "assistant", "content": ""}, None))
    while (event := await events.get()) is not None:
      delta = streams[event[0]].push(event[1])
      if delta:
        yield _sse(responses.chunk(cid, created, model, event[0], {"content": delta}, None))
    try:
      results = future.result()
    except Exception as e:  # pylint: disable=broad-except
      yield _sse(responses.error(500, f"generation failed: {type(e).__name__}: {str(e)[:200]}"))
      yield "data: [DONE]\n\n"
      return
    for i, c in enumerate(results):
      choice = responses.make_choice(c.text, c.finish_reason, req.tools, req.parse_tools)
      for delta in streams[i].finish(choice, c.text):
        yield _sse(responses.chunk(cid, created, model, i, delta, None))
      yield _sse(responses.chunk(cid, created, model, i, {}, choice.finish_reason))
    if req.include_usage:
      usage = responses.usage(len(gen.prompt_ids), sum(len(c.token_ids) for c in results))
      yield _sse(responses.usage_chunk(cid, created, model, usage))
    yield "data: [DONE]\n\n"

  return StreamingResponse(body(), media_type="text/event-stream")


class ServerHandle:
  """A running uvicorn server: ``url`` is the base URL (``http://host:port/v1``); ``close()`` stops it."""

  def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str):
    self.server, self.thread, self.url = server, thread, url

  def close(self) -> None:
    self.server.should_exit = True
    self.thread.join(timeout=30)


class _HeaderDeadlineH11(H11Protocol):
  """uvicorn's h11 protocol waits for a request's headers without limit (only idle keep-alive connections time out);
  this closes a connection that has not sent a complete first request within ``header_timeout_s``."""
  header_timeout_s = 30.0

  def connection_made(self, transport) -> None:
    super().connection_made(transport)
    self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_overdue)

  def _headers_overdue(self) -> None:
    if self.cycle is None and not self.transport.is_closing():
      self.transport.close()

  def connection_lost(self, exc) -> None:
    self._header_deadline.cancel()
    super().connection_lost(exc)


def uvicorn_config(app: Starlette, host: str, port: int, max_connections: int, backlog: int = 2048) -> uvicorn.Config:
  """uvicorn settings of a ``build_app`` app: bounded connections (503 beyond), a deep listen backlog, the app's
  ``read_timeout_s`` as the deadline for the request headers (the body has its own, in the app), quiet logs."""
  timeout = app.state.server_config.read_timeout_s
  protocol_class = type("HeaderDeadlineH11", (_HeaderDeadlineH11,), {"header_timeout_s": timeout})
  return uvicorn.Config(app, host=host, port=port, http=protocol_class, limit_concurrency=max_connections,
                        backlog=backlog, timeout_keep_alive=5, log_level="warning", lifespan="off")


def serve_in_thread(app: Starlette, host: str = "127.0.0.1", port: int = 0, max_connections: int = 1024
                    ) -> ServerHandle:
  """Runs a ``build_app`` app with uvicorn in a daemon thread and returns once it accepts connections."""
  server = uvicorn.Server(uvicorn_config(app, host, port, max_connections))
  thread = threading.Thread(target=server.run, name="serving-http", daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started:
    if not thread.is_alive() or time.monotonic() > deadline:
      raise RuntimeError(f"the HTTP server did not start on {host}:{port}")
    time.sleep(0.01)
  bound = server.servers[0].sockets[0].getsockname()
  return ServerHandle(server, thread, f"http://{bound[0]}:{bound[1]}/v1")
