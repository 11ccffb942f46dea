"""Every run gets its plots: rods_jax.metrics.plot_run (what launch.train writes at the end), and the report's arm
colours stay distinct past matplotlib's 10-colour cycle."""
import numpy as np

from rods_jax import metrics as metrics_lib
from test_metrics import _cfg, _png_ok


def _records(rng, n, with_eval):
  recs = []
  for i in range(1, n + 1):
    z = rng.dirichlet(np.ones(3))
    r = {"step": i, "trajectories": 64 * i, "zones/hard": z[0], "zones/boundary": z[1], "zones/mastered": z[2],
         "pool/origin/seed": 8, "pool/size": 8 + i}
    if i > 2:
      r["pool/origin/synth"] = i - 2
    recs.append(r)
    if with_eval and i % 2 == 0:
      recs.append({"step": i, "trajectories": 64 * i, "eval/success": float(rng.random())})
  return recs


def test_plot_run_draws_what_the_records_have(tmp_path):
  rng = np.random.default_rng(12)
  written, skipped = metrics_lib.plot_run(_records(rng, 6, True), tmp_path / "a", "rods")
  assert [p.rsplit("/", 1)[-1] for p in written] == list(metrics_lib.RUN_PLOTS) and not skipped
  for p in written:
    _png_ok(p)
  written, skipped = metrics_lib.plot_run(_records(rng, 4, False), tmp_path / "b", "static")
  assert len(written) == 2 and list(skipped) == ["learning_curve.png"] and "eval/success" in skipped["learning_curve.png"]


def test_launch_train_writes_the_plots_of_a_finished_run(tmp_path):
  import ml_collections
  from launch import train
  rng = np.random.default_rng(13)
  with metrics_lib.MetricWriter(tmp_path, _cfg(tensorboard=False)) as writer:
    for r in _records(rng, 5, True):
      writer.write(r["step"], {k: v for k, v in r.items() if k != "step"})
  written = train.write_plots(ml_collections.ConfigDict({"arm": "rods"}), str(tmp_path))
  assert sorted(p.rsplit("/", 1)[-1] for p in written) == sorted(metrics_lib.RUN_PLOTS)


def test_report_colours_eleven_and_more_arms_distinctly():
  from launch.report_figures import arm_colors
  for n in (8, 11, 20, 27):
    colors = arm_colors([f"arm{i}" for i in range(n)])
    assert len(set(colors.values())) == n
