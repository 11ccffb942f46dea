"""Scale presets for every arm: ``--config=configs/rods.py:paper`` (the part after ':' is get_config's argument).

* ``lab`` — base.py as is: the lab_tiny model on toolworld, on a 2-core CPU.
* ``paper`` — the paper's setting: Qwen3-4B from a local HF checkpoint on BFCL multi-turn, K=16, 32 tasks per step
  (512 trajectories), lr 1e-6, bfloat16, FSDP over all devices, LLM synthesis backend against an OpenAI-compatible
  server. Defaults: the checkpoint in ``checkpoints/Qwen3-4B`` (``huggingface-cli download Qwen/Qwen3-4B
  --local-dir checkpoints/Qwen3-4B``) and a vLLM server on ``http://localhost:8000/v1`` serving ``Qwen/Qwen3-32B``;
  override with ``--config.model.checkpoint_dir=...``, ``--config.synthesis.endpoint=...``, ``...model_name=...``.
"""
import ml_collections

SCALES = ("lab", "paper")


def apply_scale(config: ml_collections.ConfigDict, scale: str) -> ml_collections.ConfigDict:
  """Sets the fields of ``scale`` in place; returns ``config``."""
  if scale not in SCALES:
    raise ValueError(f"config scale {scale!r} is not one of {SCALES} (use --config=configs/<arm>.py:<scale>)")
  if scale == "lab":
    return config
  c = config
  c.model.preset = "qwen3_4b"
  c.model.checkpoint_dir = "checkpoints/Qwen3-4B"
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"  # fp32 master weights; bf16 compute
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  c.env.name = "bfcl"
  c.env.seed_split = "train"
  c.rollout.tasks_per_step = 32
  c.rollout.k = 16
  c.rollout.max_tokens_per_message = 1024
  c.rollout.max_trajectory_tokens = 16_384
  c.rollout.cache_capacity = 17_408
  c.rollout.kv_bucket = 512
  c.rollout.cpu_keep_freed_memory = False  # an accelerator run (rods_jax/host_memory.py)
  c.grpo.micro_batch = 32
  c.optim.lr = 1e-6
  c.optim.grad_clip = 1.0
  c.sft.steps = 0  # a real instruct checkpoint needs no warm-up
  c.synthesis.backend = "openai"
  c.synthesis.endpoint = "http://localhost:8000/v1"
  c.synthesis.model_name = "Qwen/Qwen3-32B"
  c.train.total_trajectories = 5 * 400 * 16  # 5 epochs over a ~400-task pool at K=16 (paper: 5 epochs per stage)
  c.train.eval_every_trajectories = 6_400
  c.checkpoint.every_steps = 10
  c.logging.progress_bar = False
  return c
