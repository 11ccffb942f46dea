"""Orbax checkpoints of the training state plus host-side state.

One checkpoint step holds up to four Orbax items:

* ``params``, ``opt_state``, ``ref_params`` (when there is a reference) — pytrees of global ``jax.Array`` leaves,
  each saved with ``StandardSave`` (tensorstore, sharded: every process writes its own shards). Restoring takes a
  *target* pytree of the same structure whose leaves carry the shardings wanted now, so a run saved on one mesh
  restores onto another (e.g. saved fsdp=8, restored data=2 x tensor=4). Separate items let evaluation restore the
  parameters alone (``restore_params``) without building an optimizer.
* ``host`` — one JSON document: the step, the JAX RNG key's data and impl, and every named host-side state the caller
  passes (replay buffer, synthesizer log position, numpy RNG state, ...). The JSON is written by the primary process.

Keep-last-N, the save cadence and async writes come from ``config.checkpoint`` (``keep``, ``every_steps``,
``async_save``). Restoring the latest step falls back over unreadable ones (a truncated array or host file): each
gets one warning line naming the step and the file and is moved aside to ``<step>.corrupt``; the run resumes from the
newest step that restores completely, and that step is kept (beyond keep-last-N) for as long as this manager lives,
so the newer steps it writes, which nothing has read back yet, never replace the last verified one. Usage::

    ckpt = CheckpointManager(workdir / "checkpoints", config.checkpoint)
    ckpt.save(TrainState(step, params, opt_state, ref_params, rng), {"buffer": buffer.state_dict()})
    restored = ckpt.restore(target=TrainState(0, params, opt_state, ref_params, rng))   # latest step
    ckpt.close()
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

PyTree = Any

_ARRAY_ITEMS = ("params", "opt_state", "ref_params")
_HOST = "host"
_FORMAT_VERSION = 1


class CheckpointMismatch(ValueError):
  """The checkpoint is readable but does not fit the target (structure, reference, key kind, format version)."""


class UnreadableCheckpoint(RuntimeError):
  """A checkpoint step whose files cannot be read back (truncated, corrupt, missing)."""

  def __init__(self, step: int, path: str, cause: BaseException):
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:160]
    super().__init__(f"checkpoint step {step}: cannot read {path} ({type(cause).__name__}: {detail})")
    self.step, self.path = step, path


class TrainState(NamedTuple):
  """Device-side training state. ``ref_params`` may be None (no KL reference); ``rng`` is a typed or raw key."""
  step: int
  params: PyTree
  opt_state: PyTree
  ref_params: PyTree | None
  rng: jax.Array


class Restored(NamedTuple):
  state: TrainState
  host_state: dict[str, Any]  # name -> the JSON-able value given to save()


def _path(directory: str | os.PathLike) -> epath.Path:
  """Local paths made absolute; URLs (gs://...) kept as they are."""
  directory = os.fspath(directory)
  return epath.Path(directory if "://" in directory else os.path.abspath(directory))


def latest_step(directory: str | os.PathLike) -> int | None:
  """The newest finished checkpoint step under ``directory``, or None when there is none (or no directory)."""
  path = _path(directory)
  if not path.is_dir():
    return None
  steps = ocp.utils.checkpoint_steps(path)
  return max(steps) if steps else None


def numpy_rng_state(generator: np.random.Generator) -> dict[str, Any]:
  """JSON-able state of a numpy Generator (for ``host_state``)."""
  return generator.bit_generator.state


def numpy_rng_from_state(state: Mapping[str, Any]) -> np.random.Generator:
  """Inverse of ``numpy_rng_state``: a Generator that continues exactly where the saved one stopped."""
  name = state["bit_generator"]
  bit_generator_cls = getattr(np.random, name, None)
  if bit_generator_cls is None:
    raise ValueError(f"host_state numpy rng: unknown bit_generator {name!r}")
  bit_generator = bit_generator_cls()
  bit_generator.state = dict(state)
  return np.random.Generator(bit_generator)


def abstract_like(tree: PyTree) -> PyTree:
  """``jax.ShapeDtypeStruct`` leaves (with the leaves' shardings) for a pytree of arrays or abstract arrays."""

  def one(path, leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct):
      return leaf
    if isinstance(leaf, jax.Array):
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    raise CheckpointMismatch(f"checkpoint target leaf {jax.tree_util.keystr(path)} is a {type(leaf).__name__}; "
                             "expected a jax.Array or jax.ShapeDtypeStruct with a sharding")

  return jax.tree_util.tree_map_with_path(one, tree)


def _is_typed_key(rng) -> bool:
  return isinstance(rng, (jax.Array, jax.ShapeDtypeStruct)) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)


