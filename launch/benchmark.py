r"""Throughput benchmarks on the lab model and toolworld tasks, written as one JSON.

  python -m launch.benchmark --suite=rollout --out=docs/benchmarks/cpu_lab.json
  python -m launch.benchmark --suite=all --out=bench.json --tasks=8 --k=8 --repeats=3

rollout: tokens/s of the batched multi-turn engine (one KV cache extended turn by turn, shared-prompt prefill) vs the
re-prefill-every-step baseline of peers (the same sampler and process, but before every assistant step each row's
whole conversation is prefilled again from an empty cache, as Tunix does), on the same tasks, model and RNG. Also
timed: ``engine_uncompacted`` (the engine without row compaction) and ``reprefill_plain`` (re-prefill that decodes
every row until the slowest stops, no compaction or early return: closest to Tunix's loop, a weaker reference). All
are warmed up first (compilations), then timed ``--repeats`` times each, alternating; medians are reported.

  sampled_tokens_per_s = tokens the policy sampled / rollout wall time
  tokens_per_s         = trajectory tokens (prompt + sampled + environment) / rollout wall time
  speedup              = engine sampled_tokens_per_s / baseline sampled_tokens_per_s
  speedup_vs_reprefill_plain = the same against reprefill_plain

train: ``rods_jax.rl.bench.train_benchmark`` (GRPO step tokens/s and MFU vs a matmul peak measured in the same run).

decode: ``rods_jax.rollout.bench.decode_step_benchmark`` (one sampler decode step of --decode_rows rows attending over
--decode_kv_len slots; ms per step and bandwidth utilisation vs a streaming read measured in the same run).

grpo_step: ``launch.grpo_step_bench`` (full GRPO steps, rollout + update + curriculum: the padded layout vs training
on real tokens vs real tokens with the next rollout overlapping the update, at each of --grpo_rows).

--suite=all runs each suite in a fresh process (timings were order-dependent in one process) and writes one JSON.
The policy: ``--checkpoint_dir``, else the lab model after ``--sft_steps`` of supervised warm-up on gold toolworld
trajectories (``rods_jax.rl.sft``), so that it calls tools, reads results and answers as a lab policy does. With
``--sft_steps=0`` the weights are random: every message runs to the per-message cap and tools are rarely called, a
decode-only regime (the least favourable to the engine; its speedup is reported as measured).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx

FLAGS = flags.FLAGS
flags.DEFINE_enum("suite", "rollout", ["rollout", "train", "decode", "grpo_step", "all"], "Which benchmarks to run.")
flags.DEFINE_string("out", "", "Write the JSON here (also printed).")
flags.DEFINE_integer("tasks", 8, "B: tasks per rollout batch.")
flags.DEFINE_integer("k", 8, "K: rollouts per task (B*K rows in one cache).")
flags.DEFINE_integer("turns", 3, "Use toolworld seed tasks with exactly this many user turns.")
flags.DEFINE_integer("repeats", 3, "Timed repeats per variant (medians reported).")
flags.DEFINE_integer("warmup", 1, "Untimed runs per variant first (compilation; same key as the timed runs).")
flags.DEFINE_string("preset", "lab_tiny", "Model preset (vocab size is the tokenizer's).")
flags.DEFINE_string("tokenizer_dir", "", "Lab tokenizer directory; empty = build one from the seed split into "
                    "$TMPDIR/rods_jax_bench_tokenizer.")
flags.DEFINE_string("checkpoint_dir", "", "Optional HF-layout checkpoint to load instead of random weights.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature of both variants.")
flags.DEFINE_integer("sft_batch", 16, "Sequences per warm-up step.")
flags.DEFINE_integer("sft_steps", 150, "Supervised warm-up steps on gold toolworld trajectories before timing, so the "
                     "policy makes short tool calls and answers like a lab policy (0 = random weights: every message "
                     "runs to the token cap and tool calls are rare, a decode-only regime).")
flags.DEFINE_integer("train_batch", 64, "train suite: sequences per step.")
flags.DEFINE_integer("train_seq", 256, "train suite: tokens per sequence.")
flags.DEFINE_integer("vocab", 1024, "train / decode suites: vocabulary size of the lab model (with --suite=all: the "
                     "rollout suite's tokenizer's).")
flags.DEFINE_integer("decode_rows", 64, "decode suite: rows decoded together.")
flags.DEFINE_integer("decode_kv_len", 384, "decode suite: attention length (cached slots).")
flags.DEFINE_integer("decode_steps", 32, "decode suite: steps per timed decode call.")
flags.DEFINE_list("grpo_rows", ["64", "256"], "grpo_step suite: rows per step (tasks_per_step x --grpo_k).")
flags.DEFINE_integer("grpo_k", 8, "grpo_step suite: rollouts per task.")
flags.DEFINE_integer("grpo_warmup", 3, "grpo_step suite: untimed steps per variant first (compilations).")
flags.DEFINE_integer("grpo_sft_steps", 400, "grpo_step suite without --checkpoint_dir: supervised warm-up steps of "
                     "the policy, so its trajectories approach the gold lengths (the JSON reports both).")
flags.DEFINE_integer("seed", 0, "Seed of the model init and the sampler.")
flags.DEFINE_float("min_stopped_frac", 0.0, "If in (0, 1] and not the config's value: also time the engine with "
                   "config.rollout.min_stopped_frac set to this (decode returns to the host once this fraction of "
                   "rows stopped), as 'engine_min_stopped'.")
flags.DEFINE_integer("cohorts", 0, "If > 1 and not the config's value: also time the engine and the re-prefill "
                     "baseline with config.rollout.cohorts set to this (concurrent cohorts in host threads), as "
                     "'engine_cohorts' and 'reprefill_cohorts'.")


def machine_info() -> dict[str, Any]:
  devices = jax.devices()
  return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
          "platform": devices[0].platform, "device_kind": getattr(devices[0], "device_kind", ""),
          "devices": len(devices), "jax": jax.__version__, "python": platform.python_version(),
          "code_commit": _code_commit()}


def _code_commit() -> str:
  """The git commit the benchmark ran at (numbers go stale when the engine changes); "" outside a checkout."""
  import subprocess  # pylint: disable=g-import-not-at-top
  git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False,
                                     cwd=os.path.dirname(os.path.abspath(__file__)))
  try:
    head, status = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return ""
  if head.returncode != 0:
    return ""
  return head.stdout.strip() + ("+uncommitted changes" if status.stdout.strip() else "")


def _lab_setup(config, tokenizer_dir: str, checkpoint_dir: str, preset: str, seed: int):
  from rods_jax.envs import make_env
  from rods_jax.models import Transformer, get_preset, hf_loader
  from rods_jax.models import lab_tokenizer as lt
  env = make_env("toolworld", config.env)
  if checkpoint_dir:
    model, model_cfg = hf_loader.load_hf_checkpoint(checkpoint_dir)
    tok = hf_loader.load_tokenizer(checkpoint_dir)
  else:
    out = tokenizer_dir if tokenizer_dir else os.path.join(tempfile.gettempdir(), "rods_jax_bench_tokenizer")
    if os.path.exists(os.path.join(out, "tokenizer.json")):
      tok = lt.load_lab_tokenizer(out)
    else:
      tok = lt.build_lab_tokenizer(out, lt.lab_corpus(env, ("seeds",)), vocab_size=1024)
    model_cfg = get_preset(preset, vocab_size=len(tok))
    model = Transformer(model_cfg, rngs=nnx.Rngs(seed))
  return env, tok, model, model_cfg


def _warm_up(model, env, tok, config, steps: int, batch: int, seed: int):
  """``steps`` of supervised warm-up on re-randomised toolworld seeds (rods_jax.rl.sft); returns (model, info)."""
  config.sft.batch_size = batch
  from rods_jax.rl import sft
  from rods_jax.rollout.engine import stop_token_ids
  from rods_jax.rollout.render import ChatRenderer
  trainer = sft.SFTTrainer(model, config.sft, config.optim)
  stop_id = stop_token_ids(tok, tuple(config.rollout.stop_strings))[0]
  batch_fn = sft.task_sampler(env, env.load_tasks("seeds"), ChatRenderer(tok), stop_id, config, seed)
  result = sft.run_sft(trainer, batch_fn, steps)
  last = result.history[-1] if result.history else {}
  info = {"sft_steps": steps, "sft_batch": batch, "sft_final_loss": float(last.get("loss", float("nan")))}
  return trainer.model(), info


def _summary(batch, wall: float) -> dict[str, float]:
  sampled = int(batch.loss_mask.sum())
  return {"wall_s": wall, "sampled_tokens": sampled, "trajectory_tokens": int(batch.lengths.sum()),
          "sampled_tokens_per_s": sampled / wall, "tokens_per_s": float(batch.lengths.sum()) / wall,
          **{f"{k}_s": float(v) for k, v in batch.timings.items() if k != "total"},
          **{k: int(batch.stats[k]) for k in ("prefill_tokens", "prefill_row_slots", "prefill_calls", "decode_steps",
                                              "decode_row_steps", "decode_calls")}}


def rollout_benchmark(config, *, tasks: int, k: int, turns: int, repeats: int, warmup: int, preset: str,
                      tokenizer_dir: str, checkpoint_dir: str, temperature: float, seed: int,
                      sft_steps: int = 0, sft_batch: int = 16, min_stopped_frac: float = 0.0,
                      cohorts: int = 0) -> dict[str, Any]:
  """Engine vs re-prefill baseline on B=tasks x K rows of ``turns``-turn toolworld seed tasks (module docstring)."""
  from rods_jax.rollout.engine import MultiTurnEngine
  from rods_jax.rollout.render import ChatRenderer
  from rods_jax.rollout.sampling import SamplingParams
  if repeats < 1 or warmup < 0 or tasks < 1 or k < 1:
    raise ValueError(f"--repeats={repeats}, --tasks={tasks}, --k={k} must be >= 1 and --warmup={warmup} >= 0")
  env, tok, model, model_cfg = _lab_setup(config, tokenizer_dir, checkpoint_dir, preset, seed)
  policy_info = {"sft_steps": 0}
  if sft_steps and not checkpoint_dir:
    model, policy_info = _warm_up(model, env, tok, config, sft_steps, sft_batch, seed)
    logging.info("warm-up: %s", policy_info)
  pool = [t for t in env.load_tasks("seeds") if t.num_turns == turns]
  if len(pool) < tasks:
    raise ValueError(f"--turns={turns}: only {len(pool)} seed tasks have {turns} turns, --tasks={tasks} requested")
  chosen = pool[:tasks]
  graphdef, params = nnx.split(model)
  engines = {"engine": MultiTurnEngine(graphdef, tok, ChatRenderer(tok), config.rollout, model_cfg)}
  engines["reprefill"] = engines["engine"]
  if int(config.rollout.compact_min_rows) > 0:  # the same engine without row compaction: what compaction buys
    whole = config.rollout.copy_and_resolve_references()
    whole.compact_min_rows = 0
    engines["engine_uncompacted"] = MultiTurnEngine(graphdef, tok, ChatRenderer(tok), whole, model_cfg)
  # A second, weaker reference, closest to Tunix's loop: re-prefill, every row decoded until the slowest one stops
  # (no row compaction, no early return). The headline speedup is against "reprefill" (same sampler as the engine).
  plain = config.rollout.copy_and_resolve_references()
  plain.compact_min_rows, plain.min_stopped_frac = 0, 1.0
  engines["reprefill_plain"] = MultiTurnEngine(graphdef, tok, ChatRenderer(tok), plain, model_cfg)
  if 0.0 < min_stopped_frac <= 1.0 and min_stopped_frac != float(config.rollout.min_stopped_frac):
    other = config.rollout.copy_and_resolve_references()
    other.min_stopped_frac = min_stopped_frac
    engines["engine_min_stopped"] = MultiTurnEngine(graphdef, tok, ChatRenderer(tok), other, model_cfg)
  if cohorts > 1 and cohorts != int(config.rollout.cohorts):  # both variants in concurrent cohorts: a fair pair
    threaded = config.rollout.copy_and_resolve_references()
    threaded.cohorts = cohorts
    engines["engine_cohorts"] = MultiTurnEngine(graphdef, tok, ChatRenderer(tok), threaded, model_cfg)
    engines["reprefill_cohorts"] = engines["engine_cohorts"]
  sampling = SamplingParams(temperature=temperature, top_p=float(config.rollout.top_p),
                            top_k=int(config.rollout.top_k))
  rng = jax.random.key(seed)
  runs = {name: [] for name in engines}

  def run(name: str):
    # The same key every time: identical trajectories, so the warm-up compiles every shape the timed runs meet and
    # both variants do the same work (steady state, as in training where the few bucketed shapes recur every step).
    batch = engines[name].rollout(params, env, chosen, k, rng, sampling=sampling,
                                  reprefill=name.startswith("reprefill"))
    return batch, float(batch.timings["total"])

  for _ in range(warmup):
    for name in runs:
      run(name)
  for i in range(repeats):  # alternate, so load changes on a shared machine hit both variants alike
    for name in runs:
      batch, wall = run(name)
      runs[name].append(_summary(batch, wall))
      logging.info("%s repeat %d: %.1f sampled tok/s (%.2f s)", name, i, runs[name][-1]["sampled_tokens_per_s"], wall)

  med = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
  policy_info.update({  # what the timed trajectories looked like (identical for both variants)
      "mean_assistant_messages": float(np.mean([sum(m["role"] == "assistant" for m in ms) for ms in batch.messages])),
      "mean_calls": float(batch.n_calls.mean()), "mean_reward": float(batch.rewards.mean()),
      "truncated_frac": float(batch.truncated.mean()), "mean_length": float(batch.lengths.mean())})
  return {
      "engine_tokens_per_s": med["engine"]["sampled_tokens_per_s"],
      "reprefill_tokens_per_s": med["reprefill"]["sampled_tokens_per_s"],
      "speedup": med["engine"]["sampled_tokens_per_s"] / med["reprefill"]["sampled_tokens_per_s"],
      # Amdahl: decoding and tool calls are the same work in both variants, so even a free prefill could not make
      # the engine faster than this (the baseline's wall time over the engine's decode + tools time)
      "speedup_bound_if_prefill_free": med["reprefill"]["wall_s"] / (med["engine"]["decode_s"] +
                                                                     med["engine"]["tools_s"]),
      "engine_trajectory_tokens_per_s": med["engine"]["tokens_per_s"],
      "reprefill_trajectory_tokens_per_s": med["reprefill"]["tokens_per_s"],
      **med, "repeats": {n: rs for n, rs in runs.items()},
      "speedup_vs_reprefill_plain": med["engine"]["sampled_tokens_per_s"] /
                                    med["reprefill_plain"]["sampled_tokens_per_s"],
      **({"engine_uncompacted_speedup": med["engine_uncompacted"]["sampled_tokens_per_s"] /
          med["reprefill"]["sampled_tokens_per_s"]} if "engine_uncompacted" in med else {}),
      **({"engine_min_stopped_speedup": med["engine_min_stopped"]["sampled_tokens_per_s"] /
          med["reprefill"]["sampled_tokens_per_s"], "engine_min_stopped_frac": min_stopped_frac}
         if "engine_min_stopped" in med else {}),
      **({"engine_cohorts_speedup": med["engine_cohorts"]["sampled_tokens_per_s"] /
          med["reprefill_cohorts"]["sampled_tokens_per_s"], "cohorts": cohorts} if "engine_cohorts" in med else {}),
      "setup": {"tasks": tasks, "k": k, "rows": tasks * k, "turns": turns, "preset": preset,
                "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))), "vocab": model_cfg.vocab_size,
                "temperature": temperature, "checkpoint": checkpoint_dir, "policy": policy_info,
                "max_tokens_per_message": int(config.rollout.max_tokens_per_message),
                "max_trajectory_tokens": int(config.rollout.max_trajectory_tokens),
                "kv_bucket": int(config.rollout.kv_bucket), "prefill_bucket": int(config.rollout.prefill_bucket),
                "compact_min_rows": int(config.rollout.compact_min_rows),
                "min_stopped_frac": float(config.rollout.min_stopped_frac),
                "cohorts": int(config.rollout.cohorts)},
  }


def train_suite(config, *, preset: str, vocab: int, batch: int, seq: int, repeats: int, warmup: int,
                seed: int) -> dict[str, Any]:
  """The RL engineer's train-step benchmark, if rods_jax.rl.bench provides it."""
  try:
    from rods_jax.rl.bench import train_benchmark
  except ImportError as e:
    return {"skipped": f"rods_jax.rl.bench.train_benchmark is not importable ({e})"}
  from rods_jax.models import get_preset
  return train_benchmark(get_preset(preset, vocab_size=vocab), batch, seq, repeats, warmup=max(warmup, 1),
                         grpo_cfg=None, optim_cfg=config.optim, rods_cfg=config.rods, seed=seed)


