"""The RODS trainer (DESIGN §3): one code path for every experiment arm.

    train(config, workdir)

per step: sample B tasks from the active pool → engine: K rollouts each → learner.step (GRPO update; returns the
detector's GroupStats, computed inside the jitted step) → metrics → curriculum.after_update (observe r̄, select
seeds, request synthesis, drain validated tasks into staging, epoch-boundary lifecycle) → checkpoint every N steps →
held-out evaluation at fixed trajectory counts. The x-axis is trajectories consumed; the run stops at
``config.train.total_trajectories``. A run resumes from its workdir's latest checkpoint (same step, pool, RNGs).

Arms are configuration (configs/arms.py): ``rods.synthesis`` off = static data; ``rods.seed_selection="uniform"`` =
random seeds; ``arm="env_augment"`` sends perturbation requests; ``rods.retirement`` off = no_retire;
``rods.dynamic`` off = static_pool (built once before training); ``rods.dynamic_sampling`` = DAPO-style
zero-variance filtering with refill.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from rods_jax import checkpoint as ckpt_lib
from rods_jax import config_validation, envs, sharding
from rods_jax import metrics as metrics_lib
from rods_jax.envs import profile as profile_lib
from rods_jax.models import Transformer, get_preset, hf_loader, lab_tokenizer
from rods_jax.rl import sft
from rods_jax.rl.learner import GRPOLearner
from rods_jax.rods import detector
from rods_jax.rods.buffer import Sample
from rods_jax.rods.curriculum import Curriculum
from rods_jax.rods.queues import Outcome
from rods_jax.rods.synth_process import pipeline_factory
from rods_jax.rollout.engine import MultiTurnEngine
from rods_jax.rollout.render import ChatRenderer

CHECKPOINT_DIR = "checkpoints"
WARMUP_DIR = "warmup"
EVAL_DIR = "eval"


class LoopState(NamedTuple):
  """Host-side counters of the run (checkpointed as JSON)."""
  step: int  # GRPO steps completed
  trajectories: int  # rollouts consumed (the x-axis), including rollouts discarded by dynamic sampling
  next_eval: int  # trajectory count of the next held-out evaluation (-1: never)
  last_eval: int  # trajectory count of the last held-out evaluation (-1: none yet)
  distinct_tasks: int  # distinct task ids trained on so far


@dataclasses.dataclass
class Parts:
  """Everything ``build`` makes; ``train`` drives it."""
  config: Any
  workdir: str
  mesh: Any
  env: Any
  tokenizer: Any
  model_cfg: Any
  learner: Any
  engine: Any
  curriculum: Curriculum
  ckpt: ckpt_lib.CheckpointManager
  writer: metrics_lib.MetricWriter
  test_tasks: list
  state: LoopState
  rng: jax.Array
  seen: set  # distinct task ids trained on
  restored_step: int | None

  def close(self) -> None:
    self.curriculum.close()
    self.ckpt.close()
    self.writer.close()


# ------------------------------------------------------------------------------------------------ building blocks
def synthesis_mode(config) -> str:
  """env_augment sends uniform structure-preserving perturbations; every other synthesizing arm, skill-aligned."""
  return "perturb" if config.arm == "env_augment" else "synthesize"


def build_tokenizer(config, workdir: str):
  """The model's tokenizer: ``model.tokenizer_dir`` / the checkpoint's own, or the lab tokenizer built into
  ``<workdir>/tokenizer`` (lab preset from scratch)."""
  if config.model.tokenizer_dir:
    return hf_loader.load_tokenizer(config.model.tokenizer_dir)
  if config.model.checkpoint_dir:
    return hf_loader.load_tokenizer(config.model.checkpoint_dir)
  if config.model.preset != "lab_tiny":
    raise ValueError(f"config.model.preset={config.model.preset!r} from scratch needs config.model.tokenizer_dir "
                     f"(only lab_tiny builds its own tokenizer)")
  # Built once per workdir (reused on resume); only lab_tiny from scratch needs it.
  return lab_tokenizer.build_default_lab_tokenizer(os.path.join(workdir, "tokenizer"), config.env)


def build_model(config, tokenizer, mesh, init_dir: str = ""):
  """(model, ModelConfig): from ``init_dir`` / ``model.checkpoint_dir`` (HF layout) or the preset from scratch."""
  path = init_dir if init_dir else str(config.model.checkpoint_dir)
  if path:
    return hf_loader.load_hf_checkpoint(path, mesh=mesh, dtype=config.model.dtype,
                                        param_dtype=config.model.param_dtype)
  cfg = get_preset(config.model.preset, vocab_size=len(tokenizer), dtype=config.model.dtype,
                   param_dtype=config.model.param_dtype)
  return Transformer(cfg, rngs=nnx.Rngs(int(config.seed))), cfg


def warm_start_dir(config, workdir: str, env, tokenizer, mesh, seeds: Sequence[Any]) -> str:
  """The HF-layout directory GRPO starts from: ``sft.init_checkpoint``, or the supervised warm-up run now into
  ``<workdir>/warmup`` (``sft.steps`` > 0; kept across restarts), or "" (start from the model as built)."""
  if config.sft.init_checkpoint:
    return str(config.sft.init_checkpoint)
  if config.sft.steps <= 0:
    return ""
  out = os.path.join(workdir, WARMUP_DIR)
  if os.path.exists(os.path.join(out, "config.json")):
    return out
  model, model_cfg = build_model(config, tokenizer, mesh)
  # Writes the zone-selected checkpoint (HF layout + tokenizer) to `out`.
  sft.warm_up(model, model_cfg, env, tokenizer, config, out, mesh=mesh, tasks=list(seeds))
  return out


def limit_seeds(seeds: Sequence[Any], n: int) -> list:
  """The first ``n`` tasks taken round-robin over categories (in split order), so a small subset keeps the mix."""
  by_cat: dict[str, list] = {}
  for t in seeds:
    by_cat.setdefault(t.category, []).append(t)
  out, i = [], 0
  while len(out) < min(n, len(seeds)):
    for cat in by_cat:
      if i < len(by_cat[cat]) and len(out) < n:
        out.append(by_cat[cat][i])
    i += 1
  return out


def build(config, workdir: str, synth_factory: Callable[[], Any] | None = None) -> Parts:
  """Builds (or restores) every part of a run. ``synth_factory`` overrides the synthesis pipeline (tests)."""
  config_validation.validate(config, jax.device_count())
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  env = envs.make_env(config.env.name, config.env)
  tokenizer = build_tokenizer(config, workdir)
  ckpt = ckpt_lib.CheckpointManager(os.path.join(workdir, CHECKPOINT_DIR), config.checkpoint)
  restored_step = ckpt.latest_step()
  # A resumed run restores its own weights; the warm-up only decides the architecture / start point once.
  seeds = env.load_tasks(config.env.seed_split)
  if int(config.rods.seed_limit) > 0:
    seeds = limit_seeds(seeds, int(config.rods.seed_limit))
  init_dir = warm_start_dir(config, workdir, env, tokenizer, mesh, seeds)
  model, model_cfg = build_model(config, tokenizer, mesh, init_dir)
  learner = GRPOLearner(model, config.optim, config.grpo, config.rods, mesh)
  engine = MultiTurnEngine(learner.graphdef, tokenizer, ChatRenderer(tokenizer), config.rollout, model_cfg)
  # Round-robin over categories, so a capped evaluation still covers every category equally.
  test_tasks = limit_seeds(env.load_tasks(config.env.test_split), int(config.train.eval_max_tasks))
  if config.rods.synthesis and synth_factory is None:
    synth_factory = pipeline_factory(config, synthesis_mode(config))
  multihost = jax.process_count() > 1
  cur = Curriculum(seeds, config.rods, config.synthesis, workdir, synth_factory if config.rods.synthesis else None,
                   synthesis_mode(config), seed=int(config.seed), primary=jax.process_index() == 0,
                   share=broadcast_outcomes if multihost else None, depth_fn=profile_depth_fn(env))
  writer = metrics_lib.MetricWriter(workdir, config.logging)
  rng = jax.random.key(int(config.seed))
  every = int(config.train.eval_every_trajectories)
  state = LoopState(step=0, trajectories=0, next_eval=0 if every > 0 else -1, last_eval=-1, distinct_tasks=0)
  parts = Parts(config=config, workdir=workdir, mesh=mesh, env=env, tokenizer=tokenizer, model_cfg=model_cfg,
                learner=learner, engine=engine, curriculum=cur, ckpt=ckpt, writer=writer, test_tasks=test_tasks,
                state=state, rng=rng, seen=set(), restored_step=restored_step)
  if restored_step is not None:
    restore(parts)
  else:
    writer.write_config(config)
  return parts


def profile_depth_fn(env) -> Callable[[Any], int | None]:
  """Dependency depth of a task's structural profile Φ (from its meta when the generator stored it, else computed
  through the environment); None when it cannot be computed (the metric is then skipped for that task)."""

  def depth(task) -> int | None:
    prof = task.meta.get("profile") if isinstance(task.meta, dict) else None
    if isinstance(prof, dict) and isinstance(prof.get("depth"), int):
      return prof["depth"]
    try:
      return int(profile_lib.profile(task, env).depth)
    except Exception:  # pylint: disable=broad-except  # a metric must never stop training
      return None
  return depth


def broadcast_outcomes(outcomes: list) -> list:
  """Multi-host: process 0's drained synthesizer outcomes on every process (JSON bytes, two broadcasts)."""
  payload = json.dumps([[o.request_id, o.seed_id, None if o.record is None else base64.b64encode(
      o.record.tobytes()).decode("ascii"), o.failure, o.seconds] for o in outcomes]).encode("utf-8")
  n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(payload), np.int64)))
  buf = np.zeros((n,), np.uint8)
  if jax.process_index() == 0:
    buf[:] = np.frombuffer(payload, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes()
  return [Outcome(int(r), str(s), None if rec is None else np.frombuffer(base64.b64decode(rec), np.uint8).copy(),
                  str(f), float(t)) for r, s, rec, f, t in json.loads(data.decode("utf-8"))]


# ------------------------------------------------------------------------------------------------ checkpoints
def _train_state(parts: Parts) -> ckpt_lib.TrainState:
  ls = parts.learner.state
  return ckpt_lib.TrainState(step=parts.state.step, params=ls.params, opt_state=ls.opt_state,
                             ref_params=ls.ref_params, rng=parts.rng)


def save(parts: Parts, force: bool = False) -> bool:
  host = {"loop": parts.state._asdict(), "curriculum": parts.curriculum.state_dict(),
          "seen": sorted(parts.seen), "learner_updates": int(parts.learner.state.step)}
  return parts.ckpt.save(_train_state(parts), host, force=force)


def restore(parts: Parts) -> None:
  """Restores learner arrays, the JAX key, the loop counters and the curriculum (buffer, selector, synthesizer
  position; candidates accepted after the checkpoint are re-staged from the log)."""
  r = parts.ckpt.restore(_train_state(parts))
  ls = parts.learner.state
  updates = jnp.asarray(int(r.host_state["learner_updates"]), jnp.int32)
  sharding = getattr(ls.step, "sharding", None)
  parts.learner.state = ls._replace(step=jax.device_put(updates, sharding) if sharding is not None else updates,
                                    params=r.state.params, opt_state=r.state.opt_state, ref_params=r.state.ref_params)
  # Through host memory: a restored key is committed to one device, and mixing it with mesh-placed params in the
  # engine's jitted decode would be a device mismatch; a fresh host key is uncommitted, like the original.
  parts.rng = jax.random.wrap_key_data(np.asarray(jax.random.key_data(r.state.rng)),
                                       impl=jax.random.key_impl(r.state.rng))
  parts.state = LoopState(**r.host_state["loop"])
  parts.seen = set(r.host_state["seen"])
  parts.curriculum.load_state_dict(r.host_state["curriculum"])


# ------------------------------------------------------------------------------------------------ rollouts
def select_groups(batches: Sequence[Any], picks: Sequence[tuple[int, int]], k: int):
  """A RolloutBatch made of groups ``(batch index, task index)`` of several RolloutBatches (row n = b·K + k)."""
  first = batches[0]
  rows = [(bi, b * k + j) for bi, b in picks for j in range(k)]
  fields = {}
  for name in first._fields:
    v0 = getattr(first, name)
    if name in ("timings", "stats"):
      fields[name] = {key: sum(getattr(b, name).get(key, 0) for b in batches) for key in v0}
    elif name == "messages":
      fields[name] = tuple(batches[bi].messages[n] for bi, n in rows)
    elif name in ("rewards", "success", "task_ids", "categories"):
      fields[name] = np.stack([np.asarray(getattr(batches[bi], name))[b] for bi, b in picks])
    else:
      fields[name] = np.stack([np.asarray(getattr(batches[bi], name))[n] for bi, n in rows])
  return type(first)(**fields)


def _numpy_stats(rewards: np.ndarray, rods_cfg, tol: float):
  return jax.device_get(detector.group_statistics(jnp.asarray(rewards), float(rods_cfg.alpha_low),
                                                  float(rods_cfg.alpha_high), float(tol)))


def rollout_step(parts: Parts, sample: Sample, rng: jax.Array):
  """K rollouts per task of ``sample``; with ``rods.dynamic_sampling``, groups with zero reward variance are dropped
  and the batch is refilled from more tasks (up to ``dynamic_sampling_max_rounds`` rollout rounds, never aborting:
  short of B informative groups, the batch is completed with zero-variance ones, which carry no gradient).

  Returns (batch, sample actually trained on, trajectories consumed, metrics).
  """
  c = parts.config
  k = int(c.rollout.k)
  params = parts.learner.params
  batch = parts.engine.rollout(params, parts.env, sample.tasks, k, jax.random.fold_in(rng, 0))
  if not c.rods.dynamic_sampling:
    return batch, sample, len(sample.tasks) * k, {}
  b = len(sample.tasks)
  batches, tasks = [batch], [list(sample.tasks)]
  informative, flat = [], []
  cur = parts.curriculum
  ended = False
  for rnd in range(int(c.rods.dynamic_sampling_max_rounds)):
    if rnd > 0:
      if cur.buffer.epoch_finished:
        cur.end_epoch(lifecycle=False)
        ended = True
      more = cur.next_tasks(b)
      batches.append(parts.engine.rollout(params, parts.env, more.tasks, k, jax.random.fold_in(rng, rnd)))
      tasks.append(list(more.tasks))
    stats = _numpy_stats(np.asarray(batches[-1].rewards), c.rods, c.grpo.zero_std_tol)
    for i in range(b):
      (flat if bool(stats.zero_std[i]) else informative).append((len(batches) - 1, i))
    if len(informative) >= b:
      break
  picks = (informative + flat)[:b]
  if cur.buffer.epoch_finished:
    cur.end_epoch(lifecycle=False)
    ended = True
  kept = select_groups(batches, picks, k)
  trained = Sample(tasks=[tasks[bi][i] for bi, i in picks], epoch=cur.buffer.epoch, epoch_end=False, n_filler=0)
  m = {"dynamic_sampling/rounds": len(batches), "dynamic_sampling/informative": min(len(informative), b),
       "dynamic_sampling/filled_flat": max(0, b - len(informative)), "dynamic_sampling/epoch_ended": int(ended)}
  return kept, trained, len(batches) * b * k, m


def rollout_metrics(batch) -> dict[str, float]:
  r = np.asarray(batch.rewards, np.float64)
  return {"reward/mean": float(r.mean()), "reward/std": float(r.std()),
          "rollout/success": float(np.asarray(batch.success).mean()),
          "rollout/n_calls": float(np.mean(batch.n_calls)), "rollout/n_errors": float(np.mean(batch.n_errors)),
          "rollout/parse_errors": float(np.mean(batch.n_parse_errors)),
          "rollout/truncated": float(np.mean(batch.truncated)), "rollout/length": float(np.mean(batch.lengths)),
          "rollout/sampled_tokens": float(batch.stats.get("sampled_tokens", 0))}


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(parts: Parts, rng: jax.Array) -> dict[str, float]:
  """Held-out evaluation on the test split through ``rods_jax.eval.evaluate`` (greedy when ``train.eval_k`` == 1,
  else sampled at the rollout temperature with unbiased pass@j / pass^j); its metrics under ``eval/``."""
  from rods_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  c = parts.config
  k = int(c.train.eval_k)
  rollout_fn = eval_lib.engine_rollout_fn(parts.engine, parts.learner.params, parts.env, c.rollout)
  # chunk = the training prompt batch: its prefill is already compiled.
  result = eval_lib.evaluate(rollout_fn, parts.test_tasks, mode="greedy" if k == 1 else "sampled", k=k, rng=rng,
                             chunk=int(c.rollout.tasks_per_step))
  return {f"eval/{key}": value for key, value in result.metrics.items()}


def _write_eval(parts: Parts, m: dict[str, float]) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.join(parts.workdir, EVAL_DIR), exist_ok=True)
  rec = {"step": parts.state.step, "trajectories": parts.state.trajectories, **m}
  with open(os.path.join(parts.workdir, EVAL_DIR, f"eval_{parts.state.trajectories:09d}.json"), "w") as f:
    json.dump(rec, f, indent=1, sort_keys=True)


