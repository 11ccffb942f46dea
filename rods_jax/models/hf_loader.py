"""Hugging Face checkpoint directory <-> NNX Transformer, through one declarative name-mapping table.

Each `MapRule` says: HF tensor name (template with {i} = layer), NNX parameter path, the HF shape (from the config),
and how to turn the HF tensor into the NNX layout: reshape to `split` then transpose by `perm`. Export applies the
inverse. Loading builds the model abstractly (`nnx.eval_shape`, nothing allocated), memory-maps the safetensors
files and creates every parameter with `jax.make_array_from_callback` directly on its target sharding, so each host
reads only the slices its devices hold. Every problem is a ValueError naming the tensor: unknown/unmapped key,
wrong shape, missing tensor, duplicate tensor, unknown architecture.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rods_jax.models.config import ModelConfig
from rods_jax.models.safetensors_io import open_tensors, save_tensors
from rods_jax.models.transformer import Transformer
from rods_jax.sharding import param_shardings

Shape = Callable[[ModelConfig], tuple]


@dataclasses.dataclass(frozen=True)
class MapRule:
  """hf: HF name template; nnx: dotted NNX path template; hf_shape: expected HF shape; split: reshape applied to the
  HF tensor before `perm` (None = keep); perm: transpose to the NNX layout (None = none). `when`: rule applies only
  to configs where it returns True."""
  hf: str
  nnx: str
  hf_shape: Shape
  split: Shape | None = None
  perm: tuple[int, ...] | None = None
  when: Callable[[ModelConfig], bool] = lambda c: True


_L = "model.layers.{i}."
RULES: tuple[MapRule, ...] = (
    MapRule("model.embed_tokens.weight", "embed", lambda c: (c.vocab_size, c.hidden)),
    MapRule("lm_head.weight", "lm_head", lambda c: (c.vocab_size, c.hidden), perm=(1, 0),
            when=lambda c: not c.tie_embeddings),
    MapRule("model.norm.weight", "final_norm.scale", lambda c: (c.hidden,)),
    MapRule(_L + "input_layernorm.weight", "layers.{i}.attn_norm.scale", lambda c: (c.hidden,)),
    MapRule(_L + "post_attention_layernorm.weight", "layers.{i}.mlp_norm.scale", lambda c: (c.hidden,)),
    # torch Linear weight is [out, in]: q [H*Dh, D] -> [H, Dh, D] -> (D, H, Dh)
    MapRule(_L + "self_attn.q_proj.weight", "layers.{i}.attn.q", lambda c: (c.n_heads * c.head_dim, c.hidden),
            split=lambda c: (c.n_heads, c.head_dim, c.hidden), perm=(2, 0, 1)),
    MapRule(_L + "self_attn.k_proj.weight", "layers.{i}.attn.k", lambda c: (c.n_kv_heads * c.head_dim, c.hidden),
            split=lambda c: (c.n_kv_heads, c.head_dim, c.hidden), perm=(2, 0, 1)),
    MapRule(_L + "self_attn.v_proj.weight", "layers.{i}.attn.v", lambda c: (c.n_kv_heads * c.head_dim, c.hidden),
            split=lambda c: (c.n_kv_heads, c.head_dim, c.hidden), perm=(2, 0, 1)),
    # o [D, H*Dh] -> [D, H, Dh] -> (H, Dh, D)
    MapRule(_L + "self_attn.o_proj.weight", "layers.{i}.attn.o", lambda c: (c.hidden, c.n_heads * c.head_dim),
            split=lambda c: (c.hidden, c.n_heads, c.head_dim), perm=(1, 2, 0)),
    MapRule(_L + "self_attn.q_proj.bias", "layers.{i}.attn.q_bias", lambda c: (c.n_heads * c.head_dim,),
            split=lambda c: (c.n_heads, c.head_dim), when=lambda c: c.qkv_bias),
    MapRule(_L + "self_attn.k_proj.bias", "layers.{i}.attn.k_bias", lambda c: (c.n_kv_heads * c.head_dim,),
            split=lambda c: (c.n_kv_heads, c.head_dim), when=lambda c: c.qkv_bias),
    MapRule(_L + "self_attn.v_proj.bias", "layers.{i}.attn.v_bias", lambda c: (c.n_kv_heads * c.head_dim,),
            split=lambda c: (c.n_kv_heads, c.head_dim), when=lambda c: c.qkv_bias),
    MapRule(_L + "self_attn.q_norm.weight", "layers.{i}.attn.q_norm.scale", lambda c: (c.head_dim,),
            when=lambda c: c.qk_norm),
    MapRule(_L + "self_attn.k_norm.weight", "layers.{i}.attn.k_norm.scale", lambda c: (c.head_dim,),
            when=lambda c: c.qk_norm),
    MapRule(_L + "mlp.gate_proj.weight", "layers.{i}.mlp.gate", lambda c: (c.mlp_dim, c.hidden), perm=(1, 0)),
    MapRule(_L + "mlp.up_proj.weight", "layers.{i}.mlp.up", lambda c: (c.mlp_dim, c.hidden), perm=(1, 0)),
    MapRule(_L + "mlp.down_proj.weight", "layers.{i}.mlp.down", lambda c: (c.hidden, c.mlp_dim), perm=(1, 0)),
)
# Non-parameter buffers some exporters include; safe to skip. A tied checkpoint may still carry lm_head.weight.
_IGNORED = (re.compile(r".*rotary_emb\.inv_freq$"),)


def _template_regex(template: str) -> re.Pattern:
  return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


_HF_RE = tuple((_template_regex(r.hf), r) for r in RULES)


def _match(name: str, cfg: ModelConfig) -> tuple[MapRule, int | None] | None:
  for regex, rule in _HF_RE:
    m = regex.match(name)
    if m and rule.when(cfg):
      layer = int(m.group("i")) if "i" in m.groupdict() else None
      if layer is not None and layer >= cfg.n_layers:
        return None
      return rule, layer
  return None


def to_nnx_layout(x: np.ndarray, rule: MapRule, cfg: ModelConfig) -> np.ndarray:
  """HF tensor -> NNX layout: reshape(split) then transpose(perm)."""
  if rule.split is not None:
    x = x.reshape(rule.split(cfg))
  if rule.perm is not None:
    x = x.transpose(rule.perm)
  return x


def to_hf_layout(x: np.ndarray, rule: MapRule, cfg: ModelConfig) -> np.ndarray:
  """Inverse of `to_nnx_layout`."""
  if rule.perm is not None:
    x = x.transpose(np.argsort(rule.perm))
  return x.reshape(rule.hf_shape(cfg))


def _expected_names(cfg: ModelConfig) -> dict[str, tuple[MapRule, int | None]]:
  out = {}
  for rule in RULES:
    if not rule.when(cfg):
      continue
    if "{i}" in rule.hf:
      for i in range(cfg.n_layers):
        out[rule.hf.format(i=i)] = (rule, i)
    else:
      out[rule.hf] = (rule, None)
  return out


def _weight_files(path: str) -> dict[str, str]:
  """tensor name -> file, from model.safetensors.index.json or the single model.safetensors."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: missing 'weight_map'")
    return {k: os.path.join(path, v) for k, v in weight_map.items()}
  single = os.path.join(path, "model.safetensors")
  if not os.path.exists(single):
    raise ValueError(f"{path}: no model.safetensors or model.safetensors.index.json")
  return {}  # resolved from the file itself


