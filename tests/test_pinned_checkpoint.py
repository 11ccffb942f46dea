"""launch.pin_checkpoint: the manifest records each file's sha256 and the command; verify() catches any change."""
import json
import os

import pytest

from launch import pin_checkpoint


def _fake_warmup(d, exported_step=None):
  os.makedirs(d)
  for name in (*pin_checkpoint.REQUIRED, "special_tokens_map.json"):
    with open(os.path.join(d, name), "w") as f:
      f.write(json.dumps({"name": name}))
  hist = {"best_step": 700, "history": []}
  if exported_step is not None:
    hist["exported_step"] = exported_step
  with open(os.path.join(d, "sft_history.json"), "w") as f:
    json.dump(hist, f)
  with open(os.path.join(d, "sft_metrics.jsonl"), "w") as f:  # per-step log: not pinned
    f.write("{}\n")


def test_pin_records_sha256_and_command_and_verify_catches_changes(tmp_path):
  src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
  _fake_warmup(src, exported_step=1000)
  m = pin_checkpoint.pin(src, dst, "python -m launch.warmup --x=1", "abc1234")
  pinned = [*pin_checkpoint.REQUIRED, "special_tokens_map.json"]  # not the per-step log
  assert sorted(os.listdir(dst)) == sorted([*pinned, "MANIFEST.json", "README.md"]) and sorted(m["files"]) == sorted(
      pinned)
  assert m["selected_step"] == 700 and m["exported_step"] == 1000 and m["made_by"] == "python -m launch.warmup --x=1"
  assert m["files"]["config.json"] == pin_checkpoint.sha256(os.path.join(src, "config.json"))
  readme = open(os.path.join(dst, "README.md")).read()
  assert m["files"]["model.safetensors"] in readme and "python -m launch.warmup --x=1" in readme
  assert pin_checkpoint.verify(dst) == m
  with open(os.path.join(dst, "model.safetensors"), "a") as f:
    f.write(" ")
  with pytest.raises(ValueError, match="model.safetensors has sha256"):
    pin_checkpoint.verify(dst)
  os.remove(os.path.join(dst, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match="model.safetensors is listed"):
    pin_checkpoint.verify(dst)
  os.remove(os.path.join(src, "tokenizer.json"))
  with pytest.raises(FileNotFoundError, match="lacks \\['tokenizer.json'\\]"):
    pin_checkpoint.pin(src, str(tmp_path / "dst2"), "cmd", "abc")
