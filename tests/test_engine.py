"""Chat rendering (token deltas) and the batched multi-turn engine.

A byte-level BPE tokenizer with a Qwen2.5-style ChatML tool template is built here from `tokenizers` (no hub), plus a
scripted environment whose replies do not depend on the text, so trajectories can be replayed by an independent
reference loop (full forward passes, no cache). The lab tokenizer + toolworld run at the end of the file.
"""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

from rods_jax.envs.protocol import EpisodeResult, StepResult
from rods_jax.models import Transformer, get_preset
from rods_jax.rollout.engine import MultiTurnEngine
from rods_jax.rollout.render import ChatRenderer, TemplatePrefixError, is_plain_json
from rods_jax.rollout.sampling import SamplingParams

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]

# Qwen2.5-style: tools in the system prompt, consecutive tool messages grouped in one user turn as <tool_response>s.
CHATML_TOOLS = (
    "{%- if tools %}{{ '<|im_start|>system\\nYou are a helpful assistant.\\n\\n# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{ '\\n' + (tool | tojson) }}{%- endfor %}{{ '\\n</tools><|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{%- endif %}"
    "{{ '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")


def _bpe_tokenizer() -> PreTrainedTokenizerFast:
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  corpus = ["<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n<tools>\n" + json.dumps(TOOLS[0]),
            "\n</tools><|im_end|>\n<|im_start|>user\nfind budget who owns it send it<|im_end|>\n<|im_start|>assistant\n",
            "<|im_end|>\n<|im_start|>user\n<tool_response>\nobs 0 a\n</tool_response>\n<tool_response>\nobs b\n"
            "</tool_response><|im_end|>\n<|im_start|>assistant\n", '{"name": "probe_fn", "arguments": {}}',
            "the owner is carol 0123456789 Error: again probe question result answer follow-up final"] * 20
  tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIALS, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=["<|im_start|>", "<|im_end|>"])
  fast.chat_template = CHATML_TOOLS
  return fast


@pytest.fixture(scope="module")
def tokenizer():
  return _bpe_tokenizer()


