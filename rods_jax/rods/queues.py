"""Message types and channels between the trainer and the synthesizer worker.

Everything that crosses a process or host boundary is numpy (task records are ``Task.to_record()`` uint8 arrays)
plus a few scalars, so nothing pickles a live object. Two channels with the same worker-side interface
(``get_request(timeout)``, ``put_result(outcome, stop)``):

* ``QueueChannel``: ``multiprocessing`` queues (one host).
* ``DirExchange``: a shared directory (multi-host, ``python -m launch.synthesize``): ``requests/`` and ``results/``
  hold one ``.npz`` file per message, written to a temporary name, fsynced and renamed (atomic on POSIX), with an
  ``fcntl`` lock around listing/claiming/dropping. The request folder is bounded (overflow drops the OLDEST request);
  the result folder is bounded by making the worker wait (validated tasks are never dropped).
"""
from __future__ import annotations

import collections
import fcntl
import json
import os
import queue as queue_lib
import time
import uuid
from typing import Any, NamedTuple

import numpy as np


class Request(NamedTuple):
  request_id: int
  record: np.ndarray  # uint8 Task record of the seed
  mode: str  # "synthesize" | "perturb" (env_augment arm)


class Outcome(NamedTuple):
  request_id: int
  seed_id: str
  record: np.ndarray | None  # uint8 Task record of the validated task; None on failure
  failure: str  # "" on success, else a synthesis failure kind
  seconds: float  # worker wall time spent on this request


def _meta_bytes(d: dict[str, Any]) -> np.ndarray:
  return np.frombuffer(json.dumps(d, sort_keys=True).encode("utf-8"), dtype=np.uint8).copy()


def _meta_load(a: np.ndarray) -> dict[str, Any]:
  return json.loads(a.tobytes().decode("utf-8"))


class LocalRequestQueue:
  """The trainer-side bounded request queue: a deque whose overflow drops the OLDEST request.

  Requests move from here to the worker only while fewer than ``window`` are outstanding, so the process queue never
  holds a backlog that could go stale or be lost with a dead worker.
  """

  def __init__(self, maxsize: int):
    if maxsize < 1:
      raise ValueError(f"config.synthesis.request_queue_size must be >= 1, got {maxsize}")
    self._q: collections.deque[Request] = collections.deque()
    self._maxsize = maxsize
    self.dropped = 0

  def put(self, req: Request) -> int:
    """Appends; returns how many old requests were dropped to make room."""
    dropped = 0
    while len(self._q) >= self._maxsize:
      self._q.popleft()
      dropped += 1
    self._q.append(req)
    self.dropped += dropped
    return dropped

  def push_front(self, reqs: list[Request]) -> None:
    """Returns requests (e.g. in flight on a worker that died) to the front, oldest first, within the bound."""
    for r in reversed(reqs):
      if len(self._q) >= self._maxsize:
        self.dropped += 1
        continue
      self._q.appendleft(r)

  def pop(self) -> Request | None:
    return self._q.popleft() if self._q else None

  def requests(self) -> list[Request]:
    """The waiting requests, oldest first (a copy: for the checkpoint)."""
    return list(self._q)

  def __len__(self) -> int:
    return len(self._q)


class QueueChannel:
  """Worker side of the multiprocessing queues."""

  def __init__(self, request_q, result_q):
    self._req = request_q
    self._res = result_q

  def get_request(self, timeout: float) -> Request | None:
    try:
      rid, rec, mode = self._req.get(timeout=timeout)
    except queue_lib.Empty:
      return None
    return Request(int(rid), rec, str(mode))

  def put_result(self, outcome: Outcome, stop) -> bool:
    """Blocks while the result queue is full (a validated task is never dropped); False if stopped meanwhile."""
    item = tuple(outcome)
    while not stop.is_set():
      try:
        self._res.put(item, timeout=0.2)
        return True
      except queue_lib.Full:
        continue
    return False


def outcome_from_tuple(item) -> Outcome:
  rid, seed_id, rec, failure, secs = item
  return Outcome(int(rid), str(seed_id), rec, str(failure), float(secs))


