"""Tiny tokenizer / checkpoint / scripted generator for the OpenAI-compatible server tests."""
import os

from rods_jax.serving.scheduler import Completion

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def tiny_tokenizer(out_dir):
  """The lab tokenizer (chat template with tools, <tool_call> tokens) trained on a few conversations."""
  from rods_jax.models import lab_tokenizer as lt
  corpus = [lt.render_chat([{"role": "user", "content": "what is the weather in Paris"},
                            {"role": "assistant", "content": '<tool_call>{"name":"get_weather","arguments":'
                                                             '{"city":"Paris"}}</tool_call>'},
                            {"role": "tool", "content": '{"temp": 21}'},
                            {"role": "assistant", "content": "It is 21 degrees in Paris."}], TOOLS)] * 8
  return lt.build_lab_tokenizer(str(out_dir), corpus, vocab_size=300)


def random_model(cfg, seed=0):
  """A Transformer of ``cfg`` with N(0, 0.3) weights drawn by numpy into its abstract shapes (eager Flax init
  compiles every initialiser: ~10 s on a loaded CPU)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from rods_jax.models import Transformer
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed))))
  rng = np.random.default_rng(seed)
  return nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, 0.3, a.shape).astype(a.dtype)),
                                          abstract))


def tiny_checkpoint(out_dir, tok, seed=0):
  """An HF checkpoint directory (config.json, safetensors, ``tok``'s files) of a random 2-layer model."""
  from rods_jax.models import get_preset, hf_loader
  tok.save_pretrained(str(out_dir))
  cfg = get_preset("lab_tiny", vocab_size=len(tok), hidden=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                   mlp_dim=64)
  hf_loader.export_hf_checkpoint(random_model(cfg, seed), cfg, str(out_dir))
  assert os.path.exists(os.path.join(out_dir, "config.json"))
  return str(out_dir)


class ScriptedGenerator:
  """A generator that answers with ``script(messages, tools, choice) -> text`` (a random model never calls a tool on
  its own). Ids are the tokenizer's encoding of the text + <|im_end|>; streamed in two halves."""

  def __init__(self, tokenizer, script):
    self.tok, self.script, self.calls, self.requests = tokenizer, script, 0, []
    self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")

  def __call__(self, requests, emit):
    self.calls += 1
    out = []
    for i, r in enumerate(requests):
      self.requests.append(r)
      choices = []
      for c in range(r.n):
        text = self.script(r.messages, r.tools, c)
        ids = list(self.tok.encode(text, add_special_tokens=False))[:r.max_tokens]
        finish = "stop" if len(ids) < r.max_tokens else "length"
        ids = ids + [self.im_end] if finish == "stop" else ids
        text = self.tok.decode(ids[:-1] if finish == "stop" else ids, skip_special_tokens=False)
        if r.stream:
          emit(i, c, text[:len(text) // 2])
        choices.append(Completion(tuple(ids), text, finish))
      out.append(choices)
    return out
