"""TFDS builder ``toolworld``: the fixed toolworld splits as array_record, read back without TensorFlow.

Each example is one task: id, category, number of turns, dependency depth and the lossless Task JSON
(``Task.to_json``; ``Task.from_json`` restores it exactly).

  from rods_jax.data import toolworld_builder as tb
  tb.build(data_dir)                              # config "full": seeds 400, test 400, offline 16,000
  tb.build(data_dir, config="lab")                # seeds + test only (quick)
  source = tb.data_source(data_dir, "seeds")      # random-access sequence of dicts (tfds.data_source)
  tasks = tb.read_tasks(data_dir, "test")         # -> list[Task]

Tasks come from ``rods_jax.envs.toolworld.env.load_split`` (the same deterministic splits as ``env.load_tasks``; the
split cache directory is ``cache_dir`` or the default $RODS_JAX_CACHE / ~/.cache/rods_jax).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from rods_jax.envs.task import Task
from rods_jax.envs.toolworld import env as tw_env
from rods_jax.envs.toolworld import generator

NAME = "toolworld"


@dataclasses.dataclass
class ToolworldConfig(tfds.core.BuilderConfig):  # tfds' BuilderConfig is a non-frozen dataclass
  splits: tuple[str, ...] = ("seeds", "test", "offline")


class Toolworld(tfds.core.GeneratorBasedBuilder):
  """toolworld (rods_jax procedural lab environment), generator version in the release notes."""

  VERSION = tfds.core.Version(f"1.0.{generator.GENERATOR_VERSION}")
  RELEASE_NOTES = {f"1.0.{generator.GENERATOR_VERSION}": f"toolworld generator v{generator.GENERATOR_VERSION}."}
  BUILDER_CONFIGS = [
      ToolworldConfig(name="full", description="seeds 400, test 400, offline 16,000"),
      ToolworldConfig(name="lab", description="seeds 400, test 400", splits=("seeds", "test")),
  ]
  DEFAULT_CONFIG_NAME = "full"

  def __init__(self, *, cache_dir: str = "", **kwargs):
    """cache_dir: toolworld split cache ("" = tw_env.default_cache_dir()); only used while building."""
    self._cache_dir = cache_dir if cache_dir else tw_env.default_cache_dir()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "category": tfds.features.Text(),
            "num_turns": np.int32,
            "depth": np.int32,
            "task_json": tfds.features.Text(),
        }),
        homepage="https://github.com/rods-jax/rods_jax",
        license="Apache-2.0",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # procedural: nothing to download
    return {split: self._generate_examples(split) for split in self.builder_config.splits}

  def _generate_examples(self, split: str):
    for task in tw_env.load_split(split, self._cache_dir):
      yield task.id, {"id": task.id, "category": task.category, "num_turns": task.num_turns,
                      "depth": int(task.meta["profile"]["depth"]), "task_json": task.to_json()}


def build(data_dir: str, config: str = "full", cache_dir: str = "") -> Toolworld:
  """Builds (once; a no-op when already built) the array_record dataset under ``data_dir``."""
  if config not in ("full", "lab"):
    raise ValueError(f"toolworld TFDS config {config!r} not in ('full', 'lab')")
  builder = Toolworld(data_dir=data_dir, config=config, cache_dir=cache_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder


def data_source(data_dir: str, split: str, config: str = "full"):
  """Random-access view of a built split (``tfds.data_source``; no TensorFlow needed)."""
  return tfds.data_source(f"{NAME}/{config}", split=split, data_dir=data_dir, download=False,
                          builder_kwargs={"file_format": "array_record"})


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_tasks(data_dir: str, split: str, config: str = "full") -> list[Task]:
  """The tasks of a built split, in stored order."""
  source = data_source(data_dir, split, config)
  return [Task.from_json(_text(source[i]["task_json"])) for i in range(len(source))]
