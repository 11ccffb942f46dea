"""Writes colabs/*.ipynb from the cell sources below (the notebooks are generated so they stay reviewable as code).

  python tools/make_notebooks.py
"""
import os

import nbformat

INSTALL = """# On Colab: install rods_jax from the repository (on a local checkout, `pip install -e .` instead).
import sys, os
if "google.colab" in sys.modules:
  !pip -q install "git+https://github.com/rods-jax/rods_jax.git#egg=rods_jax"
  !pip -q install --no-deps bfcl-eval==2026.3.23 mpmath==1.3.0
# RODS_NB_SMALL=1 (set by the test suite) shrinks every size so the notebook runs top to bottom in about a minute.
SMALL = os.environ.get("RODS_NB_SMALL") == "1"
REPO = os.environ.get("RODS_REPO", os.path.abspath(".."))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
print("small settings" if SMALL else "full settings")"""

QUICKSTART = [
    ("md", "# rods_jax quick start\n\nBuild the CPU lab (toolworld + lab tokenizer + a ~1M-parameter model), warm it "
           "up on gold trajectories, run RODS for a few minutes, and look at reward and pool composition. "
           "Runs on a free Colab CPU/GPU."),
    ("code", INSTALL),
    ("code", """import tempfile
from configs import rods as rods_config
from rods_jax.rods import loop
from rods_jax import metrics as metrics_lib

config = rods_config.get_config()
config.sft.steps = 3 if SMALL else 300           # supervised warm-up on the 400 seeds (re-randomised worlds)
config.sft.eval_every = 3 if SMALL else 100      # zone-based checkpoint selection
config.sft.eval_tasks = 4 if SMALL else 32
config.rollout.tasks_per_step = 2 if SMALL else 8
config.rollout.k = 2 if SMALL else 8
config.rollout.max_trajectory_tokens = 192 if SMALL else 512
config.rollout.cache_capacity = 256 if SMALL else 576
config.sft.seq_len = 192 if SMALL else 512
config.grpo.micro_batch = 4 if SMALL else 64
config.train.total_trajectories = 8 if SMALL else 2048
config.train.eval_every_trajectories = 8 if SMALL else 1024
config.train.eval_max_tasks = 4 if SMALL else 100
config.rods.seed_limit = 16 if SMALL else 0
config.optim.lr = 1e-4
config.logging.progress_bar = not SMALL
workdir = tempfile.mkdtemp(prefix="rods_quickstart_")
state = loop.train(config, workdir)
print(state)"""),
    ("code", """records = metrics_lib.load_run(workdir)
evals = [r for r in records if "eval/success" in r]
for r in evals:
  print(f"trajectories {r['trajectories']:6d}  held-out success {100 * r['eval/success']:5.1f}%  "
        f"mean R_P {r['eval/progress']:.3f}")
train = [r for r in records if "critic/score/mean" in r]
print(f"{len(train)} GRPO steps; last reward mean {train[-1]['critic/score/mean']:.3f}")"""),
    ("code", """import matplotlib.pyplot as plt
xs, ys = metrics_lib.series(records, "critic/score/mean")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].plot(xs, ys, marker="o")
axes[0].set(xlabel="trajectories", ylabel="mean R_P of the rollouts", title="reward")
keys = metrics_lib.pool_keys(records, "pool/origin/")
for k in keys:
  axes[1].plot(*metrics_lib.series(records, k), label=k)
axes[1].set(xlabel="trajectories", ylabel="tasks", title="active pool by origin")
axes[1].legend()
plt.show()"""),
]

BOUNDARY = [
    ("md", "# Boundary analysis\n\nFrom a run's logs: zone fractions over time, within-group variance per zone, "
           "the first observed r̄ of injected variants and their lineage, and per-category learning curves. "
           "By default it reads the committed compact logs of the third-pass lab study (`docs/runs_pass3/`); point `RUN` at any "
           "`launch.train` workdir."),
    ("code", INSTALL),
    ("code", """import gzip, json, glob
import numpy as np
from rods_jax import metrics as metrics_lib

def load_compact(d):
  with gzip.open(os.path.join(d, "metrics.jsonl.gz"), "rt") as f:
    recs = [json.loads(l) for l in f if l.strip()]
  ev = os.path.join(d, "events.jsonl.gz")
  events = []
  if os.path.exists(ev):
    with gzip.open(ev, "rt") as f:
      events = [json.loads(l) for l in f if l.strip()]
  return recs, events

def load_workdir(d):
  recs = metrics_lib.load_run(d)
  ev = os.path.join(d, "pool_events.jsonl")
  events = [json.loads(l) for l in open(ev)] if os.path.exists(ev) else []
  return recs, events

runs_dir = os.path.join(REPO, "docs", "runs_pass3")
RUN = os.environ.get("RODS_RUN", "")
candidates = sorted(glob.glob(os.path.join(runs_dir, "rods*")))
if RUN:
  records, events = load_workdir(RUN)
elif candidates:
  records, events = load_compact(candidates[0])
  print("run:", candidates[0])
else:
  raise SystemExit("no run logs: set RODS_RUN to a launch.train workdir")
print(len(records), "records,", len(events), "pool events")"""),
    ("code", """import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
for z in ("hard", "boundary", "mastered"):
  axes[0].plot(*metrics_lib.series(records, f"zones/{z}"), label=z)
  axes[1].plot(*metrics_lib.series(records, f"zones/var_{z}"), label=z)
axes[0].set(title="zone fractions of each step's tasks", xlabel="trajectories")
axes[1].set(title="mean within-group variance per zone", xlabel="trajectories")
axes[0].legend(); axes[1].legend()
firsts = [e["rbar"] for e in events if e.get("event") == "first_obs"]
axes[2].hist(firsts, bins=np.linspace(0, 1, 21))
axes[2].axvspan(0.25, 0.75, color="grey", alpha=0.2)
axes[2].set(title=f"first observed r̄ of injected variants (n={len(firsts)})")
plt.show()
num = {z: 0.0 for z in ("hard", "boundary", "mastered")}; den = dict(num)
for r in records:
  for z in num:
    f, v = r.get(f"zones/{z}"), r.get(f"zones/var_{z}")
    if f and v is not None:
      num[z] += f * v; den[z] += f
print({z: round(num[z] / den[z], 4) if den[z] else None for z in num})"""),
    ("code", """# Lineage: which seeds produced the variants that were injected, and what happened to them.
from collections import Counter
kinds = Counter(e["event"] for e in events)
print(kinds)
parents = Counter(e.get("parent") for e in events if e.get("event") == "first_obs")
print("most productive seeds:", parents.most_common(5))"""),
    ("code", """# Per-category held-out learning curves.
fig, ax = plt.subplots(figsize=(6, 3.5))
for c in ("base", "miss_func", "miss_param", "long_context"):
  xs, ys = metrics_lib.series(records, f"eval/{c}/success")
  if len(xs):
    ax.plot(xs, 100 * ys, marker="o", label=c)
ax.set(xlabel="trajectories", ylabel="held-out success (%)")
ax.legend(); plt.show()"""),
]

