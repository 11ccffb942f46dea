"""Flax NNX decoder (Qwen3 / Qwen2 / Llama 3), per-row KV cache, presets, HF checkpoint + tokenizer loading."""
from rods_jax.models.config import ModelConfig
from rods_jax.models.kv_cache import KVCache, init_cache
from rods_jax.models.presets import PRESETS, get_preset
from rods_jax.models.transformer import Transformer, create_model, extend_fn, forward_fn

__all__ = ["ModelConfig", "KVCache", "init_cache", "PRESETS", "get_preset", "Transformer", "create_model", "extend_fn",
           "forward_fn"]
