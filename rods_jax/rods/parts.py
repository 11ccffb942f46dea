"""The parts of a RODS run (docs/METHOD.md §7-§8): ``build`` makes them from a config (validated first), and ``save`` /
``restore`` checkpoint them (learner arrays, JAX key, loop counters, curriculum). ``rods.loop`` drives them."""
from __future__ import annotations

import base64
import dataclasses
import json
import os
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
  # overlap trains on batches sampled one update stale: their sampler log-probs are the behaviour policy
  learner = GRPOLearner(model, config.optim, config.grpo, config.rods, mesh,
                        behaviour="sampler" if config.train.overlap else "current")
  engine = MultiTurnEngine(learner.graphdef, tokenizer, ChatRenderer(tokenizer), config.rollout, model_cfg, mesh=mesh)
  # Round-robin over categories, so a capped evaluation still covers every category equally.
  test_tasks = limit_seeds(env.load_tasks(config.train.eval_split), int(config.train.eval_max_tasks))
  if config.rods.synthesis and synth_factory is None:
    synth_factory = pipeline_factory(config, synthesis_mode(config))
  multihost = jax.process_count() > 1
  cur = Curriculum(seeds, config.rods, config.synthesis, workdir, synth_factory if config.rods.synthesis else None,
                   synthesis_mode(config), seed=int(config.seed), primary=jax.process_index() == 0,
                   share=broadcast_outcomes if multihost else None, depth_fn=profile_depth_fn(env),
                   group_size=int(config.rollout.k))
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
