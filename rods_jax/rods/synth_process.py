"""The asynchronous synthesizer: a worker loop (in its own process or host) and the trainer-side client.

The worker takes seed requests, runs ``synth_fn(seed_task, rng)`` (the synthesis pipeline, or anything with the
same shape: it returns an object with ``.task`` (Task | None) and ``.failure``) and puts the outcome, a numpy record,
on the result channel. The trainer never blocks on it: ``SynthClient.poll()`` drains whatever is ready and reports
the time draining took and the worker seconds the trainer would have waited had synthesis been synchronous.

``synth_factory`` is a picklable zero-argument callable that builds ``synth_fn`` inside the worker (spawn context:
nothing heavy is pickled, and the worker never inherits the trainer's JAX state).

``synthesis.lag_steps`` = L >= 0 makes arrival independent of timing: the poll of step s returns exactly the outcomes
of the requests submitted up to step s - L (waiting for any still missing, holding back any that came early), in
request order. L = -1 returns whatever is ready. The client's checkpointed state holds every request not yet
returned (waiting, in flight, or held back), so a resumed run re-submits them instead of losing them.
"""
from __future__ import annotations

import dataclasses
import functools
import multiprocessing as mp
import os
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from rods_jax.envs.task import Task
from rods_jax.rods.queues import (DirExchange, LocalRequestQueue, Outcome, QueueChannel, Request,
                                  outcome_from_tuple)

SynthFn = Callable[[Task, np.random.Generator], Any]
MODES = ("synthesize", "perturb")


# ---------------------------------------------------------------------------------------------- worker
def process_request(synth_fn: SynthFn, req: Request, seed: int) -> Outcome:
  """Runs one request. Never raises: an exception becomes a ``pipeline_exception`` failure."""
  t0 = time.perf_counter()
  seed_id = ""
  try:
    seed_task = Task.from_record(req.record)
    seed_id = seed_task.id
    rng = np.random.default_rng([int(seed), int(req.request_id)])  # deterministic per request
    result = synth_fn(seed_task, rng)
    task = getattr(result, "task", None)
    if task is not None:
      return Outcome(req.request_id, seed_id, task.to_record(), "", time.perf_counter() - t0)
    failure = getattr(result, "failure", None)
    failure = getattr(failure, "kind", failure)  # a SynthesisFailure or its kind string
    return Outcome(req.request_id, seed_id, None, str(failure or "unknown"), time.perf_counter() - t0)
  except Exception as e:  # pylint: disable=broad-except  # the worker must outlive a bad seed
    return Outcome(req.request_id, seed_id, None, f"pipeline_exception:{type(e).__name__}",
                   time.perf_counter() - t0)


def run_worker(channel, synth_factory: Callable[[], SynthFn], seed: int, stop=None,
               max_requests: int | None = None, idle_timeout_s: float | None = None) -> int:
  """The worker loop over a channel (``QueueChannel`` or ``DirExchange``). Returns the number of requests served.

  Args:
    channel: where requests come from and outcomes go.
    synth_factory: builds the synthesize function once, in this process.
    seed: base of the per-request RNG (``default_rng([seed, request_id])``).
    stop: an Event; the loop ends when it is set. None = run until max_requests / idle_timeout_s.
    max_requests: stop after serving this many (None = no limit).
    idle_timeout_s: stop after this long without a request (None = wait forever).
  """
  stop = stop if stop is not None else _NeverSet()
  synth_fn = synth_factory()
  served, idle_since = 0, time.monotonic()
  while not stop.is_set() and (max_requests is None or served < max_requests):
    req = channel.get_request(timeout=0.2)
    if req is None:
      if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
        break
      continue
    outcome = process_request(synth_fn, req, seed)
    if not channel.put_result(outcome, stop):
      break
    served += 1
    idle_since = time.monotonic()
  return served


def _text(record: np.ndarray) -> str:
  """A task record (UTF-8 JSON bytes) as the string it encodes, for the JSON checkpoint."""
  return record.tobytes().decode("utf-8")


def _record(text: str | None) -> np.ndarray | None:
  return None if text is None else np.frombuffer(text.encode("utf-8"), np.uint8).copy()


