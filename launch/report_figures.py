"""The figures of docs/results.md (PNG, matplotlib's object API: no global pyplot state), from the run records and
the tables that ``launch.report`` computes."""
from __future__ import annotations

import os

import numpy as np

from rods_jax import metrics as metrics_lib


def arm_colors(names) -> dict[str, tuple]:
  """A distinct colour per arm: tab10 for up to 10, tab20 for up to 20 (matplotlib's default cycle repeats after 10,
  so the 11th arm took the 1st arm's blue), evenly spaced hues beyond."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  names = list(names)
  if len(names) <= 20:
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i) for i, n in enumerate(names)}
  cmap = colormaps["hsv"]
  return {n: cmap(i / len(names)) for i, n in enumerate(names)}


# Arms beyond the paper also get a line style, so they stand out from the paper's arms.
ARM_STYLE = {"rods_posterior": {"linestyle": "--"}}


def figures(runs: dict[str, dict], arms: dict[str, dict], mech: dict, fig_dir: str) -> list[str]:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  os.makedirs(fig_dir, exist_ok=True)
  made = []
  color = arm_colors(arms)

  def save(fig, name):
    p = os.path.join(fig_dir, name)
    fig.savefig(p, dpi=110, bbox_inches="tight")
    made.append(p)

  def finish(ax):  # a curve against the run's x-axis
    ax.set_xlabel("trajectories consumed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)

  # Learning curves: mean over seeds per arm; held-out greedy success and mean R_P vs trajectories.
  fig = Figure(figsize=(12, 4.2))
  axes = fig.subplots(1, 2)
  n_tasks = None
  for arm, a in arms.items():
    for ax, key, scale in ((axes[0], "eval/success", 100.0), (axes[1], "eval/progress", 1.0)):
      curves = [metrics_lib.series(runs[n]["records"], key) for n in a["runs"]]
      xs = min((c[0] for c in curves), key=len)
      ys = np.stack([c[1][:len(xs)] for c in curves])
      ax.plot(xs, scale * ys.mean(0), marker="o", markersize=3, label=f"{arm} (n={len(ys)})", color=color[arm],
              linewidth=2.5 if arm in ("rods", "static", "rods_posterior") else 1.2, **ARM_STYLE.get(arm, {}))
    n_tasks = next((r.get("eval/n_tasks") for n in a["runs"] for r in runs[n]["records"] if "eval/n_tasks" in r),
                   n_tasks)
  axes[0].set_ylabel(f"held-out success (%), greedy, {n_tasks} toolworld test tasks")
  axes[1].set_ylabel("held-out mean progress reward R_P")
  for ax in axes:
    finish(ax)
  save(fig, "learning_curves.png")
  # frac_zero_std over time per arm (smoothed).
  fig = Figure(figsize=(7, 4))
  ax = fig.subplots()
  for arm, a in arms.items():
    xs, ys = metrics_lib.series(runs[a["runs"][0]]["records"], "zones/zero_std")
    if xs.size:
      w = max(1, xs.size // 20)
      ys = np.convolve(ys, np.ones(w) / w, mode="same")
      ax.plot(xs, ys, label=arm, color=color[arm], **ARM_STYLE.get(arm, {}))
  ax.set_ylabel("fraction of groups with zero reward variance")
  finish(ax)
  save(fig, "frac_zero_std.png")
  # Variance per zone.
  fig = Figure(figsize=(4.5, 3.5))
  ax = fig.subplots()
  v = mech["variance_by_zone"]
  ax.bar(list(v), [v[z] for z in v], color=["#c44", "#4a4", "#48c"])
  ax.set_ylabel("mean within-group variance of R_P")
  ax.set_title(f"boundary / other zones = {mech['variance_ratio_boundary']:.2f}x")
  save(fig, "variance_by_zone.png")
  # First observed r̄ of injected variants.
  if mech["_firsts"]:
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.hist(mech["_firsts"], bins=np.linspace(0, 1, 21), color="#4a4")
    ax.axvspan(0.25, 0.75, color="grey", alpha=0.15, label="paper: [0.25, 0.75]")
    ax.set_xlabel("first observed r̄ of an injected variant")
    ax.set_ylabel("variants")
    ax.legend()
    save(fig, "injected_first_rbar.png")
  # Pool composition and zones of the first rods run.
  rods_runs = arms.get("rods", {}).get("runs", [])
  if rods_runs:
    recs = runs[rods_runs[0]]["records"]
    try:
      metrics_lib.plot_pool_composition(recs, os.path.join(fig_dir, "pool_composition.png"))
      made.append(os.path.join(fig_dir, "pool_composition.png"))
      metrics_lib.plot_zone_fractions(recs, os.path.join(fig_dir, "zones_rods.png"))
      made.append(os.path.join(fig_dir, "zones_rods.png"))
    except ValueError:
      pass
  return made
