"""Batched multi-turn rollouts: B tasks x K rows advance together in ONE KV cache, extended turn by turn.

One round of the loop:
  1. decode every active row until it stops (stop token, per-message cap or token budget), one jitted while_loop;
  2. on the host, for each row that stopped: decode only its NEW sampled ids to text, ``episode.step(text)``, and
     render the token delta the template adds (end of message, tool messages, next user turn, generation prompt);
  3. append all deltas with ONE batched incremental prefill (``model.extend`` with a per-row valid prefix).
The history is never re-prefilled; rows that are waiting or done are masked. A group's prompt is prefilled once and its
cache rows broadcast to the K rollouts.
On a mesh the rows are spread over the data-parallel devices (``placement``); on one device the tasks may run as
concurrent cohorts in host threads (``rollout.cohorts``), so that host work overlaps device work.

``reprefill=True`` is the baseline that peers use (Tunix): the same sampler, but before every assistant step each row's
whole conversation is prefilled again from an empty cache. It exists for ``launch/benchmark.py`` and for tests.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rods_jax.rollout import sampler, types
from rods_jax.rollout.placement import RowPlacement
from rods_jax.rollout.render import ChatRenderer, ChatState
from rods_jax.rollout.sampling import SamplingParams
from rods_jax.rollout.types import RolloutBatch


@dataclasses.dataclass(frozen=True)
class EngineLimits:
  """The engine's fields of ``cfg.rollout`` (see configs/base.py for their meaning)."""
  max_steps_per_turn: int
  max_tokens_per_message: int
  max_trajectory_tokens: int
  cache_capacity: int
  kv_bucket: int
  prefill_bucket: int
  stop_strings: tuple[str, ...]
  min_stopped_frac: float
  compact_min_rows: int
  cohorts: int

  @classmethod
  def from_config(cls, rollout_cfg) -> "EngineLimits":
    lim = cls(
        max_steps_per_turn=int(rollout_cfg.max_steps_per_turn),
        max_tokens_per_message=int(rollout_cfg.max_tokens_per_message),
        max_trajectory_tokens=int(rollout_cfg.max_trajectory_tokens),
        cache_capacity=int(rollout_cfg.cache_capacity), kv_bucket=int(rollout_cfg.kv_bucket),
        prefill_bucket=int(rollout_cfg.prefill_bucket), stop_strings=tuple(rollout_cfg.stop_strings),
        min_stopped_frac=float(rollout_cfg.min_stopped_frac), compact_min_rows=int(rollout_cfg.compact_min_rows),
        cohorts=int(rollout_cfg.cohorts))
    if not 0.0 < lim.min_stopped_frac <= 1.0:
      raise ValueError(f"config.rollout.min_stopped_frac={lim.min_stopped_frac} must be in (0, 1]")
    if lim.cohorts < 1:
      raise ValueError(f"config.rollout.cohorts={lim.cohorts} must be >= 1")
    if lim.compact_min_rows < 0:
      raise ValueError(f"config.rollout.compact_min_rows={lim.compact_min_rows} must be >= 0 (0 = never compact)")
    for name in ("max_steps_per_turn", "max_tokens_per_message", "max_trajectory_tokens", "kv_bucket",
                 "prefill_bucket"):
      if getattr(lim, name) <= 0:
        raise ValueError(f"config.rollout.{name}={getattr(lim, name)} must be positive")
    # Padded prefill positions are dropped by the model, so the valid tokens (<= the budget) are all that must fit.
    if lim.cache_capacity < lim.max_trajectory_tokens:
      raise ValueError(f"config.rollout.cache_capacity={lim.cache_capacity} must be >= "
                       f"config.rollout.max_trajectory_tokens={lim.max_trajectory_tokens}")
    return lim


def stop_token_ids(tokenizer, stop_strings: Sequence[str]) -> tuple[int, ...]:
  """Ids of the stop strings (each must be ONE token of the vocabulary) plus the tokenizer's EOS."""
  ids = []
  for s in stop_strings:
    enc = tokenizer.encode(s, add_special_tokens=False)
    if len(enc) != 1:
      raise ValueError(f"config.rollout.stop_strings: {s!r} is not a single token of this tokenizer (ids {enc})")
    ids.append(int(enc[0]))
  if tokenizer.eos_token_id is not None:
    ids.append(int(tokenizer.eos_token_id))
  return tuple(dict.fromkeys(ids))


