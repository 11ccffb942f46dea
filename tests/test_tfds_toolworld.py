"""TFDS toolworld builder: builds array_record into a temp dir and reads every task back losslessly, without
TensorFlow."""
import importlib.util
import sys

from rods_jax.data import toolworld_builder as tb
from rods_jax.envs.toolworld import env as tw_env


def test_build_and_read_back_losslessly_without_tensorflow(tmp_path):
  assert importlib.util.find_spec("tensorflow") is None, "tensorflow must not be installed"
  cache = str(tmp_path / "cache")
  tb.build(str(tmp_path / "tfds"), config="lab", cache_dir=cache)
  for split in ("seeds", "test"):
    want = tw_env.load_split(split, cache)
    source = tb.data_source(str(tmp_path / "tfds"), split, config="lab")
    assert len(source) == len(want) == 400
    got = tb.read_tasks(str(tmp_path / "tfds"), split, config="lab")
    assert [t.to_json() for t in got] == [t.to_json() for t in want]
    assert got == want
    row = source[7]
    assert int(row["num_turns"]) == want[7].num_turns and int(row["depth"]) == want[7].meta["profile"]["depth"]
  assert "tensorflow" not in sys.modules
  # building again is a no-op on the existing files
  tb.build(str(tmp_path / "tfds"), config="lab", cache_dir=cache)