def gold_mean_length(env, tok, config, n_tasks: int = 200) -> float:
  """Mean length of the gold trajectories of the first seed tasks, rendered as the SFT warm-up renders them."""
  from rods_jax.rl import sft
  from rods_jax.rollout.engine import stop_token_ids
  from rods_jax.rollout.render import ChatRenderer
  stop_id = stop_token_ids(tok, tuple(config.rollout.stop_strings))[0]
  renderer = ChatRenderer(tok)
  steps = int(config.rollout.max_steps_per_turn)
  return float(np.mean([len(sft.render_gold(env, t, renderer, stop_id, steps).tokens)
                        for t in env.load_tasks("seeds")[:n_tasks]]))


def grpo_step_suite(config) -> dict[str, Any]:
  """Full GRPO steps from a warm policy: ``--checkpoint_dir``, or --sft_steps of warm-up made here and exported."""
  from launch import grpo_step_bench
  from rods_jax.models import hf_loader
  rows = tuple(int(r) for r in FLAGS.grpo_rows)
  with tempfile.TemporaryDirectory() as tmp:
    warm_dir, policy_info = FLAGS.checkpoint_dir, {"checkpoint_dir": FLAGS.checkpoint_dir}
    if not warm_dir:
      env, tok, model, model_cfg = _lab_setup(config, FLAGS.tokenizer_dir, "", FLAGS.preset, FLAGS.seed)
      model, policy_info = _warm_up(model, env, tok, config, FLAGS.grpo_sft_steps, FLAGS.sft_batch, FLAGS.seed)
      policy_info["gold_mean_len"] = gold_mean_length(env, tok, config)
      warm_dir = os.path.join(tmp, "warm")
      hf_loader.export_hf_checkpoint(model, model_cfg, warm_dir)
      tok.save_pretrained(warm_dir)
    result = grpo_step_bench.grpo_step_benchmark(config, warm_dir, rows, k=FLAGS.grpo_k, warmup=FLAGS.grpo_warmup,
                                                 repeats=FLAGS.repeats)
  result["policy"] = policy_info
  return result


