"""The markdown tables of docs/results.md (arms, comparisons, mechanism, warm-up calibration, benchmarks) and the
writer that puts them between the report's markers."""
from __future__ import annotations

import json
import math
import os


def warmup_calibration(runs_dir: str) -> list[str]:
  """The warm-up's seed-zone table from ``<runs_dir>/warmup_sft_history.json`` (``rods_jax.rl.sft`` history)."""
  path = os.path.join(runs_dir, "warmup_sft_history.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    hist = json.load(f)
  lines = ["| SFT step | loss | hard | boundary | mastered | seed mean R_P |", "|---|---|---|---|---|---|"]
  for h in hist["history"]:
    if "eval" in h:
      e, mark = h["eval"], " (selected)" if h["step"] == hist.get("best_step") else ""
      lines.append(f"| {h['step']}{mark} | {h['loss']:.3f} | {e['hard']:.2f} | {e['boundary']:.2f} | "
                   f"{e['mastered']:.2f} | {e['reward_mean']:.3f} |")
  head = ["", "Warm-up calibration (seed zones at K = 8 during supervised training):", ""]
  if "continued_from" in hist:
    c = hist["continued_from"]
    head = head[:2] + [f" steps after {c['steps']} are a continuation (`launch.warmup --init_from`) of the "
                       f"checkpoint selected at step {c['best_step']}.", ""]
  return head + lines


def tables(arms: dict[str, dict], mech: dict, bench: dict, warm: dict | None = None,
           calibration: list[str] | None = None, comparisons: dict | None = None) -> str:
  lines = ["| arm | overall (%) | base | miss_func | miss_param | long_context | mean R_P | seeds | GRPO trajectories |"
           " + own supervised | distinct tasks | eval tasks |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for arm, a in sorted(arms.items(), key=lambda kv: -kv[1]["accuracy_mean"]):
    se = "" if math.isnan(a["accuracy_se"]) else f" ± {a['accuracy_se']:.2f}"
    c = a["per_category"]
    partial = "" if a.get("complete") else " (partial: stopped before the budget)"
    lines.append(f"| {arm}{partial} | {a['accuracy_mean']:.2f}{se} | " + " | ".join(
        f"{c.get(k, float('nan')):.1f}" for k in ("base", "miss_func", "miss_param", "long_context")) +
                 f" | {a['mean_rp']:.3f} | {a['n_seeds']} | {a['trajectories']} | "
                 f"{a.get('supervised_trajectories', 0)} | {a['distinct_tasks']} | {a.get('eval_tasks', '')} |")
  if warm:
    c = warm["per_category"]
    lines.append(f"| warm-up policy (before GRPO) | {warm['accuracy_mean']:.2f} | " + " | ".join(
        f"{c.get(k, float('nan')):.1f}" for k in ("base", "miss_func", "miss_param", "long_context")) +
                 f" | {warm['mean_rp']:.3f} | | 0 | | | {warm.get('eval_tasks', '')} |")
  if comparisons:
    lines += ["", "| paired on the same held-out tasks (seed-averaged success per task) | difference (points) "
              "| tasks |", "|---|---|---|"]
    for name, c in comparisons.items():
      lines.append(f"| {name.replace('-', ' − ')} | {c['diff_mean']:+.2f} ± {c['diff_se']:.2f} | {c['n_tasks']} |")
  v = mech["variance_by_zone"]
  lines += ["", "| mechanism | value |", "|---|---|",
            f"| mean within-group variance: hard / boundary / mastered | {v['hard']:.4f} / {v['boundary']:.4f} / "
            f"{v['mastered']:.4f} |",
            f"| boundary variance ÷ other zones | {mech['variance_ratio_boundary']:.2f}× |",
            f"| injected variants: median first r̄ (IQR), n | {mech['injected_first_rbar_median']:.3f} "
            f"({', '.join(f'{x:.2f}' for x in mech['injected_first_rbar_iqr'])}), {mech['injected_first_rbar_n']} |",
            f"| env_augment's uniform perturbations: median first r̄, n | "
            f"{mech['env_augment_first_rbar_median']:.3f}, {mech['env_augment_first_rbar_n']} |"]
  lines += calibration or []
  if bench:
    lines += ["", "| benchmark | machine | rollout engine (sampled tok/s) | re-prefill baseline | speedup | speedup vs "
              "plain re-prefill | train tok/s | train shape | MFU | measured matmul peak (GFLOP/s) | decode step "
              "(rows × kv slots) | decode MBU |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, b in bench.items():
    m, r, t, d = b.get("machine", {}), b.get("rollout", {}), b.get("train", {}), b.get("decode", {})
    fmt = lambda v, f: "—" if v is None else format(v, f)
    commit = f", code {m['code_commit']}" if m.get("code_commit") else ""
    lines.append(f"| {name} | {m.get('device_kind')} ×{m.get('devices')} ({m.get('cpu_count')} CPU cores), jax "
                 f"{m.get('jax')}{commit} | {fmt(r.get('engine_tokens_per_s'), '.0f')} | "
                 f"{fmt(r.get('reprefill_tokens_per_s'), '.0f')} | {fmt(r.get('speedup'), '.2f')} | "
                 f"{fmt(r.get('speedup_vs_reprefill_plain'), '.2f')} | "
                 f"{fmt(t.get('tokens_per_s'), '.0f')} | {t.get('batch')}×{t.get('seq')}, "
                 f"{fmt(t.get('matmul_params'), ',')} matmul params | "
                 f"{fmt(100 * t['mfu'] if 'mfu' in t else None, '.1f')} % | "
                 f"{fmt(t.get('peak_gflops'), '.0f')} | "
                 + (f"{d['step_ms']:.2f} ms ({d['rows']} × {d['kv_len']}) | {100 * d['mbu']:.0f} % of "
                    f"{d['stream_gbps']:.0f} GB/s |" if d else "— | — |"))
  return "\n".join(lines) + "\n"


BEGIN, END = "<!-- tables:begin (written by launch.report) -->", "<!-- tables:end -->"


def fill_markers(path: str, text: str) -> None:
  """Replaces what lies between the table markers of ``path`` (the hand-written report) with ``text``."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    doc = f.read()
  if BEGIN not in doc or END not in doc:
    return
  head, rest = doc.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  with open(path, "w", encoding="utf-8") as f:
    f.write(head + BEGIN + "\n" + text + END + tail)