TOOLS = [{"type": "function", "function": {"name": "find", "description": "find a file", "parameters": {
    "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}]


# ------------------------------------------------------------------------------------------------ rendering


def test_render_deltas_reproduce_the_template(tokenizer):
  r = ChatRenderer(tokenizer)
  r.check_prefix_property()
  rng = np.random.default_rng(0)
  im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
  state, ids = r.start([{"role": "user", "content": "who owns budget?"}], TOOLS)
  all_ids = list(ids)
  sampled_mask = [False] * len(ids)
  steps = [([{"role": "tool", "content": "id= F23"}, {"role": "tool", "content": "owner= carol"}], True, True),
           ([{"role": "user", "content": "and then?"}], True, False),
           ([], False, True)]
  for new, gen, end_with_stop in steps:
    sampled = rng.integers(len(SPECIALS), tokenizer.vocab_size, size=7).tolist()  # arbitrary, non-canonical ids
    if end_with_stop:
      sampled.append(im_end)
    state, delta, content = r.extend(state, sampled, new, gen)
    assert content == r.message_text(sampled)
    all_ids += sampled + delta
    sampled_mask += [True] * len(sampled) + [False] * len(delta)
  # the ids decode to exactly the template's rendering of the final conversation
  assert r.decode(all_ids) == r.render(state.messages, TOOLS, generation_prompt=False) == state.text
  assert state.messages[1]["role"] == "assistant" and state.messages[2]["content"] == "id= F23"
  # the sampled ids are kept verbatim (never re-encoded): the mask marks exactly them
  assert sum(sampled_mask) == 7 * 3 + 2
  # a message cut by the token cap (no <|im_end|> sampled) gets <|im_end|> from the template, as delta
  state2, ids2 = r.start([{"role": "user", "content": "hi"}], TOOLS)
  _, delta2, _ = r.extend(state2, r.encode("abc"), [{"role": "user", "content": "more"}], True)
  assert r.decode(delta2).startswith("<|im_end|>\n<|im_start|>user\nmore")


def test_direct_render_equals_apply_chat_template(tokenizer):
  r = ChatRenderer(tokenizer)
  assert r._direct[True] is not None and r._direct[False] is not None  # the fast path is on for this template
  rng = np.random.default_rng(5)
  words = ["<|im_end|>", "<tool_call>", "{\"a\": [1, 2]}", "é ü ß", "line\nbreak", "  spaced  ", "x" * 40, ""]
  for trial in range(20):
    messages = [{"role": "user", "content": str(rng.choice(words)) + " q"}]
    for _ in range(int(rng.integers(0, 6))):
      role = str(rng.choice(["assistant", "tool", "user"]))
      messages.append({"role": role, "content": " ".join(rng.choice(words, size=int(rng.integers(0, 4))))})
    tools = TOOLS if trial % 2 else None
    for gen in (False, True):
      want = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen)
      assert r.render(messages, tools, gen, plain_tools=True) == want
  # inputs that are not plain JSON go through apply_chat_template (which normalises them): the same text
  odd_tools = [{"type": "function", "function": {**TOOLS[0]["function"], "description": np.str_("find a file")}}]
  assert not is_plain_json(odd_tools)
  state, _ = r.start([{"role": "user", "content": "q"}], odd_tools)
  assert not state.plain_tools
  assert state.text == tokenizer.apply_chat_template([{"role": "user", "content": "q"}], tools=odd_tools,
                                                     tokenize=False, add_generation_prompt=True)


def test_render_eos_stop_kept_in_content(tokenizer):
  r = ChatRenderer(tokenizer)
  state, ids = r.start([{"role": "user", "content": "q"}], None)
  sampled = r.encode("done") + [tokenizer.eos_token_id]
  state, delta, content = r.extend(state, sampled, [], False)
  assert content == "done<|endoftext|>"  # the template does not render EOS itself, so it stays in the content
  assert r.decode(ids + sampled + delta) == state.text


def test_template_without_prefix_property_raises(tokenizer):
  # renders only the LAST assistant message's content (like templates that strip reasoning from past turns)
  bad = CHATML_TOOLS.replace("+ message.content + '<|im_end|>",
                             "+ ('(omitted)' if message.role == 'assistant' and not loop.last else message.content)"
                             " + '<|im_end|>")
  r = ChatRenderer(tokenizer, chat_template=bad)
  with pytest.raises(TemplatePrefixError, match="prefix property"):
    r.check_prefix_property()
  trimming = CHATML_TOOLS.replace("+ message.content + '<|im_end|>", "+ (message.content | trim) + '<|im_end|>")
  r = ChatRenderer(tokenizer, chat_template=trimming)
  state, _ = r.start([{"role": "user", "content": "q"}], None)
  with pytest.raises(TemplatePrefixError, match="first difference"):
    r.extend(state, r.encode("answer  \n"), [{"role": "user", "content": "next"}], True)


# ------------------------------------------------------------------------------------------------ engine


class ScriptedEpisode:
  """Per turn: the first message gets two tool observations, the second is taken as the answer; text is ignored.
  Deterministic, so an independent reference loop can replay it."""

  def __init__(self, task):
    self.task = task
    self.turn = 0
    self.done = False
    self.step_in_turn = 0
    self.texts = []
    self.closed = 0
    self.forced = 0

  def system_tools(self):
    return TOOLS

  def user_message(self):
    return self.task["turns"][self.turn]

  def step(self, text):
    self.texts.append(text)
    self.step_in_turn += 1
    if self.step_in_turn == 1 and self.task["tool_steps"] >= 1:
      return StepResult("tool", [f"obs {self.turn} a", "obs b"], False, False)
    if self.step_in_turn <= self.task["tool_steps"]:
      return StepResult("error", ["Error: again"], False, False)
    self._close()
    return StepResult("answer", [], True, self.done)

  def force_close_turn(self):
    self.forced += 1
    self._close()

  def _close(self):
    self.turn += 1
    self.closed += 1
    self.step_in_turn = 0
    self.done = self.turn >= len(self.task["turns"])

  def result(self):
    p = self.closed / len(self.task["turns"])
    return EpisodeResult([True] * self.closed, [True] * self.closed, p, p == 1.0, 2 * self.closed, 0, 0, self.closed)


class ScriptedEnv:
  name = "scripted"

  def new_episode(self, task):
    return ScriptedEpisode(task)


def _rollout_cfg(**kw):
  c = ml_collections.ConfigDict(dict(
      temperature=1.0, top_p=1.0, top_k=0, max_steps_per_turn=2, max_tokens_per_message=6, min_stopped_frac=1.0,
      compact_min_rows=0, cohorts=1,
      max_trajectory_tokens=384, cache_capacity=384, kv_bucket=384, prefill_bucket=128,
      stop_strings=("<|im_end|>",)))  # one kv bucket, few prefill widths: few compilations (bucketing: test_sampler)
  c.update(kw)
  return c


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
  cfg = get_preset("lab_tiny", vocab_size=len(tokenizer), hidden=32, n_layers=2, n_heads=2, n_kv_heads=1,
                   head_dim=16, mlp_dim=64, init_std=0.3)
  model = Transformer(cfg, rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(model)
  return cfg, graphdef, params


TASKS = [{"id": "t0", "category": "base", "turns": ["find budget", "who owns it", "send it"], "tool_steps": 1},
         {"id": "t1", "category": "base", "turns": ["find x"], "tool_steps": 0},
         {"id": "t2", "category": "base", "turns": ["a", "b"], "tool_steps": 3}]  # 3 > max_steps: forced closes


def _reference_greedy(tokenizer, cfg, graphdef, params, task, rollout_cfg):
  """Independent replay: greedy decoding with a FULL forward pass over the whole sequence at every token."""
  r = ChatRenderer(tokenizer)
  forward = jax.jit(lambda t, m: nnx.merge(graphdef, params)(t, jnp.broadcast_to(jnp.arange(t.shape[1]), t.shape), m))
  width = rollout_cfg.max_trajectory_tokens
  ep = ScriptedEpisode(task)
  state, ids = r.start([{"role": "user", "content": ep.user_message()}], TOOLS)
  toks, mask = list(ids), [False] * len(ids)
  stop = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}
  steps = 0
  while not ep.done:
    sampled = []
    while len(sampled) < rollout_cfg.max_tokens_per_message:
      pad = np.zeros((1, width), np.int32)
      pad[0, :len(toks)] = toks
      z = np.asarray(forward(jnp.asarray(pad), jnp.asarray(np.arange(width) < len(toks))[None]))[0, len(toks) - 1]
      nxt = int(z.argmax())
      sampled.append(nxt)
      toks.append(nxt)
      mask.append(True)
      if nxt in stop:
        break
    res = ep.step(r.message_text(sampled))
    steps += 1
    new = [{"role": "tool", "content": o} for o in res.observations]
    closed = res.turn_closed
    if not closed and steps >= rollout_cfg.max_steps_per_turn:
      ep.force_close_turn()
      closed = True
    if closed:
      steps = 0
      if not ep.done:
        new.append({"role": "user", "content": ep.user_message()})
    state, delta, _ = r.extend(state, sampled, new, not ep.done)
    toks += delta
    mask += [False] * len(delta)
  return toks, mask, state


def test_greedy_engine_equals_full_forward_replay(tokenizer, tiny_model):
  cfg, graphdef, params = tiny_model
  rcfg = _rollout_cfg()
  engine = MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), rcfg, cfg)
  batch = engine.rollout(params, ScriptedEnv(), TASKS, 2, jax.random.key(0), sampling=SamplingParams(temperature=0.0))
  assert batch.tokens.shape == (6, rcfg.max_trajectory_tokens)
  for b, task in enumerate(TASKS):
    toks, mask, state = _reference_greedy(tokenizer, cfg, graphdef, params, task, rcfg)
    for n in (2 * b, 2 * b + 1):
      length = batch.lengths[n]
      assert batch.tokens[n, :length].tolist() == toks
      assert batch.loss_mask[n, :length].tolist() == mask
      assert not batch.loss_mask[n, length:].any() and not batch.valid[n, length:].any()
      assert batch.messages[n] == state.messages
  np.testing.assert_allclose(batch.rewards, [[1, 1], [1, 1], [1, 1]])
  assert not batch.truncated.any()
  assert batch.stats["prefill_rows_first"] == len(TASKS)  # one prompt prefill per task, not per row


def test_sampled_rollout_tokens_logps_and_masks(tokenizer, tiny_model):
  cfg, graphdef, params = tiny_model
  rcfg = _rollout_cfg(temperature=0.9, top_k=50)
  renderer = ChatRenderer(tokenizer)
  engine = MultiTurnEngine(graphdef, tokenizer, renderer, rcfg, cfg)
  k = 2
  batch = engine.rollout(params, ScriptedEnv(), TASKS, k, jax.random.key(3))
  # K rows of a group share ONE prompt prefill: the first prefill call carries B rows
  assert batch.stats["prefill_rows_first"] == len(TASKS)
  forward = jax.jit(lambda t, m: nnx.merge(graphdef, params)(t, jnp.broadcast_to(jnp.arange(t.shape[1]), t.shape), m))
  logits = np.asarray(forward(jnp.asarray(batch.tokens), jnp.asarray(batch.valid)), np.float64) / 0.9
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  pos = np.nonzero(batch.loss_mask)
  ref = logp[pos[0], pos[1] - 1, batch.tokens[pos]]
  np.testing.assert_allclose(batch.sampler_logps[pos], ref, atol=1e-4)
  assert (batch.sampler_logps[~batch.loss_mask] == 0).all()
  # K samples of one task differ (the broadcast did not collapse the rows' randomness)
  assert len({tuple(batch.tokens[n]) for n in range(k)}) > 1
  for n in range(batch.num_rows):
    ids = batch.tokens[n, :batch.lengths[n]].tolist()
    msgs = batch.messages[n]
    assert renderer.decode(ids) == renderer.render(msgs, TOOLS, generation_prompt=False)
    # the mask covers exactly the assistant messages' sampled ids: tool/user text is never in the loss
    contents = [m["content"] for m in msgs if m["role"] == "assistant"]
    edges = np.diff(np.concatenate([[0], batch.loss_mask[n].astype(int), [0]]))
    spans = list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]))
    assert len(spans) == len(contents)  # one contiguous sampled span per assistant message, nothing else
    for (s0, s1), content in zip(spans, contents):
      assert renderer.message_text(batch.tokens[n, s0:s1].tolist()) == content


