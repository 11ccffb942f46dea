r"""Expand a sweep file into runs; run them one after another here, or print their launch commands.

A sweep file defines ``get_sweep() -> {"config": "configs/<arm>.py[:scale]", "grid": {"section.field": [values]}}``;
the runs are the Cartesian product of the grid, each in ``<workdir>/<field>=<value>[,...]``. ``"config"`` may also be
a list of config files (e.g. every arm); then each run is ``<workdir>/<file stem>[,<field>=<value>...]`` and the
grid may be empty::

  python -m launch.sweep --sweep=configs/sweep_pmax.py --workdir=runs/sweep_pmax
  python -m launch.sweep --sweep=configs/sweep_arms.py --workdir=runs/arms \
      --extra_args=--config.sft.init_checkpoint=runs/warmup/warmup     # every arm from one warm-up
  python -m launch.sweep --sweep=configs/sweep_pmax.py --workdir=/shared/sweep --print_only \
      --extra_args=--distributed=auto        # one command per line, for a cluster scheduler

Every expanded config is validated before the first run starts. Runs resume like ``launch.train`` does, so
re-running a sweep continues where it stopped.
"""
import importlib.util
import itertools
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from absl import app, flags, logging


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep().", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Root directory; each run gets a subdirectory.", flag_values=fv)
  flags.DEFINE_bool("print_only", False, "Print the launch commands instead of running them.", flag_values=fv)
  flags.DEFINE_multi_string("extra_args", [], "Extra arguments appended to every launch.train command.",
                            flag_values=fv)
  flags.DEFINE_bool("keep_going", False, "Run the remaining runs after one fails.", flag_values=fv)
  flags.DEFINE_integer("num_devices", 0, "Validate for this many devices (0 = skip device-count checks).",
                       flag_values=fv)
  flags.mark_flags_as_required(["sweep", "workdir"], flag_values=fv)


class Run(NamedTuple):
  name: str  # subdirectory, e.g. "p_max=200" or "static,p_max=200"
  overrides: dict[str, Any]  # dotted field -> value
  config: str = ""  # config file spec of this run (set by expand_sweep)


def _load_module(path: str):
  if not os.path.isfile(path):
    raise ValueError(f"--sweep={path!r}: no such file")
  spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sweep(path: str) -> dict[str, Any]:
  """``get_sweep()`` of ``path``, checked; ``config`` is normalised to a list of config specs."""
  module = _load_module(path)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} does not define get_sweep()")
  sweep = dict(module.get_sweep())
  if set(sweep) != {"config", "grid"}:
    raise ValueError(f"{path}: get_sweep() must return exactly the keys 'config' and 'grid', got {sorted(sweep)}")
  configs = [sweep["config"]] if isinstance(sweep["config"], str) else list(sweep["config"])
  if not configs or not all(isinstance(c, str) and c for c in configs):
    raise ValueError(f"{path}: 'config' must be a config file spec or a non-empty list of them")
  if len({_stem(c) for c in configs}) != len(configs):
    raise ValueError(f"{path}: config files must have distinct names (they name the run directories)")
  if not isinstance(sweep["grid"], Mapping) or (len(configs) == 1 and not sweep["grid"]):
    raise ValueError(f"{path}: 'grid' must be a non-empty mapping of dotted field -> list of values")
  for field, values in sweep["grid"].items():
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
      raise ValueError(f"{path}: grid[{field!r}] must be a non-empty list of values")
  sweep["config"] = configs
  return sweep


def _stem(config_spec: str) -> str:
  path, _, argument = config_spec.partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  return f"{stem}_{argument}" if argument else stem


def expand(grid: Mapping[str, Sequence[Any]]) -> list[Run]:
  """The Cartesian product of ``grid``, in the order written (last field varies fastest)."""
  fields = list(grid)
  runs = []
  for values in itertools.product(*(grid[f] for f in fields)):
    overrides = dict(zip(fields, values))
    name = ",".join(f"{f.split('.')[-1]}={v}" for f, v in overrides.items())
    runs.append(Run(name, overrides))
  return runs


def expand_sweep(sweep: Mapping[str, Any]) -> list[Run]:
  """Runs of a loaded sweep: for each config file, the grid's product (names prefixed when there are several)."""
  configs = sweep["config"]
  runs = []
  for spec in configs:
    for run in expand(sweep["grid"]):
      name = run.name if len(configs) == 1 else ",".join(p for p in (_stem(spec), run.name) if p)
      runs.append(Run(name, run.overrides, spec))
  return runs


def load_config(config_spec: str):
  """Loads ``path[:argument]`` the way ``--config=`` does: get_config() or get_config(argument)."""
  path, _, argument = config_spec.partition(":")
  module = _load_module(path)
  return module.get_config(argument) if argument else module.get_config()


def apply_overrides(config, overrides: Mapping[str, Any]):
  """Sets dotted fields on ``config`` in place; an unknown field raises ValueError naming it."""
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
      if part not in node:
        raise ValueError(f"sweep grid field config.{dotted} is not a known field")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"sweep grid field config.{dotted} is not a known field")
    node[leaf] = value
  return config


def command(run: Run, workdir: str, extra: Sequence[str], python: str = "python") -> list[str]:
  """The ``launch.train`` command line of one run."""
  cmd = [python, "-m", "launch.train", f"--config={run.config}"]
  cmd += [f"--config.{k}={v}" for k, v in run.overrides.items()]
  cmd += [f"--workdir={os.path.join(workdir, run.name)}", *extra]
  return cmd


def plan(sweep_path: str, workdir: str, extra: Sequence[str], num_devices: int | None,
         python: str = "python") -> list[list[str]]:
  """Validates every run of the sweep and returns their commands."""
  from rods_jax import config_validation

  commands = []
  for run in expand_sweep(load_sweep(sweep_path)):
    config = apply_overrides(load_config(run.config), run.overrides)
    try:
      config_validation.validate(config, num_devices)
    except ValueError as e:
      raise ValueError(f"sweep run {run.name}: {e}") from e
    commands.append(command(run, workdir, extra, python))
  return commands


def run(fv: flags.FlagValues) -> list[list[str]]:
  """Prints (--print_only) or runs the sweep's commands, in order; returns them."""
  num_devices = fv.num_devices if fv.num_devices > 0 else None
  if fv.print_only:
    commands = plan(fv.sweep, fv.workdir, fv.extra_args, num_devices)
    for cmd in commands:
      print(shlex.join(cmd))
    return commands
  commands = plan(fv.sweep, fv.workdir, fv.extra_args, num_devices, python=sys.executable)
  failed = []
  for cmd in commands:
    logging.info("running: %s", shlex.join(cmd))
    if subprocess.run(cmd, check=False).returncode != 0:
      failed.append(shlex.join(cmd))
      if not fv.keep_going:
        break
  if failed:
    raise SystemExit("failed runs:\n" + "\n".join(failed))
  return commands


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run(flags.FLAGS)


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)
