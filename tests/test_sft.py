"""Supervised warm-up: gold rendering == the chat template with assistant-only masks, the NLL vs numpy, learning,
checkpoint selection by the evaluation callback, per-sample world re-randomisation, and the lab warm_up entry point."""
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from rods_jax.envs import make_env
from rods_jax.models import Transformer, forward_fn, get_preset, hf_loader
from rods_jax.models import lab_tokenizer as lt
from rods_jax.rl import sft
from rods_jax.rollout.engine import stop_token_ids
from rods_jax.rollout.render import ChatRenderer


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = base.get_config()
  c.env.cache_dir = str(tmp_path_factory.mktemp("twcache"))
  return c


@pytest.fixture(scope="module")
def env(config):
  return make_env("toolworld", config.env)


@pytest.fixture(scope="module")
def seeds(env):
  return env.load_tasks("seeds")


@pytest.fixture(scope="module")
def tok(env, seeds, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("labtok"))
  corpus = lt.lab_corpus(env, ("seeds",))[:120]  # a small corpus keeps the build fast; byte-level covers the rest
  return lt.build_lab_tokenizer(out, corpus, vocab_size=384)


@pytest.fixture(scope="module")
def renderer(tok):
  return ChatRenderer(tok)


@pytest.fixture(scope="module")
def stop_id(tok, config):
  return stop_token_ids(tok, tuple(config.rollout.stop_strings))[0]


def tiny_model(vocab: int, seed: int = 0) -> Transformer:
  cfg = get_preset("lab_tiny", vocab_size=vocab, hidden=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8,
                   mlp_dim=64)
  return Transformer(cfg, rngs=nnx.Rngs(seed))


def full_conversation(env, task):
  """The gold conversation as chat messages, tool / user messages included, read off an independent episode."""
  ep = env.new_episode(task)
  tools = ep.system_tools()
  msgs = [{"role": "user", "content": ep.user_message()}]
  for content in sft.gold_assistant_messages(env, task):
    res = ep.step(content)
    msgs.append({"role": "assistant", "content": content})
    msgs += [{"role": "tool", "content": o} for o in res.observations]
    if res.turn_closed and not ep.done:
      msgs.append({"role": "user", "content": ep.user_message()})
  assert ep.done and ep.result().success  # the gold calls solve the task
  return msgs, tools