def test_budget_truncation(tokenizer, tiny_model):
  cfg, graphdef, params = tiny_model
  probe = MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), _rollout_cfg(), cfg)
  greedy = SamplingParams(temperature=0.0)
  full = probe.rollout(params, ScriptedEnv(), TASKS, 2, jax.random.key(0), sampling=greedy)
  budget = int(full.lengths[0]) - 20  # the 3-turn task cannot finish inside this budget, the 1-turn task can
  assert full.lengths[2] < budget
  engine = MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), _rollout_cfg(max_trajectory_tokens=budget),
                           cfg)
  batch = engine.rollout(params, ScriptedEnv(), TASKS, 2, jax.random.key(0), sampling=greedy)
  assert batch.truncated[:2].all() and not batch.truncated[2:4].any() and (batch.lengths <= budget).all()
  assert (batch.rewards[0] < 1).all() and (batch.turns_closed[:2] < 3).all() and (batch.rewards[1] == 1).all()
  # the truncated rows are a prefix of the untruncated greedy trajectory
  for n in (0, 1):
    assert batch.tokens[n, :batch.lengths[n]].tolist() == full.tokens[n, :batch.lengths[n]].tolist()
  with pytest.raises(ValueError, match="cache_capacity"):
    MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), _rollout_cfg(cache_capacity=100), cfg)
  with pytest.raises(ValueError, match="stop_strings"):
    MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), _rollout_cfg(stop_strings=("two words",)), cfg)