class _Row:
  """Host bookkeeping of one trajectory (mutable, local to one ``rollout`` call)."""

  __slots__ = ("episode", "chat", "tokens", "mask", "logps", "steps_in_turn", "finished", "truncated", "cached",
               "partial")

  def __init__(self, episode, chat: ChatState, prompt: list[int]):
    self.episode = episode
    self.chat = chat
    self.tokens = list(prompt)
    self.mask = [False] * len(prompt)
    self.logps = [0.0] * len(prompt)
    self.steps_in_turn = 0
    self.finished = False
    self.truncated = False
    self.cached = 0  # tokens of this row that are in the device cache
    self.partial: list[int] = []  # ids of the assistant message being sampled (spans decode calls)

  def append(self, ids, sampled: bool, logps=None):
    self.tokens.extend(int(i) for i in ids)
    self.mask.extend([sampled] * len(ids))
    self.logps.extend([float(x) for x in logps] if logps is not None else [0.0] * len(ids))


class MultiTurnEngine:
  """Runs K rollouts of B tasks through an environment, all rows in one KV cache.

  Args:
    model_graphdef: ``nnx.split(model)[0]`` of a model with ``extend`` (rods_jax.models.Transformer).
    tokenizer: the model's tokenizer (stop ids, EOS).
    renderer: a ChatRenderer over the same tokenizer.
    rollout_cfg: ``cfg.rollout``.
    model_cfg: the model's ModelConfig (cache shape and dtype).
    mesh: the policy's device mesh (None: one device); rows are spread over its data-parallel devices
      (``placement.RowPlacement``).
  """

  def __init__(self, model_graphdef, tokenizer, renderer: ChatRenderer, rollout_cfg, model_cfg, mesh=None):
    self.graphdef = model_graphdef
    self.placement = RowPlacement.of(mesh)
    self.renderer = renderer
    self.model_cfg = model_cfg
    self.limits = EngineLimits.from_config(rollout_cfg)
    self.sampling = SamplingParams.from_config(rollout_cfg)
    self.stop_ids = stop_token_ids(tokenizer, self.limits.stop_strings)
    if self.limits.cohorts > 1 and self.placement.mesh is not None:
      raise ValueError(f"config.rollout.cohorts={self.limits.cohorts} > 1 needs one device: concurrent programs with "
                       "collectives can deadlock (the rows are spread over the mesh instead)")
    renderer.check_prefix_property()

  def rollout(self, params, env, tasks: Sequence[Any], k: int, rng: jax.Array, *, reprefill: bool = False,
              sampling: SamplingParams | None = None) -> RolloutBatch:
    """K rollouts of each task; row n = b*K + k.

    Args:
      params: the model state (``nnx.split(model)[1:]``: one State or a tuple of States).
      env: an Environment (``new_episode``).
      tasks: B tasks.
      k: rollouts per task.
      rng: PRNG key.
      reprefill: the re-prefill-every-step baseline (see module docstring).
      sampling: overrides the config's sampling parameters (e.g. greedy evaluation).
    """
    if k <= 0 or not tasks:
      raise ValueError(f"rollout needs k >= 1 and at least one task, got k={k}, {len(tasks)} tasks")
    spans = cohort_spans(len(tasks), self.limits.cohorts)
    if len(spans) == 1:
      with self.placement.scope():
        return self._rollout(params, env, tasks, k, rng, reprefill, sampling)
    # Cohorts in host threads: JAX releases the GIL while a computation runs, so one cohort's tool calls and
    # rendering overlap the others' prefill and decode. Each cohort's result depends only on its key.
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(spans), thread_name_prefix="rollout_cohort") as pool:
      futures = [pool.submit(self._rollout, params, env, tasks[a:b], k, jax.random.fold_in(rng, c), reprefill,
                             sampling) for c, (a, b) in enumerate(spans)]
      batch = types.concat([f.result() for f in futures], k)
    batch.timings["total"] = time.perf_counter() - t0  # phases stay summed over cohorts (busy time)
    return batch

  def _rollout(self, params, env, tasks, k, rng, reprefill, sampling) -> RolloutBatch:
    lim = self.limits
    samp = self.sampling if sampling is None else sampling
    params = params if isinstance(params, tuple) else (params,)
    times = {"prefill": 0.0, "decode": 0.0, "tools": 0.0}
    stats = {"prefill_calls": 0, "prefill_rows_first": 0, "prefill_rows": 0, "prefill_row_slots": 0,
             "prefill_tokens": 0, "decode_calls": 0, "decode_steps": 0, "decode_row_steps": 0, "sampled_tokens": 0}
    t_start = time.perf_counter()
    n_rows = len(tasks) * k

    # --- prompts: one render + one prefill per task, broadcast to its K rows ---
    t0 = time.perf_counter()
    rows, prompts = [], []
    for task in tasks:
      episodes = [env.new_episode(task) for _ in range(k)]
      chat, ids = self.renderer.start([{"role": "user", "content": episodes[0].user_message()}],
                                      episodes[0].system_tools())
      if len(ids) >= lim.max_trajectory_tokens:
        raise ValueError(f"task {getattr(task, 'id', task)!r}: prompt of {len(ids)} tokens does not fit "
                         f"config.rollout.max_trajectory_tokens={lim.max_trajectory_tokens}")
      prompts.append(ids)
      rows.extend(_Row(ep, chat, ids) for ep in episodes)
    times["tools"] += time.perf_counter() - t0

    t0 = time.perf_counter()
    place, vocab = self.placement, self.model_cfg.vocab_size
    if reprefill:  # the baseline has no shared-prompt prefill either (Tunix repeats the prompt G times)
      cache = place.new_cache(self.model_cfg, n_rows, lim.cache_capacity)
      cache, logits = self._prefill(params, cache, place.zero_logits(n_rows, vocab), [r.tokens for r in rows], stats)
    else:  # prompt rows padded to the data-parallel size (empty rows are not computed), cut after the broadcast
      n_prompt = place.rows(len(tasks))
      cache = place.new_cache(self.model_cfg, n_prompt, lim.cache_capacity)
      cache, logits = self._prefill(params, cache, place.zero_logits(n_prompt, vocab),
                                    prompts + [[]] * (n_prompt - len(tasks)), stats)
      cache, logits = sampler.repeat_rows(cache, logits, k, n_rows)
    for r in rows:
      r.cached = len(r.tokens)
    jax.block_until_ready(logits)
    times["prefill"] += time.perf_counter() - t0

    stop_ids = {}  # compacted batch size -> [size, n_stop] device array
    segment = 0
    while True:
      active = np.array([not r.finished for r in rows])
      if not active.any():
        break
      max_new = np.array([min(lim.max_tokens_per_message - len(r.partial), lim.max_trajectory_tokens - len(r.tokens))
                          if not r.finished else 0 for r in rows], np.int32)
      # Return to the host once this many rows have stopped; the others continue their message in the next call.
      min_stopped = 0 if lim.min_stopped_frac >= 1.0 else max(1, int(np.ceil(lim.min_stopped_frac * active.sum())))
      kv_len = sampler.kv_bucket(max(len(r.tokens) + int(m) for r, m in zip(rows, max_new) if not r.finished),
                                 lim.kv_bucket, lim.cache_capacity)
      # --- 1. decode (only the unfinished rows, compacted to a bucket, when that is smaller than all rows) ---
      t0 = time.perf_counter()
      sel = self._compact(np.flatnonzero(active), n_rows)
      size = n_rows if sel is None else len(sel)
      if size not in stop_ids:
        stop_ids[size] = jnp.asarray(np.tile(np.asarray(self.stop_ids, np.int32)[None], (size, 1)))
      key = jax.random.fold_in(rng, segment)
      if sel is None:
        state = sampler.new_decode_state(cache, logits, active, max_new, lim.max_tokens_per_message, key)
      else:
        busy = sel < n_rows
        safe = np.minimum(sel, n_rows - 1)
        state = sampler.new_decode_state(cache, jnp.take(logits, jnp.asarray(safe), axis=0), busy,
                                         np.where(busy, max_new[safe], 0), lim.max_tokens_per_message, key, rows=sel)
      state = sampler.decode(self.graphdef, params, state, stop_ids[size], jnp.int32(min_stopped), sampling=samp,
                             kv_len=kv_len)
      cache = state.cache
      logits = state.logits if sel is None else sampler.scatter_logits(logits, jnp.asarray(sel), state.logits)
      out_tokens, out_logps, n_new, still = self.placement.fetch((state.tokens, state.logps, state.n_new,
                                                                  state.active))
      if sel is not None:  # back to one entry per row (rows left out sampled nothing)
        out_tokens, out_logps, n_new, still = (_scatter_rows(x, sel, n_rows) for x in
                                               (out_tokens, out_logps, n_new, still))
      times["decode"] += time.perf_counter() - t0
      stats["decode_calls"] += 1
      stats["decode_steps"] += int(n_new.max())
      stats["decode_row_steps"] += int(n_new.max()) * size
      stats["sampled_tokens"] += int(n_new.sum())
      segment += 1

      # --- 2. environment + rendering on the host ---
      t0 = time.perf_counter()
      deltas: list[list[int]] = [[] for _ in rows]
      for n, r in enumerate(rows):
        if r.finished:
          continue
        ids = out_tokens[n, :n_new[n]].tolist()
        r.append(ids, True, out_logps[n, :n_new[n]])
        r.cached = len(r.tokens)
        r.partial.extend(ids)
        if still[n]:
          continue  # mid-message: no delta, its logits stay; it resumes in the next decode call
        message, r.partial = r.partial, []
        deltas[n] = self._after_message(r, message, len(message) + int(max_new[n]) - len(ids))
      times["tools"] += time.perf_counter() - t0

      # --- 3. one batched incremental prefill of the deltas ---
      if not any(deltas):
        continue
      t0 = time.perf_counter()
      if reprefill:  # every row that continues re-prefills its whole conversation from an empty cache
        has_delta = jnp.asarray([bool(d) for d in deltas])
        cache = cache._replace(length=jnp.where(has_delta, 0, cache.length))  # mid-message rows keep their cache
        seqs = [r.tokens + d if d else [] for r, d in zip(rows, deltas)]
      else:
        seqs = deltas
      cache, logits = self._prefill(params, cache, logits, seqs, stats,
                                    base=[0 if reprefill else r.cached for r in rows])
      for r, d in zip(rows, deltas):
        if d:
          r.append(d, False)
          r.cached = len(r.tokens)
      jax.block_until_ready(logits)
      times["prefill"] += time.perf_counter() - t0

    times["total"] = time.perf_counter() - t_start
    return self._pack(tasks, k, rows, times, stats)

  # --- internals ---
  def _after_message(self, r: _Row, ids: list[int], max_new: int) -> list[int]:
    """Steps the episode with one finished assistant message; returns the delta ids to prefill ([] = none)."""
    lim = self.limits
    stopped = bool(ids) and ids[-1] in self.stop_ids
    if not stopped and len(ids) < lim.max_tokens_per_message and len(ids) >= max_new:
      r.finished = r.truncated = True  # cut by the trajectory budget mid-message: unfinished turns count 0
      return []
    ep = r.episode
    res = ep.step(self.renderer.message_text(ids))
    r.steps_in_turn += 1
    new_messages = [{"role": "tool", "content": o} for o in res.observations]
    closed = res.turn_closed
    if not closed and r.steps_in_turn >= lim.max_steps_per_turn:
      ep.force_close_turn()
      closed = True
    if closed:
      r.steps_in_turn = 0
      if not ep.done:
        new_messages.append({"role": "user", "content": ep.user_message()})
    done = ep.done
    chat, delta, _ = self.renderer.extend(r.chat, ids, new_messages, generation_prompt=not done)
    if done:
      r.finished = True
      if len(r.tokens) + len(delta) <= lim.max_trajectory_tokens:
        r.chat = chat
        r.append(delta, False)  # closing tokens: part of the training sequence, never fed to the model
      return []
    if len(r.tokens) + len(delta) + 1 > lim.max_trajectory_tokens:
      r.finished = r.truncated = True  # no room for the observation and one more sampled token
      return []
    r.chat = chat
    return delta

  def _compact(self, busy: np.ndarray, n_rows: int) -> np.ndarray | None:
    """Row indices of a compacted batch: the busy rows, padded with n_rows (= "no row") up to a row bucket that is a
    multiple of the data-parallel size; None when compaction is off or the bucket would not be smaller than all
    rows."""
    if self.limits.compact_min_rows <= 0:
      return None
    size = min(self.placement.rows(sampler.row_bucket(len(busy), n_rows, self.limits.compact_min_rows)), n_rows)
    if size >= n_rows:
      return None
    sel = np.full((size,), n_rows, np.int32)
    sel[:len(busy)] = busy
    return sel

  def _prefill(self, params, cache, logits, seqs: Sequence[Sequence[int]], stats, base=None):
    """Batched prefill of per-row token lists (empty = untouched row), bucketed to static shapes. With compaction,
    only rows with tokens are computed, and when the lengths are spread out the rows go in two calls (short / long
    deltas) if that cuts the padded token slots by a quarter or more (``split_by_length``)."""
    base = [0] * len(seqs) if base is None else base
    busy = [i for i, s in enumerate(seqs) if s]
    groups = [busy]
    if self.limits.compact_min_rows > 0:
      groups = split_by_length([len(seqs[i]) for i in busy], len(seqs), self.limits.prefill_bucket,
                               self.limits.compact_min_rows)
      groups = [[busy[j] for j in g] for g in groups]
    if not stats["prefill_calls"]:
      stats["prefill_rows_first"] = len(busy)
    for group in groups:
      cache, logits = self._prefill_rows(params, cache, logits, seqs, np.asarray(group, np.int32), stats, base)
    return cache, logits

  def _prefill_rows(self, params, cache, logits, seqs, busy: np.ndarray, stats, base):
    lim = self.limits
    n = len(seqs)
    sel = self._compact(busy, n)
    members = set(busy.tolist())
    order = [i if i in members else n for i in range(n)] if sel is None else [int(i) for i in sel]
    width = sampler.round_up(max(len(seqs[i]) for i in busy), lim.prefill_bucket)
    tokens = np.zeros((len(order), width), np.int32)
    valid = np.zeros((len(order), width), bool)
    for j, i in enumerate(order):
      if i < n:
        tokens[j, :len(seqs[i])] = seqs[i]
        valid[j, :len(seqs[i])] = True
    kv_len = sampler.kv_bucket(max(base[i] + len(seqs[i]) for i in busy), lim.kv_bucket, lim.cache_capacity)
    stats["prefill_calls"] += 1
    stats["prefill_rows"] += len(busy)
    stats["prefill_row_slots"] += len(order) * width
    stats["prefill_tokens"] += sum(len(seqs[i]) for i in busy)
    return sampler.prefill(self.graphdef, params, cache, logits, jnp.asarray(tokens), jnp.asarray(valid),
                           None if sel is None else jnp.asarray(sel), kv_len=kv_len)

  def _pack(self, tasks, k: int, rows: list[_Row], times, stats) -> RolloutBatch:
    t = self.limits.max_trajectory_tokens
    n = len(rows)
    tokens = np.zeros((n, t), np.int32)
    mask = np.zeros((n, t), bool)
    logps = np.zeros((n, t), np.float32)
    lengths = np.array([len(r.tokens) for r in rows], np.int32)
    for i, r in enumerate(rows):
      tokens[i, :lengths[i]] = r.tokens
      mask[i, :lengths[i]] = r.mask
      logps[i, :lengths[i]] = r.logps
    results = [r.episode.result() for r in rows]
    b = len(tasks)
    return RolloutBatch(
        tokens=tokens, loss_mask=mask, valid=np.arange(t)[None, :] < lengths[:, None], sampler_logps=logps,
        rewards=np.array([x.progress for x in results], np.float32).reshape(b, k),
        success=np.array([x.success for x in results], bool).reshape(b, k),
        task_ids=np.array([str(getattr(x, "id", "")) for x in tasks]),
        categories=np.array([str(getattr(x, "category", "")) for x in tasks]),
        n_calls=np.array([x.n_calls for x in results], np.int32),
        n_errors=np.array([x.n_errors for x in results], np.int32),
        n_parse_errors=np.array([x.n_parse_errors for x in results], np.int32),
        turns_closed=np.array([x.turns_closed for x in results], np.int32),
        truncated=np.array([r.truncated for r in rows], bool), lengths=lengths, timings=times, stats=stats,
        messages=tuple(r.chat.messages for r in rows))