# ------------------------------------------------------------------------------------------------ the loop
def train_step(parts: Parts) -> dict[str, Any]:
  """One RODS step; updates ``parts`` in place and returns the step's metrics."""
  c = parts.config
  timings: dict[str, float] = {}
  t0 = time.perf_counter()
  parts.rng, key = jax.random.split(parts.rng)
  sample = parts.curriculum.next_tasks(int(c.rollout.tasks_per_step))
  batch, trained, consumed, m = rollout_step(parts, sample, key)
  timings["rollout"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  learner_metrics, stats = parts.learner.step(batch)
  timings["update"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  step = parts.state.step + 1  # the number of the step being completed (metrics, events and history agree)
  m.update(parts.curriculum.after_update(trained, stats, step))
  timings["curriculum"] = time.perf_counter() - t0
  timings["synthesis_wait"] = float(m.get("synth/drain_s", 0.0))
  for t in trained.tasks:
    parts.seen.add(t.id)
  parts.state = parts.state._replace(step=step, trajectories=parts.state.trajectories + consumed,
                                     distinct_tasks=len(parts.seen))
  m.update({f"grpo/{k}": v for k, v in learner_metrics.items()})
  m.update(rollout_metrics(batch))
  for name, secs in batch.timings.items():
    timings[f"engine_{name}"] = float(secs)
  m[metrics_lib.X_AXIS] = parts.state.trajectories
  m["train/distinct_tasks"] = parts.state.distinct_tasks
  m["train/filler_tasks"] = sample.n_filler
  parts.writer.write(parts.state.step, m, timings)
  return m


def maybe_evaluate(parts: Parts, force: bool = False) -> dict[str, float] | None:
  """Evaluates when the trajectory count reached the next scheduled point (or ``force``), at most once per count."""
  st = parts.state
  due = st.next_eval >= 0 and st.trajectories >= st.next_eval
  if not (due or force) or st.last_eval == st.trajectories:
    return None
  m = evaluate(parts, jax.random.fold_in(jax.random.key(int(parts.config.seed) + 1), st.trajectories))
  m[metrics_lib.X_AXIS] = st.trajectories
  parts.writer.write(st.step, m)
  _write_eval(parts, m)
  every = int(parts.config.train.eval_every_trajectories)
  nxt = st.next_eval
  while every > 0 and nxt <= st.trajectories:
    nxt += every
  parts.state = st._replace(next_eval=nxt, last_eval=st.trajectories)
  return m


def train(config, workdir: str, synth_factory: Callable[[], Any] | None = None,
          max_steps: int | None = None, evaluate_heldout: bool = True) -> LoopState:
  """Runs (or resumes) the experiment in ``workdir`` until ``train.total_trajectories``; returns the final state.

  ``max_steps`` stops early after that many steps of this invocation (a resumable partial run);
  ``evaluate_heldout=False`` skips the held-out evaluations (smoke tests).
  """
  parts = build(config, workdir, synth_factory)
  try:
    if parts.restored_step is None and config.rods.synthesis and not config.rods.dynamic:
      parts.writer.write(0, build_static_pool(parts))
    evals = evaluate_heldout and int(config.train.eval_every_trajectories) > 0 and bool(parts.test_tasks)
    total = int(config.train.total_trajectories)
    done = 0
    while parts.state.trajectories < total and (max_steps is None or done < max_steps):
      if evals:
        maybe_evaluate(parts)  # at 0 (the warm-up policy) and every eval_every_trajectories
      train_step(parts)
      done += 1
      save(parts)
    if evals and parts.state.trajectories >= total:
      maybe_evaluate(parts, force=True)  # the final policy
    if parts.ckpt.latest_step() != parts.state.step:
      save(parts, force=True)
    return parts.state
  finally:
    parts.close()


def build_static_pool(parts: Parts) -> dict[str, Any]:
  """static_pool arm: the warm-up policy's boundary over the seeds → synthesis, once, before training."""
  c = parts.config
  k = int(c.rollout.k)

  def group_stats(tasks):
    parts.rng, key = jax.random.split(parts.rng)
    out = parts.engine.rollout(parts.learner.params, parts.env, tasks, k, key)
    return _numpy_stats(np.asarray(out.rewards), c.rods, c.grpo.zero_std_tol)

  return parts.curriculum.build_static_pool(group_stats, int(c.rollout.tasks_per_step), int(c.rods.static_pool_size),
                                            max_passes=int(c.rods.static_pool_max_passes),
                                            timeout_s=float(c.rods.static_pool_timeout_s))
