"""Test-wide setup: 8 simulated CPU devices (a TPU-like mesh on CPU), deterministic float32 matmuls.

XLA reads these flags once, at backend initialisation, so they are set before anything imports jax.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
