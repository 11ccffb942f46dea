"""What a person watching a long run sees: a progress bar and a periodic log line.

``config.logging.progress_bar`` turns on a tqdm bar (stderr, process 0 only) over the loop's own unit (trajectories for
GRPO, steps for the warm-up); ``config.logging.every_steps`` sets how often one absl log line summarises the step's
headline metrics (every process logs nothing but process 0). The metrics themselves go to ``rods_jax.metrics``;
this module only shows them.

While a bar is shown, log lines to the bar's stream go through ``tqdm.write`` (the bar is cleared, the line printed,
the bar redrawn), so a bar and a log line never share a line. ``quiet_libraries`` keeps library INFO lines (Orbax's
per-save lines, ...) off the console unless absl's ``--verbosity`` asks for more than INFO.
"""
from __future__ import annotations

import logging as pylogging
import os
import sys
from typing import Any, Mapping, Sequence

import jax
from absl import logging

from rods_jax import metric_names

# The headline of a GRPO step (public metric name -> label), in display order; missing keys are skipped.
GRPO_HEADLINE = (("critic/score/mean", "R"), ("rollout/success", "succ"), ("zones/zero_std", "zero_std"),
                 ("zones/boundary", "bound"), ("pool/size", "pool"), ("actor/kl_loss", "kl"),
                 ("timing_s/step", "s/step"))
SFT_HEADLINE = (("loss", "loss"), ("token_prob", "p_tok"), ("timing_s/step", "s/step"))


# Files under these directories are the project's own; INFO lines from anywhere else are a library's.
_PROJECT_DIRS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
                      for d in ("rods_jax", "launch"))


class LibraryInfoFilter(pylogging.Filter):
  """Passes warnings and errors, and the project's own INFO / DEBUG lines; drops a library's below WARNING."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or os.path.abspath(record.pathname).startswith(_PROJECT_DIRS)


def _console_handlers() -> list[pylogging.Handler]:
  """The handlers that print, each once: absl's (wrapping a stream handler; on the root logger after app.run) and the
  root logger's."""
  return list(dict.fromkeys([logging.get_absl_handler(), *pylogging.getLogger().handlers]))


def quiet_libraries(verbosity: int) -> None:
  """Keeps library INFO off the console for absl ``verbosity`` <= 0 (the default); more verbose shows everything.
  Call once from an entry point after flags are parsed (``logging.get_verbosity()``); idempotent."""
  for handler in _console_handlers():
    for f in [f for f in handler.filters if isinstance(f, LibraryInfoFilter)]:
      handler.removeFilter(f)
    if verbosity <= 0:
      handler.addFilter(LibraryInfoFilter())


class _BarStream:
  """A stream that prints through ``tqdm.write`` so a log line clears and redraws the bar instead of joining it."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> int:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    tqdm.write(text, file=self._stream, end="")
    return len(text)

  def flush(self) -> None:
    self._stream.flush()


def _stream_handlers(stream) -> list[pylogging.StreamHandler]:
  """The stream handlers (absl's inner one included) writing to ``stream``."""
  found = {}
  for handler in _console_handlers():
    inner = getattr(handler, "python_handler", handler)  # absl's handler wraps a StreamHandler
    if isinstance(inner, pylogging.StreamHandler) and inner.stream is stream:
      found[inner] = None
  return list(found)


def headline(metrics: Mapping[str, Any], keys: Sequence[tuple[str, str]]) -> str:
  """``label=value`` for each key present in ``metrics`` (floats with 3 significant digits)."""
  parts = []
  for key, label in keys:
    value = metrics.get(key)
    if value is None:
      continue
    parts.append(f"{label}={value:.3g}" if isinstance(value, float) else f"{label}={value}")
  return " ".join(parts)


class Progress:
  """A bar over ``total`` units and a log line every ``cfg.every_steps`` steps. ``cfg`` is ``config.logging``."""

  def __init__(self, cfg, total: int, unit: str, desc: str, headline_keys: Sequence[tuple[str, str]], *,
               initial: int = 0, is_primary: bool | None = None, stream=None):
    if int(cfg.every_steps) < 1:
      raise ValueError(f"config.logging.every_steps={cfg.every_steps} must be >= 1")
    self._primary = jax.process_index() == 0 if is_primary is None else is_primary
    self._every = int(cfg.every_steps)
    self._keys = tuple(headline_keys)
    self._desc = desc
    self._total = int(total)
    self._bar = None
    self._routed: list = []  # (handler, its own stream) while log lines go through the bar
    if self._primary and cfg.progress_bar:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      bar_stream = sys.stderr if stream is None else stream
      self._bar = tqdm(total=self._total, initial=int(initial), unit=unit, desc=desc, dynamic_ncols=True,
                       file=bar_stream)
      self._routed = [(h, h.setStream(_BarStream(bar_stream))) for h in _stream_handlers(bar_stream)]

  def update(self, step: int, done: int, metrics: Mapping[str, Any]) -> None:
    """After step ``step``: ``done`` units completed so far, ``metrics`` the step's metrics."""
    if not self._primary:
      return
    line = headline(metric_names.to_public(metrics), self._keys)  # the names the logs use; a skipped step: no kl
    if self._bar is not None:
      self._bar.n = int(done)
      self._bar.set_postfix_str(line, refresh=False)
      self._bar.refresh()
    if step % self._every == 0:
      logging.info("%s step %d (%d/%d): %s", self._desc, step, done, self._total, line)

  def close(self) -> None:
    for handler, own in self._routed:
      handler.setStream(own)
    self._routed = []
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
