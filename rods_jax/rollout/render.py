"""Chat rendering as token deltas (token-in / token-out).

The trajectory handed to training is: the prompt's ids, then for every assistant step the exact sampled ids (never
decoded and re-encoded) followed by the ids of what the chat template adds after them: the end of the message if the
model did not sample it, tool messages, the next user turn and the generation prompt. Those added ids are the encoding of
the string DELTA between two renders of the conversation:

  text_before = render(messages, generation prompt)          (already in the context, as ids)
  text_after  = render(messages + [assistant(content)] + new, generation prompt?)
  text_after  = text_before + decode(sampled ids) + delta      (the prefix property; checked, never assumed)
  delta ids   = encode(delta)

``content`` is the decoded sampled text (without a trailing special token that ended the message, when the template
renders that token itself), so the template re-renders the sampled text verbatim. A template that rewrites earlier
messages (e.g. one that strips reasoning from past assistant turns) breaks the prefix property: ``TemplatePrefixError``.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

Message = dict[str, Any]


class TemplatePrefixError(ValueError):
  """The chat template does not extend the previous rendering verbatim, so token deltas are undefined."""


class ChatState(NamedTuple):
  """One conversation as the host sees it.

  Attributes:
    messages: the messages so far (assistant contents are the decoded sampled text).
    tools: the tool schemas rendered into the system prompt (None = no tools).
    text: the rendering of ``messages`` (with the generation prompt when a reply is awaited); equals the decoding of
      the conversation's ids so far.
    plain_tools: ``tools`` hold only JSON values (checked once, in ``start``), so the direct render may be used.
  """
  messages: tuple[Message, ...]
  tools: tuple[dict, ...] | None
  text: str
  plain_tools: bool = False


# The probe conversation checks run on (the template's prefix property; the direct render against transformers').
_PROBE_TOOLS = ({"type": "function", "function": {"name": "probe_fn", "description": "probe", "parameters": {
    "type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}},)
_PROBE_CALL = '<tool_call>{"name": "probe_fn", "arguments": {"x": "a"}}</tool_call>'


def is_plain_json(value: Any) -> bool:
  """Whether ``value`` is built only of dict (str keys), list, tuple, str, int, float, bool and None: what
  ``transformers`` would pass to a chat template unchanged."""
  if value is None or type(value) in (str, int, float, bool):
    return True
  if type(value) is dict:
    return all(type(k) is str and is_plain_json(v) for k, v in value.items())
  if type(value) in (list, tuple):
    return all(is_plain_json(v) for v in value)
  return False


def _plain_messages(messages: Sequence[Message]) -> bool:
  """Messages of string roles and contents only (what the engine builds): nothing for transformers to normalise."""
  return all(type(m) is dict and m.keys() <= {"role", "content"} and all(type(v) is str for v in m.values())
             for m in messages)


def _compiled_template(tokenizer, template: str | None, with_tools: bool):
  """transformers' own compiled (sandboxed) Jinja template for this tokenizer, or None where this transformers
  version does not expose its compiler."""
  try:
    from transformers.utils.chat_template_utils import _compile_jinja_template  # pylint: disable=g-import-not-at-top
    return _compile_jinja_template(tokenizer.get_chat_template(template, [{}] if with_tools else None))
  except (ImportError, AttributeError, ValueError):
    return None


class ChatRenderer:
  """Renders conversations with a Hugging Face tokenizer's chat template and returns token deltas.

  Args:
    tokenizer: a ``transformers`` tokenizer with a chat template (``apply_chat_template``), ``encode`` and ``decode``.
    chat_template: optional template string overriding the tokenizer's own.
  """

  def __init__(self, tokenizer, chat_template: str | None = None):
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
      raise ValueError("the tokenizer has no chat_template; pass chat_template= to ChatRenderer")
    self.tokenizer = tokenizer
    self._template = chat_template
    self._special_ids = frozenset(int(i) for i in tokenizer.all_special_ids) | frozenset(
        int(i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False))
    # The engine renders the whole conversation after every assistant message. apply_chat_template re-normalises
    # every message and tool schema on each call (a few times the Jinja render itself); the direct render skips
    # that for plain JSON inputs, and is used only if it reproduces apply_chat_template on a probe conversation.
    self._direct = {with_tools: _compiled_template(tokenizer, chat_template, with_tools) for with_tools in (False, True)}
    self._template_kwargs = dict(tokenizer.special_tokens_map)
    if not self._direct_matches():
      self._direct = {False: None, True: None}

  def render(self, messages: Sequence[Message], tools: Sequence[dict] | None, generation_prompt: bool,
             plain_tools: bool = False) -> str:
    """The chat template's text for ``messages`` (no tokenization). ``plain_tools``: the caller has checked
    ``is_plain_json(tools)``, so plain messages may take the direct render (same text, see ``__init__``)."""
    direct = self._direct[tools is not None]
    if direct is not None and (tools is None or plain_tools) and _plain_messages(messages):
      return self._render_direct(direct, messages, tools, generation_prompt)
    return self.tokenizer.apply_chat_template(
        list(messages), tools=list(tools) if tools is not None else None, tokenize=False,
        add_generation_prompt=generation_prompt, chat_template=self._template)

  def _render_direct(self, direct, messages: Sequence[Message], tools: Sequence[dict] | None,
                     generation_prompt: bool) -> str:
    # the arguments transformers' render_jinja_template passes the template (its normalisation is the identity here)
    return direct.render(messages=list(messages), tools=list(tools) if tools is not None else None, documents=None,
                         add_generation_prompt=generation_prompt, **self._template_kwargs)

  def _direct_matches(self) -> bool:
    """Whether the direct render equals apply_chat_template on the probe conversation (with and without tools and
    generation prompt)."""
    messages = [{"role": "user", "content": "probe question"}, {"role": "assistant", "content": _PROBE_CALL},
                {"role": "tool", "content": "probe result"}, {"role": "assistant", "content": "probe answer"},
                {"role": "user", "content": "probe follow-up"}]
    for with_tools in (False, True):
      direct = self._direct[with_tools]
      if direct is None:
        return False
      tools = _PROBE_TOOLS if with_tools else None
      for gen in (False, True):
        slow = self.tokenizer.apply_chat_template(messages, tools=list(tools) if tools else None, tokenize=False,
                                                  add_generation_prompt=gen, chat_template=self._template)
        if self._render_direct(direct, messages, tools, gen) != slow:
          return False
    return True

  def encode(self, text: str) -> list[int]:
    """Ids of ``text``; the template's text already holds every special token, so none are added."""
    return list(self.tokenizer.encode(text, add_special_tokens=False))

  def decode(self, ids: Sequence[int]) -> str:
    """Verbatim text of ``ids`` (special tokens kept, no clean-up), as the template would print it."""
    return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

  def message_text(self, sampled_ids: Sequence[int]) -> str:
    """What the environment reads: the sampled text without a trailing special token (the end of the message)."""
    if sampled_ids and int(sampled_ids[-1]) in self._special_ids:
      return self.decode(sampled_ids[:-1])
    return self.decode(sampled_ids)

  def check_prefix_property(self) -> None:
    """Raises TemplatePrefixError unless a probe conversation renders as prefix extensions (user -> assistant with a
    tool call -> tool -> assistant answer -> user -> ...), the pattern the engine relies on."""
    state, _ = self.start([{"role": "user", "content": "probe question"}], _PROBE_TOOLS)
    steps = ((_PROBE_CALL, [{"role": "tool", "content": "probe result"}], True),
             ("probe answer", [{"role": "user", "content": "probe follow-up"}], True),
             ("probe final", [], False))
    for text, new, gen in steps:
      state, _, _ = self.extend(state, self.encode(text), new, gen)

  def start(self, messages: Sequence[Message], tools: Sequence[dict] | None) -> tuple[ChatState, list[int]]:
    """The prompt: (state, ids) of ``messages`` (system / first user turn) plus the generation prompt."""
    tools_t = tuple(tools) if tools is not None else None
    plain = tools_t is None or is_plain_json(tools_t)
    text = self.render(messages, tools_t, generation_prompt=True, plain_tools=plain)
    return ChatState(tuple(messages), tools_t, text, plain), self.encode(text)

  def extend(self, state: ChatState, sampled_ids: Sequence[int], new_messages: Sequence[Message],
             generation_prompt: bool) -> tuple[ChatState, list[int], str]:
    """Closes the assistant message made of ``sampled_ids`` and appends ``new_messages``.

    Args:
      state: the conversation whose rendering ends with the generation prompt the ids were sampled after.
      sampled_ids: the assistant's sampled ids (possibly ending in the stop token that closed the message).
      new_messages: tool / user messages that follow the assistant message.
      generation_prompt: True if the model replies next; False to close the conversation.
    Returns:
      (new state, delta ids the template adds after the sampled ids, assistant content).
    Raises:
      TemplatePrefixError: if the new rendering does not start with the old one followed by the sampled text.
    """
    sampled_text = self.decode(sampled_ids)
    context = state.text + sampled_text
    candidates = []
    if sampled_ids and int(sampled_ids[-1]) in self._special_ids:
      candidates.append(self.decode(sampled_ids[:-1]))  # the template renders the end-of-message token itself
    candidates.append(sampled_text)
    rendered = ""
    for content in candidates:
      messages = state.messages + ({"role": "assistant", "content": content},) + tuple(new_messages)
      rendered = self.render(messages, state.tools, generation_prompt, plain_tools=state.plain_tools)
      if rendered.startswith(context):
        delta = rendered[len(context):]
        return ChatState(messages, state.tools, rendered, state.plain_tools), self.encode(delta), content
    at = next((i for i, (a, b) in enumerate(zip(rendered, context)) if a != b), min(len(rendered), len(context)))
    raise TemplatePrefixError(
        "chat template breaks the prefix property: re-rendering the conversation after an assistant message does not "
        f"start with the previous rendering + sampled text; first difference at char {at}: rendered "
        f"{rendered[max(0, at - 40):at + 40]!r} vs context {context[max(0, at - 40):at + 40]!r}")
