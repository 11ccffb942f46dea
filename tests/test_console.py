"""rods_jax.console: the bar follows the loop's units, the log line comes every ``logging.every_steps`` steps, and
both config fields have an effect."""
import io
import logging

import ml_collections
import pytest

from rods_jax import console


def _cfg(progress_bar: bool, every_steps: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"progress_bar": progress_bar, "every_steps": every_steps})


def test_headline_formats_present_keys_in_order():
  m = {"rollout/success": 0.123456, "critic/score/mean": 0.5, "pool/size": 64, "other": 1.0}
  assert console.headline(m, console.GRPO_HEADLINE) == "R=0.5 succ=0.123 pool=64"
  assert console.headline({}, console.GRPO_HEADLINE) == ""


def test_bar_and_log_every_n_steps(caplog):
  caplog.set_level(logging.INFO)
  out = io.StringIO()
  with console.Progress(_cfg(True, 2), 80, "traj", "rods", console.GRPO_HEADLINE, initial=16, stream=out,
                        is_primary=True) as p:
    for step in range(3, 6):
      p.update(step, 8 * step, {"reward/mean": 0.25 * step, "pool/size": 60 + step})
  bar = out.getvalue()
  assert "40/80" in bar and "R=1.25" in bar and "pool=65" in bar
  lines = [r.getMessage() for r in caplog.records]
  assert lines == ["rods step 4 (32/80): R=1 pool=64"]


def test_no_bar_when_off_and_nothing_on_other_processes(caplog):
  caplog.set_level(logging.INFO)
  out = io.StringIO()
  with console.Progress(_cfg(False, 1), 10, "step", "warm-up", console.SFT_HEADLINE, stream=out,
                        is_primary=True) as p:
    p.update(1, 1, {"loss": 2.5})
  assert out.getvalue() == ""
  assert [r.getMessage() for r in caplog.records] == ["warm-up step 1 (1/10): loss=2.5"]
  caplog.clear()
  with console.Progress(_cfg(True, 1), 10, "step", "warm-up", console.SFT_HEADLINE, stream=out,
                        is_primary=False) as p:
    p.update(1, 1, {"loss": 2.5})
  assert out.getvalue() == "" and not caplog.records


def test_every_steps_must_be_positive():
  with pytest.raises(ValueError, match="config.logging.every_steps=0"):
    console.Progress(_cfg(False, 0), 10, "step", "x", ())


def test_log_lines_go_through_the_bar_not_onto_its_line():
  out = io.StringIO()
  handler = logging.StreamHandler(out)
  handler.setFormatter(logging.Formatter("%(message)s"))
  root = logging.getLogger()
  root.addHandler(handler)
  log = logging.getLogger("rods_console_test")
  log.setLevel(logging.INFO)
  try:
    with console.Progress(_cfg(True, 100), 30, "traj", "rods", console.GRPO_HEADLINE, stream=out,
                          is_primary=True) as p:
      for step in range(1, 4):
        p.update(step, 10 * step, {"reward/mean": 0.1 * step})
        log.info("line %d", step)
      assert handler.stream is not out  # routed through tqdm.write while the bar is up
    assert handler.stream is out  # and given back
    log.info("after")
  finally:
    root.removeHandler(handler)
  text = out.getvalue()
  segments = [s.strip() for s in text.replace("\r", "\n").split("\n")]
  assert [s for s in segments if s.startswith("line") or s == "after"] == ["line 1", "line 2", "line 3", "after"]
  assert all(not (s.startswith("rods") and "line" in s) for s in segments)  # never on the bar's line


def test_library_info_is_dropped_unless_verbosity_asks():
  import os
  from absl import logging as absl_logging
  import rods_jax
  own = os.path.join(os.path.dirname(rods_jax.__file__), "rods", "loop.py")
  lib = os.path.join(os.path.dirname(os.path.dirname(logging.__file__)), "site-packages", "orbax", "x.py")

  def record(path, level):
    return logging.LogRecord("absl", level, path, 1, "m", (), None)

  f = console.LibraryInfoFilter()
  assert f.filter(record(own, logging.INFO)) and f.filter(record(lib, logging.WARNING))
  assert not f.filter(record(lib, logging.INFO)) and not f.filter(record(lib, logging.DEBUG))
  handler = absl_logging.get_absl_handler()
  try:
    console.quiet_libraries(0)
    console.quiet_libraries(0)  # idempotent
    assert sum(isinstance(x, console.LibraryInfoFilter) for x in handler.filters) == 1
    assert not handler.filter(record(lib, logging.INFO)) and handler.filter(record(own, logging.INFO))
    console.quiet_libraries(1)  # --verbosity=1: everything
    assert handler.filter(record(lib, logging.INFO))
  finally:
    console.quiet_libraries(1)
