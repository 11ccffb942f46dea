#!/usr/bin/env bash
# The benchmark suites on a lent accelerator, as one prepared run of at most ~8 minutes, writing JSON.
#
#   bash launch/device_bench.sh [OUT_DIR]      # OUT_DIR default: $OUT if set (the device tool), else docs/benchmarks
#
# Expects a Python with this repository's requirements and an accelerator build of jaxlib (PYTHON, default python3).
# Each suite runs under its own time limit so one slow suite cannot take the others' time; a suite that fails or
# times out leaves its log next to the JSONs instead of stopping the rest. The JSONs name the machine (device kind,
# driver) and the code commit; commit them under docs/benchmarks/<kind>_*.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-docs/benchmarks}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS="${JAX_PLATFORMS:-cuda,cpu}"

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  "$PY" -c "import jax; print(jax.__version__, jax.devices())"; } > "$OUT_DIR/device_info.txt" 2>&1

run() {  # name, seconds, benchmark flags...
  local name="$1" limit="$2"; shift 2
  timeout "$limit" "$PY" -m launch.benchmark --out="$OUT_DIR/$name.json" "$@" > "$OUT_DIR/$name.log" 2>&1 \
    && rm -f "$OUT_DIR/$name.log" || echo "suite $name failed or timed out: $OUT_DIR/$name.log"
}
# lab model: the engine vs re-prefill, and full GRPO steps (padded / real tokens / overlap) at 64 and 256 rows
run lab_rollout 120 --suite=rollout --min_stopped_frac=1.0 --cohorts=2 --repeats=3
run lab_grpo_step 180 --suite=grpo_step --grpo_rows=64,256 --repeats=3 --grpo_warmup=2
# a real model shape: the train step's MFU against a matmul peak measured in the same run, and a decode step
run qwen3_0_6b_train 90 --suite=train --preset=qwen3_0_6b --vocab=151936 --train_batch=16 --train_seq=512 --repeats=3
run qwen3_0_6b_decode 60 --suite=decode --preset=qwen3_0_6b --vocab=151936 --decode_rows=64 --decode_kv_len=2048 \
  --repeats=5
ls -l "$OUT_DIR"
