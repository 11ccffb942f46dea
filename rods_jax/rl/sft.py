"""Supervised warm-up on gold trajectories, rendered exactly as the rollout engine renders a conversation.

A gold conversation is *driven through a real episode*: the prompt is ``renderer.start`` of the first user turn and
the episode's tools; every gold assistant message is encoded and closed with the stop token the sampler would emit
(mask 1: the policy must produce these tokens), and what follows it (tool results, the next user turn, the
generation prompt) is the renderer's token delta (mask 0), as in ``MultiTurnEngine``. The loss is the token-mean
negative log-likelihood of the mask-1 tokens, so SFT trains exactly the tokens GRPO later samples.

Pieces (each usable alone): ``render_gold`` (one task -> ids + mask), ``pad_batch``, the jitted ``sft_step``,
``SFTTrainer`` (thin state holder), ``run_sft`` (the loop, with an evaluation callback that picks the checkpoint), and
``warm_up`` (the CPU-lab recipe: toolworld seeds re-randomised per sample, selection by seed zones: docs/METHOD.md §10).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from rods_jax import console
from rods_jax import sharding as sharding_lib
from rods_jax.rl import grpo_step
from rods_jax.rl import learner as learner_lib
from rods_jax.rl import logprobs
from rods_jax.rods import detector


class SFTExample(NamedTuple):
  tokens: np.ndarray  # [L] int32, the whole conversation
  loss_mask: np.ndarray  # [L] bool, True on the assistant tokens (gold messages + their stop token)


class SFTBatch(NamedTuple):
  tokens: np.ndarray  # [B, T] int32, right-padded with 0
  loss_mask: np.ndarray  # [B, T] bool
  valid: np.ndarray  # [B, T] bool
  truncated: np.ndarray  # [B] bool: the conversation was longer than T and was cut


class SFTState(NamedTuple):
  step: jnp.ndarray  # int32 []
  params: nnx.State
  opt_state: optax.OptState


# ----------------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------------
def gold_assistant_messages(env, task) -> list[str]:
  """The gold assistant contents of ``task`` in order (``env.gold_messages``: calls, then the answer, per turn)."""
  if not hasattr(env, "gold_messages"):
    raise ValueError(f"environment {type(env).__name__} has no gold_messages(task): no gold trajectories for SFT")
  return [m["content"] for m in env.gold_messages(task) if m["role"] == "assistant"]


def render_gold(env, task, renderer, stop_id: int, max_steps_per_turn: int) -> SFTExample:
  """Token ids and loss mask of the gold conversation of ``task``, built like the engine builds a rollout.

  Raises ValueError if a gold message does not behave as gold in the episode (e.g. the episode ends early), which
  would mean the gold data and the environment disagree.
  """
  ep = env.new_episode(task)
  chat, ids = renderer.start([{"role": "user", "content": ep.user_message()}], ep.system_tools())
  tokens, mask = list(ids), [False] * len(ids)
  steps_in_turn = 0
  messages = gold_assistant_messages(env, task)
  for i, content in enumerate(messages):
    if ep.done:
      raise ValueError(f"task {task.id}: the episode ended before gold message {i} of {len(messages)}")
    sampled = list(renderer.encode(content)) + [int(stop_id)]
    res = ep.step(content)
    steps_in_turn += 1
    new_messages = [{"role": "tool", "content": o} for o in res.observations]
    closed = res.turn_closed
    if not closed and steps_in_turn >= max_steps_per_turn:
      ep.force_close_turn()
      closed = True
    if closed:
      steps_in_turn = 0
      if not ep.done:
        new_messages.append({"role": "user", "content": ep.user_message()})
    chat, delta, _ = renderer.extend(chat, sampled, new_messages, generation_prompt=not ep.done)
    tokens += sampled + list(delta)
    mask += [True] * len(sampled) + [False] * len(delta)
  if not ep.done:
    raise ValueError(f"task {task.id}: gold messages did not finish the episode")
  return SFTExample(np.asarray(tokens, np.int32), np.asarray(mask, bool))


def pad_batch(examples: Sequence[SFTExample], seq_len: int) -> SFTBatch:
  """Right-pads (or cuts, marking ``truncated``) every example to ``seq_len`` tokens."""
  n = len(examples)
  tokens = np.zeros((n, seq_len), np.int32)
  mask = np.zeros((n, seq_len), bool)
  valid = np.zeros((n, seq_len), bool)
  truncated = np.zeros((n,), bool)
  for i, ex in enumerate(examples):
    length = min(len(ex.tokens), seq_len)
    tokens[i, :length] = ex.tokens[:length]
    mask[i, :length] = ex.loss_mask[:length]
    valid[i, :length] = True
    truncated[i] = len(ex.tokens) > seq_len
  return SFTBatch(tokens, mask, valid, truncated)


# ----------------------------------------------------------------------------------------------------------------------
# the step
# ----------------------------------------------------------------------------------------------------------------------
def sft_optimizer_config(sft_cfg, optim_cfg) -> dict[str, Any]:
  """Step settings of the warm-up: lr / warm-up / weight decay / clip / logit_chunk from config.sft, betas from
  config.optim."""
  return dict(lr=float(sft_cfg.lr), warmup_steps=int(sft_cfg.warmup_steps), weight_decay=float(sft_cfg.weight_decay),
              grad_clip=float(sft_cfg.grad_clip), b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
              logit_chunk=int(sft_cfg.logit_chunk))


def sft_loss(params: nnx.State, graphdef: nnx.GraphDef, tokens: jnp.ndarray, loss_mask: jnp.ndarray,
             valid: jnp.ndarray, logit_chunk: int = 0) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Token-mean NLL over the assistant tokens: L = −Σ_{n,t} m_nt log p(x_nt | x_<t) / Σ m_nt (m_n0 ignored)."""
  scores = logprobs.token_scores(graphdef, params, tokens, valid, 1.0, logit_chunk)
  m = (loss_mask & valid).at[:, 0].set(False).astype(jnp.float32)
  count = jnp.maximum(jnp.sum(m), 1.0)
  nll = -jnp.sum(scores.logps * m) / count
  mean_prob = jnp.sum(jnp.exp(scores.logps) * m) / count
  return nll, {"loss": nll, "token_prob": jax.lax.stop_gradient(mean_prob), "tokens": jnp.sum(m)}  # mean p(gold)


