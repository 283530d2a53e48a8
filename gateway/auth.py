"""Access control: API keys with a role and, for submitters, the enterprise codes they hold.

A submitter reads only documents that carry one of its codes in a party field (ebpCode, ebcCode, payCode,
logisticsCode, agentCode, declAgentCode ...); of the other documents of its shipments and messages it sees only what
identifies them (:func:`shipment_view`, :func:`message_view`). It sends, changes and withdraws only documents whose
declarant it is (:func:`document_declarants`: the payment company its payment, not the order naming it). Pure: no I/O.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cbec_queue import Rate, TokenBucket

from gateway import receipts
from gateway.config import ApiKey, Role, key_digest
from gateway.documents import Document
from gateway.messages import WAYBILL_LIST_KINDS, Kind, MessageType

#: Head fields that name an enterprise taking part in a document.
PARTY_FIELDS: tuple[str, ...] = (
    "ebpCode",
    "ebcCode",
    "payCode",
    "logisticsCode",
    "agentCode",
    "assureCode",
    "operatorCode",
    "areaCode",
    # the customs broker (报关单位) of a summary application (CEB701) and of its results (CEB792), the only heads that
    # carry it: it files the customs declaration the summary becomes
    "declAgentCode",
)


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    codes: frozenset[str]
    # the key's requests (ApiKey.rate_per_s), one bucket per key of the ring, shared by the API processes of one
    # `cbec serve` (SharedRates); None: no limit
    bucket: TokenBucket | None = field(default=None, compare=False, repr=False)

    def throttled(self) -> float | None:
        """Take one request from the key's rate: None when it may go ahead, else the seconds until it may."""
        if self.bucket is None or self.bucket.try_take():
            return None
        return self.bucket.wait_time()

    @property
    def sees_everything(self) -> bool:
        return self.role in (Role.OPERATOR, Role.ADMIN)

    def may_touch(self, parties: Iterable[str]) -> bool:
        return self.sees_everything or not self.codes.isdisjoint(parties)


def document_parties(doc: Document) -> set[str]:
    return {v for f in PARTY_FIELDS if (v := doc.head.get(f))}


def declarant_codes(mtype: MessageType, head: Mapping[str, str]) -> set[str]:
    """The codes a document of ``mtype`` with this ``head`` names its declarants by (MessageType.declarants: the
    platform or the seller for an order, the payment company for a payment, the carrier for a waybill, the agent or
    its seller for an inventory ...); a type naming none (a customs message posted as a declaration), its parties."""
    return {v for f in mtype.declarants or PARTY_FIELDS if (v := head.get(f))}


def document_declarants(doc: Document) -> set[str]:
    """Who may send, change or withdraw ``doc``: :func:`declarant_codes`. Three companies' independent documents are
    what reconciliation compares (三单对碰): the order names its payment company (payCode) and the inventory its carrier
    (logisticsCode), which makes neither their declarant."""
    return declarant_codes(doc.type, doc.head)


class SharedRates:
    """The token buckets of a set of keys' rates (ApiKey.rate_per_s) in memory the API processes of one `cbec serve
    --processes N` share: made by the first process, handed to the others as they start (spawn), so that a key's
    rate holds for the gateway, whichever process a connection reaches — not N times over. A set of keys read again
    (SIGHUP) gets rates of its own, their buckets full."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        limited = {k.digest: k for k in keys if k.rate_per_s is not None}
        self._offsets = {digest: 2 * i for i, digest in enumerate(sorted(limited))}  # tokens, time of the last refill
        context = multiprocessing.get_context("spawn")
        self._cells = context.RawArray("d", max(2, 2 * len(limited)))
        self._lock = context.Lock()
        now = time.monotonic()  # the system's clock, the same in every process
        for digest, offset in self._offsets.items():
            self._cells[offset], self._cells[offset + 1] = limited[digest].burst, now

    def bucket(self, key: ApiKey) -> TokenBucket | None:
        """The key's bucket (None: the key has no rate); a key with a rate these were not made for is an error."""
        if key.rate_per_s is None:
            return None
        offset = self._offsets.get(key.digest)
        if offset is None:
            raise ValueError(f"the shared rates were made for other keys than {key.name!r}")
        return TokenBucket(Rate(key.rate_per_s, key.burst), cells=self._cells, offset=offset, lock=self._lock)


def _bucket(key: ApiKey, rates: SharedRates | None) -> TokenBucket | None:
    if rates is not None:
        return rates.bucket(key)
    return TokenBucket(Rate(key.rate_per_s, key.burst)) if key.rate_per_s is not None else None


