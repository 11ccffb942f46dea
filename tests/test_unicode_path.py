"""Text that is not valid Unicode (lone surrogates) along the whole path a sampled message takes:
parser -> episode -> tool output -> ChatRenderer -> tokenizer -> a UTF-8 log. None of it may raise."""
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rods_jax import envs
from rods_jax.models import lab_tokenizer
from rods_jax.rollout.render import ChatRenderer

ISSUE_MESSAGE = ('<tool_call>{"name": "change_seat", "arguments": {"booking": "B61", "seat": "\\udc80"}}'
                 '</tool_call>')


@pytest.fixture(scope="module")
def lab():
  from configs import base
  env = envs.make_env("toolworld", base.get_config().env)
  seeds = env.load_tasks("seeds")
  return env, {t.id: t for t in seeds}


@pytest.fixture(scope="module")
def renderer(lab, tmp_path_factory):
  env, tasks = lab
  texts = [lab_tokenizer.conversation_text(t, env) for t in list(tasks.values())[:40]]
  return ChatRenderer(lab_tokenizer.build_lab_tokenizer(str(tmp_path_factory.mktemp("labtok")), texts, 512))


def sampled_ids(renderer, text):
  """The ids a model would have sampled to print ``text``: a tokenizer decodes only to valid Unicode, so the sampled
  message itself can hold ``\\udc80`` only as its six-character JSON escape; raw surrogates are made U+FFFD."""
  clean = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
  return renderer.encode(clean) + [renderer.tokenizer.convert_tokens_to_ids(lab_tokenizer.IM_END)]


def through_the_path(env, task, renderer, text, start=None):
  """One assistant message through episode -> renderer -> tokenizer -> a UTF-8 log; returns the StepResult.
  ``start``: the task's ``renderer.start`` result, when the caller has it already."""
  ep = env.new_episode(task)
  chat, _ = start if start is not None else renderer.start([{"role": "user", "content": ep.user_message()}],
                                                           env.tools_at(task, 0))
  res = ep.step(text)
  new = [{"role": "tool", "content": o} for o in res.observations]
  if res.turn_closed and not ep.done:
    new.append({"role": "user", "content": ep.user_message()})
  _, delta, _ = renderer.extend(chat, sampled_ids(renderer, text), new, generation_prompt=not ep.done)
  assert all(isinstance(i, int) for i in delta)
  log = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # what a strict UTF-8 log file does with them
  log.write(json.dumps({"observations": list(res.observations)}, ensure_ascii=False) + "\n")
  log.flush()
  for o in res.observations:
    o.encode("utf-8")  # strict: a lone surrogate would raise here
  return res


def test_issue_example_becomes_an_error_observation(lab, renderer):
  env, tasks = lab
  res = through_the_path(env, tasks["tw-seeds-00005"], renderer, ISSUE_MESSAGE)
  assert res.kind == "error"
  assert list(res.observations) == ["Error: change_seat: seat contains a lone surrogate (not valid Unicode text)."]
  # the same call with a valid seat does reach the tool (so the error above is the surrogate's, not the call's)
  ok = through_the_path(env, tasks["tw-seeds-00005"], renderer, ISSUE_MESSAGE.replace("\\udc80", "12C"))
  assert ok.kind == "tool"


# Any code point, surrogates included (hypothesis leaves category Cs out unless told otherwise).
_any_text = st.text(st.characters(exclude_categories=()), max_size=40)
_escaped = st.lists(st.integers(0xD800, 0xDFFF), min_size=1, max_size=3).map(
    lambda cps: "".join(f"\\u{c:04x}" for c in cps))
_fragment = st.one_of(_any_text, _escaped, st.tuples(_any_text, _escaped, _any_text).map("".join))


def placements(fragment):
  """The sampled messages the fragment is put in: bare, as a whole block, an argument value, a tool name, an
  argument name, a value after a thought."""
  return [
      fragment,
      f"<tool_call>{fragment}</tool_call>",
      f'<tool_call>{{"name": "change_seat", "arguments": {{"booking": "B61", "seat": "{fragment}"}}}}</tool_call>',
      f'<tool_call>{{"name": "{fragment}", "arguments": {{}}}}</tool_call>',
      f'<tool_call>{{"name": "change_seat", "arguments": {{"{fragment}": 1}}}}</tool_call>',
      f'thought {fragment} <tool_call>{{"name": "get_booking", "arguments": {{"booking": "{fragment}"}}}}'
      "</tool_call>",
  ]


def test_fuzz_10k_sampled_messages_through_the_path_never_raise(lab, renderer):
  env, tasks = lab
  chosen = list(tasks.values())[:8]
  starts = [renderer.start([{"role": "user", "content": env.new_episode(t).user_message()}], env.tools_at(t, 0))
            for t in chosen]
  kinds = []

  @settings(max_examples=1_700, deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow])
  @given(fragment=_fragment, task_index=st.integers(0, len(chosen) - 1))
  def one(fragment, task_index):
    for text in placements(fragment):
      kinds.append(through_the_path(env, chosen[task_index], renderer, text, starts[task_index]).kind)

  one()
  assert len(kinds) >= 10_000
  assert {"error", "answer"} <= set(kinds), set(kinds)  # the fuzz reaches both the parser's errors and answers