@functools.partial(jax.jit, static_argnames=("graphdef", "optim"), donate_argnames=("state",))
def sft_step(graphdef: nnx.GraphDef, state: SFTState, tokens: jnp.ndarray, loss_mask: jnp.ndarray,
             valid: jnp.ndarray, *, optim: tuple) -> tuple[SFTState, dict[str, jnp.ndarray]]:
  """One AdamW step on the token-mean NLL of one batch (``optim``: sorted (key, value) pairs, see
  ``sft_optimizer_config``)."""
  ocfg = grpo_step.FrozenConfig(dict(optim))
  optimizer = grpo_step.make_optimizer(ocfg)
  (_, metrics), grads = jax.value_and_grad(sft_loss, has_aux=True)(state.params, graphdef, tokens, loss_mask, valid,
                                                                   int(ocfg.logit_chunk))
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm"] = optax.global_norm(grads)
  metrics["lr"] = jnp.asarray(grpo_step.lr_schedule(ocfg)(state.step), jnp.float32)
  return SFTState(state.step + 1, params, opt_state), metrics


class SFTTrainer:
  """Holds the SFT state; ``step(batch)`` runs the jitted ``sft_step``. Takes ownership of ``model``'s arrays."""

  def __init__(self, model: nnx.Module, sft_cfg, optim_cfg, mesh: Mesh | None = None):
    for name in ("lr", "warmup_steps", "weight_decay", "grad_clip", "batch_size", "seq_len", "logit_chunk"):
      if name not in sft_cfg:
        raise ValueError(f"config.sft is missing field {name!r}")
    self.mesh = mesh
    self.optim = tuple(sorted(sft_optimizer_config(sft_cfg, optim_cfg).items()))
    if mesh is not None:
      sharding_lib.shard_model(model, mesh)
    self.graphdef, params = nnx.split(model)
    opt_state = grpo_step.make_optimizer(grpo_step.FrozenConfig(dict(self.optim))).init(params)
    step = jnp.zeros((), jnp.int32)
    if mesh is not None:  # scalars replicated on the mesh (multi-host safe)
      step = learner_lib.replicate_on_mesh(step, mesh)
      opt_state = jax.tree.map(lambda x: learner_lib.on_mesh(x, mesh), opt_state)
    self.state = SFTState(step, params, opt_state)

  @property
  def params(self) -> nnx.State:
    return self.state.params

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.state.params)

  def _put(self, x: np.ndarray) -> jax.Array:
    if self.mesh is None:
      return jnp.asarray(x)
    return learner_lib.global_array(x, sharding_lib.batch_sharding(self.mesh, x.ndim))

  def step(self, batch: SFTBatch) -> dict[str, float]:
    ctx = jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()
    with ctx:
      self.state, metrics = sft_step(self.graphdef, self.state, self._put(batch.tokens), self._put(batch.loss_mask),
                                     self._put(batch.valid), optim=self.optim)
    out = {k: float(v) for k, v in jax.device_get(metrics).items()}
    out["truncated_frac"] = float(np.mean(batch.truncated))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------------
