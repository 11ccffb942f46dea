r"""Pin a warm-up checkpoint in the repository: copy its HF files and record their sha256 and the command that made it.

  python -m launch.pin_checkpoint --src=runs/warmup/warmup --dst=checkpoints/lab_warmup \
      --made_by="python -m launch.warmup --config=configs/static.py --workdir=runs/warmup ..."

Writes ``<dst>/MANIFEST.json`` ({"files": {name: sha256}, "made_by", "code", "selected_step", "exported_step"})
and a short ``<dst>/README.md`` with the same facts; ``verify(dst)`` checks the files against the manifest, so every
later run that starts from the pinned checkpoint is known to start from the same weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

from absl import app, flags

# The HF layout the lab loads (hf_loader.load_hf_checkpoint, load_tokenizer) and the warm-up's history; every other
# file of the directory (e.g. special_tokens_map.json) is pinned too, except the per-step log the history repeats.
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "sft_history.json")
NOT_PINNED = ("sft_metrics.jsonl",)
MANIFEST = "MANIFEST.json"


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def pin(src: str, dst: str, made_by: str, code: str) -> dict:
  """Copies the files of ``src`` (``REQUIRED`` and the rest but ``NOT_PINNED``) to ``dst`` and writes the manifest
  and README; returns the manifest."""
  missing = [f for f in REQUIRED if not os.path.exists(os.path.join(src, f))]
  if missing:
    raise FileNotFoundError(f"--src={src} lacks {missing} (not a finished warm-up checkpoint)")
  files = sorted(f for f in os.listdir(src) if os.path.isfile(os.path.join(src, f)) and f not in NOT_PINNED)
  os.makedirs(dst, exist_ok=True)
  for f in files:
    shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
  with open(os.path.join(dst, "sft_history.json")) as f:
    hist = json.load(f)
  manifest = {"files": {f: sha256(os.path.join(dst, f)) for f in files}, "made_by": made_by, "code": code,
              "selected_step": hist["best_step"], "exported_step": hist.get("exported_step", hist["best_step"])}
  with open(os.path.join(dst, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  with open(os.path.join(dst, "README.md"), "w") as f:
    f.write(_readme(manifest))
  return manifest


def _readme(m: dict) -> str:
  rows = "\n".join(f"| `{name}` | `{digest}` |" for name, digest in sorted(m["files"].items()))
  return (f"# Pinned lab warm-up checkpoint\n\nWeights of supervised step {m['exported_step']} (the zone-based "
          f"selection picked step {m['selected_step']}), HF layout with the lab tokenizer; "
          f"`python -m launch.pin_checkpoint` wrote this directory and `MANIFEST.json`.\n\nMade at code "
          f"{m['code']} by:\n\n```\n{m['made_by']}\n```\n\n| file | sha256 |\n|---|---|\n{rows}\n")


def verify(dst: str) -> dict:
  """The manifest of ``dst`` after checking every listed file's sha256; a clear error on the first mismatch."""
  with open(os.path.join(dst, MANIFEST)) as f:
    manifest = json.load(f)
  for name, digest in sorted(manifest["files"].items()):
    path = os.path.join(dst, name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{dst}: {name} is listed in {MANIFEST} but missing")
    got = sha256(path)
    if got != digest:
      raise ValueError(f"{dst}: {name} has sha256 {got}, {MANIFEST} records {digest}")
  return manifest


def main(argv):
  del argv
  f = flags.FLAGS
  m = pin(f.src, f.dst, f.made_by, f.code)
  print(json.dumps(m, indent=1, sort_keys=True))


if __name__ == "__main__":
  flags.DEFINE_string("src", None, "Finished warm-up checkpoint directory (HF layout + sft_history.json).")
  flags.DEFINE_string("dst", None, "Repository directory to pin it in, e.g. checkpoints/lab_warmup.")
  flags.DEFINE_string("made_by", None, "The exact command that made --src.")
  flags.DEFINE_string("code", None, "The commit the command ran at.")
  flags.mark_flags_as_required(["src", "dst", "made_by", "code"])
  app.run(main)