def test_gold_rendering_is_the_template_with_assistant_only_mask(env, seeds, tok, renderer, stop_id):
  picks = [t for t in seeds if t.num_turns >= 3][:3] + [t for t in seeds if t.category != "base"][:3]
  assert len(picks) == 6
  for task in picks:
    ex = sft.render_gold(env, task, renderer, stop_id, max_steps_per_turn=5)
    msgs, tools = full_conversation(env, task)
    text = renderer.render(msgs, tools, generation_prompt=False)
    assert tok.decode(ex.tokens.tolist(), skip_special_tokens=False) == text
    assert ex.tokens.tolist() == tok.encode(text, add_special_tokens=False)  # lab tokenizer: re-encoding is exact
    # the mask covers exactly each gold assistant message followed by its <|im_end|>, in order
    ids, mask = ex.tokens, ex.loss_mask
    spans, start = [], None
    for i, m in enumerate(mask.tolist() + [False]):
      if m and start is None:
        start = i
      if not m and start is not None:
        spans.append(tok.decode(ids[start:i].tolist(), skip_special_tokens=False))
        start = None
    want = [m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant"]
    assert spans == want
    assert not mask[0] and ids[np.flatnonzero(mask)[-1]] == stop_id


def test_pad_batch_pads_cuts_and_flags():
  a = sft.SFTExample(np.arange(1, 6, dtype=np.int32), np.array([0, 1, 1, 0, 1], bool))
  b = sft.SFTExample(np.arange(1, 10, dtype=np.int32), np.ones(9, bool))
  batch = sft.pad_batch([a, b], 7)
  assert batch.tokens.tolist() == [[1, 2, 3, 4, 5, 0, 0], [1, 2, 3, 4, 5, 6, 7]]
  assert batch.loss_mask[0].tolist() == [False, True, True, False, True, False, False]
  assert batch.valid.sum(1).tolist() == [5, 7] and batch.truncated.tolist() == [False, True]


def test_sft_loss_matches_float64_numpy(env, seeds, renderer, stop_id, tok):
  model = tiny_model(len(tok))
  graphdef, params = nnx.split(model)
  batch = sft.pad_batch([sft.render_gold(env, t, renderer, stop_id, 5) for t in seeds[:4]], 160)
  loss, metrics = jax.jit(lambda p: sft.sft_loss(p, graphdef, jnp.asarray(batch.tokens), jnp.asarray(batch.loss_mask),
                                                 jnp.asarray(batch.valid)))(params)
  positions = np.broadcast_to(np.arange(160), batch.tokens.shape)
  logits = np.asarray(jax.jit(lambda p: forward_fn(graphdef, p, jnp.asarray(batch.tokens), jnp.asarray(positions),
                                                   jnp.asarray(batch.valid)))(params), np.float64)
  lp = logits - logits.max(-1, keepdims=True)
  lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
  nll, count = 0.0, 0
  for n in range(4):
    for t in range(1, 160):
      if batch.loss_mask[n, t] and batch.valid[n, t]:
        nll -= lp[n, t - 1, batch.tokens[n, t]]
        count += 1
  assert float(metrics["tokens"]) == count > 50
  assert float(loss) == pytest.approx(nll / count, rel=1e-5)


def test_sft_learns_and_keeps_the_checkpoint_the_callback_prefers(env, seeds, renderer, stop_id, tok, config):
  c = config.copy_and_resolve_references()
  c.sft.lr, c.sft.warmup_steps, c.sft.batch_size, c.sft.seq_len = 1e-2, 0, 8, 160
  trainer = sft.SFTTrainer(tiny_model(len(tok)), c.sft, c.optim)
  batch = sft.pad_batch([sft.render_gold(env, t, renderer, stop_id, 5) for t in seeds[:8]], 160)
  snapshots = {}

  def eval_fn(step, tr):
    snapshots[step] = jax.device_get(tr.params)
    return -abs(step - 20), {"probe": step}

  result = sft.run_sft(trainer, lambda step: batch, 30, eval_every=10, eval_fn=eval_fn)
  losses = [h["loss"] for h in result.history]
  assert losses[-1] < 0.5 * losses[0], losses
  assert result.best_step == 20 and result.best_score == 0.0
  assert sorted(snapshots) == [10, 20, 30]
  for x, y in zip(jax.tree.leaves(result.best_params), jax.tree.leaves(snapshots[20])):
    np.testing.assert_array_equal(x, y)
  assert [h["eval"]["probe"] for h in result.history if "eval" in h] == [10, 20, 30]
  assert int(trainer.state.step) == 30


def test_task_sampler_rerandomizes_each_sample_deterministically(env, seeds, renderer, stop_id, tok, config):
  c = config.copy_and_resolve_references()
  c.sft.batch_size, c.sft.seq_len = 4, 600
  one = seeds[:1]
  fn = sft.task_sampler(env, one, renderer, stop_id, c, seed=0)
  b1, b2 = fn(1), fn(2)
  texts = {tok.decode(row[v].tolist(), skip_special_tokens=False) for b in (b1, b2) for row, v in zip(b.tokens,
                                                                                                        b.valid)}
  assert len(texts) > 1  # same seed task, different worlds
  np.testing.assert_array_equal(fn(1).tokens, b1.tokens)  # deterministic per (seed, step)
  c.sft.rerandomize = False
  fixed = sft.task_sampler(env, one, renderer, stop_id, c, seed=0)(1)
  assert len({row.tobytes() for row in fixed.tokens}) == 1
  c.sft.rerandomize = True
  c.env.name = "bfcl"
  with pytest.raises(ValueError, match="config.sft.rerandomize"):
    sft.task_sampler(env, one, renderer, stop_id, c, seed=0)


def test_zone_score_prefers_boundary_with_both_extremes_present():
  assert sft.zone_score({"hard": 0.1, "boundary": 0.5, "mastered": 0.4}) == 0.5
  assert sft.zone_score({"hard": 0.0, "boundary": 0.9, "mastered": 0.1}) < sft.zone_score(
      {"hard": 0.3, "boundary": 0.2, "mastered": 0.5})
  fr = sft.zone_fractions(np.array([[0, 0], [1, 1], [0, 1], [0.5, 0.5]]), base.get_config().rods, 1e-6)
  assert fr["hard"] == 0.25 and fr["mastered"] == 0.25 and fr["boundary"] == 0.5 and fr["frac_zero_std"] == 0.75


def test_warm_up_writes_the_selected_checkpoint(env, seeds, tok, config, renderer, stop_id, tmp_path, caplog):
  c = config.copy_and_resolve_references()
  c.sft.steps, c.sft.eval_every, c.sft.eval_tasks, c.sft.batch_size, c.sft.seq_len = 2, 1, 2, 4, 200
  c.rollout.k, c.rollout.tasks_per_step, c.rollout.max_tokens_per_message = 2, 2, 8
  c.rollout.max_trajectory_tokens, c.rollout.cache_capacity = 160, 192
  c.sft.keep_evaluated = True
  model = tiny_model(len(tok))
  model_cfg = model.cfg
  out = str(tmp_path / "warmup")
  result = sft.warm_up(model, model_cfg, env, tok, c, out, tasks=seeds[:8])
  # keep_evaluated: every evaluated step is also exported, and the selected one equals the selection's export
  for s in (1, 2):
    kept = json.load(open(os.path.join(sft.evaluated_dir(out, s), "sft_history.json")))
    assert kept["exported_step"] == s and kept["best_step"] == result.best_step
  kept_model, _ = hf_loader.load_hf_checkpoint(sft.evaluated_dir(out, result.best_step))
  for x, y in zip(jax.tree.leaves(nnx.state(kept_model, nnx.Param)), jax.tree.leaves(result.best_params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  c.sft.keep_evaluated = False  # the continuation below writes only its selection
  # pinned in a repository (launch.pin_checkpoint), the copy holds everything the loaders need, and verifies
  from launch import pin_checkpoint
  pinned = str(tmp_path / "pinned")
  manifest = pin_checkpoint.pin(out, pinned, "python -m launch.warmup ...", "test")
  assert pin_checkpoint.verify(pinned) == manifest and manifest["selected_step"] == result.best_step
  pinned_model, _ = hf_loader.load_hf_checkpoint(pinned)
  for x, y in zip(jax.tree.leaves(nnx.state(pinned_model, nnx.Param)), jax.tree.leaves(result.best_params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert len(hf_loader.load_tokenizer(pinned)) == len(tok)
  assert result.best_step in (1, 2) and result.best_score is not None
  assert os.path.exists(os.path.join(out, "config.json")) and os.path.exists(os.path.join(out, "tokenizer.json"))
  loaded, cfg = hf_loader.load_hf_checkpoint(out)
  assert cfg.vocab_size == len(tok)
  for x, y in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)), jax.tree.leaves(result.best_params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=0)
  hist = json.load(open(os.path.join(out, "sft_history.json")))
  assert hist["best_step"] == result.best_step and len(hist["history"]) == 2
  assert {"hard", "boundary", "mastered"} <= set(hist["history"][0]["eval"])
  lines = open(os.path.join(out, "sft_metrics.jsonl")).read().splitlines()
  assert len(lines) == 2 and json.loads(lines[0])["step"] == 1
  # a continuation from that checkpoint keeps counting steps (new batches, not a replay) and writes one history
  cont = str(tmp_path / "cont")
  caplog.set_level(logging.INFO)
  result2 = sft.warm_up(loaded, cfg, env, tok, c, cont, tasks=seeds[:8], parent_history=hist, parent_dir=out)
  assert [h["step"] for h in result2.history] == [3, 4] and result2.best_step in (3, 4)
  logged = [r.getMessage() for r in caplog.records]
  assert any(x.startswith("warm-up step 4 (2/2): loss=") for x in logged), logged  # progress of this continuation
  assert any(x.startswith("warm-up step 4: seed zones hard=") for x in logged), logged
  merged = json.load(open(os.path.join(cont, "sft_history.json")))
  assert [h["step"] for h in merged["history"]] == [1, 2, 3, 4]
  assert merged["continued_from"] == {"dir": out, "steps": 2, "best_step": hist["best_step"]}
  batch_fn = sft.task_sampler(env, seeds[:8], renderer, stop_id, c, int(c.seed))
  assert not np.array_equal(batch_fn(1).tokens, batch_fn(3).tokens)  # step 3 draws other tasks/worlds than step 1
  with pytest.raises(ValueError, match="does not follow"):
    sft.continued_history(hist, {"best_step": 1, "best_score": 0.0, "history": hist["history"]})


def test_launch_warmup_from_scratch_writes_a_checkpoint(tmp_path):
  """`python -m launch.warmup` without --init_from: builds the lab tokenizer, warms up on the seed split, writes the
  HF directory arms start from (this entry point once called loop.warm_start_dir with a missing argument)."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "launch.warmup", "--config=configs/static.py", f"--workdir={tmp_path}",
                        "--config.sft.steps=2", "--config.sft.eval_every=0", "--config.sft.batch_size=8"],
                       cwd=root, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "warm-up checkpoint:" in out.stdout
  with open(tmp_path / "warmup" / "sft_history.json") as f:
    hist = json.load(f)
  assert [h["step"] for h in hist["history"]] == [1, 2]
  assert (tmp_path / "warmup" / "config.json").exists() and (tmp_path / "warmup" / "tokenizer.json").exists()