class SFTResult(NamedTuple):
  best_step: int  # step of the selected parameters
  best_score: float | None  # the callback's score there (None: no evaluation ran)
  best_params: Any  # host (numpy) copy of the selected parameters, an nnx.State
  history: list[dict[str, Any]]  # per step: metrics; evaluation steps also hold "eval"


def run_sft(trainer: SFTTrainer, batch_fn: Callable[[int], SFTBatch], steps: int, *, eval_every: int = 0,
            eval_fn: Callable[[int, SFTTrainer], tuple[float, dict[str, Any]]] | None = None,
            log_fn: Callable[[int, dict[str, Any]], None] | None = None, step_offset: int = 0) -> SFTResult:
  """Runs ``steps`` SFT steps on ``batch_fn(step)``; every ``eval_every`` steps (and after the last) calls
  ``eval_fn(step, trainer) -> (score, info)`` and keeps a host copy of the parameters with the highest score.
  Without ``eval_fn`` the final parameters are selected. Steps are numbered ``step_offset + 1 ..`` (a continuation
  keeps the global step, so ``batch_fn`` draws new batches instead of replaying the first run's)."""
  if steps < 0:
    raise ValueError(f"config.sft.steps={steps} must be >= 0")
  if step_offset < 0:
    raise ValueError(f"run_sft: step_offset={step_offset} must be >= 0")
  history: list[dict[str, Any]] = []
  best_step, best_score = step_offset, None
  best_params = jax.device_get(trainer.params)
  last = step_offset + steps
  for step in range(step_offset + 1, last + 1):
    t0 = time.perf_counter()
    metrics = trainer.step(batch_fn(step))
    metrics["time/step"] = time.perf_counter() - t0
    rec: dict[str, Any] = {"step": step, **metrics}
    if eval_fn is not None and ((eval_every > 0 and step % eval_every == 0) or step == last):
      score, info = eval_fn(step, trainer)
      rec["eval"] = {"score": float(score), **info}
      if best_score is None or score > best_score:
        best_step, best_score, best_params = step, float(score), jax.device_get(trainer.params)
    if log_fn is not None:
      log_fn(step, rec)
    history.append(rec)
  if eval_fn is None:
    best_step, best_params = last, jax.device_get(trainer.params)
  return SFTResult(best_step, best_score, best_params, history)


def zone_score(fractions: dict[str, float]) -> float:
  """Checkpoint score from seed zone fractions (docs/METHOD.md §10): the boundary fraction, among checkpoints that still
  have hard AND mastered tasks; any other checkpoint ranks below them (boundary − 1)."""
  both = fractions["hard"] > 0 and fractions["mastered"] > 0
  return fractions["boundary"] if both else fractions["boundary"] - 1.0


def zone_fractions(rewards: np.ndarray, rods_cfg, tol: float) -> dict[str, float]:
  stats = jax.device_get(detector.group_statistics(jnp.asarray(rewards, jnp.float32), float(rods_cfg.alpha_low),
                                                   float(rods_cfg.alpha_high), float(tol)))
  out = {name: float(np.mean(stats.zone == z)) for z, name in enumerate(detector.ZONE_NAMES)}
  out["frac_zero_std"] = float(np.mean(stats.zero_std))
  out["reward_mean"] = float(np.mean(rewards))
  return out


