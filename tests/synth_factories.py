"""Picklable synthesizer factories for the RODS tests. Kept in a light module: the spawned worker imports it, and
should not pay for jax/flax imports it never uses."""
import os

from rods_jax.rods.synth_process import build_pipeline


def crash_once_factory(marker, env_name, env_cfg, syn_cfg):
  """The real template pipeline, except that the worker process dies (os._exit) on its third request, once."""
  synth = build_pipeline(env_name, env_cfg, syn_cfg, "synthesize")
  count = {"n": 0}

  def fn(seed, rng):
    count["n"] += 1
    if count["n"] == 3 and not os.path.exists(marker):
      open(marker, "w").close()
      os._exit(13)  # a hard kill: no cleanup, no result for the request in hand
    return synth(seed, rng)
  return fn
