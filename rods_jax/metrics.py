"""Metric logging (JSONL + TensorBoard), phase timing, and the plots the report uses.

Files under a run's workdir:

* ``metrics.jsonl`` — one JSON object per ``MetricWriter.write`` call: ``{"step", "wall_time", <metric>: value, ...,
  "timing_s/<phase>": seconds}``. Non-finite values are written as ``null`` (strict JSON). Appended to, so a resumed run
  continues the same file; ``read_jsonl`` drops the lines a restart superseded.
* ``tensorboard/`` — event files (tensorboardX), one scalar series per metric key against the step, and the same
  under ``vs_trajectories/<key>`` against trajectories consumed.
* ``wandb/`` — with ``config.logging.wandb``, a Weights & Biases run (x-axis: trajectories).

Keys are written under their public names (verl's where verl has the value: ``actor/entropy``, ``critic/score/mean``,
``response_length/mean``, ``timing_s/gen``, ...; ``rods_jax.metric_names``, docs/METRICS.md). Only process 0 writes
(multi-host). Key conventions the plots rely on (producers: the loop, detector, buffer, eval):

* ``trajectories`` — trajectories consumed so far, the x-axis of every curve (``X_AXIS``).
* ``zones/hard``, ``zones/boundary``, ``zones/mastered`` — fractions of the step's tasks per zone (``ZONE_KEYS``).
* ``pool/origin/<part>`` — active-pool task counts by origin (``pool/origin/seed``, ``pool/origin/generated``),
  ``pool/depth/<d>`` and ``pool/category/<c>`` likewise; totals go elsewhere (e.g. ``pool/size``) so parts stack.
* ``eval/<metric>`` — held-out evaluation, e.g. ``eval/success``, ``eval/progress``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from rods_jax import metric_names

X_AXIS = "trajectories"
ZONE_KEYS = ("zones/hard", "zones/boundary", "zones/mastered")
POOL_PREFIX = "pool/origin/"
TIME_PREFIX = "time/"
JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TB_TRAJECTORY_PREFIX = "vs_trajectories/"  # TensorBoard: the same scalars with trajectories as the step


def _scalar(key: str, value: Any) -> float | int | bool | None:
  """A Python scalar for JSON; non-finite floats become None. Raises ValueError naming ``key`` otherwise."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
  elif isinstance(value, (np.ndarray, jax.Array)):
    if value.size != 1:
      raise ValueError(f"metric {key!r} has shape {value.shape}; only scalars are logged")
    value = value.reshape(()).item()
    return _scalar(key, value)
  else:
    raise ValueError(f"metric {key!r} has type {type(value).__name__}; expected a number")
  return value if math.isfinite(value) else None


class PhaseTimer:
  """Wall time per named phase, accumulated until ``pop()``.

  with timer.phase("rollout"): ...
  writer.write(step, metrics, timings=timer.pop())
  """

  def __init__(self):
    self._seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - start

  def add(self, name: str, seconds: float) -> None:
    """Adds time measured elsewhere (e.g. the trainer's wait on the synthesizer)."""
    self._seconds[name] = self._seconds.get(name, 0.0) + float(seconds)

  def pop(self) -> dict[str, float]:
    out, self._seconds = self._seconds, {}
    return out


