"""Host allocator setting for the XLA:CPU backend: keep freed memory for reuse instead of unmapping it.

XLA:CPU allocates each call's temporaries with ``malloc``; the rollout engine's decode segment, for one, cuts a
working KV cache of tens of MB per call. glibc serves every block above its mmap threshold (at most 32 MB) with
fresh ``mmap`` pages and unmaps them on ``free``, so each call page-faults its temporaries in anew: on the 2-core lab
machine ~10,000 minor faults per decode call of 64 rows at a 320-slot attention length (tests/test_host_memory.py
counts them), about as long as two or three of its decode steps. ``mallopt(M_MMAP_MAX, 0)`` serves large blocks from the heap and a high ``M_TRIM_THRESHOLD`` keeps
freed heap memory mapped, so later calls reuse warm pages (the process keeps its peak footprint). Accelerator
backends allocate device memory through their own pooling allocators: there is nothing to do for them, and one
arena would only serialise a large host's threads.
"""
from __future__ import annotations

import ctypes
import platform
import sys

from absl import logging

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h> mallopt parameters
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD_BYTES = 2 ** 31 - 1  # the largest value the int parameter takes: never trim in practice


def is_glibc_linux() -> bool:
  """Whether this process runs on Linux with glibc (the only C library the settings apply to)."""
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def keep_freed_host_memory() -> bool:
  """Applies the glibc settings of the module docstring to this process (one arena, so the threads XLA:CPU runs
  its computations on reuse the same heap); returns False, changing nothing, where the C library is not glibc."""
  if not is_glibc_linux():
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  return (libc.mallopt(_M_ARENA_MAX, 1) == 1 and libc.mallopt(_M_MMAP_MAX, 0) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1)


def configure(enabled: bool, platforms: str | None) -> bool:
  """``keep_freed_host_memory()`` when ``enabled`` (``config.rollout.cpu_keep_freed_memory``) and the run is on
  the CPU backend; returns whether the setting is in effect.

  Call it first, before JAX starts its backend: the threads XLA:CPU creates then allocate from the one arena, and
  the train step gains as well (applied after the backend had started, the decode calls gained but the train step
  did not: docs/benchmarks/cpu_lab.json at commit c69e915 vs 5c023af). ``platforms`` is ``jax.config.jax_platforms`` (None or "" = JAX
  picks: only a CPU-only install then runs on the CPU, so lab configs enable this and accelerator configs, the
  ``paper`` scale, disable it); a list that does not start with "cpu" names an accelerator run: left as is.
  """
  if not enabled or (platforms and not platforms.split(",")[0].strip().startswith("cpu")):
    return False
  applied = keep_freed_host_memory()
  logging.info("host allocator: %s", "freed memory kept for reuse (glibc mallopt)" if applied else
               "left as is (not glibc on Linux)")
  return applied


def configure_for_run(config) -> bool:
  """``configure`` for a launcher: ``config.rollout.cpu_keep_freed_memory`` and JAX's platform setting. Call it
  before anything starts the JAX backend (``jax.devices()``, ``jax.distributed.initialize``, the first array)."""
  import jax  # pylint: disable=g-import-not-at-top  # importing jax does not start a backend

  return configure(bool(config.rollout.cpu_keep_freed_memory), jax.config.jax_platforms)
