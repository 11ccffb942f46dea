"""train.overlap: the next rollout runs during the update (one update stale), the curriculum sees batches in step
order, and a run killed mid-overlap resumes to exactly the uninterrupted run (lab model, synthesis on, inline)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rods_jax import metrics as metrics_lib
from rods_jax.rods import loop
from rods_jax.rollout.engine import MultiTurnEngine
from test_loop import lab_config

STEPS = 6
INNER = "RODS_JAX_OVERLAP_INNER"


def overlap_config(tokenizer_dir):
  c = lab_config(tokenizer_dir, steps=STEPS)
  c.train.overlap = True
  c.synthesis.process = False  # inline synthesis: which tasks arrive when is deterministic
  c.mesh.data, c.mesh.fsdp = 1, 1  # overlap runs on one device (validation refuses a mesh)
  c.optim.lr = 1e-3  # one update moves the policy enough that a batch sampled before it has ratio ≠ 1
  return c


def per_step(workdir):
  """The last record of every step (a resumed run rewrites the steps after its checkpoint)."""
  out = {}
  for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    if "zones/boundary" in r:
      out[r["step"]] = r
  return out


def comparable(rec):
  return {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not k.startswith(("time/", "timing_s/"))
          and not k.endswith("_s") and "drain" not in k}


class Killed(RuntimeError):
  pass


def test_overlap_in_a_one_device_process():
  """train.overlap needs one device, and the suite's processes simulate 8: the test below runs in its own."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", INNER: "1"}
  here = os.path.dirname(os.path.abspath(__file__))
  out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", f"{__file__}::test_overlap_resumes_exactly"],
                       cwd=os.path.dirname(here), env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout[-4000:] + out.stderr[-2000:]


@pytest.mark.skipif(os.environ.get(INNER) != "1", reason="run by test_overlap_in_a_one_device_process")
def test_overlap_resumes_exactly(tmp_path, lab_tokenizer_dir, monkeypatch):
  import jax
  assert jax.device_count() == 1
  c = overlap_config(lab_tokenizer_dir)
  # An untrained policy's groups are nearly all zero-variance (no update, nothing to be stale about): a deterministic
  # function of each trajectory's tokens is added to its reward, so groups disagree and updates move the policy.
  real_rollout = MultiTurnEngine.rollout

  def noisy(self, *args, **kwargs):
    batch = real_rollout(self, *args, **kwargs)
    jitter = (batch.tokens.astype(np.int64).sum(axis=1) % 7).reshape(batch.rewards.shape) / 20.0
    return batch._replace(rewards=np.clip(batch.rewards + jitter, 0.0, 1.0).astype(np.float32))

  monkeypatch.setattr(MultiTurnEngine, "rollout", noisy)
  whole = str(tmp_path / "whole")
  st = loop.train(c, whole, evaluate_heldout=False)
  assert st.step == STEPS
  ref = per_step(whole)
  assert sorted(ref) == list(range(1, STEPS + 1))
  stale = [ref[s]["train/staleness"] for s in range(1, STEPS + 1)]
  # a checkpoint (the first step's, then every 3 steps) drains the pipeline: the rollout after it is fresh
  assert stale == [0, 0, 1, 0, 1, 1], stale
  # A stale batch after an update that changed the policy: the trainer's log-probs (at the pre-update params) differ
  # from the sampler's by that update; a fresh batch differs only by numerics.
  diff = {s: ref[s]["rollout/logp_absdiff_mean"] for s in ref}
  moved = [s for s in (3, 5, 6) if ref[s - 1].get("actor/skipped") == 0.0]
  assert moved, [ref[s].get("actor/skipped") for s in ref]
  assert min(diff[s] for s in moved) > 10 * max(diff[s] for s in (1, 2, 4)), diff

  # the same run, killed inside the rollout of step 5 (which runs during update 4), then resumed from step 3
  calls = {"n": 0}

  def dying_rollout(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 5:
      raise Killed("killed during the overlapped rollout of step 5")
    return noisy(self, *args, **kwargs)

  monkeypatch.setattr(MultiTurnEngine, "rollout", dying_rollout)
  broken = str(tmp_path / "broken")
  with pytest.raises(Killed):
    loop.train(c, broken, evaluate_heldout=False)
  monkeypatch.setattr(MultiTurnEngine, "rollout", noisy)
  st = loop.train(c, broken, evaluate_heldout=False)
  assert st.step == STEPS
  got = per_step(broken)
  diffs = []
  for s in range(1, STEPS + 1):
    want, have = comparable(ref[s]), comparable(got[s])
    assert set(want) == set(have), s
    diffs += [(s, key, want[key], have[key]) for key in want
              if have[key] != pytest.approx(want[key], rel=1e-6, abs=1e-9)]
  assert not diffs, diffs
  ids = lambda wd: [json.loads(x)["id"] for x in open(os.path.join(wd, "candidates.jsonl"))]  # noqa: E731
  assert ids(broken) == ids(whole) and len(ids(whole)) > 0  # same accepted tasks, in the same order
  parts = [loop.build(c, wd) for wd in (whole, broken)]
  try:
    a, b = (p.curriculum.buffer.state_dict() for p in parts)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # same buffer
    for x, y in zip(jax.tree.leaves(parts[0].learner.params), jax.tree.leaves(parts[1].learner.params)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  finally:
    for p in parts:
      p.close()