class MetricWriter:
  """Writes every metric of a step, under its public name (``rods_jax.metric_names``), to ``<workdir>/metrics.jsonl``
  and optionally TensorBoard (each scalar against the step, and under ``vs_trajectories/`` against trajectories
  consumed) and Weights & Biases."""

  def __init__(self, workdir: str | os.PathLike, cfg: ml_collections.ConfigDict, *, is_primary: bool | None = None):
    """``cfg`` is ``config.logging`` (reads ``tensorboard``, ``wandb``, ``wandb_project``). ``is_primary`` defaults to
    ``jax.process_index() == 0``."""
    self._primary = jax.process_index() == 0 if is_primary is None else is_primary
    self._workdir = os.fspath(workdir)
    self._jsonl = None
    self._tb = None
    self._wandb = None
    if not self._primary:
      return
    os.makedirs(self._workdir, exist_ok=True)
    self._jsonl = open(os.path.join(self._workdir, JSONL_NAME), "a", encoding="utf-8")
    if cfg.tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: it pulls in protobuf
      self._tb = SummaryWriter(logdir=os.path.join(self._workdir, TENSORBOARD_DIR), flush_secs=30)
    if cfg.wandb:
      self._wandb = wandb_run(self._workdir, str(cfg.wandb_project))

  @property
  def wandb_run(self):
    """The Weights & Biases run (None without ``logging.wandb`` or off process 0)."""
    return self._wandb

  @property
  def jsonl_path(self) -> str:
    return os.path.join(self._workdir, JSONL_NAME)

  def write(self, step: int, metrics: Mapping[str, Any], timings: Mapping[str, float] | None = None) -> None:
    """Logs ``metrics`` (scalars: Python, numpy or 0-d/size-1 jax arrays) and ``timings`` (as ``time/<phase>``, public
    ``timing_s/<phase>``)."""
    values: dict[str, Any] = {}
    for key, value in metrics.items():
      if key in ("step", "wall_time"):
        raise ValueError(f"metric key {key!r} is reserved")
      values[key] = _scalar(key, value)
    for phase, seconds in (timings or {}).items():
      values[TIME_PREFIX + phase] = _scalar(TIME_PREFIX + phase, seconds)
    record: dict[str, Any] = {"step": int(step), "wall_time": time.time(), **metric_names.to_public(values)}
    if not self._primary:
      return
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    scalars = {k: float(v) for k, v in record.items() if k not in ("step", "wall_time") and v is not None}
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, value, global_step=int(step), walltime=record["wall_time"])
      if record.get(X_AXIS) is not None:
        for key, value in scalars.items():
          if key != X_AXIS:
            self._tb.add_scalar(TB_TRAJECTORY_PREFIX + key, value, global_step=int(record[X_AXIS]),
                                walltime=record["wall_time"])
    if self._wandb is not None:
      # W&B's own step counts calls (a resumed run re-logs steps, which its monotonic step would drop); the
      # charts use trajectories (wandb_run), and the step is a field.
      self._wandb.log({"step": int(step), **scalars})

  def write_config(self, config: ml_collections.ConfigDict) -> None:
    """Saves the run's full config as ``config.json`` (and as TensorBoard text) for provenance."""
    if not self._primary:
      return
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    with open(os.path.join(self._workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(text + "\n")
    if self._tb is not None:
      self._tb.add_text("config", "```\n" + text + "\n```", global_step=0)
    if self._wandb is not None:
      self._wandb.config.update(json.loads(text), allow_val_change=True)

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def wandb_run(workdir: str, project: str):
  """A Weights & Biases run for ``workdir`` (its id is the workdir's name, so a resumed run continues it), with
  trajectories consumed as the x-axis of every chart. WANDB_MODE=offline writes it under ``<workdir>/wandb``."""
  try:
    import wandb  # pylint: disable=g-import-not-at-top  (optional: only runs that ask for it need it)
  except ImportError as e:
    raise ImportError("config.logging.wandb=True needs the wandb package: pip install wandb") from e
  name = os.path.basename(os.path.abspath(workdir))
  run = wandb.init(project=project, name=name, id=re.sub(r"[^A-Za-z0-9_-]", "-", name), dir=workdir,
                   resume="allow", reinit="create_new")
  run.define_metric(X_AXIS)
  run.define_metric("*", step_metric=X_AXIS)
  return run


def read_jsonl(path: str | os.PathLike, *, resolve_restarts: bool = True) -> list[dict[str, Any]]:
  """Records of a metrics file, in order; a malformed line raises ValueError naming its line number.

  A resumed run re-logs steps after its last checkpoint. With ``resolve_restarts``, a record whose step is lower than
  the previous record's marks a restart, and the earlier records with step >= that step are dropped (the resumed run
  superseded them; if the resumed run's first record shares the checkpoint's step, e.g. an evaluation, the original
  record of that step goes too). So does a train-step record (one with timings, written once per step) whose step is
  not above the previous train step's: a run killed after logging step N but before its checkpoint re-logs N. A
  truncated last line (crash mid-write) is skipped. Keys come back under their public names
  (``metric_names.to_public``), also from logs written under the old ones.
  """
  records: list[dict[str, Any]] = []
  last_train_step = None
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
        break  # a partial last line from a crash
      raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from e
    if not isinstance(record, dict) or "step" not in record:
      raise ValueError(f"{path}:{number}: expected an object with a 'step' key")
    record = metric_names.to_public(record)  # logs written before the renaming read under today's names
    train = any(k.startswith(metric_names.PUBLIC_TIME_PREFIX) for k in record)
    if resolve_restarts and records and (record["step"] < records[-1]["step"] or (
        train and last_train_step is not None and record["step"] <= last_train_step)):
      records = [r for r in records if r["step"] < record["step"]]
    last_train_step = record["step"] if train else last_train_step
    records.append(record)
  return records


def load_run(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """``read_jsonl(<workdir>/metrics.jsonl)``: every record of a run, restarts resolved."""
  return read_jsonl(os.path.join(os.fspath(workdir), JSONL_NAME))


def series(records: Sequence[Mapping[str, Any]], key: str, x: str = X_AXIS) -> tuple[np.ndarray, np.ndarray]:
  """(x values, key values) over the records that have both keys non-null, as float64 arrays."""
  pairs = [(r[x], r[key]) for r in records if r.get(x) is not None and r.get(key) is not None]
  if not pairs:
    return np.zeros((0,)), np.zeros((0,))
  xs, ys = zip(*pairs)
  return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def _save(fig: Figure, out_path: str | os.PathLike) -> str:
  out_path = os.fspath(out_path)
  os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
  fig.savefig(out_path, dpi=120, bbox_inches="tight")
  return out_path


def plot_learning_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], out_path: str | os.PathLike, *,
                         y: str = "eval/success", x: str = X_AXIS, title: str | None = None) -> str:
  """One line per run (e.g. per arm): ``y`` against trajectories consumed. Returns the image path."""
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for name, records in runs.items():
    xs, ys = series(records, y, x)
    if xs.size == 0:
      raise ValueError(f"run {name!r} has no records with both {x!r} and {y!r}")
    ax.plot(xs, ys, marker="o" if xs.size < 20 else None, markersize=3, label=name)
  ax.set_xlabel(x)
  ax.set_ylabel(y)
  ax.set_title(title if title is not None else f"{y} vs {x}")
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, out_path)