class _NeverSet:
  def is_set(self) -> bool:
    return False


def exit_with_parent(parent_pid: int, period_s: float = 0.25) -> threading.Thread:
  """Ends this process (``os._exit``) within ``period_s`` of the process ``parent_pid`` dying, from a daemon thread,
  so it fires even while synthesis is busy. A trainer killed with SIGKILL runs no cleanup; without this its worker
  (and, through the pipe the worker inherits, the multiprocessing resource tracker) would live on under PID 1.
  Polling the parent pid rather than ``prctl(PR_SET_PDEATHSIG)``: that signal fires when the spawning *thread* ends,
  which would kill a healthy worker started from a short-lived thread."""

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(period_s)
    os._exit(0)  # pylint: disable=protected-access  # nobody is left to read results: no flushing, no cleanup

  thread = threading.Thread(target=watch, daemon=True, name="rods-parent-watch")
  thread.start()
  return thread


def _process_main(request_q, result_q, stop, synth_factory, seed, parent_pid):
  exit_with_parent(parent_pid)
  try:
    run_worker(QueueChannel(request_q, result_q), synth_factory, seed, stop)
  finally:
    # On stop, do not hang at exit flushing results nobody will read.
    result_q.cancel_join_thread()


def _exchange_main(root, request_limit, result_limit, stop, synth_factory, seed, parent_pid):
  exit_with_parent(parent_pid)
  run_worker(DirExchange(root, request_limit, result_limit), synth_factory, seed, stop)


