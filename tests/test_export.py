"""launch.export: a 2-step lab run -> HF directory; transformers loads it with the same logits, and its tokenizer's
chat template renders the ids the project's renderer renders."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from configs import arms, base


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """Two GRPO steps of the static arm (after a 2-step warm-up: an untrained policy's groups are all zero-variance,
  so its GRPO steps move no weight) from a tiny HF checkpoint that carries its own lab tokenizer."""
  from rods_jax import envs
  from rods_jax.models import Transformer, get_preset, hf_loader, lab_tokenizer
  from rods_jax.rods import loop
  root = tmp_path_factory.mktemp("export")
  c = arms.apply_arm(base.get_config(), "static")
  env = envs.make_env(c.env.name, c.env)
  init = str(root / "init")
  tok = lab_tokenizer.build_lab_tokenizer(
      init, [lab_tokenizer.conversation_text(t, env) for t in env.load_tasks("seeds")[:12]], vocab_size=300)
  cfg = get_preset("lab_tiny", vocab_size=len(tok), hidden=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                   mlp_dim=64, init_std=0.2)
  hf_loader.export_hf_checkpoint(Transformer(cfg, rngs=nnx.Rngs(7)), cfg, init)
  c.model.checkpoint_dir = init
  c.sft.steps, c.sft.batch_size, c.sft.select_by_zones, c.sft.warmup_steps = 2, 8, False, 0  # moves every weight
  c.mesh.data, c.mesh.fsdp = jax.device_count(), 1
  c.rollout.tasks_per_step, c.rollout.k = 4, 2
  c.rollout.max_tokens_per_message = 8
  c.grpo.micro_batch = 8
  c.train.total_trajectories = 2 * 4 * 2
  c.checkpoint.async_save = False
  c.logging.tensorboard = False
  wd = str(root / "run")
  assert loop.train(c, wd, evaluate_heldout=False).step == 2
  return c, wd, init, env


def test_export_loads_in_transformers_with_the_same_logits_and_chat_template(tmp_path, trained_run):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from launch import evaluate, export
  from rods_jax.envs.toolworld.env import gold_messages
  from rods_jax.models import forward_fn, hf_loader
  from rods_jax.rollout.render import ChatRenderer
  config, wd, init, env = trained_run
  out = str(tmp_path / "hf")
  assert export.export(wd, out) == "step2"
  for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    assert os.path.exists(os.path.join(out, f)), f
  ours = evaluate.load_policy(config, wd)  # the run's own restore path
  assert ours.source == "step2"
  # the export holds the trained weights, not the initial ones
  start, _ = hf_loader.load_hf_checkpoint(init)
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
           zip(jax.tree.leaves(nnx.state(start)), jax.tree.leaves(ours.params))]
  assert max(moved) > 1e-4

  rng = np.random.default_rng(11)
  tokens = rng.integers(0, ours.model_cfg.vocab_size, (2, 13)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  mask[1, :4] = False
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
  logits = np.asarray(jax.jit(forward_fn, static_argnums=0)(ours.graphdef, ours.params, tokens, positions, mask))
  torch.set_num_threads(1)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask.astype(np.int64)),
             position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
  assert np.abs(logits - ref)[mask].max() <= 1e-4 and np.abs(ref[mask]).std() > 0.1

  tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
  assert len(tok) == len(ours.tokenizer) and tok.chat_template
  renderer = ChatRenderer(ours.tokenizer)
  for task in env.load_tasks("seeds")[:3]:
    msgs, tools = gold_messages(task), env.tools_at(task, 0)
    _, want = renderer.start(msgs[:1], tools)
    got = tok.apply_chat_template(msgs[:1], tools=tools, add_generation_prompt=True, tokenize=False)
    assert tok.encode(got, add_special_tokens=False) == want
    full = tok.apply_chat_template(msgs, tools=tools, tokenize=False)
    assert tok.encode(full, add_special_tokens=False) == renderer.encode(renderer.render(msgs, tools, False))
  gen = json.load(open(os.path.join(out, "generation_config.json")))
  assert tok.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]
  assert gen["temperature"] == config.rollout.temperature and gen["do_sample"]


def test_export_of_a_directory_without_a_run_is_an_error(tmp_path):
  from launch import export
  with pytest.raises(FileNotFoundError, match="must be a run directory"):
    export.export(str(tmp_path), str(tmp_path / "out"))