def _check_host_state(host_state: Mapping[str, Any]) -> None:
  """Fails now, naming the entry, rather than later in the background writer."""
  for name, value in host_state.items():
    if not isinstance(name, str) or not name:
      raise ValueError(f"host_state keys must be non-empty strings, got {name!r}")
    try:
      json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as e:
      raise ValueError(f"host_state[{name!r}] is not JSON-able: {e}") from e


def _host_value(x) -> np.ndarray:
  """A small array's value on this host; a global array must be replicated (e.g. the RNG key)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError(f"the RNG key must be replicated across processes, got sharding {x.sharding}")
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


class CheckpointManager:
  """Keep-last-N, optionally asynchronous checkpoints of ``TrainState`` + named host state in one directory."""

  def __init__(self, directory: str | os.PathLike, cfg: ml_collections.ConfigDict):
    """``cfg`` is ``config.checkpoint``: ``every_steps`` (save cadence), ``keep`` (last N kept), ``async_save``."""
    if cfg.keep < 1:
      raise ValueError(f"config.checkpoint.keep={cfg.keep} must be >= 1")
    if cfg.every_steps < 1:
      raise ValueError(f"config.checkpoint.every_steps={cfg.every_steps} must be >= 1")
    self._directory = _path(directory)
    self._cfg = cfg
    self._manager = self._make_manager(protected=None)

  def _make_manager(self, protected: int | None) -> ocp.CheckpointManager:
    """Keep the last ``cfg.keep`` steps, and ``protected`` (the step this run resumed from) too."""
    managers = ocp.checkpoint_managers
    policy = managers.LatestN(self._cfg.keep)
    if protected is not None:
      policy = managers.AnyPreservationPolicy([policy, managers.CustomSteps([protected])])
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=self._cfg.every_steps,
        preservation_policy=policy,
        enable_async_checkpointing=self._cfg.async_save,
        create=True,
    )
    return ocp.CheckpointManager(self._directory, options=options, item_names=(*_ARRAY_ITEMS, _HOST))

  @property
  def directory(self) -> str:
    return os.fspath(self._directory)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def save(self, state: TrainState, host_state: Mapping[str, Any] | None = None, *, force: bool = False) -> bool:
    """Saves ``state`` at ``state.step`` if the cadence says so (or ``force``); returns whether it saved.

    With ``async_save`` the arrays are copied off the device before this returns and written in the background, so
    the caller may keep updating its state. ``host_state`` values must be JSON-able (dicts, lists, str, numbers).
    """
    host_state = {} if host_state is None else dict(host_state)
    _check_host_state(host_state)
    step = int(state.step)
    typed_key = _is_typed_key(state.rng)
    # The key is tiny and identical on every process: it goes in the JSON, so a host-local key needs no global array.
    rng_data = _host_value(jax.random.key_data(state.rng) if typed_key else state.rng)
    trees = {"params": state.params, "opt_state": state.opt_state, "ref_params": state.ref_params}
    # Orbax refuses empty items (e.g. the state of a stateless optimizer); those are rebuilt from the target.
    items = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()
             if tree is not None and jax.tree.leaves(tree)}
    host = {
        "format_version": _FORMAT_VERSION,
        "step": step,
        "rng_impl": str(jax.random.key_impl(state.rng)) if typed_key else None,
        "rng_data": rng_data.tolist(),
        "rng_dtype": str(rng_data.dtype),
        "has_ref_params": state.ref_params is not None,
        "array_items": sorted(items),
        "state": host_state,
    }
    return self._manager.save(
        step,
        args=ocp.args.Composite(**items, **{_HOST: ocp.args.JsonSave(host)}),
        force=force,
    )

  def restore(self, target: TrainState, step: int | None = None) -> Restored:
    """Restores ``step`` (default: the newest step that restores completely, see the module docstring) onto
    ``target``'s structure, dtypes and shardings.

    ``target`` leaves may be arrays (e.g. a freshly initialised state on the new mesh) or ``jax.ShapeDtypeStruct``s
    with shardings; ``target.step`` is ignored. Raises FileNotFoundError when there is no checkpoint,
    CheckpointMismatch when it does not fit ``target``, UnreadableCheckpoint when no step can be read.
    """
    trees = {"params": target.params, "opt_state": target.opt_state, "ref_params": target.ref_params}
    abstract = {name: abstract_like(tree) for name, tree in trees.items() if tree is not None and jax.tree.leaves(tree)}
    return self._newest_readable(step, lambda s: self._restore_step(s, target, trees, abstract))

  def _restore_step(self, step: int, target: TrainState, trees: dict[str, PyTree],
                    abstract: dict[str, PyTree]) -> Restored:
    host = self._host(step)
    if host["has_ref_params"] != (target.ref_params is not None):
      raise CheckpointMismatch(f"checkpoint step {step}: has_ref_params={host['has_ref_params']} but "
                               f"target.ref_params is {'None' if target.ref_params is None else 'given'}")
    typed_key = host["rng_impl"] is not None
    if typed_key != _is_typed_key(target.rng):
      raise CheckpointMismatch(f"checkpoint step {step}: rng saved as {'typed' if typed_key else 'raw'} key, "
                               f"target.rng is {'typed' if _is_typed_key(target.rng) else 'raw'}")
    arrays = {}
    for name in _ARRAY_ITEMS:
      if name in host["array_items"]:
        arrays[name] = self._read_item(step, name, abstract[name])
      elif name in abstract:
        raise CheckpointMismatch(f"checkpoint step {step} has an empty {name} but target.{name} has arrays")
      else:
        arrays[name] = trees[name]  # empty (or None): nothing was stored
    rng = np.asarray(host["rng_data"], dtype=host["rng_dtype"])
    rng_sharding = getattr(target.rng, "sharding", None)
    rng = jax.device_put(rng, rng_sharding) if rng_sharding is not None else jax.numpy.asarray(rng)
    if typed_key:
      rng = jax.random.wrap_key_data(rng, impl=host["rng_impl"])
    state = TrainState(step=int(host["step"]), params=arrays["params"], opt_state=arrays["opt_state"],
                       ref_params=arrays["ref_params"], rng=rng)
    return Restored(state=state, host_state=dict(host["state"]))

  def restore_params(self, target_params: PyTree, step: int | None = None) -> PyTree:
    """Only the policy parameters of ``step`` (default: the newest readable step) onto ``target_params``'
    shardings (evaluation)."""
    abstract = abstract_like(target_params)

    def read(s: int) -> PyTree:
      self._host(s)  # checks the format
      return self._read_item(s, "params", abstract)
    return self._newest_readable(step, read)

  def _newest_readable(self, step: int | None, read: Callable[[int], Any]) -> Any:
    """``read(step)``; with ``step`` None, over the steps newest first until one reads (module docstring)."""
    if step is not None:
      return read(self._resolve_step(step))
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self._directory}")
    unreadable = []
    for s in steps:
      try:
        out = read(s)
      except UnreadableCheckpoint as e:
        logging.warning("%s; falling back to an older step", e)
        unreadable.append(s)
        continue
      if unreadable:
        self._set_aside(unreadable, verified=s)
      return out
    raise UnreadableCheckpoint(steps[-1], os.fspath(self._directory),
                               RuntimeError(f"none of the steps {steps} restores completely"))

  def _set_aside(self, steps: list[int], verified: int) -> None:
    """Moves unreadable steps to ``<step>.corrupt`` (kept for inspection; the resumed run writes those steps anew)
    and keeps ``verified`` until this manager closes."""
    self._manager.close()
    if jax.process_index() == 0:
      for s in steps:
        src = self._directory / str(s)
        dst, n = self._directory / f"{s}.corrupt", 1
        while dst.exists():
          dst, n = self._directory / f"{s}.corrupt{n}", n + 1
        src.rename(dst)
        logging.info("checkpoint step %d moved aside to %s; resuming from step %d", s, dst, verified)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("rods_checkpoint_set_aside")
    self._manager = self._make_manager(protected=verified)

  def _read_item(self, step: int, name: str, abstract: PyTree) -> PyTree:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(abstract)}))[name]
    except Exception as e:  # pylint: disable=broad-except  # tensorstore raises bare Exceptions for bad chunks
      raise UnreadableCheckpoint(step, self._file_in(step, name, e), e) from e

  def _file_in(self, step: int, name: str, error: BaseException) -> str:
    """The file an error names inside the step's item directory, else that directory."""
    item = os.fspath(self._directory / str(step) / name)
    found = re.findall(re.escape(item) + r"/[\w./-]+", str(error))
    return found[0] if found else item

  def _resolve_step(self, step: int) -> int:
    if step not in self._manager.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self._directory}; have {self.all_steps()}")
    return step

  def _host(self, step: int) -> dict[str, Any]:
    path = os.fspath(self._directory / str(step) / _HOST / "metadata")
    try:
      host = self._manager.restore(step, args=ocp.args.Composite(**{_HOST: ocp.args.JsonRestore()}))[_HOST]
      if not isinstance(host, dict) or not {"step", "state", "array_items"} <= set(host):
        raise ValueError("not a host-state document")
    except Exception as e:  # pylint: disable=broad-except  # truncated JSON, missing file, ...
      raise UnreadableCheckpoint(step, path, e) from e
    if host.get("format_version") != _FORMAT_VERSION:
      raise CheckpointMismatch(f"checkpoint step {step}: format_version {host.get('format_version')!r}, "
                               f"expected {_FORMAT_VERSION}")
    return host

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending async writes, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> CheckpointManager:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