def plot_series(records: Sequence[Mapping[str, Any]], keys: Sequence[str], out_path: str | os.PathLike, *,
                x: str = X_AXIS, title: str | None = None, ylabel: str | None = None) -> str:
  """One line per key of one run (e.g. ``eval/depth_3/success`` per depth, ``zones/var/boundary`` per zone)."""
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  drawn = 0
  for key in keys:
    xs, ys = series(records, key, x)
    if xs.size:
      ax.plot(xs, ys, marker="o" if xs.size < 20 else None, markersize=3, label=key)
      drawn += 1
  if not drawn:
    raise ValueError(f"no records with {x!r} and any of {list(keys)}")
  ax.set_xlabel(x)
  ax.set_ylabel(ylabel if ylabel is not None else "value")
  ax.set_title(title if title is not None else ", ".join(keys))
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  return _save(fig, out_path)


def _stacked(records, keys: Sequence[str], x: str, out_path, ylabel: str, title: str,
             missing: float | None) -> str:
  """Stacked areas of ``keys`` against ``x``. A record lacking a key is skipped, or counts ``missing`` if given."""

  def value(r, k):
    return missing if r.get(k) is None else r[k]

  rows = [r for r in records if r.get(x) is not None and all(value(r, k) is not None for k in keys)
          and any(r.get(k) is not None for k in keys)]
  if not rows:
    raise ValueError(f"no records with {x!r} and all of {list(keys)}")
  xs = np.asarray([r[x] for r in rows], np.float64)
  ys = np.asarray([[value(r, k) for r in rows] for k in keys], np.float64)
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  ax.stackplot(xs, ys, labels=list(keys), alpha=0.85)
  ax.set_xlabel(x)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(loc="upper left", fontsize="small")
  return _save(fig, out_path)


def plot_zone_fractions(records: Sequence[Mapping[str, Any]], out_path: str | os.PathLike, *,
                        keys: Sequence[str] = ZONE_KEYS, x: str = X_AXIS) -> str:
  """Stacked hard / boundary / mastered fractions of each step's tasks over training."""
  return _stacked(records, keys, x, out_path, "fraction of tasks", "zones", missing=None)


def pool_keys(records: Sequence[Mapping[str, Any]], prefix: str = POOL_PREFIX) -> list[str]:
  """The keys starting with ``prefix`` present in the records, in first-seen order."""
  seen: dict[str, None] = {}
  for r in records:
    for k in r:
      if k.startswith(prefix):
        seen.setdefault(k, None)
  return list(seen)


def plot_pool_composition(records: Sequence[Mapping[str, Any]], out_path: str | os.PathLike, *,
                          prefix: str = POOL_PREFIX, x: str = X_AXIS) -> str:
  """Stacked active-pool counts, one band per key under ``prefix`` (origin by default; or ``pool/depth/``).

  A part absent from a step's record (e.g. no synthesized task injected yet) counts 0 there."""
  keys = pool_keys(records, prefix)
  if not keys:
    raise ValueError(f"no {prefix!r} keys in the records")
  return _stacked(records, keys, x, out_path, "tasks in the active pool", "pool composition", missing=0.0)


RUN_PLOTS = ("learning_curve.png", "zones.png", "pool_composition.png")


def plot_run(records: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, name: str
             ) -> tuple[list[str], dict[str, str]]:
  """A run's held-out learning curve, zone fractions and pool composition as ``RUN_PLOTS`` in ``out_dir``.

  Returns (written paths, {plot: why it was not drawn}) — e.g. a short run has no evaluation yet, a static arm no
  pool parts to stack."""
  written, skipped = [], {}
  for fname, fn in zip(RUN_PLOTS, (lambda p: plot_learning_curves({name: records}, p),
                                   lambda p: plot_zone_fractions(records, p),
                                   lambda p: plot_pool_composition(records, p))):
    try:
      written.append(fn(os.path.join(os.fspath(out_dir), fname)))
    except ValueError as e:  # nothing to draw (the message names what is missing)
      skipped[fname] = str(e)
  return written, skipped
