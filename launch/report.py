r"""Regenerate every table and figure of docs/results.md from run logs.

  python -m launch.report --import_runs=runs/study     # compact runs/study/* into docs/runs/, then report
  python -m launch.report                              # report from the committed compact logs in docs/runs/

Compact logs (``docs/runs/<run>/metrics.jsonl.gz``, ``events.jsonl.gz``, ``config.json``) keep the keys the report
reads, so the numbers in docs/results.json can be regenerated from the repository alone. Outputs:
docs/results.json, docs/results_tables.md, docs/figures/*.png.
"""
import gzip
import json
import math
import os
import re
import shutil

from absl import app, flags
import numpy as np

from launch.report_figures import figures
from launch.report_tables import fill_markers, tables, warmup_calibration
from rods_jax import metric_names
from rods_jax import metrics as metrics_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("import_runs", "", "A study directory (launch.study --out) to compact into --runs_dir first.")
flags.DEFINE_string("runs_dir", "docs/runs", "Compact run logs.")
flags.DEFINE_string("docs", "docs", "Where results.json, results_tables.md and figures/ go.")
flags.DEFINE_string("benchmarks", "docs/benchmarks", "Benchmark JSON files to include (launch.benchmark --out).")

KEEP = re.compile(r"^(step|trajectories|critic/score/mean|rollout/success|actor/kl_loss|actor/entropy|"
                  r"zones/(hard|boundary|mastered|zero_std|var_hard|var_boundary|var_mastered)|pool/(size|seeds|"
                  r"generated|staged|origin/.*)|synth/(requested|executed|accepted|injected|evicted|retired.*|pruned|"
                  r"first_rbar_mean|first_rbar_n)|train/distinct_tasks|eval/.*|timing_s/(gen|update_actor))$")
ARM_OF = re.compile(r"^(.*)_s(\d+)$")


def compact(study_dir: str, runs_dir: str) -> list[str]:
  """Copies the report's keys of every run in ``study_dir`` into ``runs_dir`` (gzip JSONL), with each run's final
  full-split evaluation, and the warm-up checkpoint's (``<study_dir>/_warmup_eval``: launch.evaluate --out_dir and
  the warm-up's sft_history.json, both written by launch.study)."""
  compact_warmup(os.path.join(study_dir, "_warmup_eval"), runs_dir)
  names = []
  for name in sorted(os.listdir(study_dir)):
    if compact_run(os.path.join(study_dir, name), os.path.join(runs_dir, name)):
      names.append(name)
  return names


def compact_warmup(warm_dir: str, runs_dir: str, prefix: str = "warmup", split: str = "test") -> list[str]:
  """A warm-up checkpoint's evaluation and history (written by launch.study into ``warm_dir``) as
  ``<runs_dir>/<prefix>_final_eval.json`` and ``<prefix>_sft_history.json``; returns the files written."""
  written = []
  # (?<!_validation): a test-split reading never picks up the same directory's validation evaluation
  warm = _standalone_eval(warm_dir, rf"^standalone_.*(?<!_validation){_split_tag(split)}_greedy_k1\.json$")
  if warm is not None:
    os.makedirs(runs_dir, exist_ok=True)
    written.append(os.path.join(runs_dir, f"{prefix}_final_eval.json"))
    with open(written[-1], "w") as f:
      json.dump(warm, f)
  if os.path.exists(os.path.join(warm_dir, "sft_history.json")):  # the warm-up's calibration history
    os.makedirs(runs_dir, exist_ok=True)
    written.append(os.path.join(runs_dir, f"{prefix}_sft_history.json"))
    shutil.copy(os.path.join(warm_dir, "sft_history.json"), written[-1])
  return written


def _split_tag(split: str) -> str:
  # launch.evaluate names a non-test evaluation standalone_<source>_<split>_...
  return "" if split == "test" else f"_{split}"


