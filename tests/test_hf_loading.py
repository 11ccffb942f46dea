"""HF checkpoint directories: export -> transformers -> same logits, sharded index, bf16 files, tokenizer, and bad
directories failing with a message that names the problem."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from rods_jax.models import Transformer, forward_fn, get_preset
from rods_jax.models.hf_loader import export_hf_checkpoint, load_hf_checkpoint, load_tokenizer
from rods_jax.models.safetensors_io import open_tensors, save_tensors

V = 89


def _cfg(arch):
  if arch == "llama":
    return get_preset("llama3_1_8b", vocab_size=V, hidden=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=12,
                      mlp_dim=80, init_std=0.15, max_position_embeddings=16_384)
  if arch == "qwen2":
    return get_preset("qwen2_5_7b", vocab_size=V, hidden=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=12,
                      mlp_dim=80, init_std=0.15)
  return get_preset("lab_tiny", vocab_size=V, hidden=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=12,
                    mlp_dim=80, init_std=0.15)


def _randomize_biases(model, seed):
  """Our init sets biases/norm scales to 0/1; draw them so the mapping of every tensor is checked."""
  state = nnx.state(model)
  keys = iter(jax.random.split(jax.random.key(seed), 1000))
  def draw(path, v):
    name = str(path[-1]) if path[-1] != "scale" else "scale"
    if name.endswith("bias") or name == "scale":
      return v + 0.1 * jax.random.normal(next(keys), v.shape, v.dtype)
    return v
  nnx.update(model, jax.tree_util.tree_map_with_path(lambda p, v: draw([getattr(k, "key", getattr(k, "idx", k))
                                                                          for k in p], v), state))
  return model


def _inputs(seed=0, b=2, t=9):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (b, t)).astype(np.int32)
  mask = np.ones((b, t), bool)
  mask[1, :3] = False
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
  return tokens, mask, positions


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  model = _randomize_biases(Transformer(_cfg("qwen3"), rngs=nnx.Rngs(0)), 0)
  path = str(tmp_path_factory.mktemp("ckpt") / "qwen3")
  export_hf_checkpoint(model, model.cfg, path)
  return model, path


def _logits(model, tokens, mask, positions):
  gd, params = nnx.split(model)
  return np.asarray(jax.jit(forward_fn, static_argnums=0)(gd, params, tokens, positions, mask))


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_export_transformers_load_same_logits(arch, tmp_path, exported):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  if arch == "qwen3":
    model, path = exported
  else:
    model = _randomize_biases(Transformer(_cfg(arch), rngs=nnx.Rngs(1)), 1)
    path = str(tmp_path / arch)
    export_hf_checkpoint(model, model.cfg, path)
  tokens, mask, positions = _inputs()
  ours = _logits(model, tokens, mask, positions)
  torch.set_num_threads(1)
  hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
  assert type(hf).__name__.lower().startswith(arch)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask.astype(np.int64)),
             position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
  assert np.abs(ours - ref)[mask].max() <= 1e-4
  assert np.abs(ref[mask]).std() > 0.3
  # and back: bit-identical parameters
  again, cfg = load_hf_checkpoint(path)
  assert cfg == model.cfg
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_index_and_bfloat16_files(tmp_path, exported):
  model, _ = exported
  path = str(tmp_path / "sharded")
  export_hf_checkpoint(model, model.cfg, path, dtype="bfloat16", max_shard_bytes=20_000)
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  assert len(files) > 2 and os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  assert json.load(open(os.path.join(path, "config.json")))["torch_dtype"] == "bfloat16"
  loaded, cfg = load_hf_checkpoint(path)  # bf16 on disk -> float32 params
  assert cfg.param_dtype == "float32"
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded))):
    np.testing.assert_array_equal(np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32), np.asarray(b))
  loaded16, cfg16 = load_hf_checkpoint(path, dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(nnx.state(loaded16)))


def _corrupt(src, dst, edit_tensors=None, edit_config=None):
  shutil.copytree(src, dst)
  if edit_tensors is not None:
    f = os.path.join(dst, "model.safetensors")
    tensors = {k: np.array(v) for k, v in open_tensors(f).items()}
    edit_tensors(tensors)
    save_tensors(tensors, f)
  if edit_config is not None:
    f = os.path.join(dst, "config.json")
    cfg = json.load(open(f))
    edit_config(cfg)
    json.dump(cfg, open(f, "w"))
  return str(dst)


@pytest.mark.parametrize("case,pattern", [
    ("missing", r"missing tensor.*model\.layers\.1\.mlp\.up_proj\.weight"),
    ("shape", r"model\.layers\.0\.self_attn\.k_proj\.weight.*shape \(23, 48\), expected \(24, 48\)"),
    ("unknown_key", r"unmapped tensor 'model\.layers\.0\.mlp\.extra_proj\.weight'"),
    ("extra_layer", r"unmapped tensor 'model\.layers\.2\.input_layernorm\.weight'"),
    ("architecture", r"unknown architecture.*gpt2"),
    ("no_config", r"missing config\.json"),
    ("rope", r"rope type 'yarn'"),
])
def test_bad_checkpoint_dirs_name_the_problem(case, pattern, tmp_path, exported):
  _, src = exported
  dst = tmp_path / case
  if case == "missing":
    path = _corrupt(src, dst, edit_tensors=lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  elif case == "shape":
    path = _corrupt(src, dst, edit_tensors=lambda t: t.update(
        {"model.layers.0.self_attn.k_proj.weight": np.zeros((23, 48), np.float32)}))
  elif case == "unknown_key":
    path = _corrupt(src, dst, edit_tensors=lambda t: t.update(
        {"model.layers.0.mlp.extra_proj.weight": np.zeros((4, 4), np.float32)}))
  elif case == "extra_layer":
    path = _corrupt(src, dst, edit_tensors=lambda t: t.update(
        {"model.layers.2.input_layernorm.weight": np.ones((48,), np.float32)}))
  elif case == "architecture":
    path = _corrupt(src, dst, edit_config=lambda c: c.update(model_type="gpt2", architectures=["GPT2LMHeadModel"]))
  elif case == "no_config":
    path = _corrupt(src, dst)
    os.remove(os.path.join(path, "config.json"))
  elif case == "rope":
    path = _corrupt(src, dst, edit_config=lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                               "rope_theta": 1e4}))
  with pytest.raises(ValueError, match=pattern):
    load_hf_checkpoint(path)


def test_load_tokenizer_with_chat_template(tmp_path):
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, models, pre_tokenizers

  vocab = {w: i for i, w in enumerate(["<unk>", "IMSTART", "IMEND", "user", "assistant", "hi", "there"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="IMEND")
  fast.chat_template = ("{% for m in messages %}IMSTART {{ m['role'] }} {{ m['content'] }} IMEND "
                        "{% endfor %}{% if add_generation_prompt %}IMSTART assistant {% endif %}")
  fast.save_pretrained(tmp_path)
  loaded = load_tokenizer(str(tmp_path))
  ids = loaded.apply_chat_template([{"role": "user", "content": "hi there"}], add_generation_prompt=True,
                                   tokenize=True)
  ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
  assert list(ids) == [1, 3, 5, 6, 2, 1, 4]
  with pytest.raises(ValueError, match="not a directory"):
    load_tokenizer(str(tmp_path / "nope"))


def test_load_straight_onto_mesh(exported):
  import ml_collections
  from jax.sharding import PartitionSpec as P

  from rods_jax.sharding import make_mesh

  model, path = exported
  mesh_cfg = ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
  mesh = make_mesh(mesh_cfg)
  sharded, cfg = load_hf_checkpoint(path, mesh=mesh)
  q = sharded.layers[1].attn.q[...]
  assert q.sharding.spec == P("fsdp", "tensor", None) and q.addressable_shards[0].data.shape == (24, 2, 12)
  assert sharded.embed[...].sharding.spec == P(None, "fsdp")  # vocab 89 is not divisible by tensor=2: replicated
  assert sharded.layers[0].mlp.down[...].sharding.spec == P("tensor", "fsdp")
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(sharded))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_safetensors_files_agree_with_the_library_bf16_included(tmp_path):
  """save_tensors writes what safetensors' own numpy reader (lazy get_slice) and torch read back, bf16 included;
  open_tensors' memory-mapped views equal them; a damaged file fails with a message naming it."""
  torch = pytest.importorskip("torch")
  from safetensors import safe_open
  from safetensors.torch import load_file
  rng = np.random.default_rng(21)
  tensors = {"w": rng.normal(size=(5, 7)).astype(ml_dtypes.bfloat16), "b": rng.normal(size=(7,)).astype(np.float32),
             "t": rng.normal(size=(6, 5)).astype(ml_dtypes.bfloat16).T, "i": rng.integers(0, 9, (3,)).astype(np.int32)}
  path = str(tmp_path / "x.safetensors")
  save_tensors(tensors, path, metadata={"format": "pt"})
  mine = open_tensors(path)
  with safe_open(path, framework="numpy") as f:
    assert sorted(f.keys()) == sorted(tensors) and f.metadata() == {"format": "pt"}
    for name, want in tensors.items():
      part = f.get_slice(name)[1:3]
      assert part.dtype == want.dtype and np.array_equal(part, want[1:3]), name
      assert np.array_equal(mine[name], want) and mine[name].dtype == want.dtype, name
  via_torch = load_file(path)
  assert via_torch["w"].dtype == torch.bfloat16
  np.testing.assert_array_equal(via_torch["w"].float().numpy(), tensors["w"].astype(np.float32))
  with open(path, "rb") as f:
    data = f.read()
  bad = str(tmp_path / "bad.safetensors")
  with open(bad, "wb") as f:
    f.write(data[:len(data) - 9])  # data section cut short
  with pytest.raises(ValueError, match="bad.safetensors: not a valid safetensors file"):
    open_tensors(bad)
