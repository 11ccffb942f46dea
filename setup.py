"""rods_jax: GRPO + RODS (reward-driven online data synthesis) for multi-turn tool-use agents, in JAX."""
from setuptools import find_packages, setup

setup(
    name="rods_jax",
    version="0.1.0",
    description="JAX/Flax NNX trainer for multi-turn tool-use agents with GRPO and RODS",
    packages=find_packages(include=["rods_jax", "rods_jax.*", "launch", "configs"]),
    package_data={"rods_jax": ["data/*.json", "envs/bfcl/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2",
        "jaxlib>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.0",
        "transformers>=4.50",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "numpy>=1.26",
        "scipy>=1.11",  # the posterior detector's regularized incomplete beta (jax needs scipy too)
        "ml-collections>=0.1.1",
        "tensorflow-datasets>=4.9.7",
        "importlib_resources>=6.0",  # tfds builders import it (code_path) when TensorFlow is absent
        "array-record>=0.5",
        "absl-py>=2.1",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "jinja2>=3.1",
        "tensorboardX>=2.6",
        "starlette>=1.10",  # the OpenAI-compatible server (rods_jax/serving)
        "uvicorn>=0.55",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "mpmath>=1.3",  # 50-digit references (tests/test_posterior.py)
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "torch==2.13.0",
            "openai>=3.60",  # the server's tests use the real client
            "wandb>=0.31",  # the optional W&B writer (config.logging.wandb), tested offline
        ],
    },
)
