"""TFDS builder ``bfcl_multi_turn``: the 800 BFCL multi-turn tasks as array_record, split train/test by scenario.

Each example is one task: its id, category, scenario index, number of turns and the lossless Task JSON
(``Task.to_json``; ``Task.from_json`` restores it exactly). Built and read without TensorFlow:

  from rods_jax.data import bfcl_builder
  bfcl_builder.build(data_dir)                           # writes <data_dir>/bfcl_multi_turn/<version>/
  source = bfcl_builder.data_source(data_dir, "train")   # random-access sequence of dicts (tfds.data_source)
  tasks = bfcl_builder.read_tasks(data_dir, "test")      # -> list[Task], 400 each split
  python -c "from rods_jax.data import bfcl_builder as b; b.build('<data_dir>')"   # from the shell

The split is rods_jax/envs/bfcl/split.json (100 scenario indices per side, the same for all 4 categories).
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from rods_jax.envs.bfcl import env as bfcl_env
from rods_jax.envs.task import CATEGORIES, Task

NAME = "bfcl_multi_turn"


class BfclMultiTurn(tfds.core.GeneratorBasedBuilder):
  """BFCL multi-turn (bfcl-eval 2026.3.23): 4 categories x 200 scenarios, split 100/100 by scenario index."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "bfcl-eval 2026.3.23; split seed in rods_jax/envs/bfcl/split.json."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "category": tfds.features.Text(),
            "scenario": np.int32,
            "num_turns": np.int32,
            "task_json": tfds.features.Text(),
        }),
        homepage="https://github.com/ShishirPatil/gorilla/tree/main/berkeley-function-call-leaderboard",
        license="Apache-2.0 (bfcl-eval data)",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything comes from the installed wheel
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split: str):
    for category in CATEGORIES:
      for task in bfcl_env.load_tasks(category, split):
        yield task.id, {"id": task.id, "category": task.category, "scenario": int(task.meta["scenario"]),
                        "num_turns": task.num_turns, "task_json": task.to_json()}


def build(data_dir: str) -> BfclMultiTurn:
  """Builds (once; a no-op when already built) the array_record dataset under ``data_dir``."""
  builder = BfclMultiTurn(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder


def data_source(data_dir: str, split: str):
  """Random-access view of a built split (``tfds.data_source``; no TensorFlow needed)."""
  return tfds.data_source(NAME, split=split, data_dir=data_dir, download=False,
                          builder_kwargs={"file_format": "array_record"})


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_tasks(data_dir: str, split: str) -> list[Task]:
  """The tasks of a built split, in stored order (category-major, then scenario)."""
  source = data_source(data_dir, split)
  return [Task.from_json(_text(source[i]["task_json"])) for i in range(len(source))]