def compact_run(src: str, dst: str, split: str = "test") -> bool:
  """One run's compact logs (the report's keys), config and final ``split`` evaluation from its workdir ``src``
  into ``dst``; False (nothing written) when ``src`` holds no metrics."""
  if not os.path.exists(os.path.join(src, metrics_lib.JSONL_NAME)):
    return False
  os.makedirs(dst, exist_ok=True)
  recs = metrics_lib.load_run(src)
  with gzip.open(os.path.join(dst, "metrics.jsonl.gz"), "wt", encoding="utf-8") as f:
    for r in recs:
      f.write(json.dumps({k: v for k, v in r.items() if KEEP.match(k)}) + "\n")
  ev = os.path.join(src, "pool_events.jsonl")
  with gzip.open(os.path.join(dst, "events.jsonl.gz"), "wt", encoding="utf-8") as f:
    if os.path.exists(ev):
      with open(ev, encoding="utf-8") as g:
        shutil.copyfileobj(g, f)
  if os.path.exists(os.path.join(src, "config.json")):
    shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
  final = _standalone_eval(os.path.join(src, "eval"), rf"^standalone_step(\d+){_split_tag(split)}_greedy_k1\.json$")
  if final is not None:
    with open(os.path.join(dst, "final_eval.json"), "w") as f:
      json.dump(final, f)
  sft_hist = os.path.join(src, "offline_sft", "warmup", "sft_history.json")  # the offline arm's supervised stage
  if os.path.exists(sft_hist):
    with open(sft_hist) as f:
      hist = json.load(f)
    own = [h for h in hist["history"] if h["step"] > hist.get("continued_from", {}).get("steps", 0)]
    with open(os.path.join(dst, "sft_summary.json"), "w") as f:  # only its own steps, not the shared warm-up's
      json.dump({"steps": len(own), "best_step": hist["best_step"], "tokens": sum(h.get("tokens", 0) for h in own)},
                f)
  return True


def _standalone_eval(eval_dir: str, pattern: str = r"^standalone_step(\d+)_greedy_k1\.json$") -> dict | None:
  """The greedy evaluation of the run's final checkpoint by ``launch.evaluate`` (largest step, then most tasks):
  {"source", "n_tasks", "metrics", "per_task": {task id: success}} or None."""
  if not os.path.isdir(eval_dir):
    return None
  found = []
  for fn in os.listdir(eval_dir):
    m = re.match(pattern, fn)
    if m:
      with open(os.path.join(eval_dir, fn)) as f:
        d = json.load(f)
      found.append((int(m.group(1)) if m.groups() else 0, int(d["n_tasks"]), d))
  if not found:
    return None
  _, _, d = max(found, key=lambda x: (x[0], x[1]))
  return {"source": d["source"], "n_tasks": int(d["n_tasks"]), "metrics": d["metrics"],
          "per_task": {t["id"]: float(t["successes"]) / float(t["n"]) for t in d["per_task"]}}


