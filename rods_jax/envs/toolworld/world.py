"""toolworld worlds: random initial states per class, and the live ``World`` that executes calls on them."""
from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from rods_jax.envs.protocol import ExecResult
from rods_jax.envs.toolworld import apis

PEOPLE = ("ana", "bo", "cy", "dee", "eli", "fay", "gus", "hal", "ivy", "jo", "kai", "lea", "max", "ned", "oli", "pam",
          "quin", "ray", "sam", "tia", "uma", "val", "wes", "xia", "yan", "zed", "amy", "ben", "cal", "dan", "eva",
          "finn", "gia", "hugo", "ida", "jay", "kim", "lou", "mia", "noa")
FILE_NAMES = ("notes", "plan", "budget", "draft", "memo", "report", "list", "todo", "photo", "song", "essay", "poem",
              "recipe", "map", "log", "diary", "resume", "letter", "slides", "sketch", "score", "quiz", "brief", "menu")
DIRS = ("docs", "tmp", "work", "old", "home", "pics", "music", "inbox")
WORDS = ("hello", "thanks", "sorry", "congrats", "welcome", "ready", "late", "soon", "yes", "no", "maybe", "hurry",
         "bye", "later", "cheers", "ciao", "okay", "wait", "great", "oops")
CITIES = ("rome", "oslo", "lima", "kyiv", "doha", "riga", "baku", "nice", "bern", "cork", "faro", "graz", "pisa",
          "bonn", "lyon", "split")
PRODUCTS = ("lamp", "desk", "pen", "mug", "bag", "hat", "sock", "book", "kite", "fan", "cup", "rug", "clock", "vase",
            "fork", "bowl", "chair", "scarf")
STATUSES = ("placed", "shipped", "delivered")
TAGS = ("red", "blue", "old", "new", "big", "hot", "cold", "odd")  # long_context padding; no function consumes them
PREFIX = {"files": "F", "bank": "A", "tx": "T", "travel_flight": "L", "travel": "B", "chat": "U", "msg": "M",
          "shop_product": "P", "shop": "O"}


def _ids(rng: random.Random, prefix: str, n: int) -> list[str]:
  return [f"{prefix}{i}" for i in rng.sample(range(10, 100), n)]


def make_initial_state(classes: Sequence[str], rng: random.Random, long_context: bool = False) -> dict[str, Any]:
  """A fresh random world for ``classes``: class name -> JSON-able state. long_context doubles the entities."""
  unknown = [c for c in classes if c not in apis.CLASSES]
  if unknown:
    raise ValueError(f"unknown toolworld classes {unknown}; known: {apis.CLASSES}")
  scale = 2 if long_context else 1
  people = rng.sample(PEOPLE, 8 * scale)
  state: dict[str, Any] = {}
  for cls in classes:
    if cls == "files":
      ids = _ids(rng, "F", 6 * scale + 6)
      names = rng.sample(FILE_NAMES, 6 * scale)
      state[cls] = {"files": {ids[i]: {"name": names[i], "owner": rng.choice(people), "dir": rng.choice(DIRS),
                                       "text": rng.choice(WORDS), "shared": []} for i in range(6 * scale)},
                    "dirs": list(DIRS), "people": list(people), "pool": ids[6 * scale:]}
    elif cls == "bank":
      ids = _ids(rng, "A", len(people))
      tx = _ids(rng, "T", 4 * scale + 6)
      accounts = {a: {"owner": p, "balance": rng.randint(200, 999), "frozen": False} for a, p in zip(ids, people)}
      txs = {}
      for t in tx[:4 * scale]:
        src, dst = rng.sample(ids, 2)
        txs[t] = {"src": src, "dst": dst, "amount": rng.randint(10, 99)}
      state[cls] = {"accounts": accounts, "txs": txs, "pool": tx[4 * scale:]}
    elif cls == "travel":
      cities = rng.sample(CITIES, 6 * scale)
      pairs = rng.sample([(a, b) for a in cities for b in cities if a != b], 6 * scale)
      fl = _ids(rng, "L", len(pairs))
      bk = _ids(rng, "B", 4 * scale + 6)
      flights = {f: {"src": s, "dst": d, "price": rng.randint(100, 499), "gate": f"G{rng.randint(1, 9)}"}
                 for f, (s, d) in zip(fl, pairs)}
      bookings = {b: {"flight": rng.choice(fl), "name": rng.choice(people), "seat": f"{rng.randint(2, 9)}A"}
                  for b in bk[:4 * scale]}
      state[cls] = {"flights": flights, "bookings": bookings, "people": list(people), "pool": bk[4 * scale:]}
    elif cls == "chat":
      uids = _ids(rng, "U", len(people) + 6)
      mids = _ids(rng, "M", len(people) + 2 * scale + 6)
      contacts = dict(zip(people, uids))
      strangers = [p for p in PEOPLE if p not in contacts]
      # every contact has received a message, so last_message works for anyone the task looks up
      to = uids[:len(people)] + rng.sample(uids[:len(people)], 2 * scale)
      rng.shuffle(to)
      messages = {m: {"to": u, "text": rng.choice(WORDS)} for m, u in zip(mids, to)}
      state[cls] = {"contacts": contacts, "messages": messages, "blocked": [], "words": list(WORDS),
                    "strangers": rng.sample(strangers, 4), "pool": uids[len(people):] + mids[len(to):]}
    elif cls == "shop":
      pids = _ids(rng, "P", 6 * scale)
      oids = _ids(rng, "O", 6 * scale + 6)
      names = rng.sample(PRODUCTS, 6 * scale)
      products = {p: {"name": n, "price": rng.randint(100, 499), "stock": rng.randint(3, 9)}
                  for p, n in zip(pids, names)}
      orders = {o: {"product": rng.choice(pids), "qty": rng.randint(1, 3), "status": STATUSES[i % 3]}
                for i, o in enumerate(oids[:6 * scale])}
      state[cls] = {"products": products, "orders": orders, "ratings": {}, "pool": oids[6 * scale:]}
  return state