def test_reprefill_baseline_and_bucketing_match_engine(tokenizer, tiny_model):
  """The re-prefill baseline (one kv bucket) and the engine with fine kv/prefill buckets and early returns to the host
  (min_stopped_frac < 1: rows resume mid-message) give the same greedy trajectories."""
  cfg, graphdef, params = tiny_model
  bucketed = MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer),
                             _rollout_cfg(kv_bucket=128, prefill_bucket=32, min_stopped_frac=0.3,
                                          compact_min_rows=1), cfg)
  engine = MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), _rollout_cfg(), cfg)
  greedy = SamplingParams(temperature=0.0)
  a = bucketed.rollout(params, ScriptedEnv(), TASKS, 2, jax.random.key(0), sampling=greedy)
  b = engine.rollout(params, ScriptedEnv(), TASKS, 2, jax.random.key(0), sampling=greedy, reprefill=True)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.sampler_logps, b.sampler_logps, atol=1e-4)
  assert b.stats["prefill_tokens"] > a.stats["prefill_tokens"]
  # the compacted engine ran fewer row-steps than all rows for every decode step (rows finish at different times)
  assert a.stats["decode_row_steps"] < a.stats["decode_steps"] * len(TASKS) * 2, a.stats
  assert a.stats["prefill_row_slots"] < b.stats["prefill_row_slots"], (a.stats, b.stats)