class DirExchange:
  """Directory-based request/result exchange (both sides). Safe for several trainers and workers."""

  def __init__(self, root: str, request_limit: int, result_limit: int):
    if request_limit < 1 or result_limit < 1:
      raise ValueError(f"DirExchange limits must be >= 1, got request_limit={request_limit}, "
                       f"result_limit={result_limit}")
    self.root = root
    self.request_limit = request_limit
    self.result_limit = result_limit
    for sub in ("requests", "results", "tmp"):
      os.makedirs(os.path.join(root, sub), exist_ok=True)
    self._lock_path = os.path.join(root, ".lock")
    self.dropped = 0

  # -- helpers
  def _locked(self):
    return _FileLock(self._lock_path)

  def _write(self, folder: str, arrays: dict[str, np.ndarray]) -> str:
    # Names sort by creation time across hosts (ns clock, then a random suffix for ties).
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.npz"
    tmp = os.path.join(self.root, "tmp", name)
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    final = os.path.join(self.root, folder, name)
    os.rename(tmp, final)
    return final

  def _list(self, folder: str) -> list[str]:
    d = os.path.join(self.root, folder)
    return sorted(n for n in os.listdir(d) if n.endswith(".npz"))

  @staticmethod
  def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
      return {k: z[k] for k in z.files}

  # -- trainer side
  def put_request(self, req: Request) -> int:
    """Writes a request; drops the oldest requests over ``request_limit``. Returns how many were dropped."""
    with self._locked():
      self._write("requests", {"record": req.record, "meta": _meta_bytes({"id": req.request_id, "mode": req.mode})})
      names = self._list("requests")
      excess = names[:max(0, len(names) - self.request_limit)]
      for n in excess:
        _unlink(os.path.join(self.root, "requests", n))
    self.dropped += len(excess)
    return len(excess)

  def drain_results(self) -> list[Outcome]:
    out = []
    with self._locked():
      names = self._list("results")
      for n in names:
        p = os.path.join(self.root, "results", n)
        try:
          z = self._load(p)
        except (OSError, ValueError) as e:  # unreadable: leave a trace, never crash the trainer
          os.replace(p, p + f".bad-{type(e).__name__}")
          continue
        meta = _meta_load(z["meta"])
        rec = z["record"] if meta["ok"] else None
        out.append(Outcome(int(meta["id"]), str(meta["seed_id"]), rec, str(meta["failure"]), float(meta["seconds"])))
        _unlink(p)
    return out

  def depths(self) -> tuple[int, int]:
    return len(self._list("requests")), len(self._list("results"))

  # -- worker side
  def get_request(self, timeout: float) -> Request | None:
    deadline = time.monotonic() + timeout
    while True:
      with self._locked():
        names = self._list("requests")
        if names:
          p = os.path.join(self.root, "requests", names[0])
          z = self._load(p)
          _unlink(p)
          meta = _meta_load(z["meta"])
          return Request(int(meta["id"]), z["record"], str(meta["mode"]))
      if time.monotonic() >= deadline:
        return None
      time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

  def put_result(self, outcome: Outcome, stop) -> bool:
    """Waits while ``results/`` is full; False if stopped meanwhile."""
    while not stop.is_set():
      with self._locked():
        if len(self._list("results")) < self.result_limit:
          ok = outcome.record is not None
          rec = outcome.record if ok else np.zeros((0,), np.uint8)
          self._write("results", {"record": rec, "meta": _meta_bytes(
              {"id": outcome.request_id, "seed_id": outcome.seed_id, "ok": ok, "failure": outcome.failure,
               "seconds": outcome.seconds})})
          return True
      time.sleep(0.05)
    return False


def _unlink(path: str) -> None:
  try:
    os.unlink(path)
  except FileNotFoundError:
    pass


class _FileLock:
  """An exclusive ``fcntl.flock`` on a lock file for the duration of a ``with`` block."""

  def __init__(self, path: str):
    self._path = path
    self._fd = -1

  def __enter__(self):
    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(self._fd, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    return False