# ----------------------------------------------------------------------------------------------------------------------
# the CPU-lab recipe used by the RODS loop
# ----------------------------------------------------------------------------------------------------------------------
def task_sampler(env, tasks: Sequence[Any], renderer, stop_id: int, config, seed: int) -> Callable[[int], SFTBatch]:
  """batch_fn(step): ``config.sft.batch_size`` tasks drawn uniformly, each re-randomised (``config.sft.rerandomize``,
  toolworld only) with its own deterministic RNG, rendered with ``render_gold`` and padded to ``config.sft.seq_len``."""
  sft_cfg = config.sft
  rerandomize = None
  if sft_cfg.rerandomize:
    if config.env.name != "toolworld":
      raise ValueError(f"config.sft.rerandomize=True needs env.name 'toolworld' (got {config.env.name!r})")
    from rods_jax.envs.toolworld import rerandomize  # pylint: disable=g-import-not-at-top
  cache: dict[int, SFTExample] = {}
  max_steps = int(config.rollout.max_steps_per_turn)

  def batch_fn(step: int) -> SFTBatch:
    rng = np.random.default_rng([seed, step])
    picks = rng.integers(0, len(tasks), int(sft_cfg.batch_size))
    examples = []
    for j, i in enumerate(picks):
      if rerandomize is not None:
        task = rerandomize(tasks[i], random.Random(f"{seed}-{step}-{j}"))
        examples.append(render_gold(env, task, renderer, stop_id, max_steps))
      else:
        if i not in cache:
          cache[i] = render_gold(env, tasks[i], renderer, stop_id, max_steps)
        examples.append(cache[i])
    return pad_batch(examples, int(sft_cfg.seq_len))

  return batch_fn


def continued_history(parent: dict[str, Any] | None, child: dict[str, Any], parent_dir: str = "") -> dict[str, Any]:
  """One cumulative ``sft_history.json`` for a warm-up continued from ``parent`` (its history file, or None): the
  parent's records, then the child's, whose steps already continue the parent's (``run_sft(step_offset=...)``).
  The selection (best_step/best_score) is the child's: the continuation started from the parent's output."""
  if parent is None:
    return child
  offset = max((int(h["step"]) for h in parent["history"]), default=0)
  if child["history"] and int(child["history"][0]["step"]) <= offset:
    raise ValueError(f"continued_history: the continuation's first step {child['history'][0]['step']} does not "
                     f"follow the parent's last step {offset} (run it with step_offset={offset})")
  return {**child, "history": list(parent["history"]) + list(child["history"]),
          "continued_from": {"dir": parent_dir, "steps": offset, "best_step": parent.get("best_step")}}


