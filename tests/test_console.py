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
