"""The task type shared by every environment, the synthesizer, the replay buffer and the queues.

A task is pure data (JSON-able): the environment turns it into an episode. The numpy record form is what crosses the
synthesizer's process boundary (``multiprocessing`` queues and the directory exchange carry ``np.ndarray`` only).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

CATEGORIES = ("base", "miss_func", "miss_param", "long_context")
ORIGINS = ("seed", "test", "offline", "synth", "augment", "validation")


@dataclasses.dataclass(frozen=True)
class Lineage:
  """Where a task came from. Seeds have parent_id None and generation 0."""
  origin: str = "seed"
  parent_id: str | None = None
  generation: int = 0
  birth_step: int = 0


@dataclasses.dataclass(frozen=True)
class Task:
  """One multi-turn tool-use task.

  Attributes:
    id: unique id, e.g. ``multi_turn_base_17`` or ``tw-seeds-00042``.
    env: environment name (``toolworld`` | ``bfcl``).
    category: one of CATEGORIES.
    classes: API classes whose tools are offered.
    initial_state: class name -> JSON-able state dict loaded into a fresh backend.
    turns: user messages, one per user turn. A miss_func recovery turn holds the environment's message.
    gt_calls: per user turn, the ground-truth calls ``{"name": str, "arguments": dict}``; ``[]`` = the model must
      not call anything in that turn (missing function / missing parameter).
    missing_functions: turn index (as str, JSON keys) -> function names held back until that turn.
    lineage: origin, parent, generation, birth step.
    meta: environment-specific extras (world seed, long_context flag, ...), JSON-able.
  """
  id: str
  env: str
  category: str
  classes: tuple[str, ...]
  initial_state: dict[str, Any]
  turns: tuple[str, ...]
  gt_calls: tuple[tuple[dict[str, Any], ...], ...]
  missing_functions: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  lineage: Lineage = Lineage()
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.category not in CATEGORIES:
      raise ValueError(f"Task {self.id}: category {self.category!r} not in {CATEGORIES}")
    if len(self.turns) != len(self.gt_calls):
      raise ValueError(f"Task {self.id}: {len(self.turns)} turns but {len(self.gt_calls)} ground-truth turns")
    if self.lineage.origin not in ORIGINS:
      raise ValueError(f"Task {self.id}: lineage.origin {self.lineage.origin!r} not in {ORIGINS}")

  @property
  def num_turns(self) -> int:
    return len(self.turns)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["classes"] = list(self.classes)
    d["turns"] = list(self.turns)
    d["gt_calls"] = [[dict(c) for c in turn] for turn in self.gt_calls]
    d["missing_functions"] = {k: list(v) for k, v in self.missing_functions.items()}
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Task":
    return cls(
        id=d["id"], env=d["env"], category=d["category"], classes=tuple(d["classes"]),
        initial_state=d["initial_state"], turns=tuple(d["turns"]),
        gt_calls=tuple(tuple(dict(c) for c in turn) for turn in d["gt_calls"]),
        missing_functions={str(k): tuple(v) for k, v in d.get("missing_functions", {}).items()},
        lineage=Lineage(**d.get("lineage", {})), meta=dict(d.get("meta", {})))

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

  @classmethod
  def from_json(cls, s: str) -> "Task":
    return cls.from_dict(json.loads(s))

  def to_record(self) -> np.ndarray:
    """The queue format: UTF-8 JSON bytes as a 1-D uint8 array (picklable, mmap-able, no object dtype)."""
    return np.frombuffer(self.to_json().encode("utf-8"), dtype=np.uint8).copy()

  @classmethod
  def from_record(cls, rec: np.ndarray) -> "Task":
    if rec.dtype != np.uint8 or rec.ndim != 1:
      raise ValueError(f"task record must be a 1-D uint8 array, got {rec.dtype} {rec.shape}")
    return cls.from_json(rec.tobytes().decode("utf-8"))

  def replace(self, **kw) -> "Task":
    return dataclasses.replace(self, **kw)