def warm_up(model: nnx.Module, model_cfg, env, tokenizer, config, out_dir: str, mesh: Mesh | None = None,
            tasks: Sequence[Any] | None = None, parent_history: dict[str, Any] | None = None,
            parent_dir: str = "") -> SFTResult:
  """Supervised warm-up of ``model`` on the seed split; writes the selected checkpoint (HF layout + tokenizer +
  ``sft_history.json``) to ``out_dir``.

  Selection (``config.sft.select_by_zones``): every ``config.sft.eval_every`` steps, K = ``config.rollout.k``
  rollouts of ``config.sft.eval_tasks`` seeds (canonical worlds) give the zone fractions; the checkpoint with the
  best ``zone_score`` is kept. Otherwise the last step is kept. ``config.sft.keep_evaluated``: every evaluated step
  is also written, as ``<out_dir>_step<N>`` (``evaluated_dir``).

  ``parent_history`` (the ``sft_history.json`` of the checkpoint ``model`` was loaded from): this is a continuation;
  steps continue the parent's numbering (new batches) and the written history is cumulative
  (``continued_history``).
  """
  from rods_jax.rollout.engine import MultiTurnEngine, stop_token_ids  # pylint: disable=g-import-not-at-top
  from rods_jax.rollout.render import ChatRenderer  # pylint: disable=g-import-not-at-top

  seeds = list(env.load_tasks(config.env.seed_split)) if tasks is None else list(tasks)
  if not seeds:
    raise ValueError(f"config.env.seed_split={config.env.seed_split!r} has no tasks to warm up on")
  renderer = ChatRenderer(tokenizer)
  stop_id = stop_token_ids(tokenizer, tuple(config.rollout.stop_strings))[0]
  trainer = SFTTrainer(model, config.sft, config.optim, mesh)
  batch_fn = task_sampler(env, seeds, renderer, stop_id, config, int(config.seed))

  eval_fn = None
  if config.sft.select_by_zones and config.sft.eval_every > 0:
    engine = MultiTurnEngine(trainer.graphdef, tokenizer, renderer, config.rollout, model_cfg, mesh=mesh)
    eval_tasks = seeds[:int(config.sft.eval_tasks)]
    k = int(config.rollout.k)

    def eval_fn(step: int, tr: SFTTrainer) -> tuple[float, dict[str, Any]]:
      rewards = []
      chunk = max(1, int(config.rollout.tasks_per_step))
      for i in range(0, len(eval_tasks), chunk):
        out = engine.rollout(tr.params, env, eval_tasks[i:i + chunk], k,
                             jax.random.fold_in(jax.random.key(int(config.seed)), step * 100_003 + i))
        rewards.append(np.asarray(out.rewards))
      fractions = zone_fractions(np.concatenate(rewards), config.rods, float(config.grpo.zero_std_tol))
      return zone_score(fractions), fractions

  os.makedirs(out_dir, exist_ok=True)
  log_path = os.path.join(out_dir, "sft_metrics.jsonl")

  offset = 0 if parent_history is None else max((int(h["step"]) for h in parent_history["history"]), default=0)
  progress = console.Progress(config.logging, int(config.sft.steps), "step", "warm-up", console.SFT_HEADLINE)

  kept: list[int] = []

  def log_fn(step: int, rec: dict[str, Any]) -> None:
    progress.update(step, step - offset, rec)
    if "eval" in rec and config.sft.keep_evaluated:
      _export(nnx.merge(trainer.graphdef, trainer.params), model_cfg, tokenizer, evaluated_dir(out_dir, step))
      kept.append(step)
    if "eval" in rec:
      logging.info("warm-up step %d: seed zones %s", step, console.headline(
          rec["eval"], (("hard", "hard"), ("boundary", "boundary"), ("mastered", "mastered"),
                        ("reward_mean", "R_mean"), ("score", "score"))))
    if jax.process_index() == 0:
      with open(log_path, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")

  with progress:
    result = run_sft(trainer, batch_fn, int(config.sft.steps), eval_every=int(config.sft.eval_every),
                     eval_fn=eval_fn, log_fn=log_fn, step_offset=offset)
  selected = nnx.merge(trainer.graphdef, result.best_params)
  _export(selected, model_cfg, tokenizer, out_dir)
  if jax.process_index() == 0:
    hist = {"best_step": result.best_step, "best_score": result.best_score, "history": result.history}
    hist = continued_history(parent_history, hist, parent_dir)
    # Each kept step carries the same history, marked with the step its weights are from.
    for d, h in [(out_dir, hist)] + [(evaluated_dir(out_dir, s), {**hist, "exported_step": s}) for s in kept]:
      with open(os.path.join(d, "sft_history.json"), "w") as f:
        json.dump(h, f, indent=1, sort_keys=True)
  return result


def evaluated_dir(out_dir: str, step: int) -> str:
  """Where ``warm_up`` with ``sft.keep_evaluated`` writes evaluated step ``step``: a sibling of ``out_dir``."""
  return f"{os.path.normpath(out_dir)}_step{step}"


def _export(model: nnx.Module, model_cfg, tokenizer, path: str) -> None:
  from rods_jax.models import hf_loader  # pylint: disable=g-import-not-at-top
  hf_loader.export_hf_checkpoint(model, model_cfg, path)
  if jax.process_index() == 0:
    tokenizer.save_pretrained(path)
