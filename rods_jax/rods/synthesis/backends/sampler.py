"""LLM backend over this project's own sampler: any loaded checkpoint (``rods_jax.models``) + its tokenizer.

``SamplerChat`` turns chat messages into text with the tokenizer's chat template, prefills them into a fresh one-row
KV cache and decodes with ``rods_jax.rollout.sampler`` until ``<|im_end|>`` / EOS or ``max_new_tokens``. It is the
``complete`` function of a ``ChatBackend`` (prompts and parsing shared with the OpenAI backend), one request at a
time in-process; ``launch/openai_server.py`` (``rods_jax/serving``) serves a checkpoint over HTTP with batching.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rods_jax.models import init_cache
from rods_jax.rollout import sampler as sampler_lib
from rods_jax.rollout.sampling import SamplingParams
from rods_jax.rods.synthesis.backends.chat import ChatBackend

DEFAULT_STOP = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")


@dataclasses.dataclass(frozen=True)
class SamplerChatConfig:
  max_new_tokens: int = 512
  capacity: int = 4096  # KV slots: prompt (left-truncated to fit) + max_new_tokens
  bucket: int = 128  # prompt padding / attention length granularity (few compilations)
  temperature: float = 1.0
  top_p: float = 0.7
  top_k: int = 0
  stop_strings: tuple[str, ...] = DEFAULT_STOP

  def __post_init__(self):
    if self.max_new_tokens <= 0 or self.capacity <= self.max_new_tokens:
      raise ValueError(f"synthesis.max_new_tokens={self.max_new_tokens} must be in (0, capacity={self.capacity})")


class SamplerChat:
  """``complete(messages) -> str`` with a model and tokenizer of this project. Thread-safe (one request at a time).

  Args:
    model: an ``rods_jax.models.Transformer`` (any loaded checkpoint).
    model_cfg: its ModelConfig.
    tokenizer: a HF tokenizer with a chat template.
    cfg: decoding settings.
    seed: PRNG seed; each completion advances it.
  """

  def __init__(self, model, model_cfg, tokenizer, cfg: SamplerChatConfig, seed: int = 0):
    self._graphdef, self._params = nnx.split(model)
    self._model_cfg = model_cfg
    self._tok = tokenizer
    self._cfg = cfg
    self._sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    vocab = tokenizer.get_vocab()
    stops = [vocab[s] for s in cfg.stop_strings if s in vocab]
    if tokenizer.eos_token_id is not None:
      stops.append(int(tokenizer.eos_token_id))
    if not stops:
      raise ValueError(f"the tokenizer has none of the stop tokens {cfg.stop_strings} and no eos_token")
    self._stop_ids = jnp.asarray([sorted(set(stops))], jnp.int32)
    self._rng = jax.random.PRNGKey(seed)
    self._lock = threading.Lock()

  def encode_prompt(self, messages: Sequence[dict]) -> list[int]:
    text = self._tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    ids = self._tok.encode(text, add_special_tokens=False)
    room = self._cfg.capacity - self._cfg.max_new_tokens
    return ids[-room:]  # keep the end (the instruction and the generation prompt) when the prompt is too long

  def __call__(self, messages: Sequence[dict]) -> str:
    ids = self.encode_prompt(messages)
    cfg = self._cfg
    n = len(ids)
    width = sampler_lib.round_up(n, cfg.bucket)
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :n] = ids
    valid = np.zeros((1, width), bool)
    valid[0, :n] = True
    kv_len = sampler_lib.kv_bucket(n + cfg.max_new_tokens, cfg.bucket, cfg.capacity)
    with self._lock:
      self._rng, key = jax.random.split(self._rng)
      cache = init_cache(self._model_cfg, 1, cfg.capacity)
      logits = jnp.zeros((1, self._model_cfg.vocab_size), jnp.float32)
      cache, logits = sampler_lib.prefill(self._graphdef, self._params, cache, logits, jnp.asarray(tokens),
                                          jnp.asarray(valid), kv_len=sampler_lib.kv_bucket(width, cfg.bucket,
                                                                                            cfg.capacity))
      state = sampler_lib.new_decode_state(cache, logits, np.ones((1,), bool), np.full((1,), cfg.max_new_tokens),
                                           cfg.max_new_tokens, key)
      state = sampler_lib.decode(self._graphdef, self._params, state, self._stop_ids, sampling=self._sampling,
                                 kv_len=kv_len)
      n_new = int(state.n_new[0])
      out = [int(t) for t in np.asarray(state.tokens[0, :n_new])]
    stop = set(int(s) for s in np.asarray(self._stop_ids[0]))
    if out and out[-1] in stop:
      out = out[:-1]
    return self._tok.decode(out, skip_special_tokens=False)


class SamplerBackend(ChatBackend):
  """ChatBackend whose completions come from this project's sampler (``SamplerChat``)."""

  def __init__(self, chat: SamplerChat):
    self.chat = chat
    super().__init__(chat)
