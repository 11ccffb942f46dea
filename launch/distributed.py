"""Multi-host start-up: ``jax.distributed.initialize`` from flags or environment variables.

Precedence: explicit flags, then the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``), then ``--distributed=auto`` (JAX's own cluster detection: TPU VM slices, SLURM, Open MPI, ...).
With none of these it is a no-op and the run is single-process. Every entry point calls ``initialize_from_flags()``
before touching devices (flags added with ``define_flags``).

  # two hosts by hand (GPU nodes, or the localhost test):
  python -m launch.train ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
  python -m launch.train ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=1
  # TPU VM slice (launch/tpu_vm.sh): every worker runs the same command
  python -m launch.train ... --distributed=auto
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

from absl import flags, logging


def define_flags(fv: flags.FlagValues) -> None:
  """Adds --distributed, --coordinator_address, --num_processes, --process_id to ``fv``."""
  flags.DEFINE_enum("distributed", "env", ["off", "env", "auto"],
                    "off: single process. env: initialize when flags or JAX_* env vars give a coordinator. "
                    "auto: jax.distributed.initialize() with JAX's cluster auto-detection (TPU VM, SLURM).",
                    flag_values=fv)
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0's coordinator service.", flag_values=fv)
  flags.DEFINE_integer("num_processes", 0, "Total number of processes (0 = from env / single).", flag_values=fv)
  flags.DEFINE_integer("process_id", -1, "This process's index in [0, num_processes) (-1 = from env).",
                       flag_values=fv)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


class DistributedSpec(NamedTuple):
  """What to pass to jax.distributed.initialize; ``mode`` is "single", "explicit" or "auto"."""
  mode: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def resolve(mode: str, coordinator_address: str, num_processes: int, process_id: int,
            environ: Mapping[str, str]) -> DistributedSpec:
  """Pure: decides single / explicit / auto from flag values and the environment; bad values raise ValueError."""
  if mode == "off":
    return DistributedSpec("single")
  if mode == "auto":
    return DistributedSpec("auto")
  if mode != "env":
    raise ValueError(f"--distributed={mode!r} is not one of off|env|auto")
  address = coordinator_address if coordinator_address else environ.get(ENV_COORDINATOR, "")
  try:
    count = num_processes if num_processes else int(environ.get(ENV_NUM_PROCESSES, "0"))
    index = process_id if process_id >= 0 else int(environ.get(ENV_PROCESS_ID, "-1"))
  except ValueError as e:
    raise ValueError(f"{ENV_NUM_PROCESSES} / {ENV_PROCESS_ID} must be integers: {e}") from e
  if not address and count <= 1:
    return DistributedSpec("single")
  if not address:
    raise ValueError(f"--num_processes={count} needs --coordinator_address (or {ENV_COORDINATOR})")
  if ":" not in address:
    raise ValueError(f"--coordinator_address={address!r} must be host:port")
  if count < 1:
    raise ValueError(f"--coordinator_address given but --num_processes={count} (or {ENV_NUM_PROCESSES}) is not >= 1")
  if not 0 <= index < count:
    raise ValueError(f"--process_id={index} (or {ENV_PROCESS_ID}) must lie in [0, {count})")
  return DistributedSpec("explicit", address, count, index)


def initialize(spec: DistributedSpec) -> None:
  """Starts jax.distributed per ``spec`` (nothing for "single"). Call before any other JAX device use."""
  import jax  # imported here so flag parsing stays cheap

  if spec.mode == "single":
    return
  if spec.mode == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=spec.coordinator_address, num_processes=spec.num_processes,
                               process_id=spec.process_id)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def spec_from_flags(fv: flags.FlagValues, environ: Mapping[str, str]) -> DistributedSpec:
  return resolve(fv.distributed, fv.coordinator_address, fv.num_processes, fv.process_id, environ)


def initialize_from_flags(fv: flags.FlagValues) -> DistributedSpec:
  """Resolves the flags + os.environ and initializes; returns the spec used."""
  spec = spec_from_flags(fv, os.environ)
  initialize(spec)
  return spec