BFCL = [
    ("md", "# Evaluate a local checkpoint on BFCL multi-turn\n\nLoads a Hugging Face checkpoint directory (e.g. "
           "`Qwen3-4B` downloaded beforehand; no hub access is needed at run time), runs the batched multi-turn "
           "engine on the fixed BFCL test split (100 tasks per category) and reports accuracy per category "
           "(= BFCL's official verdict), mean R_P, pass@k and pass^k. Without a checkpoint (`RODS_CKPT` unset) "
           "it builds a tiny random Qwen3-shaped model so the notebook runs anywhere: its accuracy is 0 by "
           "construction."),
    ("code", INSTALL),
    ("code", """import json
import jax, numpy as np
from flax import nnx
from configs import base
from rods_jax import envs
from rods_jax.envs import bfcl
from rods_jax.models import Transformer, get_preset, hf_loader, lab_tokenizer
from rods_jax.rollout.engine import MultiTurnEngine
from rods_jax.rollout.render import ChatRenderer
from rods_jax.eval import evaluate, engine_rollout_fn

config = base.get_config()
config.env.name = "bfcl"
CKPT = os.environ.get("RODS_CKPT", "")
if CKPT:
  model, model_cfg = hf_loader.load_hf_checkpoint(CKPT, dtype="bfloat16")
  tokenizer = hf_loader.load_tokenizer(CKPT)
  config.rollout.max_tokens_per_message = 512
  config.rollout.max_trajectory_tokens = 16384
  config.rollout.cache_capacity = 17408
  config.rollout.kv_bucket = 512
else:
  import tempfile
  tokenizer = lab_tokenizer.build_default_lab_tokenizer(tempfile.mkdtemp(), config.env)
  model_cfg = get_preset("lab_tiny", vocab_size=len(tokenizer), hidden=64, n_layers=2, mlp_dim=128)
  model = Transformer(model_cfg, rngs=nnx.Rngs(0))
  config.rollout.max_tokens_per_message = 8
  config.rollout.max_trajectory_tokens = 4096
  config.rollout.cache_capacity = 4352
  config.rollout.kv_bucket = 512
env = envs.make_env("bfcl", config.env)
tasks = env.load_tasks("test")
per_cat = 1 if SMALL else 100
tasks = [t for c in ("base", "miss_func", "miss_param", "long_context") for t in tasks if t.category == c][::1]
by_cat = {}
for t in tasks:
  by_cat.setdefault(t.category, []).append(t)
tasks = [t for c in by_cat for t in by_cat[c][:per_cat]]
print(len(tasks), "held-out BFCL tasks")"""),
    ("code", """graphdef, params = nnx.split(model)
engine = MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), config.rollout, model_cfg)
result = evaluate(engine_rollout_fn(engine, params, env, config.rollout), tasks, mode="greedy", k=1,
                  rng=jax.random.key(0), chunk=4)
print(json.dumps(result.metrics, indent=1))
assert result.metrics["n_tasks" if "n_tasks" in result.metrics else "success"] is not None"""),
    ("code", """# The scorer itself: ground truth scores R_P = 1; dropping the last turn's calls fails that turn.
t = tasks[0]
gt = [list(turn) for turn in t.gt_calls]
print("ground truth:", bfcl.score(t, gt).progress)
print("last turn dropped:", bfcl.score(t, gt[:-1] + [[]]).progress)"""),
]


def build(cells):
  nb = nbformat.v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  for kind, src in cells:
    nb.cells.append(nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src))
  return nb


def main():
  out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colabs")
  for name, cells in (("quickstart", QUICKSTART), ("boundary_analysis", BOUNDARY), ("bfcl_eval", BFCL)):
    nbformat.write(build(cells), os.path.join(out, f"{name}.ipynb"))
    print("wrote", name)


if __name__ == "__main__":
  main()