def cohort_spans(n_tasks: int, cohorts: int) -> list[tuple[int, int]]:
  """[start, end) task ranges of min(cohorts, n_tasks) contiguous cohorts whose sizes differ by at most one."""
  c = min(cohorts, n_tasks)
  bounds = [n_tasks * i // c for i in range(c + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def split_by_length(lengths: Sequence[int], n_rows: int, width_bucket: int, smallest: int,
                    min_saving: float = 0.25) -> list[list[int]]:
  """Groups of indices into ``lengths`` for one or two prefill calls.

  A call over rows G costs slots(G) = row_bucket(|G|) · round_up(max_{i∈G} len_i, width_bucket) padded token
  positions. Sorting by length and trying every split point, two calls (shorter rows, longer rows) are returned when
  their slots are at most (1 − min_saving) of one call's; otherwise one group of every index.
  """
  n = len(lengths)
  slots = lambda ls: sampler.row_bucket(len(ls), n_rows, smallest) * sampler.round_up(max(ls), width_bucket)
  order = sorted(range(n), key=lambda i: lengths[i])
  srt = [lengths[i] for i in order]
  best, cut = slots(srt) * (1.0 - min_saving) if n else 0, 0
  for c in range(1, n):
    cost = slots(srt[:c]) + slots(srt[c:])
    if cost <= best:
      best, cut = cost, c
  return [order[:cut], order[cut:]] if cut else [list(range(n))]


def _scatter_rows(x: np.ndarray, sel: np.ndarray, n_rows: int) -> np.ndarray:
  """A compacted batch's per-row array back to n_rows entries (rows not in ``sel``: zeros / False)."""
  out = np.zeros((n_rows,) + x.shape[1:], x.dtype)
  keep = sel < n_rows
  out[sel[keep]] = x[keep]
  return out