class KeyRing:
    """Looks keys up by digest so that the lookup time does not depend on how much of a key matched: the
    lookup compares SHA-256 digests, whose matching prefix says nothing about the key's.

    ``rates``: the keys' buckets shared with the other API processes (made for these keys); else this process's."""

    def __init__(self, keys: Iterable[ApiKey], rates: SharedRates | None = None) -> None:
        self.replace(keys, rates)

    def replace(self, keys: Iterable[ApiKey], rates: SharedRates | None = None) -> None:
        """From now on these keys, and only these (the configuration read again): a key left out answers 401, and
        the console's sessions made with it end (they look their key up by digest at every request)."""
        # one Principal per key, made once: authenticate runs for every request; one assignment, so a request
        # sees the old ring or the new one, never a mixture
        self._by_digest = {k.digest: Principal(k.name, k.role, k.codes, _bucket(k, rates)) for k in keys}

    digest = staticmethod(key_digest)

    def by_digest(self, digest: bytes) -> Principal | None:
        """The principal of the configured key with this digest (console sessions remember the digest only)."""
        return self._by_digest.get(digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        return self._by_digest.get(self.digest(presented))


#: What a key sees of a document it is no party of, on a shipment it may read (a leg of another company: the order to
#: the carrier, the payment to the seller) or in a message it may read (an agent's message of several sellers'
#: inventories): what identifies the document and what customs made of it. Its head and lines (the buyer's and the
#: payer's names, ID numbers, telephones, the goods and prices), its parties, its transmissions and warehouse orders are
#: its parties', whose message (GET /v1/messages/{guid}) answers that key 404. Of an export transport message
#: (CEB507/509/607: one arrival or 清单总分单 lists many sellers' parcels) it also sees the lines naming the shipment's
#: waybill.
LIMITED_FIELDS: tuple[str, ...] = (
    "id", "index", "doc_guid", "kind", "message_type", "keys", "app_type", "app_time", "app_status", "path",
    "is_current", "withdrawn", "superseded_by", "message_guid", "received_at",
    "forward_state", "sent_at", "last_receipt_at", "receipt_overdue", "pre_no", "invt_no", "customs", "receipts",
    "unsent",
)  # fmt: skip
_WAYBILL_LISTS = frozenset(k.value for k in WAYBILL_LIST_KINDS)
#: The kind whose tax bills and summary declaration a shipment shows beside it.
_INVENTORY = Kind.INVENTORY.value


def _text(values: dict[str, Any] | None, name: str) -> str:
    return str((values or {}).get(name) or "").strip()


def readable_sides(principal: Principal, documents: Iterable[dict[str, Any]]) -> frozenset[tuple[str, str]]:
    """The (message type, document guid) of the documents ``principal`` may read (each with its ``message_type``,
    ``doc_guid`` and ``parties``): those whose parties it holds one of. A guid two documents of one type share (each
    sender makes its own) counts only when the key may read every one of them: a key's own document cannot open
    another's that happens to carry its guid."""
    mine: set[tuple[str, str]] = set()
    theirs: set[tuple[str, str]] = set()
    for d in documents:
        side = (str(d.get("message_type") or ""), str(d.get("doc_guid") or ""))
        (mine if principal.may_touch(d.get("parties") or ()) else theirs).add(side)
    return frozenset(mine - theirs)


def finding_sides(findings: Iterable[dict[str, Any]]) -> set[str]:
    """The document guids the findings' sides name (what to read the parties of before :func:`findings_view`)."""
    return {str(side["guid"]) for f in findings
            for side in (f.get("left"), f.get("right")) if side and side.get("guid")}  # fmt: skip


#: Customs' records a finding may set beside a document (a tax bill beside its inventory's estimate): readable with
#: the document on the finding's other side.
_CUSTOMS_RECORDS = frozenset({"CEB816", "CEB818"})


def findings_view(
    principal: Principal, findings: list[dict[str, Any]], readable: frozenset[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Reconciliation findings as ``principal`` may see them: each side naming a document it may not read (not in
    ``readable``, :func:`readable_sides`) keeps its document type and element path, and its value is withheld
    (``value`` null, ``withheld`` true) — and the message, which quotes both values, says only which field differs.
    A seller learns that its order's consignee differs from the waybill, not what the carrier wrote; a carrier, that
    the order and the payment disagree on the buyer, not who either names. Operators and admins see everything."""
    if principal.sees_everything:
        return findings
    shown = []
    for f in findings:
        left, right = f.get("left"), f.get("right")
        sides = [s for s in (left, right) if s]

        def visible(side: dict[str, Any], other: dict[str, Any] | None) -> bool:
            if side.get("doc") in _CUSTOMS_RECORDS:  # a tax bill: its inventory's
                return other is not None and other.get("doc") not in _CUSTOMS_RECORDS and visible(other, None)
            return (str(side.get("doc") or ""), str(side.get("guid") or "")) in readable

        hidden = [s is not None and not visible(s, right if s is left else left) for s in (left, right)]
        if not any(hidden):
            shown.append(f)
            continue
        cut = [None if s is None else {"doc": s.get("doc"), "guid": None, "path": s.get("path"), "value": None,
                                       "withheld": True} if h else s
               for s, h in zip((left, right), hidden, strict=True)]  # fmt: skip
        docs = " and the ".join(dict.fromkeys(str(s.get("doc")) for s in sides)) or "documents"
        message = (f"{f.get('field')} differs between the {docs} ({f.get('code')}); the values of a document this API "
                   "key is no party of are withheld")  # fmt: skip
        shown.append({**f, "message": message, "left": cut[0], "right": cut[1]})
    return shown


def _limited(d: dict[str, Any]) -> dict[str, Any]:
    """A document a key is no party of, as it may see it: what identifies it and where it stands."""
    return {**{f: d[f] for f in LIMITED_FIELDS if f in d}, "limited": True}


def shipment_view(principal: Principal, shipment: dict[str, Any]) -> dict[str, Any]:
    """The shipment (gateway.store.Store.get_shipment, with its forwarding and its tax bills) as ``principal`` may see
    it: each document none of whose parties it holds cut to :data:`LIMITED_FIELDS`, marked ``limited`` — of a
    transport message or a site's delivery (CEB711) also the lines naming one of the shipment's waybills (the head's
    logisticsCode and the line's logisticsNo, as the store found it by); the findings' values of those documents
    withheld (:func:`findings_view`);
    the tax bills and the summary declaration only beside an inventory it may read; the buyer's ID number only where
    a document it may read names it. Operators and admins see everything."""
    if principal.sees_everything:
        return shipment
    docs = shipment.get("documents") or []
    readable = readable_sides(principal, docs)
    waybills = {(_text(d.get("head"), "logisticsCode"), _text(d.get("head"), "logisticsNo"))
                for d in docs if d["kind"] in (Kind.INVENTORY, Kind.WAYBILL)}  # fmt: skip
    shown = []
    own_ids: set[Any] = set()
    buyers: set[str] = set()
    for d in docs:
        if (d.get("message_type") or "", d.get("doc_guid") or "") in readable:
            own_ids.add(d.get("id"))
            head = d.get("head") or {}
            buyers |= {_text(head, n).upper() for n in ("buyerIdNumber", "payerIdNumber") if _text(head, n)}
            shown.append(d)
            continue
        cut = _limited(d)
        if d["kind"] in _WAYBILL_LISTS:
            carrier = _text(d.get("head"), "logisticsCode")
            cut["lines"] = [x for x in d.get("lines") or () if (carrier, _text(x, "logisticsNo")) in waybills]
        shown.append(cut)
    view = {**shipment, "documents": shown,
            "findings": findings_view(principal, list(shipment.get("findings") or ()), readable)}  # fmt: skip
    if "tax_bills" in view:
        view["tax_bills"] = [{**b, "findings": findings_view(principal, list(b.get("findings") or ()), readable)}
                             for b in view["tax_bills"] if b.get("document_id") in own_ids]  # fmt: skip
    if "summary" in view and not any(d["kind"] == _INVENTORY and d.get("id") in own_ids for d in docs):
        view["summary"] = None
    if view.get("buyer_id_number") and str(view["buyer_id_number"]).strip().upper() not in buyers:
        view["buyer_id_number"] = None
    return view


def message_view(principal: Principal, message: dict[str, Any], readable: frozenset[tuple[str, str]]) -> dict[str, Any]:
    """A stored message (gateway.store.Store.get_message, with its forwarding) as ``principal`` may see it, once it
    may read one of its documents: the documents none of whose parties it holds cut as on a shipment
    (:data:`LIMITED_FIELDS`, ``limited``) — an agent's message may carry several sellers' inventories, each seller
    reading its own —, and then neither the raw XML (``raw_xml`` null, ``raw_xml_withheld`` true) nor, in the answer it
    was given (``response``), those documents' outcomes, their shipments and the warnings about them. The findings of
    the answer as :func:`findings_view` (``readable``: the sides it may read, the message's own documents among them).
    Operators and admins see everything. A site delivery's ``parcels`` name each parcel's shipment to a key that may
    read that shipment (its ``parties`` are dropped): to the site operator, whose code no shipment carries, a parcel's
    customs status alone (:func:`_parcels`)."""
    docs = [_parcels(principal, d) if "parcels" in d else d for d in message.get("documents") or []]
    message = {**message, "documents": docs}
    if principal.sees_everything:
        return message
    whole = all(principal.may_touch(d.get("parties") or ()) for d in docs)
    shown = docs if whole else [d if principal.may_touch(d.get("parties") or ()) else _limited(d) for d in docs]
    view = {**message, "documents": shown}
    if not whole:
        view["raw_xml"], view["raw_xml_withheld"] = None, True
    response = message.get("response")
    if isinstance(response, dict):
        answer = dict(response)
        if not whole:
            guids = {d.get("doc_guid") for d in docs if principal.may_touch(d.get("parties") or ())}
            answer["documents"] = [d for d in answer.get("documents") or () if d.get("doc_guid") in guids]
            keys = {(s.get("ebpCode"), s.get("orderNo")) for d in answer["documents"] if (s := d.get("shipment"))}
            answer["shipments"] = [s for s in answer.get("shipments") or ()
                                   if (s.get("ebpCode"), s.get("orderNo")) in keys]  # fmt: skip
            if "warnings" in answer:  # they quote the values they warn of: those under its own documents only
                own = tuple(f"{d.get('path')}/" for d in docs if principal.may_touch(d.get("parties") or ()))
                answer["warnings"] = [w for w in answer["warnings"] if str(w.get("path") or "").startswith(own)]
        answer["shipments"] = [{**s, "findings": findings_view(principal, list(s.get("findings") or ()), readable)}
                               if "findings" in s else s for s in answer.get("shipments") or ()]  # fmt: skip
        view["response"] = answer
    return view


def _taken_by_customs(delivery: dict[str, Any]) -> bool:
    """Whether customs took the site delivery (its receipts at 120 accepted or further, none refusing it): customs knows
    the site and its B/L. Before, its operatorCode is only what the key that sent it claims."""
    code = str((delivery.get("customs") or {}).get("code") or "")
    step = receipts.rank(code) if code else None
    return step is not None and step >= receipts.RANK_ACCEPTED and not receipts.is_rejection(code)


def _parcels(principal: Principal, delivery: dict[str, Any]) -> dict[str, Any]:
    """A site delivery (gateway.store.delivery_parcels) as ``principal`` may see its parcels: each one's ``shipment``
    (ebpCode, orderNo) only when the key may read that shipment (its parties); ``waybill`` and ``customs_status`` —
    whether the parcel may leave the site — to every reader of the delivery once customs took it
    (:func:`_taken_by_customs`), and before only of the shipments the key may read: any key may declare a delivery
    with its own code and guess waybill numbers. Withheld, both are null on every such line alike, a line the gateway
    holds told apart from one it never saw by nothing."""
    taken = principal.sees_everything or _taken_by_customs(delivery)

    def seen(parcel: dict[str, Any]) -> dict[str, Any]:
        ship = parcel.get("shipment")
        shown = ship is not None and (principal.sees_everything or principal.may_touch(ship.get("parties") or ()))
        if not (shown or taken):
            return {**parcel, "waybill": None, "customs_status": None, "shipment": None}
        if ship is None:
            return parcel
        return {**parcel, "shipment": {k: v for k, v in ship.items() if k != "parties"} if shown else None}

    return {**delivery, "parcels": [seen(p) for p in delivery["parcels"]]}


def answer_view(principal: Principal, body: dict[str, Any], readable: frozenset[tuple[str, str]]) -> dict[str, Any]:
    """A 202 answer (its shipments' findings, :func:`findings_view`) as the submitting ``principal`` may see it: it may
    touch every document of its message, not necessarily the other legs they were reconciled with."""
    if principal.sees_everything or not any(s.get("findings") for s in body.get("shipments") or ()):
        return body
    return {**body, "shipments": [{**s, "findings": findings_view(principal, list(s.get("findings") or ()), readable)}
                                  if s.get("findings") else s for s in body.get("shipments") or ()]}  # fmt: skip