def test_engine_spreads_rows_over_the_data_parallel_devices(tokenizer, tiny_model):
  """With the policy's mesh, the cache rows are split over data x fsdp (each device decodes 1/4 of them, at ~1/8
  of the FLOPs with tensor = 2), and the trajectories equal the one-device engine's. 3 tasks x K = 4: the prompt
  batch (3 rows) is padded to the data-parallel size 4; early returns + compaction use row buckets of 4."""
  from rods_jax import sharding
  from rods_jax.models import kv_cache
  from rods_jax.rollout import sampler
  from rods_jax.rollout.placement import RowPlacement
  cfg, graphdef, params = tiny_model
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
  _, sharded = nnx.split(sharding.shard_model(nnx.merge(graphdef, jax.tree.map(jnp.copy, params)), mesh))
  rcfg = _rollout_cfg(kv_bucket=128, prefill_bucket=32, min_stopped_frac=0.3, compact_min_rows=1)
  greedy = SamplingParams(temperature=0.0)
  ref = MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), rcfg, cfg)
  engine = MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), rcfg, cfg, mesh=mesh)
  a = ref.rollout(params, ScriptedEnv(), TASKS, 4, jax.random.key(0), sampling=greedy)
  b = engine.rollout(sharded, ScriptedEnv(), TASKS, 4, jax.random.key(0), sampling=greedy)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
  np.testing.assert_allclose(a.sampler_logps, b.sampler_logps, atol=1e-4)
  assert b.stats["prefill_rows_first"] == len(TASKS)  # the padding prompt row is not computed
  assert engine._compact(np.arange(5), 12).shape == (8,)  # 5 busy rows: bucket 6 -> 8, a multiple of 4

  place = engine.placement
  assert place.row_multiple == 4 and place.rows(3) == 4
  n = 12
  with place.scope():
    cache = place.new_cache(cfg, n, 128)
    place.new_cache(cfg, n, 128)
    builder = kv_cache._sharded_zeros(cfg, n, 128, jnp.dtype(cfg.dtype), mesh)
    assert builder._cache_size() == 1  # the sharded builder is compiled once, not once per rollout
    assert cache.k[0].addressable_shards[0].data.shape[0] == n // 4
    state = sampler.new_decode_state(cache, place.zero_logits(n, cfg.vocab_size), np.ones(n, bool),
                                     np.full(n, 4, np.int32), 4, jax.random.key(1))
    stop = jnp.full((n, 1), -1, jnp.int32)
    flops = lambda p, s: sampler.decode.lower(graphdef, p, s, stop, jnp.int32(0), sampling=greedy,
                                              kv_len=128).compile().cost_analysis()["flops"]
    spread = flops(sharded, state)
    out = sampler.decode(graphdef, sharded, state, stop, jnp.int32(0), sampling=greedy, kv_len=128)
  assert out.cache.k[0].addressable_shards[0].data.shape[0] == n // 4  # the donated cache stays split
  one = RowPlacement.of(None)
  local = sampler.new_decode_state(one.new_cache(cfg, n, 128), one.zero_logits(n, cfg.vocab_size), np.ones(n, bool),
                                   np.full(n, 4, np.int32), 4, jax.random.key(1))
  assert spread < flops(params, local) / 4, (spread, flops(params, local))  # per-device work of one decode step


