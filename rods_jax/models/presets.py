"""Named model shapes: the CPU-lab model and the published shapes of the real checkpoints.

The real shapes are the published config.json values; loading a checkpoint with `load_hf_checkpoint` reads its own
config.json, so these presets matter for from-scratch runs, memory planning and benchmarks.
"""
from __future__ import annotations

from rods_jax.models.config import ModelConfig

_LLAMA3_ROPE = (("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                ("original_max_position_embeddings", 8192), ("rope_type", "llama3"))

PRESETS: dict[str, dict] = {
    # CPU lab: ~1M non-embedding params, Qwen3-style (q/k norm, GQA, tied embeddings). d=128 x 4 layers is the size the
    # feasibility prototype measured (docs/METHOD.md §10); vocab comes from the lab tokenizer (pass vocab_size=...).
    "lab_tiny": dict(vocab_size=1024, hidden=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=512,
                     rope_theta=10_000.0, norm_eps=1e-6, qk_norm=True, qkv_bias=False, tie_embeddings=True,
                     architecture="qwen3", max_position_embeddings=4096),
    "qwen3_0_6b": dict(vocab_size=151_936, hidden=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128,
                       mlp_dim=3072, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True, qkv_bias=False,
                       tie_embeddings=True, architecture="qwen3", max_position_embeddings=40_960),
    "qwen3_4b": dict(vocab_size=151_936, hidden=2560, n_layers=36, n_heads=32, n_kv_heads=8, head_dim=128,
                     mlp_dim=9728, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True, qkv_bias=False,
                     tie_embeddings=True, architecture="qwen3", max_position_embeddings=40_960),
    "qwen2_5_7b": dict(vocab_size=152_064, hidden=3584, n_layers=28, n_heads=28, n_kv_heads=4, head_dim=128,
                       mlp_dim=18_944, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=False, qkv_bias=True,
                       tie_embeddings=False, architecture="qwen2", max_position_embeddings=32_768),
    "llama3_1_8b": dict(vocab_size=128_256, hidden=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                        mlp_dim=14_336, rope_theta=500_000.0, rope_scaling=_LLAMA3_ROPE, norm_eps=1e-5,
                        qk_norm=False, qkv_bias=False, tie_embeddings=False, architecture="llama",
                        max_position_embeddings=131_072),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  """Returns the named ModelConfig with `overrides` applied (e.g. vocab_size=V, dtype="bfloat16")."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  fields = dict(PRESETS[name])
  unknown = set(overrides) - set(ModelConfig.__dataclass_fields__)
  if unknown:
    raise ValueError(f"get_preset({name!r}): unknown ModelConfig field(s) {sorted(unknown)}")
  fields.update(overrides)
  return ModelConfig(**fields)
