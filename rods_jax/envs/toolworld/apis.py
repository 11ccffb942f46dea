"""toolworld's five stateful API classes: function specs, implementations and literal pickers.

Each function is a ``Fn``: typed parameters (a *kind* per parameter, e.g. ``fid`` = a file id), the output fields a
later call may consume (``sources``: field -> kind), a one-clause user-text template, an implementation over the class's
JSON state dict, and a picker that chooses literal argument values valid in the current state (used by the
generator). Outputs are compact JSON objects. Implementations check everything before their first mutation (the id
pool pop included), so a call that fails leaves the state untouched without a backup copy. New ids come from a
per-world pool, so extra calls change the state. Function names are unique across classes (dispatch is by bare
name, as in BFCL).
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

CLASSES = ("files", "bank", "travel", "chat", "shop")

# Literal phrase of a value of each kind in user text (ids carry their noun so the text reads naturally).
LITERAL = MappingProxyType({
    "fid": "file {}", "acct": "account {}", "tx": "transfer {}", "flight": "flight {}", "booking": "booking {}",
    "uid": "contact {}", "mid": "message {}", "pid": "product {}", "order": "order {}"})
# Noun of each kind (miss_param: "which city?", "the city is rome.").
NOUN = MappingProxyType({
    "name": "person", "fname": "file name", "dir": "folder", "fid": "file", "acct": "account", "tx": "transfer",
    "amount": "amount", "city": "city", "flight": "flight", "booking": "booking", "seat": "seat", "uid": "contact",
    "mid": "message", "word": "text", "pname": "product", "pid": "product", "order": "order", "qty": "quantity",
    "stars": "rating"})
INT_KINDS = frozenset({"amount", "qty", "stars"})


class ToolError(Exception):
  """A backend-level failure (unknown id, insufficient funds, ...): becomes ``{"error": ...}`` for the policy."""


@dataclasses.dataclass(frozen=True)
class Param:
  name: str
  kind: str
  flow: bool = True  # may take its value from an earlier call's output (False: only the user can give it)

  @property
  def json_type(self) -> str:
    return "integer" if self.kind in INT_KINDS else "string"


@dataclasses.dataclass(frozen=True)
class Fn:
  name: str
  cls: str
  params: tuple[Param, ...]
  sources: tuple[tuple[str, str], ...]  # output fields (field, kind) that carry new information
  text: str  # clause template with {param} slots
  desc: str
  impl: Callable[[dict, dict], dict]
  pick: Callable[[dict, random.Random, dict], dict | None]  # literal values for the params not in ``fixed``

  def source_kinds(self) -> frozenset[str]:
    return frozenset(k for _, k in self.sources)

  def field_for(self, kind: str) -> str:
    return next(f for f, k in self.sources if k == kind)

  def schema(self) -> dict:
    """OpenAI-style tool schema."""
    return {"type": "function", "function": {
        "name": self.name, "description": self.desc,
        "parameters": {"type": "object", "properties": {
            p.name: {"type": p.json_type, "description": NOUN[p.kind]} for p in self.params},
            "required": [p.name for p in self.params]}}}


# ----------------------------------------------------------------------------------------------------------------------
# helpers

def _get(table: Mapping[str, Any], key: Any, what: str) -> Any:
  if key not in table:
    raise ToolError(f"no such {what}")
  return table[key]


def _new_id(st: dict) -> str:
  if not st["pool"]:
    raise ToolError("out of ids")
  return st["pool"].pop(0)


def _choice(rng: random.Random, items) -> Any:
  items = list(items)
  return rng.choice(items) if items else None


def _fill(fixed: dict, **choices) -> dict | None:
  """Merges picked literal values into ``fixed``; None if any needed choice is unavailable."""
  out = {}
  for k, v in choices.items():
    if k in fixed:
      continue
    if v is None:
      return None
    out[k] = v
  return out


# ----------------------------------------------------------------------------------------------------------------------
# files: {"files": {fid: {"name", "owner", "dir", "text", "shared": [names]}}, "pool": [...]}

def _find_file(st, a):
  for fid, f in st["files"].items():
    if f["name"] == a["name"]:
      return {"file": fid}
  raise ToolError("no such file")


def _file_owner(st, a):
  return {"owner": _get(st["files"], a["file"], "file")["owner"]}


def _read_file(st, a):
  return {"text": _get(st["files"], a["file"], "file")["text"]}


def _copy_file(st, a):
  f = _get(st["files"], a["file"], "file")
  if f["dir"] == a["dir"]:
    raise ToolError("already in that folder")
  new = _new_id(st)
  st["files"][new] = dict(f, dir=a["dir"], shared=[])
  return {"copy": new}


def _move_file(st, a):
  f = _get(st["files"], a["file"], "file")
  if f["dir"] == a["dir"]:
    raise ToolError("already in that folder")
  f["dir"] = a["dir"]
  return {"moved": a["file"]}


def _delete_file(st, a):
  _get(st["files"], a["file"], "file")
  del st["files"][a["file"]]
  return {"deleted": a["file"]}


def _share_file(st, a):
  f = _get(st["files"], a["file"], "file")
  if a["name"] in f["shared"] or a["name"] == f["owner"]:
    raise ToolError("already shared")
  f["shared"].append(a["name"])
  return {"shared": a["file"]}


def _pick_file(st, rng, fixed):
  return _fill(fixed, file=_choice(rng, st["files"]))


def _pick_file_dir(st, rng, fixed):
  fid = fixed.get("file", _choice(rng, st["files"]))
  if fid not in st["files"]:
    return None
  return _fill(fixed, file=fid, dir=_choice(rng, [d for d in st["dirs"] if d != st["files"][fid]["dir"]]))


def _pick_share(st, rng, fixed):
  fid = fixed.get("file", _choice(rng, st["files"]))
  if fid not in st["files"]:
    return None
  f = st["files"][fid]
  others = [p for p in st["people"] if p not in f["shared"] and p != f["owner"]]
  return _fill(fixed, file=fid, name=_choice(rng, others))


# ----------------------------------------------------------------------------------------------------------------------
# bank: {"accounts": {acct: {"owner", "balance", "frozen"}}, "txs": {tx: {"src", "dst", "amount"}}, "pool": [...]}

def _find_account(st, a):
  for acct, x in st["accounts"].items():
    if x["owner"] == a["name"]:
      return {"account": acct}
  raise ToolError("no such person")


def _get_balance(st, a):
  return {"balance": _get(st["accounts"], a["account"], "account")["balance"]}


def _transfer(st, a):
  src = _get(st["accounts"], a["src"], "account")
  dst = _get(st["accounts"], a["dst"], "account")
  if a["src"] == a["dst"]:
    raise ToolError("same account")
  if src["frozen"] or dst["frozen"]:
    raise ToolError("account frozen")
  if a["amount"] <= 0 or a["amount"] > src["balance"]:
    raise ToolError("insufficient funds")
  tx = _new_id(st)
  src["balance"] -= a["amount"]
  dst["balance"] += a["amount"]
  st["txs"][tx] = {"src": a["src"], "dst": a["dst"], "amount": a["amount"]}
  return {"tx": tx}


def _deposit(st, a):
  acct = _get(st["accounts"], a["account"], "account")
  if acct["frozen"]:
    raise ToolError("account frozen")
  if a["amount"] <= 0:
    raise ToolError("bad amount")
  acct["balance"] += a["amount"]
  return {"balance": acct["balance"]}


def _last_transfer(st, a):
  _get(st["accounts"], a["account"], "account")
  txs = [t for t, x in st["txs"].items() if a["account"] in (x["src"], x["dst"])]
  if not txs:
    raise ToolError("no transfers")
  return {"tx": txs[-1]}


def _tx_amount(st, a):
  return {"amount": _get(st["txs"], a["tx"], "transfer")["amount"]}


def _freeze_account(st, a):
  acct = _get(st["accounts"], a["account"], "account")
  if acct["frozen"]:
    raise ToolError("already frozen")
  acct["frozen"] = True
  return {"frozen": a["account"]}


def _open(st):
  return [k for k, x in st["accounts"].items() if not x["frozen"]]


def _pick_find_account(st, rng, fixed):
  return _fill(fixed, name=_choice(rng, [x["owner"] for x in st["accounts"].values()]))


def _pick_account(st, rng, fixed):
  return _fill(fixed, account=_choice(rng, st["accounts"]))


def _pick_transfer(st, rng, fixed):
  accts = st["accounts"]
  amount = fixed.get("amount")
  src = fixed.get("src")
  if src is None:
    src = _choice(rng, [k for k in _open(st) if amount is None or accts[k]["balance"] >= amount])
  if src not in accts:
    return None
  if amount is None:
    amount = rng.randint(10, min(99, accts[src]["balance"])) if accts[src]["balance"] >= 10 else None
  dst = fixed.get("dst", _choice(rng, [k for k in _open(st) if k != src]))
  return _fill(fixed, src=src, dst=dst, amount=amount)


def _pick_deposit(st, rng, fixed):
  return _fill(fixed, account=_choice(rng, _open(st)), amount=rng.randint(10, 99))


def _pick_last_transfer(st, rng, fixed):
  used = {x[k] for x in st["txs"].values() for k in ("src", "dst")}
  return _fill(fixed, account=_choice(rng, [k for k in st["accounts"] if k in used]))


def _pick_freeze(st, rng, fixed):
  return _fill(fixed, account=_choice(rng, _open(st)))


# ----------------------------------------------------------------------------------------------------------------------
# travel: {"flights": {fl: {"src", "dst", "price", "gate"}}, "bookings": {bk: {"flight", "name", "seat"}}, "pool"}

FEE = 15  # invoice total = price + FEE (so a total never equals the flight's listed price)


def _find_flight(st, a):
  for fl, x in st["flights"].items():
    if x["src"] == a["src"] and x["dst"] == a["dst"]:
      return {"flight": fl, "price": x["price"]}
  raise ToolError("no such flight")


def _book_flight(st, a):
  _get(st["flights"], a["flight"], "flight")
  bk = _new_id(st)
  st["bookings"][bk] = {"flight": a["flight"], "name": a["name"], "seat": "1A"}
  return {"booking": bk}


def _flight_gate(st, a):
  return {"gate": _get(st["flights"], a["flight"], "flight")["gate"]}


def _get_invoice(st, a):
  bk = _get(st["bookings"], a["booking"], "booking")
  return {"total": st["flights"][bk["flight"]]["price"] + FEE}


def _cancel_booking(st, a):
  _get(st["bookings"], a["booking"], "booking")
  del st["bookings"][a["booking"]]
  return {"cancelled": a["booking"]}


def _change_seat(st, a):
  bk = _get(st["bookings"], a["booking"], "booking")
  if bk["seat"] == a["seat"]:
    raise ToolError("same seat")
  bk["seat"] = a["seat"]
  return {"seat": a["seat"]}


def _find_booking(st, a):
  for bk, x in st["bookings"].items():
    if x["name"] == a["name"]:
      return {"booking": bk}
  raise ToolError("no booking")


def _pick_find_flight(st, rng, fixed):
  fl = _choice(rng, st["flights"].values())
  return _fill(fixed, src=fl["src"], dst=fl["dst"]) if fl else None


def _pick_book(st, rng, fixed):
  return _fill(fixed, flight=_choice(rng, st["flights"]), name=_choice(rng, st["people"]))


def _pick_flight(st, rng, fixed):
  return _fill(fixed, flight=_choice(rng, st["flights"]))


def _pick_booking(st, rng, fixed):
  return _fill(fixed, booking=_choice(rng, st["bookings"]))


def _pick_seat(st, rng, fixed):
  return _fill(fixed, booking=_choice(rng, st["bookings"]), seat=f"{rng.randint(2, 9)}{rng.choice('ABCDEF')}")


def _pick_find_booking(st, rng, fixed):
  return _fill(fixed, name=_choice(rng, [x["name"] for x in st["bookings"].values()]))


# ----------------------------------------------------------------------------------------------------------------------
# chat: {"contacts": {name: uid}, "messages": {mid: {"to", "text"}}, "blocked": [uid], "pool": [...]}

def _find_contact(st, a):
  return {"contact": _get(st["contacts"], a["name"], "contact")}


def _uid_ok(st, uid):
  if uid not in st["contacts"].values():
    raise ToolError("no such contact")
  if uid in st["blocked"]:
    raise ToolError("contact blocked")


def _send_message(st, a):
  _uid_ok(st, a["to"])
  mid = _new_id(st)
  st["messages"][mid] = {"to": a["to"], "text": a["text"]}
  return {"message": mid}


def _last_message(st, a):
  if a["contact"] not in st["contacts"].values():
    raise ToolError("no such contact")
  mids = [m for m, x in st["messages"].items() if x["to"] == a["contact"]]
  if not mids:
    raise ToolError("no messages")
  return {"message": mids[-1]}


def _read_message(st, a):
  return {"text": _get(st["messages"], a["message"], "message")["text"]}


def _delete_message(st, a):
  _get(st["messages"], a["message"], "message")
  del st["messages"][a["message"]]
  return {"deleted": a["message"]}


def _block_contact(st, a):
  _uid_ok(st, a["contact"])
  st["blocked"].append(a["contact"])
  return {"blocked": a["contact"]}


def _add_contact(st, a):
  if a["name"] in st["contacts"]:
    raise ToolError("already a contact")
  uid = _new_id(st)
  st["contacts"][a["name"]] = uid
  return {"contact": uid}


def _live_uids(st):
  return [u for u in st["contacts"].values() if u not in st["blocked"]]


def _pick_find_contact(st, rng, fixed):
  return _fill(fixed, name=_choice(rng, st["contacts"]))


def _pick_send(st, rng, fixed):
  return _fill(fixed, to=_choice(rng, _live_uids(st)), text=_choice(rng, st["words"]))


def _pick_last_message(st, rng, fixed):
  return _fill(fixed, contact=_choice(rng, sorted({x["to"] for x in st["messages"].values()})))


def _pick_message(st, rng, fixed):
  return _fill(fixed, message=_choice(rng, st["messages"]))


def _pick_block(st, rng, fixed):
  return _fill(fixed, contact=_choice(rng, _live_uids(st)))


def _pick_add_contact(st, rng, fixed):
  return _fill(fixed, name=_choice(rng, [p for p in st["strangers"] if p not in st["contacts"]]))


# ----------------------------------------------------------------------------------------------------------------------
# shop: {"products": {pid: {"name", "price", "stock"}}, "orders": {oid: {"product", "qty", "status"}},
#        "ratings": {pid: stars}, "pool": [...]}

SHIPPING = 9  # order total = price * qty + SHIPPING


def _find_product(st, a):
  for pid, x in st["products"].items():
    if x["name"] == a["name"]:
      return {"product": pid, "price": x["price"]}
  raise ToolError("no such product")


def _buy_product(st, a):
  p = _get(st["products"], a["product"], "product")
  if a["qty"] <= 0 or a["qty"] > p["stock"]:
    raise ToolError("not enough stock")
  oid = _new_id(st)
  p["stock"] -= a["qty"]
  st["orders"][oid] = {"product": a["product"], "qty": a["qty"], "status": "placed"}
  return {"order": oid}


def _order_status(st, a):
  return {"status": _get(st["orders"], a["order"], "order")["status"]}


def _order_total(st, a):
  o = _get(st["orders"], a["order"], "order")
  return {"total": st["products"][o["product"]]["price"] * o["qty"] + SHIPPING}


def _cancel_order(st, a):
  o = _get(st["orders"], a["order"], "order")
  if o["status"] != "placed":
    raise ToolError("cannot cancel")
  o["status"] = "cancelled"
  st["products"][o["product"]]["stock"] += o["qty"]
  return {"cancelled": a["order"]}


def _return_order(st, a):
  o = _get(st["orders"], a["order"], "order")
  if o["status"] != "delivered":
    raise ToolError("not delivered")
  o["status"] = "returned"
  return {"returned": a["order"]}


def _rate_product(st, a):
  _get(st["products"], a["product"], "product")
  if not 1 <= a["stars"] <= 5:
    raise ToolError("stars must be 1-5")
  st["ratings"][a["product"]] = a["stars"]
  return {"rated": a["product"]}


def _pick_find_product(st, rng, fixed):
  return _fill(fixed, name=_choice(rng, [x["name"] for x in st["products"].values()]))


def _pick_buy(st, rng, fixed):
  pid = fixed.get("product", _choice(rng, [k for k, x in st["products"].items() if x["stock"] > 0]))
  if pid not in st["products"] or st["products"][pid]["stock"] < 1:
    return None
  return _fill(fixed, product=pid, qty=rng.randint(1, min(3, st["products"][pid]["stock"])))


def _pick_order(st, rng, fixed):
  return _fill(fixed, order=_choice(rng, st["orders"]))


def _pick_order_status(status):
  def pick(st, rng, fixed):
    return _fill(fixed, order=_choice(rng, [k for k, x in st["orders"].items() if x["status"] == status]))
  return pick


def _pick_rate(st, rng, fixed):
  return _fill(fixed, product=_choice(rng, st["products"]), stars=rng.randint(1, 5))


# ----------------------------------------------------------------------------------------------------------------------

P = Param
FUNCTIONS: tuple[Fn, ...] = (
    # files
    Fn("find_file", "files", (P("name", "fname"),), (("file", "fid"),), "find file {name}",
       "Id of the file with this name.", _find_file, lambda st, rng, fx: _fill(fx, name=_choice(
           rng, [f["name"] for f in st["files"].values()]))),
    Fn("file_owner", "files", (P("file", "fid"),), (("owner", "name"),), "owner of {file}",
       "Owner of a file.", _file_owner, _pick_file),
    Fn("read_file", "files", (P("file", "fid"),), (("text", "word"),), "read {file}",
       "Text of a file.", _read_file, _pick_file),
    Fn("copy_file", "files", (P("file", "fid"), P("dir", "dir")), (("copy", "fid"),), "copy {file} to {dir}",
       "Copy a file into a folder; returns the copy's id.", _copy_file, _pick_file_dir),
    Fn("move_file", "files", (P("file", "fid"), P("dir", "dir")), (), "move {file} to {dir}",
       "Move a file into a folder.", _move_file, _pick_file_dir),
    Fn("delete_file", "files", (P("file", "fid"),), (), "delete {file}", "Delete a file.", _delete_file, _pick_file),
    Fn("share_file", "files", (P("file", "fid"), P("name", "name")), (), "share {file} with {name}",
       "Share a file with a person.", _share_file, _pick_share),
    # bank
    Fn("find_account", "bank", (P("name", "name"),), (("account", "acct"),), "account of {name}",
       "Account id of a person.", _find_account, _pick_find_account),
    Fn("get_balance", "bank", (P("account", "acct"),), (("balance", "amount"),), "balance of {account}",
       "Balance of an account.", _get_balance, _pick_account),
    Fn("transfer", "bank", (P("src", "acct"), P("dst", "acct"), P("amount", "amount")), (("tx", "tx"),),
       "send {amount} from {src} to {dst}", "Move money between accounts; returns the transfer id.", _transfer,
       _pick_transfer),
    Fn("deposit", "bank", (P("account", "acct"), P("amount", "amount")), (("balance", "amount"),),
       "deposit {amount} into {account}", "Add money to an account; returns the new balance.", _deposit,
       _pick_deposit),
    Fn("last_transfer", "bank", (P("account", "acct"),), (("tx", "tx"),), "last transfer of {account}",
       "Latest transfer of an account.", _last_transfer, _pick_last_transfer),
    Fn("tx_amount", "bank", (P("tx", "tx"),), (("amount", "amount"),), "amount of {tx}",
       "Amount of a transfer.", _tx_amount, lambda st, rng, fx: _fill(fx, tx=_choice(rng, st["txs"]))),
    Fn("freeze_account", "bank", (P("account", "acct"),), (), "freeze {account}", "Freeze an account.",
       _freeze_account, _pick_freeze),
    # travel
    Fn("find_flight", "travel", (P("src", "city"), P("dst", "city")), (("flight", "flight"), ("price", "amount")),
       "flight from {src} to {dst}", "Flight between two cities and its price.", _find_flight,
       _pick_find_flight),
    Fn("book_flight", "travel", (P("flight", "flight"), P("name", "name")), (("booking", "booking"),),
       "book {flight} for {name}", "Book a seat; returns the booking id.", _book_flight, _pick_book),
    Fn("flight_gate", "travel", (P("flight", "flight"),), (("gate", "gate"),), "gate of {flight}",
       "Gate of a flight.", _flight_gate, _pick_flight),
    Fn("get_invoice", "travel", (P("booking", "booking"),), (("total", "amount"),), "invoice of {booking}",
       "Total price of a booking.", _get_invoice, _pick_booking),
    Fn("cancel_booking", "travel", (P("booking", "booking"),), (), "cancel {booking}", "Cancel a booking.",
       _cancel_booking, _pick_booking),
    Fn("change_seat", "travel", (P("booking", "booking"), P("seat", "seat", flow=False)), (),
       "move {booking} to seat {seat}", "Change the seat of a booking.", _change_seat, _pick_seat),
    Fn("find_booking", "travel", (P("name", "name"),), (("booking", "booking"),), "booking of {name}",
       "A person's booking.", _find_booking, _pick_find_booking),
    # chat
    Fn("find_contact", "chat", (P("name", "name"),), (("contact", "uid"),), "contact of {name}",
       "Contact id of a person.", _find_contact, _pick_find_contact),
    Fn("send_message", "chat", (P("to", "uid"), P("text", "word")), (("message", "mid"),),
       "message {to} saying {text}", "Send a message; returns its id.", _send_message, _pick_send),
    Fn("last_message", "chat", (P("contact", "uid"),), (("message", "mid"),), "last message to {contact}",
       "Latest message sent to a contact.", _last_message, _pick_last_message),
    Fn("read_message", "chat", (P("message", "mid"),), (("text", "word"),), "read {message}",
       "Text of a message.", _read_message, _pick_message),
    Fn("delete_message", "chat", (P("message", "mid"),), (), "delete {message}", "Delete a message.",
       _delete_message, _pick_message),
    Fn("block_contact", "chat", (P("contact", "uid"),), (), "block {contact}", "Block a contact.", _block_contact,
       _pick_block),
    Fn("add_contact", "chat", (P("name", "name", flow=False),), (("contact", "uid"),), "add {name} as a contact",
       "Add a person as a contact; returns the contact id.", _add_contact, _pick_add_contact),
    # shop
    Fn("find_product", "shop", (P("name", "pname"),), (("product", "pid"), ("price", "amount")),
       "find product {name}", "Product id and price.", _find_product, _pick_find_product),
    Fn("buy_product", "shop", (P("product", "pid"), P("qty", "qty", flow=False)), (("order", "order"),),
       "buy {qty} of {product}", "Order a product; returns the order id.", _buy_product, _pick_buy),
    Fn("order_status", "shop", (P("order", "order"),), (), "status of {order}", "Status of an order.",
       _order_status, _pick_order),
    Fn("order_total", "shop", (P("order", "order"),), (("total", "amount"),), "total of {order}",
       "Total cost of an order.", _order_total, _pick_order),
    Fn("cancel_order", "shop", (P("order", "order"),), (), "cancel {order}", "Cancel a placed order.",
       _cancel_order, _pick_order_status("placed")),
    Fn("return_order", "shop", (P("order", "order", flow=False),), (), "return {order}",
       "Return a delivered order.", _return_order, _pick_order_status("delivered")),
    Fn("rate_product", "shop", (P("product", "pid"), P("stars", "stars", flow=False)), (),
       "rate {product} {stars} stars", "Rate a product 1-5.", _rate_product, _pick_rate),
)
BY_NAME: Mapping[str, Fn] = MappingProxyType({f.name: f for f in FUNCTIONS})
BY_CLASS: Mapping[str, tuple[Fn, ...]] = MappingProxyType(
    {c: tuple(f for f in FUNCTIONS if f.cls == c) for c in CLASSES})
