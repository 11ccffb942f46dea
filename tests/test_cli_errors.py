"""User errors on the launchers' command line: one line on stderr naming the field, the bad value and what is
allowed, exit status 2, before any work (no traceback, the workdir is not created)."""
import os
import subprocess
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [  # (override, what the one line must say after "error: ")
    ("--config.rods.foo=1", ["config.rods.foo=1 is not a known field", "config.rods has alpha_high, alpha_low"]),
    ("--config.rods.pmax=200", ["config.rods.pmax=200 is not a known field", "did you mean config.rods.p_max?"]),
    ("--config.rodz.p_max=200", ["config.rodz.p_max=200 is not a known field", "did you mean config.rods.p_max?"]),
    ("--config.model.checkpoint_dir=/nonexistent",
     ["config.model.checkpoint_dir='/nonexistent' is not a directory", "Hugging Face checkpoint directory"]),
    ("--config.sft.init_checkpoint=/nonexistent",
     ["config.sft.init_checkpoint='/nonexistent' is not a directory", "Hugging Face checkpoint directory"]),
    ("--config.optim.lr=nan", ["config.optim.lr=nan must be a finite number"]),
    ("--config.optim.lr=inf", ["config.optim.lr=inf must be a finite number"]),
    ("--config.rollout.temperature=nan", ["config.rollout.temperature=nan must be a finite number"]),
]


def test_bad_config_fields_and_values_fail_with_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = []
  for i, (override, _) in enumerate(CASES):  # all at once: each is a short interpreter start
    workdir = tmp_path / f"run{i}"
    procs.append((workdir, subprocess.Popen(
        [sys.executable, "-m", "launch.train", "--config=configs/rods.py", f"--workdir={workdir}", "--validate_only",
         override], cwd=_REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
  for (override, needles), (workdir, proc) in zip(CASES, procs):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (override, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config."), (override, err)
    for needle in needles:
      assert needle in lines[0], (override, lines[0])
    assert out == "" and not workdir.exists()


@pytest.mark.parametrize("bad", ["tokenizer", "checkpoint"])
def test_check_paths_names_missing_marker_files(tmp_path, bad):
  from configs import base
  from rods_jax import config_validation
  c = base.get_config()
  empty = tmp_path / "empty"
  empty.mkdir()
  config_validation.check_paths(c)  # the defaults read no local directory
  if bad == "tokenizer":
    c.model.tokenizer_dir = str(tmp_path / "missing")
    match = r"config\.model\.tokenizer_dir='.*missing' is not a directory; expected a local tokenizer directory"
  else:
    c.model.checkpoint_dir = str(empty)
    match = r"config\.model\.checkpoint_dir='.*empty' has no config\.json"
  with pytest.raises(config_validation.ConfigError, match=match):
    config_validation.check_paths(c)
  (empty / "config.json").write_text("{}")
  c.model.tokenizer_dir = str(empty)
  c.model.checkpoint_dir = "gs://bucket/ckpt"  # remote: left to the run's own client
  config_validation.check_paths(c)
