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
  """
  messages: tuple[Message, ...]
  tools: tuple[dict, ...] | None
  text: str


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

  def render(self, messages: Sequence[Message], tools: Sequence[dict] | None, generation_prompt: bool) -> str:
    """The chat template's text for ``messages`` (no tokenization)."""
    return self.tokenizer.apply_chat_template(
        list(messages), tools=list(tools) if tools is not None else None, tokenize=False,
        add_generation_prompt=generation_prompt, chat_template=self._template)

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
    tools = ({"type": "function", "function": {"name": "probe_fn", "description": "probe", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}},)
    state, _ = self.start([{"role": "user", "content": "probe question"}], tools)
    steps = (('<tool_call>{"name": "probe_fn", "arguments": {"x": "a"}}</tool_call>',
              [{"role": "tool", "content": "probe result"}], True),
             ("probe answer", [{"role": "user", "content": "probe follow-up"}], True),
             ("probe final", [], False))
    for text, new, gen in steps:
      state, _, _ = self.extend(state, self.encode(text), new, gen)

  def start(self, messages: Sequence[Message], tools: Sequence[dict] | None) -> tuple[ChatState, list[int]]:
    """The prompt: (state, ids) of ``messages`` (system / first user turn) plus the generation prompt."""
    tools_t = tuple(tools) if tools is not None else None
    text = self.render(messages, tools_t, generation_prompt=True)
    return ChatState(tuple(messages), tools_t, text), self.encode(text)

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
      rendered = self.render(messages, state.tools, generation_prompt)
      if rendered.startswith(context):
        delta = rendered[len(context):]
        return ChatState(messages, state.tools, rendered), self.encode(delta), content
    at = next((i for i, (a, b) in enumerate(zip(rendered, context)) if a != b), min(len(rendered), len(context)))
    raise TemplatePrefixError(
        "chat template breaks the prefix property: re-rendering the conversation after an assistant message does not "
        f"start with the previous rendering + sampled text; first difference at char {at}: rendered "
        f"{rendered[max(0, at - 40):at + 40]!r} vs context {context[max(0, at - 40):at + 40]!r}")
