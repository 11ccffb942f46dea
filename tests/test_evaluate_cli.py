"""launch.evaluate --checkpoint_dir: the HF directory's weights AND its own tokenizer; a vocabulary mismatch is an error."""
import os

import pytest
from flax import nnx

from configs import base


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny HF checkpoint exported with its own small lab tokenizer (vocabulary ~300, not the lab default 1024)."""
  from rods_jax import envs
  from rods_jax.models import Transformer, get_preset, hf_loader, lab_tokenizer
  config = base.get_config()
  env = envs.make_env(config.env.name, config.env)
  corpus = [lab_tokenizer.conversation_text(t, env) for t in env.load_tasks(config.env.seed_split)[:12]]
  out = str(tmp_path_factory.mktemp("hf"))
  tok = lab_tokenizer.build_lab_tokenizer(out, corpus, vocab_size=300)
  cfg = get_preset("lab_tiny", vocab_size=len(tok), hidden=32, n_layers=1, mlp_dim=64)
  hf_loader.export_hf_checkpoint(Transformer(cfg, rngs=nnx.Rngs(3)), cfg, out)
  return out, len(tok)


def _config():
  from configs import arms
  c = arms.apply_arm(base.get_config(), "static")  # lab scale: no tokenizer_dir, no checkpoint_dir
  c.sft.steps = 0
  return c


def test_checkpoint_dir_alone_brings_its_own_tokenizer(tmp_path, hf_dir):
  from launch import evaluate
  path, vocab = hf_dir
  policy = evaluate.load_policy(_config(), str(tmp_path / "wd"), checkpoint_dir=path)
  assert policy.source == os.path.basename(path)
  assert len(policy.tokenizer) == vocab == policy.model_cfg.vocab_size  # not a fresh 1024-token lab tokenizer
  assert not os.path.exists(tmp_path / "wd" / "tokenizer")  # nothing built for the config's own model


def test_checkpoint_without_tokenizer_or_with_a_larger_one_is_an_error(tmp_path, hf_dir):
  import shutil
  from launch import evaluate
  from rods_jax.models import Transformer, get_preset, hf_loader
  path, vocab = hf_dir
  bare = str(tmp_path / "bare")
  os.makedirs(bare)
  for f in ("config.json", "model.safetensors"):
    shutil.copy(os.path.join(path, f), bare)
  with pytest.raises(ValueError, match="no tokenizer files"):
    evaluate.load_policy(_config(), str(tmp_path / "wd"), checkpoint_dir=bare)
  # the same tokenizer next to a model of a smaller vocabulary: ids past the embedding table
  small = str(tmp_path / "small")
  shutil.copytree(path, small)
  cfg = get_preset("lab_tiny", vocab_size=vocab - 40, hidden=32, n_layers=1, mlp_dim=64)
  hf_loader.export_hf_checkpoint(Transformer(cfg, rngs=nnx.Rngs(4)), cfg, small)
  with pytest.raises(ValueError, match=f"the tokenizer has {vocab} tokens but the model's vocabulary is {vocab - 40}"):
    evaluate.load_policy(_config(), str(tmp_path / "wd"), checkpoint_dir=small)
  # a model with a padded vocabulary (as HF checkpoints have) is fine
  padded = str(tmp_path / "padded")
  shutil.copytree(path, padded)
  cfg = get_preset("lab_tiny", vocab_size=vocab + 20, hidden=32, n_layers=1, mlp_dim=64)
  hf_loader.export_hf_checkpoint(Transformer(cfg, rngs=nnx.Rngs(5)), cfg, padded)
  policy = evaluate.load_policy(_config(), str(tmp_path / "wd"), checkpoint_dir=padded)
  assert policy.model_cfg.vocab_size == vocab + 20 and len(policy.tokenizer) == vocab
