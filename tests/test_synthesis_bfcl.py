"""Skill-aligned synthesis on BFCL: seeds of every API class → executable, validated ground truth (template backend)."""
import collections

import numpy as np
import pytest

from configs import base
from rods_jax.envs import make_env
from rods_jax.envs.bfcl import MULTI_TURN_CLASSES
from rods_jax.envs.profile import profiles_match
from rods_jax.rods.synthesis import failures, structure
from rods_jax.rods.synthesis.backends.template import TemplateBackend
from rods_jax.rods.synthesis.pipeline import Synthesizer


@pytest.fixture(scope="module")
def setup():
  cfg = base.get_config()
  env = make_env("bfcl", cfg.env)
  seeds = env.load_tasks("train")
  return env, cfg.synthesis, seeds


def _leaf_strings(x):
  if isinstance(x, dict):
    return {s for k, v in x.items() for s in {str(k)} | _leaf_strings(v)}
  if isinstance(x, list):
    return {s for v in x for s in _leaf_strings(v)}
  return {str(x)}


def test_every_class_yields_executable_validated_variants(setup):
  env, cfg, seeds = setup
  synth = Synthesizer(env, TemplateBackend(), cfg)
  accepted = {}
  tried = collections.Counter()
  rng = np.random.default_rng(0)
  for seed in seeds:
    if seed.category != "base":
      continue
    todo = [c for c in seed.classes if c not in accepted and tried[c] < 6]
    if not todo:
      continue
    for c in todo:
      tried[c] += 1
    result = synth.synthesize(seed, rng, step=7)
    if result.task is not None:
      for c in seed.classes:
        accepted.setdefault(c, (seed, result.task))
    else:
      assert result.failure in failures.FAILURES
  assert set(accepted) == set(MULTI_TURN_CLASSES), f"no accepted variant for {set(MULTI_TURN_CLASSES) - set(accepted)}"
  for cls, (seed, task) in accepted.items():
    # Executable ground truth: every call succeeds on fresh backends and the gold trajectory scores R_P = 1.
    world = env.new_world(task)
    for turn in task.gt_calls:
      for call in turn:
        assert world.execute(call["name"], call["arguments"]).ok, (cls, call)
    result = env.score(task, task.gt_calls)
    assert result.progress == 1.0 and result.success, cls
    assert profiles_match(structure.profile(env, seed), structure.profile(env, task), 0.0), cls
    assert task.lineage.parent_id == seed.id and task.lineage.generation == seed.lineage.generation + 1
    assert task.lineage.birth_step == 7 and task.lineage.origin == "synth"
    assert task.initial_state != seed.initial_state or task.gt_calls != seed.gt_calls
    assert task.id != seed.id
  stats = synth.stats.as_dict()
  assert stats["attempts"] == sum(tried.values()) or stats["attempts"] >= len(accepted)
  assert stats["accepted"] + sum(v for k, v in stats.items() if k.startswith("failed/")) == stats["attempts"]


def test_rename_changes_entities_consistently(setup):
  env, cfg, seeds = setup
  seed = next(s for s in seeds if s.id == "multi_turn_base_0") if any(s.id == "multi_turn_base_0" for s in seeds) \
      else next(s for s in seeds if "GorillaFileSystem" in s.classes and s.category == "base")
  synth = Synthesizer(env, TemplateBackend(), cfg)
  for i in range(5):
    result = synth.synthesize(seed, np.random.default_rng(100 + i), step=1)
    if result.task is not None:
      break
  task = result.task
  assert task is not None, result.stage_log
  seed_values = {v for turn in seed.gt_calls for c in turn for v in c["arguments"].values() if isinstance(v, str)}
  new_values = {v for turn in task.gt_calls for c in turn for v in c["arguments"].values() if isinstance(v, str)}
  assert seed_values != new_values
  # Every new string argument the user states appears in the queries; replaced entities are gone from them.
  gone = seed_values - new_values
  text = "\n".join(task.turns)
  assert gone and not any(g in text for g in gone if len(g) >= 4)
  state_strings = _leaf_strings(task.initial_state)
  assert any(v in s for v in new_values - seed_values for s in state_strings)


def test_failures_are_classified_and_counted(setup):
  env, cfg, seeds = setup
  synth = Synthesizer(env, TemplateBackend(), cfg)
  seed = seeds[0]
  empty = seed.replace(turns=(), gt_calls=())
  no_calls = seed.replace(gt_calls=tuple(() for _ in seed.turns))
  long_arg = seed.replace(gt_calls=((dict(name="echo", arguments={"content": "x" * 300, "file_name": "a.txt"}),),)
                          + seed.gt_calls[1:]) if "GorillaFileSystem" in seed.classes else None
  r1 = synth.synthesize(empty, 0)
  r2 = synth.synthesize(no_calls, 0)
  assert (r1.failure, r2.failure) == (failures.NO_PROMPTS, failures.NO_PATTERN)
  broken = seed.replace(gt_calls=((dict(name="no_such_function", arguments={}),),) + seed.gt_calls[1:])
  r3 = synth.synthesize(broken, 0)
  assert r3.task is None and r3.failure in failures.FAILURES
  if long_arg is not None:
    r4 = synth.synthesize(long_arg, 0)
    assert r4.failure in (failures.GATE_FAILED, failures.PROFILE_MISMATCH, failures.NOT_NOVEL, failures.VM_EXEC_FAILED)
  counts = synth.stats.failures()
  assert counts[failures.NO_PROMPTS] == 1 and counts[failures.NO_PATTERN] == 1
  assert synth.stats.attempts == 3 + (long_arg is not None) and synth.stats.accepted == 0


def test_perturb_keeps_structure(setup):
  env, cfg, seeds = setup
  synth = Synthesizer(env, TemplateBackend(), cfg)
  done = 0
  for seed in seeds[:40]:
    r = synth.perturb(seed, np.random.default_rng(3), step=2)
    if r.task is None:
      continue
    done += 1
    assert r.task.lineage.origin == "augment" and r.task.lineage.parent_id == seed.id
    assert [[c["name"] for c in t] for t in r.task.gt_calls] == [[c["name"] for c in t] for t in seed.gt_calls]
    assert env.score(r.task, r.task.gt_calls).progress == 1.0
  assert done >= 20
