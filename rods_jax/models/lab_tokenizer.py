"""The CPU-lab tokenizer: a small byte-level BPE trained on rendered toolworld conversations, saved as a normal Hugging
Face tokenizer directory (tokenizer.json + tokenizer_config.json with a Jinja chat template), so the lab model goes
through exactly the same loading path (``transformers.AutoTokenizer``) as a real checkpoint.

* Lossless: byte-level alphabet, no normalizer, ByteLevel decoder, so ``decode(encode(s)) == s`` for every string.
* Pre-tokenization (one regex, "isolated"): chat role headers (``assistant\\n``), the fixed JSON of a compact tool
  call (``{"name":"`` and ``","arguments":{"``), a JSON key with its quotes and colon (``{"file":"``, ``amount":``),
  a tool's argument list in the system message (``(src,dst,amount) ``), single digits (numbers are split into
  digits), words with an optional leading space, punctuation runs, whitespace.
  A pre-token boundary always falls right after a role header, so the content of a message tokenizes independently
  of the template around it (the rollout's token-delta property).
* Special tokens ``<|im_start|>``, ``<|im_end|>`` (eos), ``<|endoftext|>`` (pad); ``<tool_call>`` / ``</tool_call>`` are
  single added tokens that are NOT special (as in Qwen2.5), so decoding with special tokens skipped keeps them and
  the rollout never mistakes ``</tool_call>`` for the end of a message.
* Chat template: Qwen-like ``<|im_start|>role\\ncontent<|im_end|>\\n`` for system / user / assistant / tool, a compact
  tool list in the system message (``tools:name(arg,arg) name(arg) ``), ``add_generation_prompt``. Content is rendered
  verbatim (no stripping, no reformatting), so render(messages[:n]) is a prefix of render(messages[:n+1]).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
SPECIAL_TOKENS = (EOT, IM_START, IM_END)  # ids 0, 1, 2
TOOL_TOKENS = (TOOL_OPEN, TOOL_CLOSE)  # ids 3, 4
PRETOKENIZE_PATTERN = (r'(?:system|user|assistant|tool)\n|\{"name":"|","arguments":\{"|\{?"?[\p{L}_]+":"?'
                       r'|\([\p{L}_,]*\) ?|\p{N}| ?[\p{L}_]+| ?[^\s\p{L}\p{N}_]+|\s+')

# Jinja, rendered by transformers with trim_blocks=True and lstrip_blocks=True (as render_chat below does).
CHAT_TEMPLATE = (
    "{% set ns = namespace(start=0) %}"
    "{% if messages and messages[0]['role'] == 'system' %}{% set ns.start = 1 %}{% endif %}"
    "{% if tools or ns.start == 1 %}"
    "<|im_start|>system\n"
    "{% if ns.start == 1 %}{{ messages[0]['content'] }}{% if tools %}{{ '\\n' }}{% endif %}{% endif %}"
    "{% if tools %}tools:"
    "{% for t in tools %}{% set f = t['function'] if t['function'] is defined else t %}"
    "{{ f['name'] }}({{ (f['parameters']['properties'] if f['parameters'] is defined and f['parameters']"
    "['properties'] is defined else {}) | list | join(',') }}) "
    "{% endfor %}{% endif %}"
    "<|im_end|>{{ '\\n' }}"
    "{% endif %}"
    "{% for m in messages[ns.start:] %}"
    "<|im_start|>{{ m['role'] }}{{ '\\n' }}{{ m['content'] if m['content'] is not none else '' }}<|im_end|>{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool")


def compile_template():
  """CHAT_TEMPLATE compiled with the settings transformers uses (sandboxed, trim_blocks, lstrip_blocks)."""
  import jinja2.sandbox  # local: only corpus building needs it
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  return env.from_string(CHAT_TEMPLATE)


def render_chat(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None,
                add_generation_prompt: bool = False, template=None) -> str:
  """Renders CHAT_TEMPLATE exactly as ``tokenizer.apply_chat_template(..., tokenize=False)`` does (tested), without
  loading a tokenizer (used to build the training corpus). ``template``: a ``compile_template()`` result to reuse."""
  for i, m in enumerate(messages):
    if m.get("role") not in ROLES:
      raise ValueError(f"messages[{i}].role={m.get('role')!r} not in {ROLES}")
  compiled = compile_template() if template is None else template
  return compiled.render(messages=list(messages), tools=list(tools) if tools else None,
                         add_generation_prompt=add_generation_prompt)


def build_lab_tokenizer(out_dir: str, corpus_texts: Iterable[str], vocab_size: int = 1024):
  """Trains the BPE on ``corpus_texts``, writes an HF tokenizer directory to ``out_dir`` and returns it loaded through
  ``transformers.AutoTokenizer`` (the same path a real checkpoint's tokenizer takes).

  Args:
    out_dir: directory to write (created).
    corpus_texts: training texts (rendered conversations; special tokens inside them are handled as specials).
    vocab_size: total vocabulary size including the 256 byte tokens and the 5 added tokens.
  """
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  n_fixed = 256 + len(SPECIAL_TOKENS) + len(TOOL_TOKENS)
  if vocab_size < n_fixed + 1:
    raise ValueError(f"vocab_size={vocab_size} must exceed {n_fixed} (bytes + special tokens)")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  added = [tokenizers.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
  added += [tokenizers.AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS]
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=added,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(_stripped(corpus_texts), trainer=trainer)
  for t in TOOL_TOKENS:  # train() keeps them in the vocabulary; make sure they are also matched as added tokens
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False)])
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  added_decoder = {str(tok.token_to_id(t)): {"content": t, "special": t in SPECIAL_TOKENS, "normalized": False,
                                            "lstrip": False, "rstrip": False, "single_word": False}
                   for t in SPECIAL_TOKENS + TOOL_TOKENS}
  config = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "model_max_length": 4096,
      "eos_token": IM_END,
      "pad_token": EOT,
      "unk_token": None,
      "bos_token": None,
      "add_bos_token": False,
      "add_eos_token": False,
      "clean_up_tokenization_spaces": False,
      "added_tokens_decoder": added_decoder,
      "chat_template": CHAT_TEMPLATE,
  }
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=1, ensure_ascii=False)
  with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
    json.dump({"eos_token": IM_END, "pad_token": EOT}, f, indent=1)
  return load_lab_tokenizer(out_dir)


def _stripped(texts: Iterable[str]) -> Iterable[str]:
  """The segments between special tokens, as encoding will see them (special tokens are never part of a merge)."""
  for text in texts:
    segments = [text]
    for s in SPECIAL_TOKENS + TOOL_TOKENS:
      segments = [piece for seg in segments for piece in seg.split(s)]
    yield from (seg for seg in segments if seg)


def load_lab_tokenizer(path: str):
  """``transformers.AutoTokenizer.from_pretrained(path)``, checked to hold the lab's special tokens."""
  import transformers
  tok = transformers.AutoTokenizer.from_pretrained(path)
  for t in SPECIAL_TOKENS + TOOL_TOKENS:
    ids = tok.encode(t, add_special_tokens=False)
    if len(ids) != 1:
      raise ValueError(f"lab tokenizer at {path}: {t!r} is not a single token ({ids})")
  if not tok.chat_template:
    raise ValueError(f"lab tokenizer at {path}: no chat_template")
  return tok


def conversation_text(task, env, template=None) -> str:
  """A task's gold conversation rendered with the chat template (tools of turn 0 in the system message)."""
  from rods_jax.envs.toolworld.env import gold_messages  # local: keeps models/ free of env imports at load time
  return render_chat(gold_messages(task), env.tools_at(task, 0), template=template)


def lab_corpus(env, splits: Sequence[str] = ("seeds", "offline")) -> list[str]:
  """The lab tokenizer's corpus: the rendered gold conversations of toolworld ``splits``."""
  template = compile_template()
  return [conversation_text(t, env, template) for s in splits for t in env.load_tasks(s)]


def build_default_lab_tokenizer(out_dir: str, env_cfg, vocab_size: int = 1024,
                                splits: Sequence[str] = ("seeds", "offline")):
  """Builds the lab tokenizer from toolworld (``rods_jax.envs.make_env("toolworld", env_cfg)``) into ``out_dir``;
  reuses an existing build there."""
  if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
    return load_lab_tokenizer(out_dir)
  from rods_jax.envs import make_env
  env = make_env("toolworld", env_cfg)
  return build_lab_tokenizer(out_dir, lab_corpus(env, splits), vocab_size)
