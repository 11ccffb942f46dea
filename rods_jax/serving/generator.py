"""A batch of chat requests -> completions with this project's sampler (``rods_jax.rollout.sampler``).

Each request is ``n`` rows. Rows that share sampling settings (temperature and top_p are static arguments of the
jitted decode loop) are prefilled and decoded together; a request with a ``seed`` is decoded alone with that seed, so
its completions do not depend on what else was in the batch. Decoding runs in segments of ``segment_tokens``: after
each one the host reads the new tokens, applies stop strings, and streams the partial text, then the rows still going
continue from the same cache. Shapes are bucketed (rows, prompt width, KV length), so few programs are compiled.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rods_jax.models import init_cache
from rods_jax.rollout import sampler as sampler_lib
from rods_jax.serving.scheduler import Completion, Emit, GenRequest

DEFAULT_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """bucket: prompt width and KV length granularity; segment_tokens: tokens decoded between host checks (stop
  strings, streaming); min_rows: a batch's rows are padded to at least this many (with ``row_bucket``'s sizes above
  it), trading padding for fewer compiled shapes; stop_tokens: tokens that end a message (those the tokenizer has,
  plus its eos)."""
  bucket: int = 128
  segment_tokens: int = 16
  min_rows: int = 1
  stop_tokens: tuple[str, ...] = DEFAULT_STOP_TOKENS

  def __post_init__(self):
    if self.bucket < 1 or self.segment_tokens < 1 or self.min_rows < 1:
      raise ValueError(f"GeneratorConfig needs bucket, segment_tokens and min_rows >= 1: {self}")


@dataclasses.dataclass
class _RowState:
  """One choice being decoded: its request (index in the batch), choice index, sampled ids, and its end."""
  request: int
  choice: int
  prompt: tuple[int, ...]
  max_tokens: int
  stop: tuple[str, ...]
  stream: bool
  ids: list[int] = dataclasses.field(default_factory=list)
  text: str = ""
  finish: str | None = None


class SamplerGenerator:
  """``generate(requests, emit)`` for ``scheduler.BatchScheduler`` over a model of this project.

  Args:
    model: an ``rods_jax.models.Transformer``; model_cfg: its ModelConfig; tokenizer: its HF tokenizer.
    cfg: GeneratorConfig. seed: PRNG seed of requests without a seed.
  """

  def __init__(self, model, model_cfg, tokenizer, cfg: GeneratorConfig, seed: int):
    self._graphdef, self._params = nnx.split(model)
    self._model_cfg = model_cfg
    self._tok = tokenizer
    self._cfg = cfg
    vocab = tokenizer.get_vocab()
    stops = {vocab[s] for s in cfg.stop_tokens if s in vocab}
    if tokenizer.eos_token_id is not None:
      stops.add(int(tokenizer.eos_token_id))
    if not stops:
      raise ValueError(f"the tokenizer has none of the stop tokens {cfg.stop_tokens} and no eos_token")
    self._stop_set = frozenset(stops)
    self._stop_ids = jnp.asarray([sorted(stops)], jnp.int32)
    self._rng = jax.random.PRNGKey(seed)
    self.calls = 0  # sampler batches run (tests check that concurrent requests share them)

  def __call__(self, requests: Sequence[GenRequest], emit: Emit) -> list[list[Completion]]:
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
      key = (r.sampling, None) if r.seed is None else (r.sampling, "seed", i)
      groups.setdefault(key, []).append(i)
    rows_of: dict[int, list[_RowState]] = {}
    for (sampling, *_), members in groups.items():
      rows = [_RowState(i, c, requests[i].prompt_ids, requests[i].max_tokens, requests[i].stop, requests[i].stream)
              for i in members for c in range(requests[i].n)]
      seed = requests[members[0]].seed
      if seed is None:
        self._rng, key = jax.random.split(self._rng)
      else:
        key = jax.random.PRNGKey(seed % (1 << 32))
      self._decode_group(rows, sampling, key, emit)
      for row in rows:
        rows_of.setdefault(row.request, []).append(row)
    return [[Completion(tuple(r.ids), r.text, r.finish) for r in rows_of[i]] for i in range(len(requests))]

  def _decode_group(self, rows: list[_RowState], sampling, key, emit: Emit) -> None:
    cfg, bucket = self._cfg, self._cfg.bucket
    self.calls += 1
    b = sampler_lib.row_bucket(len(rows), 1 << 30, cfg.min_rows)
    longest = max(len(r.prompt) for r in rows)
    width = sampler_lib.round_up(longest, bucket)
    kv_len = sampler_lib.round_up(max(len(r.prompt) + r.max_tokens for r in rows), bucket)
    tokens = np.zeros((b, width), np.int32)
    valid = np.zeros((b, width), bool)
    for j, r in enumerate(rows):
      tokens[j, :len(r.prompt)] = r.prompt
      valid[j, :len(r.prompt)] = True
    cache = init_cache(self._model_cfg, b, kv_len)
    logits = jnp.zeros((b, self._model_cfg.vocab_size), jnp.float32)
    cache, logits = sampler_lib.prefill(self._graphdef, self._params, cache, logits, jnp.asarray(tokens),
                                        jnp.asarray(valid), kv_len=sampler_lib.kv_bucket(width, bucket, kv_len))
    while any(r.finish is None for r in rows):
      active = np.zeros((b,), bool)
      max_new = np.zeros((b,), np.int32)
      for j, r in enumerate(rows):
        if r.finish is None:
          active[j], max_new[j] = True, min(cfg.segment_tokens, r.max_tokens - len(r.ids))
      key, sub = jax.random.split(key)
      state = sampler_lib.new_decode_state(cache, logits, active, max_new, cfg.segment_tokens, sub)
      state = sampler_lib.decode(self._graphdef, self._params, state, self._stop_ids, sampling=sampling,
                                 kv_len=kv_len)
      cache, logits = state.cache, state.logits
      n_new, new_tokens = np.asarray(state.n_new), np.asarray(state.tokens)
      for j, r in enumerate(rows):
        if active[j]:
          self._advance(r, [int(t) for t in new_tokens[j, :n_new[j]]], emit)

  def _advance(self, row: _RowState, new_ids: list[int], emit: Emit) -> None:
    """Appends a segment's ids to ``row``, decides whether it has ended, and streams its text."""
    row.ids.extend(new_ids)
    ended_by_token = bool(row.ids) and row.ids[-1] in self._stop_set
    body = row.ids[:-1] if ended_by_token else row.ids
    text = self._tok.decode(body, skip_special_tokens=False)
    cut = min((text.find(s) for s in row.stop if s in text), default=-1)
    if cut >= 0:
      row.text, row.finish = text[:cut], "stop"
    elif ended_by_token:
      row.text, row.finish = text, "stop"
    elif len(row.ids) >= row.max_tokens:
      row.text, row.finish = text, "length"
    else:
      # Hold back what may still become a stop string, and a trailing incomplete UTF-8 sequence.
      hold = max((len(s) - 1 for s in row.stop), default=0)
      row.text = text[:len(text) - hold] if hold else text
      row.text = row.text.rstrip("\ufffd")
    if row.stream:
      emit(row.request, row.choice, row.text)
