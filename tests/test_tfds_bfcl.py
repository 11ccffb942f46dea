"""TFDS builder bfcl_multi_turn: array_record, train/test, read back with tfds.data_source (no TensorFlow), lossless."""
import sys

from rods_jax.data import bfcl_builder
from rods_jax.envs.bfcl import env
from rods_jax.envs.task import CATEGORIES


def test_build_and_read_back_losslessly(tmp_path):
  bfcl_builder.build(str(tmp_path))
  files = sorted(p.name for p in (tmp_path / bfcl_builder.NAME / "1.0.0").iterdir())
  assert any(f.startswith("bfcl_multi_turn-train.array_record") for f in files)
  assert any(f.startswith("bfcl_multi_turn-test.array_record") for f in files)
  seen = set()
  for split in ("train", "test"):
    want = [t for c in CATEGORIES for t in env.load_tasks(c, split)]
    got = bfcl_builder.read_tasks(str(tmp_path), split)
    assert len(got) == 400
    assert got == want  # Task equality on every field, in load order (disable_shuffling keeps it)
    source = bfcl_builder.data_source(str(tmp_path), split)
    for i in range(0, len(source), 37):
      ex = source[i]
      task = next(t for t in want if t.id == ex["id"].decode())
      assert ex["category"].decode() == task.category and int(ex["scenario"]) == task.meta["scenario"]
      assert int(ex["num_turns"]) == task.num_turns
    ids = {t.id for t in got}
    assert not ids & seen
    seen |= ids
  assert len(seen) == 800
  bfcl_builder.build(str(tmp_path))  # idempotent: reuses the prepared data
  assert "tensorflow" not in sys.modules