def read_hf_config(path: str) -> dict:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise ValueError(f"{path}: missing config.json")
  with open(cfg_path) as f:
    return json.load(f)


RUNTIME_FIELDS = ("remat", "attn_chunk")  # ModelConfig fields a caller may set on load (they change no shape)


def load_hf_checkpoint(path: str, mesh: Mesh | None = None, dtype: str = "float32", param_dtype: str | None = None,
                       **runtime) -> tuple[Transformer, ModelConfig]:
  """Loads a local HF directory (config.json + safetensors) into a Transformer.

  dtype: compute dtype; param_dtype: storage dtype (None = same as dtype); runtime: RUNTIME_FIELDS of ModelConfig
  (e.g. remat=True, attn_chunk=1024). With `mesh`, each parameter is created
  directly on its logical-axis sharding; without, on the default device.
  """
  unknown = set(runtime) - set(RUNTIME_FIELDS)
  if unknown:
    raise ValueError(f"load_hf_checkpoint: {sorted(unknown)} cannot be set on load (allowed: {RUNTIME_FIELDS})")
  cfg = ModelConfig.from_hf_config(read_hf_config(path), dtype=dtype,
                                   param_dtype=dtype if param_dtype is None else param_dtype).replace(**runtime)
  graphdef, abs_state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  if mesh is not None:
    shardings = {k: v.get_value() for k, v in nnx.to_flat_state(param_shardings(abs_state, mesh))}
  else:
    device = jax.devices()[0]
    shardings = None

  files = _weight_files(path)
  tensors: dict[str, np.ndarray] = {}
  for file in sorted(set(files.values())) if files else [os.path.join(path, "model.safetensors")]:
    if not os.path.exists(file):
      raise ValueError(f"{path}: shard file {os.path.basename(file)} listed in the index is missing")
    for name, arr in open_tensors(file).items():
      if name in tensors:
        raise ValueError(f"{path}: tensor {name!r} appears in more than one file")
      tensors[name] = arr
  for name, file in files.items():
    if name not in tensors:
      raise ValueError(f"{path}: tensor {name!r} is listed in the index but missing from {os.path.basename(file)}")

  expected = _expected_names(cfg)
  flat = dict(nnx.to_flat_state(abs_state))
  by_path = {".".join(str(p) for p in k): k for k in flat}
  values = {}
  for name, arr in tensors.items():
    if name not in expected:
      if any(r.match(name) for r in _IGNORED) or (name == "lm_head.weight" and cfg.tie_embeddings):
        continue
      raise ValueError(f"{path}: unknown/unmapped tensor {name!r} for architecture {cfg.architecture!r}")
    rule, layer = expected[name]
    want = tuple(rule.hf_shape(cfg))
    if tuple(arr.shape) != want:
      raise ValueError(f"{path}: tensor {name!r} has shape {tuple(arr.shape)}, expected {want}")
    key = by_path[rule.nnx.format(i=layer)]
    target = flat[key].get_value()
    host = to_nnx_layout(arr, rule, cfg)
    assert host.shape == target.shape, (name, host.shape, target.shape)
    np_dtype = np.dtype(target.dtype)
    if shardings is None:
      value = jax.device_put(np.asarray(host, dtype=np_dtype), device)
    else:
      value = jax.make_array_from_callback(
          target.shape, shardings[key], lambda idx, h=host, d=np_dtype: np.asarray(h[idx], dtype=d))
    values[key] = value
  missing = [n for n, (rule, layer) in expected.items() if by_path[rule.nnx.format(i=layer)] not in values]
  if missing:
    raise ValueError(f"{path}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
  state = nnx.from_flat_state([(k, v.replace(values[k])) for k, v in flat.items()])
  return nnx.merge(graphdef, state), cfg


def export_hf_checkpoint(model: Transformer, cfg: ModelConfig, path: str, dtype: str | None = None,
                         max_shard_bytes: int = 4 << 30) -> None:
  """Writes config.json + model.safetensors (or shards + model.safetensors.index.json) that transformers loads.

  dtype: storage dtype of the written tensors (None = each parameter's own dtype). Multi-host: call on every
  process (parameters are all-gathered); process 0 writes.
  """
  os.makedirs(path, exist_ok=True)
  flat = {".".join(str(p) for p in k): v.get_value() for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  tensors = {}
  for name, (rule, layer) in _expected_names(cfg).items():
    nnx_path = rule.nnx.format(i=layer)
    if nnx_path not in flat:
      raise ValueError(f"export_hf_checkpoint: model has no parameter {nnx_path!r} (for {name!r})")
    host = _to_host(flat[nnx_path])
    if dtype is not None:
      host = host.astype(jnp.dtype(dtype))
    tensors[name] = to_hf_layout(host, rule, cfg)
  if jax.process_index() != 0:  # every process joined the gathers above; one writes
    return
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += nbytes
  shards.append(current)
  if len(shards) == 1:
    save_tensors(shards[0], os.path.join(path, "model.safetensors"))
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_tensors(shard, os.path.join(path, fname))
      weight_map.update({k: fname for k in shard})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}, f,
                indent=2)
  hf = cfg.to_hf_config()
  hf["torch_dtype"] = str(np.dtype(next(iter(tensors.values())).dtype)) if dtype is None else dtype
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)


def _to_host(x: jax.Array) -> np.ndarray:
  """Whole array on this host; a collective all-gather when other processes hold parts of it."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def load_tokenizer(path: str):
  """transformers.AutoTokenizer from a local directory (its chat template included); never touches the hub."""
  import transformers  # heavy import, only where a tokenizer is wanted

  if not os.path.isdir(path):
    raise ValueError(f"load_tokenizer: {path!r} is not a directory")
  return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def check_vocab(tokenizer, cfg: ModelConfig, source: str) -> None:
  """A tokenizer with ids the model has no embedding row for is an error (such a pair scores silently wrong). The
  model's vocabulary may be larger (HF checkpoints pad it)."""
  if len(tokenizer) > cfg.vocab_size:
    raise ValueError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
                     f"{cfg.vocab_size}; use the tokenizer saved with these weights")