def run_suite(suite: str, config, vocab: int) -> dict[str, Any]:
  """One suite in this process."""
  if suite == "rollout":
    return rollout_benchmark(
        config, tasks=FLAGS.tasks, k=FLAGS.k, turns=FLAGS.turns, repeats=FLAGS.repeats, warmup=FLAGS.warmup,
        preset=FLAGS.preset, tokenizer_dir=FLAGS.tokenizer_dir, checkpoint_dir=FLAGS.checkpoint_dir,
        temperature=FLAGS.temperature, seed=FLAGS.seed, sft_steps=FLAGS.sft_steps, sft_batch=FLAGS.sft_batch,
        min_stopped_frac=FLAGS.min_stopped_frac, cohorts=FLAGS.cohorts)
  if suite == "train":
    return train_suite(config, preset=FLAGS.preset, vocab=vocab, batch=FLAGS.train_batch, seq=FLAGS.train_seq,
                       repeats=FLAGS.repeats, warmup=FLAGS.warmup, seed=FLAGS.seed)
  if suite == "grpo_step":
    return grpo_step_suite(config)
  from rods_jax.models import get_preset
  from rods_jax.rollout.bench import decode_step_benchmark
  return decode_step_benchmark(get_preset(FLAGS.preset, vocab_size=vocab), FLAGS.decode_rows, FLAGS.decode_kv_len,
                               FLAGS.decode_steps, max(FLAGS.repeats, 5), warmup=max(FLAGS.warmup, 1),
                               temperature=FLAGS.temperature, seed=FLAGS.seed)