def clone(x: Any) -> Any:
  """Deep copy of JSON-like data (dict / list / scalars), several times faster than copy.deepcopy."""
  if isinstance(x, dict):
    return {k: clone(v) for k, v in x.items()}
  if isinstance(x, list):
    return [clone(v) for v in x]
  if isinstance(x, tuple):
    return [clone(v) for v in x]
  return x


def dump_output(out: Mapping[str, Any]) -> str:
  """The tool message text of an output dict: compact, deterministic JSON."""
  return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


class ToolWorld:
  """The live backends of one episode side. Implements ``protocol.World``.

  Args:
    initial_state: class -> state (deep-copied; the task is never mutated).
    long_context: pad every successful output with extra fields (BFCL's bloated long-context outputs, kept small).
    copy_state: False to take ownership of a freshly made state instead of copying it.
    hints: add an EnvTuning-style actionable ``"hint"`` to backend errors (``cfg.env.error_hints``).
  """

  def __init__(self, initial_state: Mapping[str, Any], long_context: bool = False, copy_state: bool = True,
               hints: bool = False):
    self.state = clone(dict(initial_state)) if copy_state else dict(initial_state)
    self.long_context = long_context
    self.hints = hints

  def execute(self, name: str, arguments: Mapping[str, Any]) -> ExecResult:
    fn = apis.BY_NAME.get(name)
    if fn is None or fn.cls not in self.state:
      return ExecResult(dump_output({"error": f"no tool {name}"[:80]}), False)
    params = {p.name for p in fn.params}
    if set(arguments) != params:
      return ExecResult(dump_output({"error": "bad arguments"}), False)
    try:
      out = fn.impl(self.state[fn.cls], dict(arguments))  # impls validate before mutating (see apis)
    except apis.ToolError as e:
      err = {"error": str(e), "hint": error_hint(fn, str(e))} if self.hints else {"error": str(e)}
      return ExecResult(dump_output(err), False)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
      return ExecResult(dump_output({"error": "bad arguments"}), False)
    if self.long_context:
      out = dict(out, **_padding(fn.name, arguments))
    return ExecResult(dump_output(out), True)

  def same_state(self, other: "ToolWorld") -> bool:
    return self.state == other.state


_SPECIFIC_HINTS = MappingProxyType({
    "insufficient funds": "check the balance of the source account first",
    "account frozen": "a frozen account can neither send nor receive",
    "already in that folder": "the file is already in that folder",
    "cannot cancel": "only placed orders can be cancelled; check the order status",
    "not delivered": "only delivered orders can be returned; check the order status",
    "contact blocked": "that contact is blocked",
    "already a contact": "use find_contact for existing contacts",
})


def error_hint(fn: apis.Fn, error: str) -> str:
  """An actionable hint for a backend error of ``fn``: a specific one when known, else where its values come from."""
  if error in _SPECIFIC_HINTS:
    return _SPECIFIC_HINTS[error]
  args = ", ".join(f"{p.name}: {apis.NOUN[p.kind]}" for p in fn.params)
  return f"{fn.name}({args}) takes ids and names from the request or from an earlier tool output"


def _padding(name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
  """Long-context noise: words no function consumes, a pure function of the call (never of the call history, so the
  model's and the GT's results of the same call stay equal)."""
  h = sum((i + 1) * ord(c) for i, c in enumerate(name + json.dumps(arguments, sort_keys=True)))
  return {"log": f"{TAGS[h % 8]} {TAGS[(h // 8) % 8]} {TAGS[(h // 64) % 8]}"}
