"""Language backends of the synthesis pipeline (one interface, ``base.LanguageBackend``).

    make_backend(cfg.synthesis)                                   # template | openai
    make_backend(cfg.synthesis, chat=SamplerChat(model, model_cfg, tokenizer, ...))   # sampler
"""
from __future__ import annotations

from rods_jax.rods.synthesis.backends.base import LanguageBackend, LanguageRequest, PlanRequest, TurnSpec, Verdict
from rods_jax.rods.synthesis.backends.chat import ChatBackend
from rods_jax.rods.synthesis.backends.template import TemplateBackend

BACKENDS = ("template", "sampler", "openai")


def make_backend(cfg, chat=None) -> LanguageBackend:
  """The backend named by ``cfg.backend``.

  Args:
    cfg: ``config.synthesis``.
    chat: for ``sampler``, a ``complete(messages) -> str`` over a loaded model (``backends.sampler.SamplerChat``);
      when None, the model is loaded from ``cfg.checkpoint_dir``.
  """
  name = str(cfg.backend)
  if name not in BACKENDS:
    raise ValueError(f"config.synthesis.backend={name!r} not in {BACKENDS}")
  if name == "template":
    return TemplateBackend()
  if name == "openai":
    from rods_jax.rods.synthesis.backends.openai import OpenAIBackend, OpenAIClientConfig  # pylint: disable=g-import-not-at-top
    if not cfg.endpoint:
      raise ValueError("config.synthesis.endpoint must be set for the openai backend (e.g. http://host:8000/v1)")
    return OpenAIBackend(OpenAIClientConfig(
        endpoint=str(cfg.endpoint), model=str(cfg.model_name), temperature=float(cfg.temperature),
        top_p=float(cfg.top_p), max_tokens=int(cfg.max_new_tokens), timeout_s=float(cfg.timeout_s),
        retries=int(cfg.http_retries), api_key_env=str(cfg.api_key_env)))
  from rods_jax.rods.synthesis.backends import sampler  # pylint: disable=g-import-not-at-top
  if chat is None:
    if not cfg.checkpoint_dir:
      raise ValueError("config.synthesis.checkpoint_dir must be set for the sampler backend (or pass chat=...)")
    from rods_jax.models import hf_loader  # pylint: disable=g-import-not-at-top
    model, model_cfg = hf_loader.load_hf_checkpoint(str(cfg.checkpoint_dir))
    tokenizer = hf_loader.load_tokenizer(str(cfg.checkpoint_dir))
    chat = sampler.SamplerChat(model, model_cfg, tokenizer, sampler.SamplerChatConfig(
        max_new_tokens=int(cfg.max_new_tokens), temperature=float(cfg.temperature), top_p=float(cfg.top_p)))
  return ChatBackend(chat)


__all__ = ["BACKENDS", "ChatBackend", "LanguageBackend", "LanguageRequest", "PlanRequest", "TemplateBackend",
           "TurnSpec", "Verdict", "make_backend"]
