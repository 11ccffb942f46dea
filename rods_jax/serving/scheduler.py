"""A batching queue: requests from concurrent clients are collected for a few ms and run as one generator call.

``BatchScheduler(generate, cfg)`` owns one worker thread. ``submit(request, on_text)`` returns a
``concurrent.futures.Future`` of the request's completions, or raises ``QueueFull`` when ``cfg.max_queue`` requests
already wait (the server answers 503). The worker takes the first waiting request, waits up to ``cfg.batch_window_s``
for more, and hands up to ``cfg.max_batch_rows`` rows (a request of ``n`` choices is ``n`` rows) to ``generate`` in
one call, so the sampler sees a batch instead of one request at a time.

``generate(requests, emit) -> list[list[Completion]]`` (one list of ``n`` completions per request, in order); it may
call ``emit(i, choice, text_so_far)`` from the worker thread to stream request ``i``'s partial text.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

from rods_jax.rollout.sampling import SamplingParams


class GenRequest(NamedTuple):
  """One request as the generator sees it.

  Attributes:
    messages, tools: the conversation and tool schemas the prompt was rendered from (a scripted generator reads them).
    prompt_ids: the rendered prompt's ids.
    n: choices.
    sampling: temperature / top_p.
    max_tokens: tokens per choice at most.
    stop: stop strings (the completion ends before the first one).
    seed: None, or decode this request on its own with this seed (same seed and prompt, same completion).
    stream: the caller wants partial text (``emit``).
  """
  messages: tuple[dict, ...]
  tools: tuple[dict, ...] | None
  prompt_ids: tuple[int, ...]
  n: int
  sampling: SamplingParams
  max_tokens: int
  stop: tuple[str, ...]
  seed: int | None
  stream: bool


class Completion(NamedTuple):
  """One generated choice: its sampled ids (all of them, the stop token included), its text, and why it ended."""
  token_ids: tuple[int, ...]
  text: str
  finish_reason: str  # "stop" | "length"


Emit = Callable[[int, int, str], None]  # (request index in the batch, choice, text so far)
OnText = Callable[[int, str], None]  # one request's (choice, text so far)
Generate = Callable[[Sequence[GenRequest], Emit], list[list[Completion]]]


class QueueFull(RuntimeError):
  """The scheduler's queue is full; the request was not taken."""


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  """max_queue: requests waiting at most; batch_window_s: how long the first request waits for company;
  max_batch_rows: rows (choices) per generator call."""
  max_queue: int = 256
  batch_window_s: float = 0.005
  max_batch_rows: int = 16

  def __post_init__(self):
    if self.max_queue < 1 or self.max_batch_rows < 1 or not self.batch_window_s >= 0:
      raise ValueError(f"SchedulerConfig needs max_queue >= 1, max_batch_rows >= 1, batch_window_s >= 0: {self}")


class _Job(NamedTuple):
  request: GenRequest
  on_text: OnText | None
  future: concurrent.futures.Future


class BatchScheduler:
  """Runs ``generate`` on batches of submitted requests in one worker thread (see the module docstring)."""

  def __init__(self, generate: Generate, cfg: SchedulerConfig):
    self._generate = generate
    self._cfg = cfg
    self._jobs: collections.deque[_Job] = collections.deque()
    self._cond = threading.Condition()
    self._closed = False
    # requests per generator call, the most recent 1024 (observability and tests; bounded for a long-lived server)
    self.batches: collections.deque[int] = collections.deque(maxlen=1024)
    self._thread = threading.Thread(target=self._run, name="serving-batcher", daemon=True)
    self._thread.start()

  def submit(self, request: GenRequest, on_text: OnText | None = None) -> concurrent.futures.Future:
    if request.n > self._cfg.max_batch_rows:
      raise ValueError(f"n={request.n} exceeds the scheduler's max_batch_rows={self._cfg.max_batch_rows}")
    future: concurrent.futures.Future = concurrent.futures.Future()
    with self._cond:
      if self._closed:
        raise QueueFull("the server is shutting down")
      if len(self._jobs) >= self._cfg.max_queue:
        raise QueueFull(f"{len(self._jobs)} requests are waiting (the server's max_queue); retry later")
      self._jobs.append(_Job(request, on_text, future))
      self._cond.notify()
    return future

  def close(self) -> None:
    """Stops the worker after the running batch; waiting requests fail with QueueFull."""
    with self._cond:
      self._closed = True
      self._cond.notify()
    self._thread.join(timeout=60)
    while self._jobs:
      self._jobs.popleft().future.set_exception(QueueFull("the server is shutting down"))

  def _take_batch(self) -> list[_Job] | None:
    with self._cond:
      while not self._jobs and not self._closed:
        self._cond.wait()
      if self._closed:
        return None
      deadline = time.monotonic() + self._cfg.batch_window_s
      while self._rows() < self._cfg.max_batch_rows and not self._closed:
        left = deadline - time.monotonic()
        if left <= 0:
          break
        self._cond.wait(left)
      batch, rows = [], 0
      while self._jobs and rows + self._jobs[0].request.n <= self._cfg.max_batch_rows:
        job = self._jobs.popleft()
        batch.append(job)
        rows += job.request.n
      return batch

  def _rows(self) -> int:
    return sum(j.request.n for j in self._jobs)

  def _run(self) -> None:
    while True:
      batch = self._take_batch()
      if batch is None:
        return
      live = [j for j in batch if j.future.set_running_or_notify_cancel()]
      if not live:
        continue
      self.batches.append(len(live))

      def emit(i: int, choice: int, text: str, live=live) -> None:
        if live[i].on_text is not None:
          live[i].on_text(choice, text)

      try:
        results: Any = self._generate([j.request for j in live], emit)
        if len(results) != len(live):
          raise RuntimeError(f"generator returned {len(results)} results for {len(live)} requests")
      except Exception as e:  # pylint: disable=broad-except  (each waiting client gets the error; the worker lives)
        for j in live:
          j.future.set_exception(e)
        continue
      for j, r in zip(live, results):
        j.future.set_result(r)
