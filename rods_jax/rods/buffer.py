"""Dynamic replay buffer: the active task pool of RODS (docs/METHOD.md §6).

The active pool is the protected seeds plus at most ``P_max`` generated tasks. The pool changes ONLY in
``end_epoch()``, which runs the lifecycle of docs/METHOD.md §6 in this order:

  1. burn-in   : a generated task whose FIRST observed r̄ < burn_in_low is evicted;
  2. retirement: (if enabled) latest r̄ > retire_high -> mastered; latest r̄ < retire_low -> unsolvable;
                 unobserved for W = stale_epochs epochs -> stale;
  3. pruning   : while |G| > P_max, drop the generated task with the lowest φ = 4 r̄ (1 − r̄) of its latest r̄
                 (unobserved tasks count as φ = 1: they were made from boundary seeds; ties drop the oldest);
  4. injection : cap = floor(β · |active pool|) measured immediately before injection; admit
                 min(cap, P_max − |G|) staged candidates, FIFO; the rest wait for a later epoch.

An epoch is one pass over the active pool in an order shuffled by the buffer's own numpy RNG. Candidates are
appended to a JSONL log (flush + fsync) before they are staged; the log's byte offset is part of ``state_dict()``,
and ``load_state_dict()`` re-stages whatever the log holds past that offset, so a crash between checkpoints loses
no accepted task.

With ``posterior_cfg`` (``config.rods.detector == "posterior"``), burn-in, retirement and the pruning order read the
task's Beta posterior across steps instead of one r̄ (``rods_jax.rods.posterior_table``); its state is part of
``state_dict()``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from rods_jax.envs.task import Task
from rods_jax.rods.posterior_table import PosteriorConfig, PosteriorTable

COUNTERS = ("requested", "executed", "accepted", "duplicates", "injected", "evicted", "retired_mastered",
            "retired_unsolvable", "retired_stale", "pruned")
_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BufferConfig:
  """The fields of ``config.rods`` the buffer reads."""
  p_max: int
  beta: float
  burn_in_low: float
  retire_high: float
  retire_low: float
  stale_epochs: int
  retirement: bool

  @classmethod
  def from_rods(cls, rods_cfg) -> "BufferConfig":
    c = cls(p_max=int(rods_cfg.p_max), beta=float(rods_cfg.beta), burn_in_low=float(rods_cfg.burn_in_low),
            retire_high=float(rods_cfg.retire_high), retire_low=float(rods_cfg.retire_low),
            stale_epochs=int(rods_cfg.stale_epochs), retirement=bool(rods_cfg.retirement))
    if c.p_max < 0:
      raise ValueError(f"config.rods.p_max must be >= 0, got {c.p_max}")
    if not 0.0 <= c.beta <= 1.0:
      raise ValueError(f"config.rods.beta must be in [0, 1], got {c.beta}")
    if c.stale_epochs < 1:
      raise ValueError(f"config.rods.stale_epochs must be >= 1, got {c.stale_epochs}")
    return c


class Sample(NamedTuple):
  """One batch drawn from the active pool."""
  tasks: list[Task]
  epoch: int  # the epoch these tasks belong to
  epoch_end: bool  # True: this batch finished the epoch; call end_epoch() before the next sample()
  n_filler: int  # tasks appended at the end of an epoch to keep the batch shape fixed (drawn from the pool)


class EpochReport(NamedTuple):
  """What end_epoch() changed (ids)."""
  epoch: int  # the epoch that just ended
  evicted: list[str]
  retired_mastered: list[str]
  retired_unsolvable: list[str]
  retired_stale: list[str]
  pruned: list[str]
  injected: list[str]
  cap: int  # floor(β · |active|) just before injection
  deferred: int  # staged candidates left waiting


def _meta_depth(task: Task) -> int | None:
  meta = task.meta if isinstance(task.meta, dict) else {}
  prof = meta.get("profile")
  depth = prof.get("depth") if isinstance(prof, dict) else meta.get("depth")
  return depth if isinstance(depth, int) else None


def phi(rbar: float) -> float:
  """φ = 4 r̄ (1 − r̄)."""
  return 4.0 * rbar * (1.0 - rbar)


class ReplayBuffer:
  """Seeds + generated tasks, staging FIFO, lifecycle at epoch boundaries, epoch-ordered sampling.

  Args:
    seeds: the protected seed tasks (never removed).
    rods_cfg: ``config.rods`` (or a BufferConfig).
    log_path: the append-only JSONL log of accepted candidates.
    seed: seeds the buffer's numpy RNG (epoch shuffles, filler draws).
    posterior_cfg: the posterior detector's config; None = the paper's one-step rules.
  """

  def __init__(self, seeds: Sequence[Task], rods_cfg, log_path: str, seed: int = 0,
               posterior_cfg: PosteriorConfig | None = None):
    self._cfg = rods_cfg if isinstance(rods_cfg, BufferConfig) else BufferConfig.from_rods(rods_cfg)
    if not seeds:
      raise ValueError("ReplayBuffer needs at least one seed task")
    ids = [t.id for t in seeds]
    if len(set(ids)) != len(ids):
      dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
      raise ValueError(f"duplicate seed task ids: {dup}")
    self._seeds: dict[str, Task] = {t.id: t for t in seeds}
    self._log_path = log_path
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    self._rng = np.random.default_rng(seed)
    self._gen: dict[str, Task] = {}  # generated, active; insertion order = injection order
    self._gen_info: dict[str, dict[str, Any]] = {}  # id -> {"injected_epoch", "last_seen_epoch"}
    self._staged: list[Task] = []  # FIFO of accepted, not yet injected candidates
    self._history: dict[str, list[list[float]]] = {}  # id -> [[step, r̄], ...]
    self._removed: dict[str, dict[str, Any]] = {}  # id -> {"reason", "epoch", "lineage", "history"}
    self._counters = {k: 0 for k in COUNTERS}
    self._epoch = 0
    self._order: list[str] = []
    self._cursor = 0
    self._log_offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    self.posterior = PosteriorTable(posterior_cfg, ids) if posterior_cfg is not None else None
    self._new_order()

  # ---------------------------------------------------------------- pool views
  @property
  def epoch(self) -> int:
    return self._epoch

  @property
  def config(self) -> BufferConfig:
    return self._cfg

  def active_ids(self) -> list[str]:
    return list(self._seeds) + list(self._gen)

  def __len__(self) -> int:
    return len(self._seeds) + len(self._gen)

  @property
  def num_generated(self) -> int:
    return len(self._gen)

  @property
  def num_staged(self) -> int:
    return len(self._staged)

  def staged_ids(self) -> list[str]:
    return [t.id for t in self._staged]

  def get(self, task_id: str) -> Task:
    if task_id in self._seeds:
      return self._seeds[task_id]
    if task_id in self._gen:
      return self._gen[task_id]
    raise KeyError(f"task {task_id!r} is not in the active pool")

  def is_seed(self, task_id: str) -> bool:
    return task_id in self._seeds

  def history(self, task_id: str) -> list[tuple[int, float]]:
    if task_id in self._removed:
      return [(int(s), float(r)) for s, r in self._removed[task_id]["history"]]
    return [(int(s), float(r)) for s, r in self._history.get(task_id, [])]

  def removed(self) -> dict[str, str]:
    """id -> reason (evicted | retired_mastered | retired_unsolvable | retired_stale | pruned)."""
    return {k: v["reason"] for k, v in self._removed.items()}

  @property
  def counters(self) -> dict[str, int]:
    return dict(self._counters)

  @property
  def log_offset(self) -> int:
    return self._log_offset

  def count(self, name: str, n: int = 1) -> None:
    """Adds to a counter kept outside the buffer's own rules (requested, executed)."""
    if name not in self._counters:
      raise KeyError(f"unknown buffer counter {name!r}; known: {COUNTERS}")
    self._counters[name] += int(n)

  def composition(self, depth_fn: Callable[[Task], int | None] | None = None) -> dict[str, int]:
    """Active pool counts by origin, category, turns, generation and dependency depth (``depth_fn(task)``, else the
    task's ``meta["profile"]["depth"]`` / ``meta["depth"]`` when present)."""
    out: dict[str, int] = {"pool/size": len(self), "pool/seeds": len(self._seeds),
                           "pool/generated": len(self._gen), "pool/staged": len(self._staged)}
    for t in list(self._seeds.values()) + list(self._gen.values()):
      for key in (f"pool/origin/{t.lineage.origin}", f"pool/category/{t.category}", f"pool/turns/{t.num_turns}",
                  f"pool/generation/{t.lineage.generation}"):
        out[key] = out.get(key, 0) + 1
      depth = depth_fn(t) if depth_fn is not None else _meta_depth(t)
      if isinstance(depth, int):
        out[f"pool/depth/{depth}"] = out.get(f"pool/depth/{depth}", 0) + 1
    return out

  # ---------------------------------------------------------------- sampling
  def _new_order(self) -> None:
    ids = self.active_ids()
    self._order = [ids[i] for i in self._rng.permutation(len(ids))]
    self._cursor = 0

  def sample(self, n: int) -> Sample:
    """The next ``n`` tasks of the current epoch's shuffled order.

    When fewer than ``n`` remain, the batch is topped up with tasks drawn uniformly from the rest of the active
    pool (without replacement while possible) so the batch shape stays fixed, and ``epoch_end`` is True.
    """
    if n < 1:
      raise ValueError(f"sample(n) needs n >= 1, got {n}")
    if self._cursor >= len(self._order):
      raise RuntimeError(f"epoch {self._epoch} is finished; call end_epoch() before sample()")
    ids = self._order[self._cursor:self._cursor + n]
    self._cursor += len(ids)
    n_fill = n - len(ids)
    if n_fill:
      taken = set(ids)
      rest = [i for i in self.active_ids() if i not in taken]
      if len(rest) >= n_fill:
        ids += [rest[i] for i in self._rng.choice(len(rest), size=n_fill, replace=False)]
      else:  # the pool is smaller than a batch: repeat tasks
        pool = self.active_ids()
        ids += [pool[i] for i in self._rng.choice(len(pool), size=n_fill, replace=True)]
    return Sample(tasks=[self.get(i) for i in ids], epoch=self._epoch,
                  epoch_end=self._cursor >= len(self._order), n_filler=n_fill)

  @property
  def epoch_finished(self) -> bool:
    return self._cursor >= len(self._order)

  @property
  def steps_left_in_epoch(self) -> int:
    return len(self._order) - self._cursor

  # ---------------------------------------------------------------- observations
  def observe(self, task_id: str, rbar: float, step: int) -> bool:
    """Records a task's group mean r̄ at ``step``. Returns True for a generated task's FIRST observation."""
    if task_id not in self._seeds and task_id not in self._gen:
      raise KeyError(f"observe: task {task_id!r} is not in the active pool")
    rbar = float(rbar)
    if not math.isfinite(rbar) or not -1e-6 <= rbar <= 1.0 + 1e-6:
      raise ValueError(f"observe: r̄ of task {task_id!r} must be in [0, 1], got {rbar}")
    hist = self._history.setdefault(task_id, [])
    hist.append([int(step), rbar])
    if self.posterior is not None:
      self.posterior.observe(task_id, rbar, int(step), self._epoch, generated=task_id in self._gen)
    if task_id in self._gen:
      self._gen_info[task_id]["last_seen_epoch"] = self._epoch
      return len(hist) == 1
    return False

  # ---------------------------------------------------------------- candidates
  def stage(self, task: Task) -> bool:
    """Logs an accepted candidate (append + flush + fsync) and puts it at the back of the staging FIFO.

    Returns False (and counts a duplicate) when the id is already known to the buffer.
    """
    if self._known(task.id):
      self._counters["duplicates"] += 1
      return False
    line = (task.to_json() + "\n").encode("utf-8")
    with open(self._log_path, "ab") as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
    self._log_offset += len(line)
    self._staged.append(task)
    self._counters["accepted"] += 1
    return True

  def _known(self, task_id: str) -> bool:
    return (task_id in self._seeds or task_id in self._gen or task_id in self._removed
            or any(t.id == task_id for t in self._staged))

  # ---------------------------------------------------------------- lifecycle
  def inject_initial(self, max_n: int | None = None) -> list[str]:
    """Injects staged candidates (FIFO, up to P_max and ``max_n``) into the pool before training starts, without
    the β cap.

    The static_pool arm's one-off pool. Only allowed before the first sample of the first epoch.
    """
    if self._epoch != 0 or self._cursor != 0:
      raise RuntimeError(f"inject_initial() is only allowed before training starts (epoch {self._epoch}, "
                         f"{self._cursor} tasks sampled)")
    n_in = max(0, min(self._cfg.p_max - len(self._gen), len(self._staged)))
    n_in = n_in if max_n is None else min(n_in, int(max_n))
    injected = [t.id for t in self._staged[:n_in]]
    for task in self._staged[:n_in]:
      self._gen[task.id] = task
      self._gen_info[task.id] = {"injected_epoch": 0, "last_seen_epoch": 0}
      self._add_posterior(task)
    self._staged = self._staged[n_in:]
    self._counters["injected"] += len(injected)
    self._new_order()
    return injected

  def end_epoch(self, lifecycle: bool = True) -> EpochReport:
    """Runs burn-in, retirement, pruning and injection (module docstring), then starts the next epoch's order.

    ``lifecycle=False`` (static arms: a fixed pool) only starts the next epoch's order.
    """
    cfg = self._cfg
    ended = self._epoch
    if not lifecycle:
      self._epoch = ended + 1
      self._new_order()
      return EpochReport(ended, [], [], [], [], [], [], 0, len(self._staged))
    evicted, mastered, unsolvable, stale = [], [], [], []
    for gid in list(self._gen):
      hist = self._history.get(gid, [])
      if hist and self.posterior is not None:
        reason = self.posterior.lifecycle(gid, ended, cfg.retirement)
        if reason is not None:
          {"evicted": evicted, "retired_mastered": mastered, "retired_unsolvable": unsolvable}[reason].append(gid)
          continue
      elif hist:
        first, last = hist[0][1], hist[-1][1]
        if first < cfg.burn_in_low:
          evicted.append(gid)
          continue
        if cfg.retirement and last > cfg.retire_high:
          mastered.append(gid)
          continue
        if cfg.retirement and last < cfg.retire_low:
          unsolvable.append(gid)
          continue
      if cfg.retirement and ended - self._gen_info[gid]["last_seen_epoch"] >= cfg.stale_epochs:
        stale.append(gid)
    for ids, reason in ((evicted, "evicted"), (mastered, "retired_mastered"), (unsolvable, "retired_unsolvable"),
                        (stale, "retired_stale")):
      for gid in ids:
        self._remove(gid, reason, ended)

    pruned = []
    if len(self._gen) > cfg.p_max:
      order = list(self._gen)  # oldest first
      def key(gid):
        if self.posterior is not None:
          return (self.posterior.priority(gid), order.index(gid))
        hist = self._history.get(gid, [])
        return (phi(hist[-1][1]) if hist else 1.0, order.index(gid))
      victims = sorted(order, key=key)[:len(self._gen) - cfg.p_max]
      for gid in victims:
        pruned.append(gid)
        self._remove(gid, "pruned", ended)

    cap = int(math.floor(cfg.beta * len(self) + 1e-9))
    n_in = max(0, min(cap, cfg.p_max - len(self._gen), len(self._staged)))
    injected = []
    for task in self._staged[:n_in]:
      self._gen[task.id] = task
      self._gen_info[task.id] = {"injected_epoch": ended + 1, "last_seen_epoch": ended}
      self._add_posterior(task)
      injected.append(task.id)
    self._staged = self._staged[n_in:]
    self._counters["injected"] += len(injected)
    self._epoch = ended + 1
    self._new_order()
    return EpochReport(epoch=ended, evicted=evicted, retired_mastered=mastered, retired_unsolvable=unsolvable,
                       retired_stale=stale, pruned=pruned, injected=injected, cap=cap, deferred=len(self._staged))

  def _add_posterior(self, task: Task) -> None:
    if self.posterior is not None:
      self.posterior.add(task.id, task.lineage.parent_id)

  def _remove(self, gid: str, reason: str, epoch: int) -> None:
    task = self._gen.pop(gid)
    self._gen_info.pop(gid)
    self._removed[gid] = {"reason": reason, "epoch": epoch, "lineage": dataclasses.asdict(task.lineage),
                          "history": self._history.pop(gid, [])}
    if self.posterior is not None:
      self._removed[gid]["posterior"] = self.posterior.drop(gid)
    self._counters[reason] += 1

  # ---------------------------------------------------------------- state
  def state_dict(self) -> dict[str, Any]:
    """Everything needed to continue exactly (JSON-able). Staged candidates are stored with their bodies, so a
    restore reads only the log's part past ``log_offset``."""
    state = {
        "version": _STATE_VERSION,
        "seed_ids": list(self._seeds),
        "generated": [t.to_dict() for t in self._gen.values()],
        "generated_info": {k: dict(v) for k, v in self._gen_info.items()},
        "staged": [t.to_dict() for t in self._staged],
        "history": {k: [list(x) for x in v] for k, v in self._history.items()},
        "removed": {k: dict(v) for k, v in self._removed.items()},
        "counters": dict(self._counters),
        "epoch": self._epoch,
        "order": list(self._order),
        "cursor": self._cursor,
        "log_offset": self._log_offset,
        "rng": self._rng.bit_generator.state,
    }
    if self.posterior is not None:
      state["posterior"] = self.posterior.state_dict()
    return state

  def load_state_dict(self, state: dict[str, Any]) -> list[str]:
    """Restores ``state_dict()`` exactly, then re-stages candidates logged after its ``log_offset``.

    A torn last line (a crash during a write) is cut off the log. Returns the ids re-staged from the log.
    """
    if state.get("version") != _STATE_VERSION:
      raise ValueError(f"buffer state version {state.get('version')!r} != {_STATE_VERSION}")
    if list(state["seed_ids"]) != list(self._seeds):
      missing = sorted(set(state["seed_ids"]) ^ set(self._seeds))[:5]
      raise ValueError(f"buffer state was saved over different seeds (e.g. {missing}); same seed split expected")
    if (self.posterior is None) != ("posterior" not in state):
      raise ValueError("buffer state and this buffer disagree on config.rods.detector (a 'posterior' run has a "
                       "'posterior' entry in its buffer state, a 'step' run none)")
    self._gen = {d["id"]: Task.from_dict(d) for d in state["generated"]}
    self._gen_info = {k: {"injected_epoch": int(v["injected_epoch"]), "last_seen_epoch": int(v["last_seen_epoch"])}
                      for k, v in state["generated_info"].items()}
    self._staged = [Task.from_dict(d) for d in state["staged"]]
    self._history = {k: [[int(s), float(r)] for s, r in v] for k, v in state["history"].items()}
    self._removed = {k: dict(v) for k, v in state["removed"].items()}
    self._counters = {k: int(state["counters"].get(k, 0)) for k in COUNTERS}
    self._epoch = int(state["epoch"])
    self._order = list(state["order"])
    self._cursor = int(state["cursor"])
    rng_state = state["rng"]
    self._rng = np.random.Generator(getattr(np.random, rng_state["bit_generator"])())
    self._rng.bit_generator.state = rng_state
    self._log_offset = int(state["log_offset"])
    if self.posterior is not None:
      self.posterior.load_state_dict(state["posterior"])
    return self._replay_log()

  def _replay_log(self) -> list[str]:
    if not os.path.exists(self._log_path):
      if self._log_offset:
        raise ValueError(f"buffer state expects {self._log_offset} bytes of log but {self._log_path} is missing")
      return []
    size = os.path.getsize(self._log_path)
    if size < self._log_offset:
      raise ValueError(f"candidate log {self._log_path} has {size} bytes, fewer than the checkpoint's "
                       f"log_offset {self._log_offset}: it is not the log this state was saved with")
    with open(self._log_path, "rb") as f:
      f.seek(self._log_offset)
      tail = f.read()
    complete = tail[:tail.rfind(b"\n") + 1]
    if len(complete) != len(tail):  # a torn final write: drop it so later appends stay line-aligned
      with open(self._log_path, "r+b") as f:
        f.truncate(self._log_offset + len(complete))
    restaged = []
    for raw in complete.splitlines():
      self._log_offset += len(raw) + 1
      if not raw.strip():
        continue
      task = Task.from_json(raw.decode("utf-8"))
      if self._known(task.id):
        continue
      self._staged.append(task)
      self._counters["accepted"] += 1
      restaged.append(task.id)
    return restaged
