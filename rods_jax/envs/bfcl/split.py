"""The fixed train/test split of BFCL multi-turn, by scenario index.

The 4 categories share their 200 scenarios (``multi_turn_base_17`` and ``multi_turn_miss_param_17`` are the same
scenario), so the split is over scenario indices and the same indices go to the same side in every category: each
split has 100 tasks per category (400 in all) and no scenario is on both sides.

Ids fall in 4 domain blocks of 50 (GorillaFileSystem 0-49, VehicleControlAPI 50-99, TradingBot 100-149, TravelAPI
150-199), so the split is stratified: within each block, ``numpy.random.default_rng(SPLIT_SEED).permutation(50)`` (one
generator, blocks in order) sends the first 25 to train and the rest to test. ``split.json`` holds the result;
``make_split()`` regenerates it and a test checks they agree.
"""
from __future__ import annotations

import importlib.resources
import json

import numpy as np

SPLIT_SEED = 20251125
SPLITS = ("train", "test")
_BLOCK = 50
_NUM_SCENARIOS = 200


def make_split(seed: int = SPLIT_SEED) -> dict[str, list[int]]:
  """Regenerates the split: {"train": sorted 100 indices, "test": sorted 100 indices}."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for start in range(0, _NUM_SCENARIOS, _BLOCK):
    perm = rng.permutation(_BLOCK) + start
    train += perm[:_BLOCK // 2].tolist()
    test += perm[_BLOCK // 2:].tolist()
  return {"train": sorted(train), "test": sorted(test)}


def split_indices(split: str) -> tuple[int, ...]:
  """The scenario indices of ``split`` ("train" | "test"), read from the package's split.json."""
  if split not in SPLITS:
    raise ValueError(f"BFCL split {split!r} not in {SPLITS}")
  text = (importlib.resources.files("rods_jax.envs.bfcl") / "split.json").read_text(encoding="utf-8")
  return tuple(json.loads(text)[split])
