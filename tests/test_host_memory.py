"""The CPU host-allocator setting: it must remove the per-call page faults of XLA:CPU's large temporaries."""
import subprocess
import sys
import textwrap

import pytest

from rods_jax import host_memory

_PROBE = textwrap.dedent("""
    import resource, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from rods_jax import host_memory
    from rods_jax.models import Transformer, get_preset
    from rods_jax.models.kv_cache import init_cache
    from rods_jax.rollout import sampler
    from rods_jax.rollout.sampling import SamplingParams
    applied = host_memory.configure(sys.argv[1] == "1", jax.config.jax_platforms)  # before the backend starts
    # one engine decode call: 64 rows of a 576-slot cache, 320-slot attention (a ~40 MB working cache per call)
    cfg = get_preset("lab_tiny", vocab_size=256)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    rows, steps = 64, 2
    cache = init_cache(cfg, rows, 576)._replace(length=jnp.full((rows,), 200, jnp.int32))
    logits = jax.random.normal(jax.random.key(1), (rows, cfg.vocab_size), jnp.float32)
    faults = []
    for i in range(6):
      state = sampler.new_decode_state(cache, logits, np.ones(rows, bool), np.full(rows, steps, np.int32), steps,
                                       jax.random.key(i))
      jax.block_until_ready(state)
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      state = sampler.decode(graphdef, params, state, jnp.full((rows, 1), -1, jnp.int32), jnp.int32(0),
                             sampling=SamplingParams(temperature=1.0), kv_len=320)
      jax.block_until_ready(state)
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
      cache, logits = state.cache, state.logits
    print(applied, sorted(faults[2:])[1])  # after compilation; a low median ignores one odd heap growth
""")


def _faults_per_call(enabled: bool) -> tuple[str, float]:
  out = subprocess.run([sys.executable, "-c", _PROBE, "1" if enabled else "0"], capture_output=True, text=True,
                       check=True, timeout=300).stdout.split()
  return out[-2], float(out[-1])


@pytest.mark.skipif(not host_memory.is_glibc_linux(), reason="glibc on Linux only")
def test_kept_memory_removes_per_call_page_faults():
  applied, kept = _faults_per_call(True)
  default_applied, default = _faults_per_call(False)
  assert applied == "True" and default_applied == "False"
  # the working cache's fresh pages are ~10,000 4-KiB faults per call under glibc's defaults; reused pages fault no more
  assert default > 5_000, default
  assert kept < default / 20, (kept, default)


def test_configure_is_a_no_op_when_disabled_or_off_cpu():
  assert host_memory.configure(False, "cpu") is False
  assert host_memory.configure(False, None) is False
  assert host_memory.configure(True, "cuda") is False
  assert host_memory.configure(True, "tpu,cpu") is False
  from configs import rods
  assert host_memory.configure_for_run(rods.get_config("paper")) is False  # the launchers' call, field off


def test_paper_scale_turns_it_off():
  from configs import rods
  assert rods.get_config("lab").rollout.cpu_keep_freed_memory
  assert not rods.get_config("paper").rollout.cpu_keep_freed_memory