def test_cohorts_in_threads_equal_the_cohorts_run_one_after_another(tokenizer, tiny_model):
  """rollout.cohorts = 2: tasks [t0, t1] and [t2] run concurrently in two host threads; sampled trajectories equal
  two sequential rollouts with keys fold_in(key, 0) and fold_in(key, 1), whatever the threads' interleaving."""
  from rods_jax.rollout.engine import cohort_spans
  cfg, graphdef, params = tiny_model
  assert cohort_spans(3, 2) == [(0, 1), (1, 3)] and cohort_spans(2, 4) == [(0, 1), (1, 2)]
  assert cohort_spans(5, 1) == [(0, 5)]
  rcfg = _rollout_cfg(temperature=0.9, kv_bucket=128, prefill_bucket=32, min_stopped_frac=0.5, compact_min_rows=1)
  rcfg.cohorts = 2
  key = jax.random.key(5)
  threaded = MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), rcfg, cfg)
  rcfg.cohorts = 1
  one = MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), rcfg, cfg)
  got = threaded.rollout(params, ScriptedEnv(), TASKS, 2, key)
  parts = [one.rollout(params, ScriptedEnv(), TASKS[a:b], 2, jax.random.fold_in(key, c))
           for c, (a, b) in enumerate(cohort_spans(len(TASKS), 2))]
  for name in ("tokens", "loss_mask", "sampler_logps", "rewards", "lengths", "task_ids"):
    np.testing.assert_array_equal(getattr(got, name), np.concatenate([getattr(p, name) for p in parts]), name)
  assert got.messages == parts[0].messages + parts[1].messages
  assert got.stats["sampled_tokens"] == sum(p.stats["sampled_tokens"] for p in parts)
  assert got.stats["prefill_rows_first"] == len(TASKS)
  with pytest.raises(ValueError, match="cohorts=2 > 1 needs one device"):
    from rods_jax import sharding
    rcfg.cohorts = 2
    MultiTurnEngine(graphdef, tokenizer, ChatRenderer(tokenizer), rcfg, cfg,
                    mesh=sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 8, "tensor": 1})))


def test_decode_loop_has_no_collectives_per_step_on_a_data_parallel_mesh(tiny_model):
  """On an all-fsdp mesh the token loop is device-local: the cache and output writes are per-row (vmapped)
  scatters, so XLA moves nothing between devices inside the loop body (explicit row indices made it all-gather
  every k/v update at every step); only the loop condition's reductions remain."""
  import re
  from rods_jax import sharding
  from rods_jax.rollout import sampler
  from rods_jax.rollout.placement import RowPlacement
  cfg, graphdef, params = tiny_model
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 8, "tensor": 1}))
  _, sharded = nnx.split(sharding.shard_model(nnx.merge(graphdef, jax.tree.map(jnp.copy, params)), mesh))
  place, n = RowPlacement.of(mesh), 16
  with place.scope():
    state = sampler.new_decode_state(place.new_cache(cfg, n, 128), place.zero_logits(n, cfg.vocab_size),
                                     np.ones(n, bool), np.full(n, 4, np.int32), 4, jax.random.key(1))
    hlo = sampler.decode.lower(graphdef, sharded, state, jnp.full((n, 1), -1, jnp.int32), jnp.int32(0),
                               sampling=SamplingParams(temperature=1.0), kv_len=128).compile().as_text()
  bodies = set(re.findall(r"while\(.*?body=%?([\w.\-]+)", hlo))
  assert bodies, "no while loop in the compiled decode"
  computations = {c.split(" ", 1)[0].lstrip("%"): c for c in re.split(r"\n(?=%|ENTRY)", hlo)}
  collective = re.compile(r"all-gather|all-to-all|collective-permute|reduce-scatter")
  for name in bodies:
    assert not collective.search(computations[name]), f"collectives in the decode loop body {name}"

# ------------------------------------------------------------------------------------------------ toolworld + lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
  from configs import base
  from rods_jax.envs import make_env
  from rods_jax.models import lab_tokenizer as lt
  config = base.get_config()
  config.env.cache_dir = str(tmp_path_factory.mktemp("twcache"))
  env = make_env("toolworld", config.env)
  seeds = env.load_tasks("seeds")
  tok = lt.build_lab_tokenizer(str(tmp_path_factory.mktemp("labtok")), lt.lab_corpus(env, ("seeds",))[:120],
                               vocab_size=384)
  return config, env, seeds, tok


