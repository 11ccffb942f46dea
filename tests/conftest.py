"""Test-wide setup: 8 simulated CPU devices (a TPU-like mesh on CPU), deterministic float32 matmuls.

XLA reads these flags once, at backend initialisation, so they are set before anything imports jax.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def lab_tokenizer_dir(tmp_path_factory):
  """A lab tokenizer (1,024 tokens) from the first 60 toolworld seed conversations, built once per session."""
  from configs import base
  from rods_jax import envs
  from rods_jax.models import lab_tokenizer
  env = envs.make_env("toolworld", base.get_config().env)
  texts = [lab_tokenizer.conversation_text(t, env) for t in env.load_tasks("seeds")[:60]]
  out = str(tmp_path_factory.mktemp("labtok"))
  lab_tokenizer.build_lab_tokenizer(out, texts, 1024)
  return out
