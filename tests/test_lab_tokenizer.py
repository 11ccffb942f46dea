"""Lab tokenizer: lossless byte-level BPE, single special tokens, HF loading, chat template == the pure renderer,
prefix / token-delta property, compact toolworld trajectories."""
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs.base import get_config
from rods_jax.envs import make_env
from rods_jax.envs.toolworld import env as tw_env
from rods_jax.models import lab_tokenizer as lt


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cfg = get_config().env
  cfg.cache_dir = str(tmp_path_factory.mktemp("twcache"))
  return make_env("toolworld", cfg)


@pytest.fixture(scope="module")
def seeds(env):
  return env.load_tasks("seeds")


@pytest.fixture(scope="module")
def tok_dir(env, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("labtok"))
  lt.build_lab_tokenizer(out, lt.lab_corpus(env, ("seeds", "test")), vocab_size=1024)
  return out


@pytest.fixture(scope="module")
def tok(tok_dir):
  return lt.load_lab_tokenizer(tok_dir)


def enc(tok, s):
  return tok.encode(s, add_special_tokens=False)


def dec(tok, ids):
  return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_directory_and_special_tokens(tok, tok_dir):
  import json
  import os
  cfg = json.load(open(os.path.join(tok_dir, "tokenizer_config.json")))
  assert cfg["chat_template"] == lt.CHAT_TEMPLATE and os.path.exists(os.path.join(tok_dir, "tokenizer.json"))
  assert len(tok) == 1024
  for t in lt.SPECIAL_TOKENS + lt.TOOL_TOKENS:
    assert len(enc(tok, t)) == 1
  assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
  assert tok.pad_token_id == enc(tok, "<|endoftext|>")[0]
  # <tool_call> is an added, non-special token: skipping specials keeps it, drops <|im_end|>
  ids = enc(tok, '<tool_call>{"name":"x"}</tool_call><|im_end|>')
  assert tok.decode(ids, skip_special_tokens=True) == '<tool_call>{"name":"x"}</tool_call>'
  assert enc(tok, "<tool_call>x")[0] == enc(tok, "<tool_call>")[0]


def test_same_loading_path_as_real_checkpoints(tok_dir):
  hf_loader = pytest.importorskip("rods_jax.models.hf_loader")
  t = hf_loader.load_tokenizer(tok_dir)
  assert len(t.encode("<|im_start|>", add_special_tokens=False)) == 1


def test_roundtrip_corpus_and_digits(tok, env, seeds):
  for text in lt.lab_corpus(env, ("seeds",))[:100]:
    assert dec(tok, enc(tok, text)) == text
  for n in (7, 42, 1234567890, 305):
    ids = enc(tok, f"amount {n}")
    digits = [tok.convert_ids_to_tokens(i) for i in ids[-len(str(n)):]]
    assert digits == list(str(n))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.lists(st.sampled_from(
    ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "{\"name\":\"", "assistant\n", " ", "\n", "é",
     "🙂", "12", "(a,b) ", "\x00", "<|endoftext|>", "<|im_", "tool_call"]), max_size=30).map("".join))
def test_roundtrip_arbitrary_text(tok, text):
  assert dec(tok, enc(tok, text)) == text


def test_template_matches_pure_renderer(tok, env, seeds):
  template = lt.compile_template()
  for task in seeds[::40]:
    msgs = tw_env.gold_messages(task)
    tools = env.tools_at(task, 0)
    for gen in (False, True):
      hf = tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=gen)
      assert hf == lt.render_chat(msgs, tools, gen, template)
  sys_msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
  text = tok.apply_chat_template(sys_msgs, tools=env.tools_at(seeds[0], 0), tokenize=False, add_generation_prompt=True)
  assert text.startswith("<|im_start|>system\nbe brief\ntools:") and text.endswith(
      "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
  assert tok.apply_chat_template(sys_msgs[1:], tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"
  with pytest.raises(ValueError, match="role"):
    lt.render_chat([{"role": "robot", "content": "x"}])


def test_assistant_content_verbatim(tok):
  weird = '  <tool_call>{"name": "a",\n "arguments": {}}</tool_call>\n\n trailing  '
  msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": weird}]
  assert f"<|im_start|>assistant\n{weird}<|im_end|>\n" in tok.apply_chat_template(msgs, tokenize=False)


def test_prefix_and_token_delta_property(tok, env, seeds):
  """render(m[:n]) is a prefix of render(m[:n+1]); the generation prompt is a prefix of the next render; and the
  tokens of the whole rendering equal the concatenated tokens of its pieces cut at every message boundary and at
  every assistant content start (what the rollout engine concatenates)."""
  template = lt.compile_template()
  for task in seeds[::10]:
    msgs = tw_env.gold_messages(task)
    tools = env.tools_at(task, 0)
    renders = [lt.render_chat(msgs[:n], tools, False, template) for n in range(1, len(msgs) + 1)]
    for n in range(len(msgs) - 1):
      assert renders[n + 1].startswith(renders[n])
      if msgs[n + 1]["role"] == "assistant":
        prompt = lt.render_chat(msgs[:n + 1], tools, True, template)
        assert prompt.startswith(renders[n]) and renders[n + 1].startswith(prompt)
    full = renders[-1]
    cuts = {0, len(full)}
    for n in range(len(msgs)):
      cuts.add(len(renders[n]))
      if msgs[n]["role"] == "assistant":
        start = len(lt.render_chat(msgs[:n], tools, True, template))
        cuts.update({start, start + len(msgs[n]["content"])})
    cuts = sorted(cuts)
    pieces = [full[a:b] for a, b in zip(cuts, cuts[1:])]
    assert sum((enc(tok, p) for p in pieces), []) == enc(tok, full), task.id


def test_rollout_renderer_accepts_template(tok):
  render = pytest.importorskip("rods_jax.rollout.render")
  render.ChatRenderer(tok).check_prefix_property()


def test_trajectories_are_compact(tok, env, seeds):
  """The lab budget: a typical 3-turn toolworld trajectory is at most 256 lab tokens."""
  template = lt.compile_template()
  lens = [len(enc(tok, lt.conversation_text(t, env, template))) for t in seeds
          if t.num_turns == 3 and t.category != "long_context"]
  assert len(lens) >= 50
  assert statistics.median(lens) <= 256, statistics.median(lens)
  assert statistics.mean(lens) <= 256


def test_bad_vocab_size(tmp_path):
  with pytest.raises(ValueError, match="vocab_size"):
    lt.build_lab_tokenizer(str(tmp_path), ["abc"], vocab_size=100)