def test_lab_token_deltas_equal_encoding_of_the_rendering(lab):
  """Gold conversations replayed through the renderer (assistant ids = the canonical encoding of each gold message +
  <|im_end|>, as a perfect policy would sample them): prompt + sampled + delta ids == encode(render(conversation))."""
  from rods_jax.envs.toolworld import gold_messages
  _, env, seeds, tok = lab
  r = ChatRenderer(tok)
  im_end = tok.convert_tokens_to_ids("<|im_end|>")
  for task in seeds[::8]:
    msgs = gold_messages(task)
    tools = env.tools_at(task, 0)
    state, ids = r.start(msgs[:1], tools)
    i = 1
    while i < len(msgs):
      assert msgs[i]["role"] == "assistant"
      j = i + 1
      while j < len(msgs) and msgs[j]["role"] != "assistant":
        j += 1
      sampled = r.encode(msgs[i]["content"]) + [im_end]
      state, delta, content = r.extend(state, sampled, msgs[i + 1:j], generation_prompt=j < len(msgs))
      assert content == msgs[i]["content"]
      ids += sampled + delta
      i = j
    full = r.render(msgs, tools, generation_prompt=False)
    assert state.text == full and r.decode(ids) == full
    assert ids == r.encode(full), task.id


def test_toolworld_rollout_untrained_model(lab):
  config, env, seeds, tok = lab
  tasks = [t for t in seeds if t.num_turns >= 3][:4]
  cfg = get_preset("lab_tiny", vocab_size=len(tok), hidden=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                   mlp_dim=64)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(2)))
  rcfg = config.rollout
  rcfg.kv_bucket = rcfg.cache_capacity  # one compilation (bucketing is covered in test_sampler)
  rcfg.prefill_bucket = 128
  renderer = ChatRenderer(tok)
  engine = MultiTurnEngine(graphdef, tok, renderer, rcfg, cfg)
  batch = engine.rollout(params, env, tasks, 2, jax.random.key(0))
  assert batch.rewards.shape == (4, 2) and ((0 <= batch.rewards) & (batch.rewards <= 1)).all()
  assert list(batch.task_ids) == [t.id for t in tasks]
  assert batch.n_calls.sum() > 0 and batch.n_errors.sum() > 0  # random text with <tool_call> -> error observations
  for n in range(batch.num_rows):
    ids = batch.tokens[n, :batch.lengths[n]].tolist()
    msgs = batch.messages[n]
    tools = env.tools_at(tasks[n // 2], 0)
    text = renderer.decode(ids)
    full = renderer.render(msgs, tools, generation_prompt=False)
    if text != full:  # ended without its closing delta: the context, then the last sampled message
      start = int(np.nonzero(~batch.loss_mask[n, :batch.lengths[n]])[0][-1]) + 1  # the trailing sampled span
      assert 0 < start < batch.lengths[n]
      assert renderer.decode(ids[:start]) == renderer.render(msgs, tools, generation_prompt=True)
    else:
      assert not batch.truncated[n] and batch.turns_closed[n] == tasks[n // 2].num_turns
    assert not batch.loss_mask[n, :64].any()  # the system prompt and first user turn are never in the loss


def test_split_by_length_separates_short_and_long_deltas_only_when_it_pays():
  from rods_jax.rollout.engine import split_by_length
  from rods_jax.rollout.sampler import round_up, row_bucket
  rng = np.random.default_rng(5)
  slots = lambda ls: row_bucket(len(ls), 64, 8) * round_up(max(ls), 32)
  same = list(rng.integers(20, 30, 64))
  assert split_by_length(same, 64, 32, 8) == [list(range(64))]
  two = list(rng.integers(3, 12, 48)) + list(rng.integers(90, 120, 8))  # many tool results, a few long user turns
  perm = rng.permutation(len(two))
  mixed = [two[i] for i in perm]
  groups = split_by_length(mixed, 64, 32, 8)
  assert len(groups) == 2 and sorted(groups[0] + groups[1]) == list(range(len(mixed)))
  assert max(mixed[i] for i in groups[0]) < 12 and min(mixed[i] for i in groups[1]) >= 90
  cost = slots([mixed[i] for i in groups[0]]) + slots([mixed[i] for i in groups[1]])
  assert cost <= 0.75 * slots(mixed)
  # the chosen split is the cheapest of all split points of the sorted lengths (brute force)
  srt = sorted(mixed)
  assert cost == min(slots(srt[:c]) + slots(srt[c:]) for c in range(1, len(srt)))
