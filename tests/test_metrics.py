"""Metric files are written, read back exactly (JSONL and TensorBoard events), restarts resolved, plots drawn."""
import glob
import json
import os
import struct
import time

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rods_jax import metrics as metrics_lib


def _cfg(tensorboard=True):
  c = ml_collections.ConfigDict()
  c.every_steps = 1
  c.tensorboard = tensorboard
  c.progress_bar = False
  c.wandb = False
  return c


def _read_events(logdir):
  """Scalars from TFRecord-framed tensorboardX event files (length, crc, payload, crc), parsed independently."""
  from tensorboardX.proto import event_pb2
  out = {}
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        if v.HasField("simple_value"):
          out[(v.tag, event.step)] = v.simple_value
  return out


def test_jsonl_and_tensorboard_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  written = []
  with metrics_lib.MetricWriter(tmp_path, _cfg()) as writer:
    for step in range(1, 6):
      m = {
          "reward/mean": float(rng.random()),
          "loss": jnp.asarray(rng.normal(), jnp.float32),
          "kl": np.float64(rng.random()),
          "n_calls": int(rng.integers(0, 100)),
          "trajectories": step * 64,
          "frac_zero_std": np.asarray([rng.random()]),
      }
      timings = {"rollout": float(rng.random()), "update": float(rng.random())}
      writer.write(step, m, timings=timings)
      written.append((m, timings))
  records = metrics_lib.read_jsonl(tmp_path / metrics_lib.JSONL_NAME)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  events = _read_events(tmp_path / metrics_lib.TENSORBOARD_DIR)
  for step, (record, (m, timings)) in enumerate(zip(records, written), start=1):
    assert record["critic/score/mean"] == m["reward/mean"]  # written under its public name (metric_names)
    assert record["loss"] == float(m["loss"])  # float32 -> exact in float64
    assert record["kl"] == float(m["kl"])
    assert record["n_calls"] == m["n_calls"] and isinstance(record["n_calls"], int)
    assert record["frac_zero_std"] == float(m["frac_zero_std"][0])
    assert record["timing_s/gen"] == timings["rollout"]
    assert record["wall_time"] > 1e9
    assert events[("critic/score/mean", step)] == pytest.approx(m["reward/mean"], rel=1e-6)  # TB stores float32
    assert events[("timing_s/update_actor", step)] == pytest.approx(timings["update"], rel=1e-6)


def test_nonfinite_and_bad_values(tmp_path):
  with metrics_lib.MetricWriter(tmp_path, _cfg(tensorboard=False)) as writer:
    writer.write(0, {"a": float("nan"), "b": np.inf, "c": 1.5})
    with pytest.raises(ValueError, match="'vec'"):
      writer.write(1, {"vec": np.ones(3)})
    with pytest.raises(ValueError, match="'name'"):
      writer.write(1, {"name": "x"})
    with pytest.raises(ValueError, match="reserved"):
      writer.write(1, {"step": 3})
  assert not os.path.exists(tmp_path / metrics_lib.TENSORBOARD_DIR)
  text = (tmp_path / metrics_lib.JSONL_NAME).read_text()
  assert "NaN" not in text and "Infinity" not in text  # strict JSON
  (record,) = metrics_lib.read_jsonl(tmp_path / metrics_lib.JSONL_NAME)
  assert record["a"] is None and record["b"] is None and record["c"] == 1.5


def test_non_primary_process_writes_nothing(tmp_path):
  with metrics_lib.MetricWriter(tmp_path / "w", _cfg(), is_primary=False) as writer:
    writer.write(1, {"a": 1.0})
  assert not os.path.exists(tmp_path / "w")


