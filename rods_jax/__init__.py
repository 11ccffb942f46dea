"""rods_jax: GRPO + RODS for multi-turn tool-use agents in JAX / Flax NNX."""
__version__ = "0.1.0"
