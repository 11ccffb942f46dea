"""ModelConfig: the shape and numerics of one decoder-only transformer (Qwen3 / Qwen2 / Llama 3 families).

The config is a frozen dataclass so it can be a static argument of `jax.jit` and a dict key. It converts to and from a
Hugging Face ``config.json`` dict; anything this decoder does not implement (sliding windows, biases on o_proj/MLP,
rope types other than default/linear/llama3) is rejected with a ValueError naming the field rather than silently
ignored, because a silently wrong model is far worse than no model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

ARCHITECTURES = {
    # HF model_type -> (architectures entry, qk_norm, qkv_bias)
    "qwen3": ("Qwen3ForCausalLM", True, False),
    "qwen2": ("Qwen2ForCausalLM", False, True),
    "llama": ("LlamaForCausalLM", False, False),
}
_ARCH_BY_CLASS = {v[0]: k for k, v in ARCHITECTURES.items()}
_DTYPES = ("float32", "bfloat16", "float16")
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder shape. All fields are hashable so the config can be a static jit argument.

  rope_scaling is a tuple of (key, value) pairs (a hashable dict) in the HF ``rope_parameters`` /
  ``rope_scaling`` vocabulary, e.g. (("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
  ("original_max_position_embeddings", 8192), ("rope_type", "llama3")); None = plain RoPE.
  """
  vocab_size: int
  hidden: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  norm_eps: float = 1e-6
  qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
  qkv_bias: bool = False  # Qwen2: bias on the q, k, v projections
  tie_embeddings: bool = False
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  architecture: str = "qwen3"  # HF model_type used by to_hf_config: qwen3 | qwen2 | llama
  max_position_embeddings: int = 32_768  # only recorded for export; RoPE itself has no limit
  init_std: float = 0.02  # normal init stddev for every matrix (HF initializer_range)
  remat: bool = False  # full forward: recompute each block in the backward pass (activation memory ~ 1 block)
  attn_chunk: int = 0  # >0: attention over query blocks of this many tokens (memory O(chunk*S), not O(T*S))

  def __post_init__(self):
    for name in ("vocab_size", "hidden", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    if not isinstance(self.attn_chunk, int) or self.attn_chunk < 0:
      raise ValueError(f"ModelConfig.attn_chunk must be an int >= 0, got {self.attn_chunk!r}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"ModelConfig.n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} is not one of {_DTYPES}")
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"ModelConfig.architecture={self.architecture!r} is not one of {sorted(ARCHITECTURES)}")
    if self.rope_scaling is not None:
      if isinstance(self.rope_scaling, Mapping):  # accept a dict for convenience, store it hashable
        object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
      rope = dict(self.rope_scaling)
      rope_type = rope.get("rope_type", rope.get("type", "default"))
      if rope_type not in _ROPE_TYPES:
        raise ValueError(f"ModelConfig.rope_scaling rope_type={rope_type!r} is not supported ({_ROPE_TYPES})")
      needed = {"linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
      for key in needed.get(rope_type, ()):
        if key not in rope:
          raise ValueError(f"ModelConfig.rope_scaling ({rope_type}) is missing {key!r}")

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  @property
  def num_params(self) -> int:
    """Parameter count (embeddings counted once when tied)."""
    d, h, kv, dh, f = self.hidden, self.n_heads, self.n_kv_heads, self.head_dim, self.mlp_dim
    attn = d * h * dh * 2 + d * kv * dh * 2 + (h * dh + 2 * kv * dh if self.qkv_bias else 0)
    attn += 2 * dh if self.qk_norm else 0
    layer = attn + 3 * d * f + 2 * d
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.n_layers * layer + emb + d

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  # ---------------------------------------------------------------- HF conversion

  @classmethod
  def from_hf_config(cls, hf: Mapping[str, Any], dtype: str = "float32",
                     param_dtype: str = "float32") -> "ModelConfig":
    """Builds a ModelConfig from a Hugging Face config.json dict (Qwen3, Qwen2/2.5, Llama 3.x)."""
    model_type = hf.get("model_type")
    if model_type is None:
      archs = hf.get("architectures") or []
      model_type = next((_ARCH_BY_CLASS[a] for a in archs if a in _ARCH_BY_CLASS), None)
    if model_type not in ARCHITECTURES:
      raise ValueError(f"config.json: unknown architecture model_type={hf.get('model_type')!r} "
                       f"architectures={hf.get('architectures')!r}; supported: {sorted(ARCHITECTURES)}")
    _, qk_norm, qkv_bias = ARCHITECTURES[model_type]

    def need(key):
      if key not in hf:
        raise ValueError(f"config.json ({model_type}): missing required field {key!r}")
      return hf[key]

    hidden, n_heads = int(need("hidden_size")), int(need("num_attention_heads"))
    head_dim = hf.get("head_dim")
    if head_dim is None:
      if hidden % n_heads:
        raise ValueError(f"config.json: hidden_size={hidden} not divisible by num_attention_heads={n_heads}")
      head_dim = hidden // n_heads
    act = hf.get("hidden_act", "silu")
    if act != "silu":
      raise ValueError(f"config.json: hidden_act={act!r} is not supported (only 'silu')")
    if model_type == "qwen2":
      if hf.get("use_sliding_window"):
        raise ValueError("config.json: use_sliding_window=True is not supported")
    else:
      if hf.get("attention_bias"):
        raise ValueError(f"config.json ({model_type}): attention_bias=True is not supported")
    if hf.get("mlp_bias"):
      raise ValueError("config.json: mlp_bias=True is not supported")
    layer_types = hf.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
      raise ValueError(f"config.json: layer_types other than full_attention are not supported: {set(layer_types)}")

    # transformers >= 5 stores theta and scaling together in rope_parameters; older files use
    # rope_theta + rope_scaling.
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10_000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
      raise ValueError(f"config.json: rope type {rope_type!r} is not supported ({_ROPE_TYPES})")
    rope_scaling = None
    if rope_type != "default":
      rope.pop("type", None)
      rope["rope_type"] = rope_type
      rope_scaling = tuple(sorted(rope.items()))

    return cls(
        vocab_size=int(need("vocab_size")), hidden=hidden, n_layers=int(need("num_hidden_layers")),
        n_heads=n_heads, n_kv_heads=int(hf.get("num_key_value_heads") or n_heads), head_dim=int(head_dim),
        mlp_dim=int(need("intermediate_size")), rope_theta=rope_theta, rope_scaling=rope_scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), qk_norm=qk_norm, qkv_bias=qkv_bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dtype=dtype, param_dtype=param_dtype,
        architecture=model_type, max_position_embeddings=int(hf.get("max_position_embeddings", 32_768)),
        init_std=float(hf.get("initializer_range", 0.02)))

  def to_hf_config(self) -> dict[str, Any]:
    """A config.json dict that transformers loads into the matching *ForCausalLM class."""
    arch_class, qk_norm, qkv_bias = ARCHITECTURES[self.architecture]
    if qk_norm != self.qk_norm or qkv_bias != self.qkv_bias:
      raise ValueError(f"ModelConfig: qk_norm={self.qk_norm}, qkv_bias={self.qkv_bias} cannot be expressed as HF "
                       f"architecture {self.architecture!r} (needs qk_norm={qk_norm}, qkv_bias={qkv_bias})")
    rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling is not None:
      rope_parameters = dict(self.rope_scaling, rope_theta=self.rope_theta)
    hf = {
        "architectures": [arch_class], "model_type": self.architecture, "vocab_size": self.vocab_size,
        "hidden_size": self.hidden, "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
        "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim, "intermediate_size": self.mlp_dim,
        "hidden_act": "silu", "rms_norm_eps": self.norm_eps, "tie_word_embeddings": self.tie_embeddings,
        "max_position_embeddings": self.max_position_embeddings, "initializer_range": self.init_std,
        "rope_theta": self.rope_theta, "rope_parameters": rope_parameters,
        "torch_dtype": self.param_dtype, "attention_dropout": 0.0,
    }
    if self.rope_scaling is not None:
      hf["rope_scaling"] = dict(self.rope_scaling)
    if self.architecture == "qwen2":
      hf["use_sliding_window"] = False
    else:
      hf["attention_bias"] = False
    if self.architecture == "llama":
      hf["mlp_bias"] = False
    return hf