def load_final_eval(runs_dir: str, name: str) -> dict | None:
  path = os.path.join(runs_dir, name, "final_eval.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def load(runs_dir: str) -> dict[str, dict]:
  runs = {}
  for name in sorted(os.listdir(runs_dir)):
    path = os.path.join(runs_dir, name, "metrics.jsonl.gz")
    if not os.path.exists(path):
      continue
    with gzip.open(path, "rt", encoding="utf-8") as f:  # logs of any age, read under today's metric names
      recs = [metric_names.to_public(json.loads(line)) for line in f if line.strip()]
    ev_path = os.path.join(runs_dir, name, "events.jsonl.gz")
    events = []
    if os.path.exists(ev_path):
      with gzip.open(ev_path, "rt", encoding="utf-8") as f:
        events = [json.loads(line) for line in f if line.strip()]
    runs[name] = {"records": recs, "events": events}
  return runs


def final_eval(recs: list[dict]) -> dict | None:
  evals = [r for r in recs if "eval/success" in r]
  return evals[-1] if evals else None


def first_eval(recs: list[dict]) -> dict | None:
  evals = [r for r in recs if "eval/success" in r]
  return evals[0] if evals else None


def mean_se(xs: list[float]) -> tuple[float, float]:
  a = np.asarray(xs, np.float64)
  se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
  return float(a.mean()), se


def arm_table(runs: dict[str, dict], runs_dir: str) -> dict[str, dict]:
  """Per arm (runs named <arm>_s<seed>): final held-out accuracy mean ± standard error over seeds, R_P, budget."""
  by_arm: dict[str, list[str]] = {}
  for name in runs:
    m = ARM_OF.match(name)
    by_arm.setdefault(m.group(1) if m else name, []).append(name)
  out = {}
  for arm, names in sorted(by_arm.items()):
    finals = [(n, final_eval(runs[n]["records"])) for n in names]
    finals = [(n, f) for n, f in finals if f is not None]
    if not finals:
      continue
    # Accuracy: the full-split evaluation of the final checkpoint when every run of the arm has one
    # (launch.evaluate), else the last in-training evaluation (its subset of the test split).
    standalone = [load_final_eval(runs_dir, n) for n, _ in finals]
    if all(x is not None for x in standalone):
      scored = [{f"eval/{k}": v for k, v in x["metrics"].items()} for x in standalone]
    else:
      scored = [f for _, f in finals]
    acc = [100.0 * f["eval/success"] for f in scored]
    rp = [f["eval/progress"] for f in scored]
    am, ase = mean_se(acc)
    cats = {}
    for c in ("base", "miss_func", "miss_param", "long_context"):
      vals = [100.0 * f[f"eval/{c}/success"] for f in scored if f"eval/{c}/success" in f]
      if vals:
        cats[c] = float(np.mean(vals))
    last = [runs[n]["records"][-1] for n, _ in finals]
    budgets = [json.load(open(os.path.join(runs_dir, n, "config.json")))["train"]["total_trajectories"]
               if os.path.exists(os.path.join(runs_dir, n, "config.json")) else None for n, _ in finals]
    distinct = [max((r.get("train/distinct_tasks") or 0) for r in runs[n]["records"]) for n, _ in finals]
    supervised = [_supervised_trajectories(runs_dir, n) for n, _ in finals]
    out[arm] = {"accuracy_mean": am, "accuracy_se": ase, "mean_rp": float(np.mean(rp)), "n_seeds": len(finals),
                "trajectories": int(np.mean([f["trajectories"] for _, f in finals])),
                "distinct_tasks": int(np.mean(distinct)), "per_category": cats, "runs": [n for n, _ in finals],
                "supervised_trajectories": int(np.mean(supervised)),
                "eval_tasks": int(np.mean([f.get("eval/n_tasks", 0) for f in scored])),
                "final_step": int(np.mean([r["step"] for r in last])),
                "complete": all(b is not None and f["trajectories"] >= b for b, (_, f) in zip(budgets, finals))}
  return out


def paired_difference(runs_dir: str, arms: dict[str, dict], a: str, b: str) -> dict | None:
  """Arm a minus arm b on the same held-out tasks: per task, each arm's success averaged over its seeds (final
  full-split evaluations); mean and standard error of the per-task difference, in points. None without them."""
  per = {}
  for arm in (a, b):
    evals = [load_final_eval(runs_dir, n) for n in arms.get(arm, {}).get("runs", [])]
    if not evals or any(e is None for e in evals):
      return None
    ids = set.intersection(*(set(e["per_task"]) for e in evals))
    per[arm] = {t: float(np.mean([e["per_task"][t] for e in evals])) for t in ids}
  common = sorted(set(per[a]) & set(per[b]))
  if len(common) < 2:
    return None
  d = 100.0 * np.array([per[a][t] - per[b][t] for t in common])
  return {"diff_mean": float(d.mean()), "diff_se": float(d.std(ddof=1) / math.sqrt(len(d))), "n_tasks": len(common)}


def _supervised_trajectories(runs_dir: str, name: str) -> int:
  """Gold trajectories of a run's own supervised stage (offline arm: steps × sft.batch_size; others 0, the shared
  warm-up being common to every arm)."""
  path, cfg_path = os.path.join(runs_dir, name, "sft_summary.json"), os.path.join(runs_dir, name, "config.json")
  if not (os.path.exists(path) and os.path.exists(cfg_path)):
    return 0
  with open(path) as f, open(cfg_path) as g:
    return int(json.load(f)["steps"]) * int(json.load(g)["sft"]["batch_size"])


def mechanism(runs: dict[str, dict]) -> dict:
  """Variance per zone, pooled over every step of every run (weights = number of tasks of that zone in the step),
  and the first observed r̄ of injected (synthesized) tasks."""
  num = {z: 0.0 for z in ("hard", "boundary", "mastered")}
  den = dict(num)
  for run in runs.values():
    for r in run["records"]:
      for z in num:
        f, v = r.get(f"zones/{z}"), r.get(f"zones/var_{z}")
        if f and v is not None and not (isinstance(v, float) and math.isnan(v)):
          num[z] += f * v
          den[z] += f
  var = {z: (num[z] / den[z] if den[z] else float("nan")) for z in num}
  other_den = den["hard"] + den["mastered"]
  other = (num["hard"] + num["mastered"]) / other_den if other_den else float("nan")
  # Boundary-targeted synthesis (rods and its ablations) vs env_augment's uniform perturbations, kept apart.
  def first_rbars(pred):
    return [e["rbar"] for name, run in runs.items() if pred(name) for e in run["events"]
            if e.get("event") == "first_obs"]

  firsts = first_rbars(lambda n: not n.startswith("env_augment"))
  augment = first_rbars(lambda n: n.startswith("env_augment"))
  return {"variance_by_zone": var, "variance_other_zones": other,
          "variance_ratio_boundary": var["boundary"] / other if other else float("inf"),
          "injected_first_rbar_median": float(np.median(firsts)) if firsts else float("nan"),
          "injected_first_rbar_iqr": [float(np.percentile(firsts, 25)), float(np.percentile(firsts, 75))]
          if firsts else [], "injected_first_rbar_n": len(firsts), "_firsts": firsts,
          "env_augment_first_rbar_median": float(np.median(augment)) if augment else float("nan"),
          "env_augment_first_rbar_n": len(augment)}


def warmup_row(runs: dict[str, dict], arms: dict[str, dict], runs_dir: str) -> dict | None:
  """The warm-up policy's held-out numbers: its full-split evaluation when there is one, else the evaluation at 0
  trajectories of the static runs."""
  path = os.path.join(runs_dir, "warmup_final_eval.json")
  if os.path.exists(path):
    with open(path) as f:
      m = json.load(f)["metrics"]
    return {"accuracy_mean": 100.0 * m["success"], "mean_rp": m["progress"], "eval_tasks": int(m["n_tasks"]),
            "per_category": {c: 100.0 * m[f"{c}/success"] for c in ("base", "miss_func", "miss_param",
                                                                    "long_context") if f"{c}/success" in m}}
  names = arms.get("static", {}).get("runs", [])
  firsts = [first_eval(runs[n]["records"]) for n in names]
  firsts = [f for f in firsts if f is not None and f["trajectories"] == 0]
  if not firsts:
    return None
  return {"accuracy_mean": float(np.mean([100 * f["eval/success"] for f in firsts])),
          "mean_rp": float(np.mean([f["eval/progress"] for f in firsts])),
          "per_category": {c: float(np.mean([100 * f[f"eval/{c}/success"] for f in firsts]))
                           for c in ("base", "miss_func", "miss_param", "long_context")
                           if all(f"eval/{c}/success" in f for f in firsts)}}


COMPARISONS = (("rods", "static"), ("rods", "dynamic_sampling"), ("rods", "env_augment"), ("rods", "offline"),
               ("rods", "random_seed"), ("rods", "no_retire"), ("rods", "static_pool"), ("rods_posterior", "rods"))


def main(argv):
  del argv
  if FLAGS.import_runs:
    names = compact(FLAGS.import_runs, FLAGS.runs_dir)
    print(f"compacted {len(names)} runs from {FLAGS.import_runs} into {FLAGS.runs_dir}")
  runs = load(FLAGS.runs_dir)
  if not runs:
    raise app.UsageError(f"no runs in {FLAGS.runs_dir}")
  arms = arm_table(runs, FLAGS.runs_dir)
  warm = warmup_row(runs, arms, FLAGS.runs_dir)
  mech = mechanism(runs)
  comparisons = {f"{a}-{b}": c for a, b in COMPARISONS
                 if (c := paired_difference(FLAGS.runs_dir, arms, a, b)) is not None}
  bench = {}
  if os.path.isdir(FLAGS.benchmarks):
    for fn in sorted(os.listdir(FLAGS.benchmarks)):
      if fn.endswith(".json"):
        with open(os.path.join(FLAGS.benchmarks, fn)) as f:
          bench[fn[:-5]] = json.load(f)
  made = figures(runs, arms, mech, os.path.join(FLAGS.docs, "figures"))
  out = {"arms": arms, "warmup_policy": warm, "mechanism": {k: v for k, v in mech.items() if not k.startswith("_")},
         "comparisons": comparisons, "runs_dir": FLAGS.runs_dir, "benchmarks": bench}
  with open(os.path.join(FLAGS.docs, "results.json"), "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
  text = tables(arms, mech, bench, warm, warmup_calibration(FLAGS.runs_dir), comparisons)
  with open(os.path.join(FLAGS.docs, "results_tables.md"), "w") as f:
    f.write(text)
  fill_markers(os.path.join(FLAGS.docs, "results.md"), text)
  print(text)
  print("figures:", *made, sep="\n  ")


if __name__ == "__main__":
  app.run(main)
