"""Access control: API keys with a role and, for submitters, the enterprise codes they hold.

A submitter may submit and read only documents that carry one of its codes in a party field
(ebpCode, ebcCode, payCode, logisticsCode, agentCode, declAgentCode ...); of the export transport messages its
shipment lists it sees only what concerns that shipment (:func:`shipment_view`). Pure: no I/O.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cbec_queue import Rate, TokenBucket

from gateway.config import ApiKey, Role, key_digest
from gateway.documents import Document
from gateway.messages import TRANSPORT_KINDS, Kind

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


#: What a key that is no party of an export transport message (CEB507/509/607) sees of it on a shipment it may read:
#: what identifies the document and what customs made of it, and of its list the lines naming the shipment's waybill.
#: One arrival or 清单总分单 lists many sellers' parcels: the other lines (their waybills, a 607's invtNos), the head
#: (the sender's names, flight, B/L, vehicle), its parties and transmissions are the sender's, whose message
#: (GET /v1/messages/{guid}) answers that key 404.
LIMITED_TRANSPORT_FIELDS: tuple[str, ...] = (
    "id", "index", "doc_guid", "kind", "message_type", "keys", "app_type", "app_time", "app_status", "path",
    "is_current", "withdrawn", "superseded_by", "message_guid", "received_at",
    "forward_state", "sent_at", "last_receipt_at", "receipt_overdue", "pre_no", "invt_no", "customs", "receipts",
)  # fmt: skip
_TRANSPORT = frozenset(k.value for k in TRANSPORT_KINDS)


def _text(values: dict[str, Any] | None, name: str) -> str:
    return str((values or {}).get(name) or "").strip()


def shipment_view(principal: Principal, shipment: dict[str, Any]) -> dict[str, Any]:
    """The shipment (gateway.store.Store.get_shipment, with its forwarding) as ``principal`` may see it: each
    transport message none of whose parties it holds cut to :data:`LIMITED_TRANSPORT_FIELDS` and to the lines
    naming one of the shipment's waybills (the head's logisticsCode and the line's logisticsNo, as the store found
    it by), marked ``limited``. Operators and admins see everything."""
    docs = shipment.get("documents") or []
    if principal.sees_everything or not any(d["kind"] in _TRANSPORT for d in docs):
        return shipment
    waybills = {(_text(d.get("head"), "logisticsCode"), _text(d.get("head"), "logisticsNo"))
                for d in docs if d["kind"] == Kind.INVENTORY}  # fmt: skip
    shown = []
    for d in docs:
        if d["kind"] in _TRANSPORT and not principal.may_touch(d.get("parties") or ()):
            carrier = _text(d.get("head"), "logisticsCode")
            lines = [x for x in d.get("lines") or () if (carrier, _text(x, "logisticsNo")) in waybills]
            d = {**{f: d[f] for f in LIMITED_TRANSPORT_FIELDS if f in d}, "lines": lines, "limited": True}
        shown.append(d)
    return {**shipment, "documents": shown}