# ---------------------------------------------------------------------------------------------- factories
def build_pipeline(env_name: str, env_cfg: dict, synthesis_cfg: dict, mode: str) -> SynthFn:
  """The real synthesize function: ``Synthesizer(env, backend, cfg.synthesis)`` from rods_jax.rods.synthesis.

  ``mode="perturb"`` (env_augment arm) asks the synthesizer for a uniform structure-preserving perturbation.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from rods_jax import envs  # pylint: disable=g-import-not-at-top
  from rods_jax.rods import synthesis  # pylint: disable=g-import-not-at-top
  if mode not in MODES:
    raise ValueError(f"synthesis mode {mode!r} not in {MODES}")
  ecfg = ml_collections.ConfigDict(env_cfg)
  scfg = ml_collections.ConfigDict(synthesis_cfg)
  env = envs.make_env(env_name, ecfg)
  backend = synthesis.make_backend(scfg)
  synth = synthesis.Synthesizer(env, backend, scfg)
  return synth.perturb if mode == "perturb" else synth.synthesize


def pipeline_factory(config, mode: str = "synthesize") -> Callable[[], SynthFn]:
  """A picklable factory for ``build_pipeline`` from the run config."""
  return functools.partial(build_pipeline, str(config.env.name), config.env.to_dict(), config.synthesis.to_dict(),
                           mode)


# ---------------------------------------------------------------------------------------------- client
class Poll(NamedTuple):
  outcomes: list[Outcome]
  drain_s: float  # trainer time spent draining (and restarting, if it had to)
  would_wait_s: float  # worker seconds behind these outcomes: the wait a synchronous synthesizer would have cost


@dataclasses.dataclass
class ClientStats:
  submitted: int = 0
  dropped: int = 0  # requests dropped by overflow (oldest first)
  restarts: int = 0
  received: int = 0


class SynthClient:
  """Trainer side. ``process=True``: a spawned worker over multiprocessing queues (restarted if it dies);
  ``exchange_dir``: requests/results through a directory (a stand-alone ``launch.synthesize`` serves it; with
  ``process=True`` a local worker is spawned on it too); ``process=False`` and no directory: synthesize inline in
  ``poll()`` (debugging; the trainer then does wait, and the time is measured).
  """

  def __init__(self, synth_factory: Callable[[], SynthFn], synthesis_cfg, seed: int, mode: str = "synthesize"):
    if mode not in MODES:
      raise ValueError(f"synthesis mode {mode!r} not in {MODES}")
    self._factory = synth_factory
    self._seed = int(seed)
    self._mode = mode
    self._process = bool(synthesis_cfg.process)
    self._exchange_dir = str(synthesis_cfg.exchange_dir)
    self._result_size = int(synthesis_cfg.result_queue_size)
    if self._result_size < 1:
      raise ValueError(f"config.synthesis.result_queue_size must be >= 1, got {self._result_size}")
    self._pending = LocalRequestQueue(int(synthesis_cfg.request_queue_size))
    # Requests handed to the worker at once (it works through them between polls); the rest wait in the trainer's
    # drop-oldest queue, so stale seeds are the ones dropped when the worker falls behind.
    self._window = max(2, int(synthesis_cfg.request_queue_size) // 2)
    self._in_flight: dict[int, Request] = {}
    self._next_id = 0
    self._lag = int(synthesis_cfg.lag_steps)
    if self._lag < -1:
      raise ValueError(f"config.synthesis.lag_steps must be >= -1, got {self._lag}")
    if self._lag >= 0 and self._exchange_dir:
      raise ValueError("config.synthesis.lag_steps >= 0 needs the local worker (synthesis.exchange_dir='')")
    self._marks: list[int] = []  # next request id at each of the last lag_steps + 1 polls
    self._held: dict[int, Outcome] = {}  # arrived before their poll (lag_steps >= 0)
    self.stats = ClientStats()
    self._ctx = mp.get_context("spawn")
    self._proc = None
    self._inline_fn: SynthFn | None = None
    self._exchange = (DirExchange(self._exchange_dir, int(synthesis_cfg.request_queue_size), self._result_size)
                      if self._exchange_dir else None)
    if self._process:
      self._start()

  # -- process management
  def _start(self) -> None:
    self._stop = self._ctx.Event()
    if self._exchange is not None:
      args = (self._exchange.root, self._exchange.request_limit, self._exchange.result_limit, self._stop,
              self._factory, self._seed, os.getpid())
      target = _exchange_main
    else:
      # Fresh queues on every start: a killed worker may have died holding a queue's lock.
      self._req_q = self._ctx.Queue(maxsize=self._window + 1)
      self._res_q = self._ctx.Queue(maxsize=self._result_size)
      args = (self._req_q, self._res_q, self._stop, self._factory, self._seed, os.getpid())
      target = _process_main
    self._proc = self._ctx.Process(target=target, args=args, daemon=True, name="rods-synthesizer")
    self._proc.start()

  @property
  def pid(self) -> int | None:
    return self._proc.pid if self._proc is not None else None

  def alive(self) -> bool:
    return self._proc is not None and self._proc.is_alive()

  def ensure_alive(self) -> bool:
    """Restarts a dead worker. Requests it held go back to the front of the queue. True if it restarted."""
    if not self._process or self.alive():
      return False
    if self._exchange is None:
      self._pending.push_front([self._in_flight[k] for k in sorted(self._in_flight)])
      self._in_flight.clear()
    self.stats.restarts += 1
    self._start()
    return True

  # -- requests and results
  def submit(self, seed_tasks: Sequence[Task]) -> int:
    """Queues seed requests without waiting. Returns how many old requests overflow dropped."""
    dropped = 0
    for t in seed_tasks:
      req = Request(self._next_id, t.to_record(), self._mode)
      self._next_id += 1
      self.stats.submitted += 1
      if self._exchange is not None:
        dropped += self._exchange.put_request(req)
      else:
        dropped += self._pending.put(req)
    self.stats.dropped += dropped
    return dropped

  def poll(self) -> Poll:
    """Drains ready outcomes and feeds the worker. With ``lag_steps`` = -1 it never waits for synthesis (except in
    inline mode); with L >= 0 it returns the outcomes of the requests submitted up to L polls ago (module doc)."""
    t0 = time.perf_counter()
    if self._lag < 0:
      outs = self._receive()
    else:
      self._marks = (self._marks + [self._next_id])[-(self._lag + 1):]
      due = self._marks[0] if len(self._marks) == self._lag + 1 else 0
      for o in self._receive():
        self._held[o.request_id] = o
      while any(rid < due for rid in self._waiting_ids()):
        time.sleep(0.005)  # the worker is behind: this wait is the synchronous cost, measured in drain_s
        for o in self._receive():
          self._held[o.request_id] = o
      outs = [self._held.pop(rid) for rid in sorted(self._held) if rid < due]
    self.stats.received += len(outs)
    return Poll(outcomes=outs, drain_s=time.perf_counter() - t0, would_wait_s=float(sum(o.seconds for o in outs)))

  def _waiting_ids(self) -> list[int]:
    """Ids of the requests without an outcome yet: in flight on the worker, or waiting in the trainer's queue."""
    return [*self._in_flight, *(r.request_id for r in self._pending.requests())]

  def _receive(self) -> list[Outcome]:
    """Whatever outcomes are ready now (restarting a dead worker first)."""
    self.ensure_alive()
    if self._exchange is not None:
      return self._exchange.drain_results()
    if not self._process:
      return self._run_inline()
    outs = []
    while True:
      try:
        item = self._res_q.get_nowait()
      except Exception:  # pylint: disable=broad-except  # queue.Empty, or a broken pipe from a dead worker
        break
      outs.append(outcome_from_tuple(item))
    for o in outs:
      self._in_flight.pop(o.request_id, None)
    self._feed()
    return outs

  def _feed(self) -> None:
    while len(self._in_flight) < self._window and len(self._pending):
      req = self._pending.pop()
      try:
        self._req_q.put_nowait(tuple(req))
      except Exception:  # pylint: disable=broad-except  # full or broken: retry next poll
        self._pending.push_front([req])
        break
      self._in_flight[req.request_id] = req

  def _run_inline(self) -> list[Outcome]:
    if self._inline_fn is None:
      self._inline_fn = self._factory()
    outs = []
    while len(self._pending):
      outs.append(process_request(self._inline_fn, self._pending.pop(), self._seed))
    return outs

  def depths(self) -> dict[str, int]:
    """Queue depths for the metrics: requests waiting, in flight, results ready (approximate for mp queues)."""
    if self._exchange is not None:
      req, res = self._exchange.depths()
      return {"synth/request_depth": req, "synth/in_flight": 0, "synth/result_depth": res}
    res = 0
    if self._process:
      try:
        res = int(self._res_q.qsize())
      except NotImplementedError:  # macOS
        res = -1
    return {"synth/request_depth": len(self._pending), "synth/in_flight": len(self._in_flight),
            "synth/result_depth": res}

  def state_dict(self) -> dict[str, Any]:
    """Request numbering, counters, the lag marks, every request without an outcome yet (in flight or waiting) and
    the outcomes held back for a later poll: a resumed run re-submits the requests and returns the held outcomes,
    so no synthesis work in flight is lost. Request ids are never reused (they seed the worker's RNG, so a
    deterministic synth_fn gives a re-submitted request the same outcome)."""
    waiting = [self._in_flight[k] for k in sorted(self._in_flight)] + self._pending.requests()
    return {"next_request_id": self._next_id, "seed": self._seed, "stats": dataclasses.asdict(self.stats),
            "marks": list(self._marks),
            "waiting": [{"id": r.request_id, "mode": r.mode, "record": _text(r.record)} for r in waiting],
            "held": [{"id": o.request_id, "seed_id": o.seed_id, "record": None if o.record is None else _text(o.record),
                      "failure": o.failure, "seconds": o.seconds} for _, o in sorted(self._held.items())]}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self._next_id = int(state["next_request_id"])
    self.stats = ClientStats(**{k: int(v) for k, v in state["stats"].items()})
    if int(state["seed"]) != self._seed:
      self._seed = int(state["seed"])
      if self._proc is not None:  # the running worker has the old seed
        self.close()
        self._start()
    self._marks = [int(m) for m in state["marks"]]
    self._held = {int(o["id"]): Outcome(int(o["id"]), str(o["seed_id"]), _record(o["record"]), str(o["failure"]),
                                        float(o["seconds"])) for o in state["held"]}
    # Oldest first, ahead of anything submitted from now on; nothing was handed to the new worker yet.
    self._pending.push_front([Request(int(r["id"]), _record(r["record"]), str(r["mode"])) for r in state["waiting"]])

  def close(self, timeout: float = 5.0) -> None:
    if self._proc is None:
      return
    self._stop.set()
    self._proc.join(timeout)
    if self._proc.is_alive():
      self._proc.terminate()
      self._proc.join(timeout)
    self._proc = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False