def run_isolated(suite: str, vocab: int, argv: list[str]) -> dict[str, Any]:
  """One suite in a fresh process, with the flags of ``argv`` (a full command line, e.g. ``sys.argv``) but its own
  --suite, --out and --vocab. ``--suite=all`` isolates each suite because, run in the process that had just timed
  the rollouts, the train step timed markedly slower than on its own (same code and machine)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  keep = [a for a in argv[1:] if not a.startswith(("--suite", "--out", "--vocab"))]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, f"{suite}.json")
    subprocess.run([sys.executable, "-m", "launch.benchmark", f"--suite={suite}", f"--out={out}",
                    f"--vocab={vocab}", *keep], check=True, cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
    with open(out, encoding="utf-8") as f:
      return json.load(f)[suite]


def main(argv):
  del argv  # absl passes the arguments left after flag parsing; the isolated suites get the flags from sys.argv
  import sys  # pylint: disable=g-import-not-at-top
  from configs import base
  config = base.get_config()
  from rods_jax import host_memory  # pylint: disable=g-import-not-at-top
  kept = host_memory.configure_for_run(config)  # before the backend starts
  result: dict[str, Any] = {"machine": {**machine_info(), "cpu_keep_freed_memory": kept}}
  if FLAGS.suite == "all":
    result["rollout"] = run_isolated("rollout", FLAGS.vocab, sys.argv)
    vocab = int(result["rollout"]["setup"]["vocab"])  # the tokenizer's, for the model-only suites
    for suite in ("train", "decode", "grpo_step"):
      result[suite] = run_isolated(suite, vocab, sys.argv)
  else:
    result[FLAGS.suite] = run_suite(FLAGS.suite, config, FLAGS.vocab)
  text = json.dumps(result, indent=1, default=float)
  print(text)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
