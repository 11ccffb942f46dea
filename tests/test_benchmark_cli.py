"""launch.benchmark's command line: a model-only suite in a fresh process, written as the JSON the report reads."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_decode_suite_in_a_fresh_process_writes_its_json(tmp_path):
  # run_isolated drops the caller's --suite/--out/--vocab and sets its own, keeping every other flag. Called in a
  # process of its own: launch modules define absl flags at import, and other tests import launch.study (--out too).
  argv = ["benchmark", "--suite=all", "--out=x.json", "--vocab=7", "--preset=lab_tiny", "--decode_rows=4",
          "--decode_kv_len=64", "--decode_steps=4", "--repeats=1", "--warmup=0"]
  code = ("import json, sys; from launch import benchmark; "
          f"print('RESULT' + json.dumps(benchmark.run_isolated('decode', 96, {argv!r})))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
  got = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert got["rows"] == 4 and got["kv_len"] == 64 and got["steps"] == 4
  assert got["step_ms"] > 0 and 0 < got["mbu"] and got["stream_gbps"] > 0
  import jax
  import numpy as np
  from flax import nnx
  from rods_jax.models import Transformer, get_preset
  from rods_jax.rollout.bench import decode_bytes
  cfg = get_preset("lab_tiny", vocab_size=96)  # the vocab passed in, not the caller's --vocab=7
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))[1]))
  assert got["bytes_per_step"] == decode_bytes(cfg, n_params, 4, 64, 4, 4)
  out = tmp_path / "b.json"
  subprocess.run([sys.executable, "-m", "launch.benchmark", "--suite=decode", f"--out={out}", "--decode_rows=2",
                  "--decode_kv_len=64", "--decode_steps=2", "--repeats=1", "--vocab=96"], check=True, cwd=ROOT,
                 capture_output=True)
  data = json.loads(out.read_text())
  assert set(data) == {"machine", "decode"} and data["decode"]["rows"] == 2
  assert data["machine"]["cpu_count"] == os.cpu_count()