def test_read_jsonl_resolves_restarts_and_partial_lines(tmp_path):
  path = tmp_path / "m.jsonl"
  lines = [{"step": s, "v": s} for s in range(1, 8)]  # first run reaches step 7
  lines += [{"step": s, "v": 100 + s} for s in range(5, 10)]  # resumed from the step-4 checkpoint
  path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 10, "v"')
  records = metrics_lib.read_jsonl(path)
  assert [r["step"] for r in records] == list(range(1, 10))
  assert [r["v"] for r in records] == [1, 2, 3, 4, 105, 106, 107, 108, 109]
  assert len(metrics_lib.read_jsonl(path, resolve_restarts=False)) == 12
  # killed after logging train step 3 but before its checkpoint: the resumed run logs step 3 again
  lines = [{"step": 0, "eval/success": 0.5}] + [{"step": s, "v": s, "time/update": 0.1} for s in (1, 2, 3)]
  lines += [{"step": s, "v": 100 + s, "time/update": 0.1} for s in (3, 4)] + [{"step": 4, "eval/success": 0.25}]
  path.write_text("".join(json.dumps(r) + "\n" for r in lines))
  records = metrics_lib.read_jsonl(path)
  assert [(r["step"], r.get("v"), r.get("eval/success")) for r in records] == [
      (0, None, 0.5), (1, 1, None), (2, 2, None), (3, 103, None), (4, 104, None), (4, None, 0.25)]
  path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=":2:"):
    metrics_lib.read_jsonl(path)


def test_phase_timer():
  timer = metrics_lib.PhaseTimer()
  with timer.phase("rollout"):
    time.sleep(0.02)
  with timer.phase("rollout"):
    time.sleep(0.01)
  timer.add("synthesis_wait", 0.5)
  t = timer.pop()
  assert 0.03 <= t["rollout"] < 1.0 and t["synthesis_wait"] == 0.5
  assert timer.pop() == {}


def _png_ok(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 5_000


def test_plots(tmp_path):
  rng = np.random.default_rng(1)
  runs = {}
  for arm in ("rods", "static"):
    with metrics_lib.MetricWriter(tmp_path / arm, _cfg(tensorboard=False)) as writer:
      for step in range(1, 31):
        z = rng.dirichlet(np.ones(3))
        m = {"trajectories": 64 * step, "zones/hard": z[0], "zones/boundary": z[1], "zones/mastered": z[2],
             "pool/origin/seed": 400, "pool/size": 800, "pool/depth/1": 100, "pool/depth/2": 300}
        if step > 5:  # the first synthesized tasks arrive later: the part is absent before (counts 0)
          m["pool/origin/synth"] = int(rng.integers(0, 400))
        if step % 10 == 0:
          m["eval/success"] = float(rng.random())
        writer.write(step, m)
    runs[arm] = metrics_lib.load_run(tmp_path / arm)
  xs, ys = metrics_lib.series(runs["rods"], "eval/success")
  np.testing.assert_array_equal(xs, [640, 1280, 1920])
  _png_ok(metrics_lib.plot_learning_curves(runs, tmp_path / "plots" / "curves.png"))
  _png_ok(metrics_lib.plot_zone_fractions(runs["rods"], tmp_path / "plots" / "zones.png"))
  _png_ok(metrics_lib.plot_series(runs["static"], ["zones/hard", "eval/success"], tmp_path / "plots" / "lines.png"))
  with pytest.raises(ValueError, match="any of"):
    metrics_lib.plot_series(runs["static"], ["nope"], tmp_path / "x.png")
  assert metrics_lib.pool_keys(runs["rods"]) == ["pool/origin/seed", "pool/origin/synth"]
  _png_ok(metrics_lib.plot_pool_composition(runs["rods"], tmp_path / "plots" / "pool.png"))
  _png_ok(metrics_lib.plot_pool_composition(runs["rods"], tmp_path / "plots" / "depth.png", prefix="pool/depth/"))
  with pytest.raises(ValueError, match="eval/missing"):
    metrics_lib.plot_learning_curves(runs, tmp_path / "x.png", y="eval/missing")
  del runs["rods"][3]["zones/hard"]  # a zone-less record is skipped, not drawn as 0
  _png_ok(metrics_lib.plot_zone_fractions(runs["rods"], tmp_path / "plots" / "zones2.png"))
  with pytest.raises(ValueError, match="pool/nothing/"):
    metrics_lib.plot_pool_composition(runs["rods"], tmp_path / "x.png", prefix="pool/nothing/")


def test_write_config(tmp_path):
  config = ml_collections.ConfigDict({"a": 1, "b": {"c": "x"}})
  with metrics_lib.MetricWriter(tmp_path, _cfg()) as writer:
    writer.write_config(config)
  assert json.loads((tmp_path / "config.json").read_text()) == {"a": 1, "b": {"c": "x"}}
