"""The rods_posterior arm end to end in the lab (toolworld, tiny untrained model, a few steps): it trains, logs the
posterior metrics next to the other curriculum metrics, and resumes with its posteriors restored exactly."""
import os

import jax

from rods_jax import metrics as metrics_lib


def arm_config(lab_tokenizer_dir, steps):
  from configs import rods_posterior
  c = rods_posterior.get_config()
  c.model.tokenizer_dir = lab_tokenizer_dir
  c.sft.steps = 0
  c.mesh.data, c.mesh.fsdp = jax.device_count(), 1
  c.rollout.tasks_per_step, c.rollout.k = 4, 2
  c.rollout.max_tokens_per_message, c.rollout.max_steps_per_turn = 8, 2  # short rollouts: a cheap test
  c.rollout.max_trajectory_tokens, c.rollout.cache_capacity = 320, 384
  c.grpo.micro_batch = 8
  c.train.total_trajectories = 4 * 2 * steps
  c.rods.seed_limit = 4  # one seed per category: the first epoch is one step, the lifecycle acts by step 3
  c.rods.p_max, c.rods.beta, c.rods.seeds_per_step, c.rods.cooldown_steps = 6, 0.5, 4, 1
  # An untrained policy scores r̄ ≈ 0.2-0.25 on miss_* tasks: a boundary there, and (no confidence gate) burn-in at
  # 0.22 and retirement below 0.99, so the lifecycle acts within a few steps (as tests/test_loop.py's rods run).
  c.rods.alpha_low, c.rods.burn_in_low, c.rods.retire_low, c.rods.retire_high = 0.01, 0.22, 0.99, 0.999
  c.rods.posterior_confidence = 0.5
  c.synthesis.process = False
  c.checkpoint.every_steps, c.checkpoint.async_save = 100, False  # one checkpoint: the final one
  c.logging.tensorboard = False
  c.logging.progress_bar = False
  return c


def test_rods_posterior_arm_trains_logs_and_resumes_exactly(tmp_path, lab_tokenizer_dir):
  import orbax.checkpoint as ocp
  from rods_jax import checkpoint as ckpt_lib
  from rods_jax.rods import loop
  wd = str(tmp_path / "run")
  c = arm_config(lab_tokenizer_dir, steps=4)
  st = loop.train(c, wd, evaluate_heldout=False)
  assert st.step == 4
  recs = [r for r in metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl")) if "zones/boundary" in r]
  assert [r["step"] for r in recs] == list(range(1, 5))
  last = recs[-1]
  for key in ("posterior/zones/boundary", "posterior/sd_boundary", "posterior/zone_flips_per_task",
              "posterior/step_zone_flips_per_task", "posterior/retire_contradicted",
              "posterior/step_burn_in_checked"):
    assert key in last, key
  assert last["posterior/revisited_tasks"] > 0
  assert last["synth/injected"] > 0 and last["synth/evicted"] + last["synth/retired"] > 0
  # Resume: the restored buffer holds exactly the posteriors of the last (step-4) checkpoint.
  mgr = ckpt_lib.CheckpointManager(os.path.join(wd, "checkpoints"), c.checkpoint)
  host = mgr._manager.restore(4, args=ocp.args.Composite(host=ocp.args.JsonRestore()))["host"]["state"]
  mgr.close()
  saved = host["curriculum"]["buffer"]["posterior"]
  assert sum(e["n_obs"] for e in saved["tasks"].values()) > 0
  parts = loop.build(c, wd)
  try:
    assert parts.restored_step == 4
    table = parts.curriculum.buffer.posterior
    assert table.state_dict() == saved
    assert table.config.group_size == 2 and table.config.decay == c.rods.posterior_decay
  finally:
    parts.close()
