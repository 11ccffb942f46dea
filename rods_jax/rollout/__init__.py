"""Rollouts: stateless jitted sampler core (sampler.py, sampling.py), token-delta chat rendering (render.py) and the
batched multi-turn engine (engine.py) that keeps all B*K trajectories in one KV cache. See docs/ARCHITECTURE.md."""
from rods_jax.rollout.engine import MultiTurnEngine, stop_token_ids
from rods_jax.rollout.render import ChatRenderer, ChatState, TemplatePrefixError
from rods_jax.rollout.sampling import SamplingParams, token_logps
from rods_jax.rollout.types import RolloutBatch

__all__ = ["MultiTurnEngine", "stop_token_ids", "ChatRenderer", "ChatState", "TemplatePrefixError", "SamplingParams",
           "token_logps", "RolloutBatch"]
