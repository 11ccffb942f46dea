"""The committed results directory of ``launch.study``: which runs are already done there, copying a finished run
into it, and committing it, so a study interrupted at any moment continues from what the repository holds."""
from __future__ import annotations

import os
import subprocess

from launch import report

RUN_FILES = ("metrics.jsonl.gz", "events.jsonl.gz", "config.json", "final_eval.json")
# study run name of a warm-up evaluation -> prefix of its files in the results directory
WARMUP_EVALS = {"_warmup_eval": "warmup", "_warmup_late_eval": "warmup_late"}


def expected_files(results_dir: str, name: str) -> list[str]:
  """The files whose presence in ``results_dir`` means run ``name`` is finished (compact logs and final evaluation;
  for a warm-up evaluation, its evaluation and supervised history)."""
  if name in WARMUP_EVALS:
    prefix = WARMUP_EVALS[name]
    return [os.path.join(results_dir, f"{prefix}_final_eval.json"), os.path.join(results_dir,
                                                                                f"{prefix}_sft_history.json")]
  return [os.path.join(results_dir, name, f) for f in RUN_FILES]


def is_done(results_dir: str, name: str) -> bool:
  return all(os.path.exists(p) for p in expected_files(results_dir, name))


def save(workdir: str, name: str, results_dir: str, split: str) -> list[str]:
  """Copies finished run ``name`` (its study workdir ``workdir``) into ``results_dir`` as ``launch.report`` reads
  it; returns the paths written. Raises if the run left no final evaluation: a run without one is not finished."""
  if name in WARMUP_EVALS:
    written = report.compact_warmup(workdir, results_dir, WARMUP_EVALS[name], split)
  else:
    report.compact_run(workdir, os.path.join(results_dir, name), split)
    written = [os.path.join(results_dir, name)]
  missing = [p for p in expected_files(results_dir, name) if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"{name}: finished but {workdir} gave no {', '.join(map(os.path.basename, missing))}")
  return written


def repo_root(path: str) -> str:
  """The git work tree holding ``path`` (created if missing); a clear error when there is none."""
  os.makedirs(path, exist_ok=True)
  out = subprocess.run(["git", "-C", path, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                       check=False)
  if out.returncode != 0:
    raise ValueError(f"--commit: {path} is not inside a git work tree ({out.stderr.strip()})")
  return out.stdout.strip()


def commit(paths: list[str], message: str, root: str) -> None:
  """``git add`` + ``git commit`` of exactly ``paths`` (anything else staged in ``root`` stays staged, uncommitted)."""
  rel = [os.path.relpath(os.path.abspath(p), root) for p in paths]
  subprocess.run(["git", "-C", root, "add", "--", *rel], check=True, capture_output=True, text=True)
  subprocess.run(["git", "-C", root, "commit", "-q", "-m", message, "--", *rel], check=True, capture_output=True,
                 text=True)
