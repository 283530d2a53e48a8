"""The customs sandbox: an aiohttp application playing China customs / E-Port, an inspection service and a
warehouse on 127.0.0.1, for tests and local development (docs/sandbox.md).

Customs side
    ``POST /dxp`` takes a DxpMsg, ``POST /ceb`` a bare CEB message. The immediate HTTP answer is a small JSON
    ack (``200 {"code": "0000", ...}``) or an error (``400 {"code": "0001"|"0002"|"2001"|"2002", "reason": ...}``);
    receipts follow asynchronously as DxpMsg-wrapped CEB312/412/512/514/622/624/626/712 (or CEB900 for a
    message that fails parsing or the schema), POSTed to ``receipt_url``. Receipts due together (of any
    messages) go out together: one receipt message per type and receiver carries up to ``receipt_batch_max``
    return elements (100, the XSD's maximum; a CEB900 one), sent when full or ``receipt_batch_window`` after
    its first; a document's next receipt waits until the message carrying its previous one was posted:

    * order / payment / waybill: ``2`` → ``120``;
    * inventory: three-document comparison against the order, payment and waybill received so far, then the
      single (¥5,000, several lines) and annual (¥26,000 per buyer ID) quota; clean: ``2`` → ``120`` →
      ``399`` → ``800``, then its tax bill (CEB816, the gateway's estimate; ``tax_bills``) and, the return window
      over, its consolidation (CEB818 ``2``); inconsistent or incomplete: ``2`` → ``100`` with the reasons in
      returnInfo;
    * a second declaration (appType 1) of a key already accepted: one receipt with −301010 (order), −401007
      (payment), −504015 (waybill) or −621004 (inventory); over the limits: −621005 / −621018;
    * a change or deletion (appType 2 / 3) of an inventory released (once its 800 is due: four receipt delays after
      it was taken): refused, CEB622 −621043 (import) or CEB604 ``2`` → ``100`` (export) with the reason — customs
      takes no change after the release, the way back is a cancellation (CEB623 / CEB605);
    * an import cancellation (CEB623) of an inventory on file, named by its key and the invtNo customs gave it:
      ``2`` → ``120`` → ``399`` (not before the inventory's release is due); from then the inventory is void, its
      amount back in its buyer's quota and its key free to be declared anew; a second one of it −623005;
    * an import return (CEB625) of a released inventory: ``2`` → ``120`` → ``399``, the returned items' value back in
      the buyer's quota; an item not the inventory's −625209; one of an unknown, cancelled or unreleased inventory
      ``2`` → ``100`` with the reason (the spec lists no code for them);
    * a concluded cancellation, or a concluded return of every item in full, voids the inventory's tax bill if it was
      not consolidated yet: a CEB818 ``3`` after the ``399``, and no consolidation after it (the tax of goods
      returned within the window is not collected); a return of part of the goods concluded within the window
      corrects it (a CEB816 of the same taxNo, the taxes of the goods kept); a bill consolidated already stays as it is;
    * appStatus 1 (temp-save): one receipt ``1``.

With a state folder (``state_dir``; gateway.sandbox.state) its ledgers outlive the run: started again on the same
folder it goes on from what it held.

Scenarios (a prefix of orderNo / logisticsNo / payTransactionId, or an ``X-Sandbox-Scenario`` header) make it
misbehave on purpose: FAIL5XX, FLAKY, TIMEOUT, SLOW, LOSTRCPT, DUPRCPT, OOORCPT, REJECT, POISON. The receipts of
LOSTRCPT, DUPRCPT and OOORCPT messages go one per receipt message, as their scenario describes.

The 179 payment data (spec §10): once a CEB311 of a platform in ``realtime_ask_urls`` is taken, the sandbox asks
the platform for the order's payment data (``platDataOpen``: the form's ``openReq``) at its URL, as customs does;
``POST /ceb2grab/grab/realTimeDataUpload`` takes the upload (``payExInfoStr``), answered ``10000`` once it is read,
its session one the sandbox asked, the data that platform's, and its signature verified against ``realtime_certs``
(any signature when none are given), ``20000`` with the reason otherwise. ``POST /sandbox/realtime/ask``
(``{"ebpCode", "orderNo"}``) asks at once; ``GET /sandbox/realtime`` lists the questions and uploads.

Control: ``GET /sandbox/stats`` (deliveries by CopMsgId — exactly-once checks), ``GET /sandbox/receipts``,
``GET /sandbox/records`` (inspection / warehouse requests), ``POST /sandbox/config``, ``POST /sandbox/reset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from adapters import dxp
from adapters.webhook import sign_body
from gateway import realtime, signing, tax
from gateway.config import netloc
from gateway.documents import Document, ParsedMessage, extract
from gateway.errors import MessageRejected
from gateway.messages import MessageType
from gateway.sandbox import receipts as rc
from gateway.sandbox import state as st
from gateway.xmlsafe import parse_message, parse_xml

log = logging.getLogger("cbec.sandbox")

SCENARIOS: tuple[str, ...] = (
    "FAIL5XX", "FLAKY", "TIMEOUT", "SLOW", "LOSTRCPT", "DUPRCPT", "OOORCPT", "REJECT", "POISON",
)  # fmt: skip
SCENARIO_HEADER = "X-Sandbox-Scenario"
#: Scenarios about how receipts travel (twice, reversed, never): their receipts go one per message, as before.
UNBATCHED_SCENARIOS = frozenset({"DUPRCPT", "OOORCPT", "LOSTRCPT"})
SCENARIO_FIELDS: tuple[str, ...] = ("orderNo", "logisticsNo", "payTransactionId")
CUSTOMS_IDS = (dxp.IMPORT_RECEIVER, dxp.EXPORT_RECEIVER)

#: Business duplicate codes per declaration (spec §5.3) and "nothing to change" codes.
DUPLICATE_CODE = {"CEB311": "-301010", "CEB411": "-401007", "CEB511": "-504015", "CEB621": "-621004"}
NOTHING_TO_CHANGE = {"CEB311": "-301009", "CEB411": "-401008", "CEB511": "-504016", "CEB621": "-621042"}
# The spec lists no export business codes (§5.3): the sandbox answers an export declaration with its import
# counterpart's, which the gateway classifies alike (duplicate, nothing to change).
DUPLICATE_CODE |= {"CEB303": "-301010", "CEB403": "-401007", "CEB505": "-504015", "CEB603": "-621004"}
NOTHING_TO_CHANGE |= {"CEB303": "-301009", "CEB403": "-401008", "CEB505": "-504016", "CEB603": "-621042"}
#: Receipts whose statuses (spec §5.2) list 399 and no 120 — CEB506 in the PDF and the XSD alike; CEB304, CEB404 and
#: CEB514 in the XSD, which the spec takes as normative where the PDF differs (its legend, [V]; the PDF lists 120) —
#: are answered 2 → 399, as CEB508/510/606/608 are.
CONCLUDED_NOT_ENTERED = frozenset({"CEB304", "CEB404", "CEB506", "CEB514"})
#: A change whose appTime is not newer than the version customs holds is ignored (spec §6.5: −301014, −401012,
#: −505016; the export declarations answered alike).
OLDER_CODE = {"CEB311": "-301014", "CEB411": "-401012", "CEB511": "-505016"}
OLDER_CODE |= {"CEB303": "-301014", "CEB403": "-401012", "CEB505": "-505016"}


@dataclass
class SandboxConfig:
    """Everything adjustable; ``POST /sandbox/config`` changes fields at run time. Delays are seconds."""

    receipt_url: str | None = None  # the gateway's POST /v1/receipts; None: receipts are only recorded
    receipt_headers: dict[str, str] = field(default_factory=dict)  # e.g. the gateway's API key
    receipt_delay: float = 0.5  # before the first receipt and between receipts of one sequence
    receipt_retries: int = 3  # extra attempts per receipt when the receiver fails
    # Receipts due together go out together: per receipt type and receiver, up to receipt_batch_max return
    # elements per message (never more than the type allows: 100, a CEB900 1), sent when full or
    # receipt_batch_window after the first one — and, past the window, not while receipt_batch_inflight messages
    # of the same type and receiver are still being posted (0: no such wait), so that a slow receiver gets
    # fewer, fuller messages. receipt_batch_max 1: one receipt per message, as before.
    receipt_batch_window: float = 0.005
    receipt_batch_max: int = 100
    receipt_batch_inflight: int = 1
    flaky_failures: int = 2  # FLAKY-: 503 on the first N attempts of each CopMsgId
    timeout_delay: float = 120.0  # TIMEOUT-: how long the request is held before a 504
    slow_delay: float = 2.0  # SLOW-: delay before a normal answer
    validate_schema: bool = True  # XSD-check messages (CEB900 on failure) when gateway.schema is there
    single_limit: Decimal = Decimal("5000")
    annual_limit: Decimal = Decimal("26000")
    enterprise_dxp_id: str = "DXPENT0000000001"  # receiver of receipts for bare POST /ceb deliveries
    warehouse_callback_url: str | None = None  # default when an order has no callbackUrl
    warehouse_callback_delay: float = 0.5
    warehouse_callback_secret: str | None = None  # signs callbacks like seller webhooks
    warehouse_callback_headers: dict[str, str] = field(default_factory=dict)  # e.g. the gateway's warehouse key
    # how its warehouse answers a cancel of an order it took (WAREHOUSE_CANCEL_ANSWERS): confirm (200, then a cancelled
    # callback), ship (200, then it goes on with the order all the same: delivered, of an inbound order received),
    # refuse (409 cannot_cancel), ignore (200, and nothing more)
    warehouse_cancel: str = "confirm"
    failure_rate: float = 0.0  # fraction of customs / inspection / warehouse requests answered 503 at random
    scenarios_off: list[str] = field(default_factory=list)  # scenario names ignored (e.g. POISON after a fix)
    # after an import inventory's 800, its tax bill (CEB816) as the gateway would estimate it, to the same receipt_url
    tax_bills: bool = True
    # then the bill's status change (CEB818): 2 consolidated (已汇总) into a payment slip (entDutyNo), once the return
    # window is over (spec §6.5: the withholding agent settles after the 30 days a return may take); the window is
    # tax_bill_status_delay seconds after the bill (None: one receipt_delay, as any next receipt)
    tax_bill_status: bool = True
    tax_bill_status_delay: float | None = None
    # customs' 179 side: the platforms it asks about their CEB311 orders' payment data (ebpCode -> their platDataOpen
    # URL), the certificates (DER) their uploads must verify with (none: any signature is taken), and the form of
    # the string signed (gateway.realtime.signed_string)
    realtime_ask_urls: dict[str, str] = field(default_factory=dict)
    realtime_certs: list[bytes] = field(default_factory=list)
    realtime_variant: str = "quoted"

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply ``{field: value}`` with the field's type; unknown fields raise KeyError, bad values ValueError."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name, value in changes.items():
            if name not in fields:
                raise KeyError(name)
            current = getattr(self, name)
            if name in _OPTIONAL_SECONDS:
                setattr(self, name, None if value is None else seconds(value))
            elif name == "scenarios_off":
                setattr(self, name, _scenario_names(value))
            elif name == "warehouse_cancel":
                if value not in WAREHOUSE_CANCEL_ANSWERS:
                    raise ValueError(f"warehouse_cancel must be one of {', '.join(WAREHOUSE_CANCEL_ANSWERS)}, "
                                     f"got {value!r}")  # fmt: skip
                setattr(self, name, value)
            elif value is None or isinstance(current, dict) or current is None:
                setattr(self, name, value)
            elif isinstance(current, bool):
                setattr(self, name, bool(value))
            elif isinstance(current, Decimal):
                setattr(self, name, Decimal(str(value)))
            elif isinstance(current, float):
                setattr(self, name, seconds(value))
            else:
                setattr(self, name, type(current)(value))


#: How the sandbox's warehouse may answer a cancel (SandboxConfig.warehouse_cancel).
WAREHOUSE_CANCEL_ANSWERS = ("confirm", "ship", "refuse", "ignore")

#: Settings that are seconds or None (then another setting's value stands for them).
_OPTIONAL_SECONDS = frozenset({"tax_bill_status_delay"})


def seconds(value: Any) -> float:
    """A delay or rate setting: a finite number, not negative (``inf`` would overflow the receipts' timing, a string
    would fail each message the sandbox takes)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"expected a finite number not below 0, got {value!r}")
    return number


@dataclass
class Step:
    """One receipt of a sequence, before it is timed and serialised."""

    code: str  # receipt code, e.g. CEB622
    status: str  # returnStatus
    info: str
    values: dict[str, str]  # business keys of the receipt
    key: str  # human-readable key for /sandbox/receipts
    #: its sequence starts no earlier (a cancellation of an inventory whose release is still due comes after it)
    not_before: datetime | None = None


@dataclass
class _Batch:
    """Receipts of one type for one receiver waiting to go out as one receipt message."""

    code: str
    receiver: str
    cap: int
    items: list[tuple[dict[str, Any], Mapping[str, str]]]  # (its record in Sandbox.receipts, its return values)
    sent: asyncio.Future[None]  # done once the message was posted (or given up)
    timer: asyncio.TimerHandle | None = None
    due: bool = False  # its window is over; it waits for a message of its type and receiver in flight

    @property
    def key(self) -> tuple[str, str]:
        return (self.code, self.receiver)


@dataclass
class InventoryRecord:
    doc: Document
    pre_no: str
    invt_no: str
    value: Decimal
    released: str = ""  # when this system released it (YYYYMMDDhhmmss, China time); "" before, or unknown
    #: when its 800 is due (its sequence's fourth receipt): from then on customs allows no change or deletion of it,
    #: only a cancellation (CEB623 / CEB605); before, a change or withdrawal is taken as customs takes one at 399
    release_due: datetime | None = None
    #: the value its concluded return (CEB625) gave back to its buyer's quota, and that return (one per inventory)
    returned: Decimal = Decimal(0)
    refund: Document | None = None

    def released_by(self, moment: datetime) -> bool:
        return self.release_due is not None and self.release_due <= moment

    def json(self) -> dict[str, Any]:
        return {"doc": st.document_json(self.doc), "pre_no": self.pre_no, "invt_no": self.invt_no,
                "value": str(self.value), "released": self.released, "release_due": st.time_json(self.release_due),
                "returned": str(self.returned), "refund": st.optional_document_json(self.refund)}  # fmt: skip

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> InventoryRecord:
        return cls(st.document_of(raw["doc"]), raw["pre_no"], raw["invt_no"], Decimal(raw["value"]), raw["released"],
                   st.time_of(raw["release_due"]), Decimal(raw["returned"]),
                   st.optional_document_of(raw["refund"]))  # fmt: skip


#: Why no inventory: customs concluded its cancellation (Sandbox._named_inventory).
_CANCELLED = "cancelled"

#: A tax bill as the sandbox builds it: its head and lines (gateway.sandbox.receipts.tax_bill).
TaxBill = tuple[dict[str, str | None], list[dict[str, str]]]


@dataclass
class SummaryRecord:
    """A summary application (CEB701) customs' export system took: its numbers and the inventories it summarises."""

    doc: Document
    pre_no: str
    sum_no: str
    inventories: list[InventoryRecord]

    def json(self) -> dict[str, Any]:
        return {"doc": st.document_json(self.doc), "pre_no": self.pre_no, "sum_no": self.sum_no,
                "inventories": [r.json() for r in self.inventories]}  # fmt: skip

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> SummaryRecord:
        return cls(st.document_of(raw["doc"]), raw["pre_no"], raw["sum_no"],
                   [InventoryRecord.of(r) for r in raw["inventories"]])  # fmt: skip


@dataclass
class BillRecord:
    """An import inventory's tax bill as customs keeps it (by invtNo): its status — 1 generated (sent or due), 2
    consolidated, 3 void —, the bill as last made (head and lines; a corrected bill replaces them), whether the receiver
    took it, and its consolidation while still to come: the payment slip, when, to whom."""

    status: str
    head: dict[str, str | None]
    lines: list[dict[str, str]]
    key: str = ""
    receiver: str = ""
    sent: bool = False
    slip: str | None = None
    due: datetime | None = None  # the consolidation's returnTime; None once sent, or when none is planned

    def json(self) -> dict[str, Any]:
        return {"status": self.status, "head": self.head, "lines": self.lines, "key": self.key,
                "receiver": self.receiver, "sent": self.sent, "slip": self.slip,
                "due": st.time_json(self.due)}  # fmt: skip

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> BillRecord:
        return cls(raw["status"], dict(raw["head"]), [dict(line) for line in raw["lines"]], raw["key"],
                   raw["receiver"], raw["sent"], raw["slip"], st.time_of(raw["due"]))  # fmt: skip


def _same(value: Any) -> Any:
    return value


#: The ledger's tables (Sandbox.reset) and how each value is written to the state folder and read back.
_DOCUMENT = (st.document_json, st.document_of)
_INVENTORY = (InventoryRecord.json, InventoryRecord.of)
TABLES: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "orders": _DOCUMENT, "payments": _DOCUMENT, "payments_by_order": _DOCUMENT, "export_receipts": _DOCUMENT,
    "waybills": _DOCUMENT, "inventories": _INVENTORY, "export_orders": _DOCUMENT, "export_waybills": _DOCUMENT,
    "export_inventories": _INVENTORY, "summaries": (SummaryRecord.json, SummaryRecord.of),
    "export_returns": _DOCUMENT, "quota_used": (str, Decimal), "cancelled_inventories": _INVENTORY,
    "bills": (BillRecord.json, BillRecord.of), "warehouse_orders": (_same, _same),
    "realtime_sessions": (_same, _same),
}  # fmt: skip


def _summary_key(head: Mapping[str, str]) -> tuple[str, ...]:
    """A summary application's key: agentCode, copNo and the part (msgSeqNo), as CEB702 answers it (A.30)."""
    return tuple((head.get(name) or "").strip() for name in ("agentCode", "copNo", "msgSeqNo"))


def _scenario(text: str) -> str:
    """A scenario's name as written in a header or scenarios_off (``flaky``, ``FLAKY-``) as SCENARIOS spell it."""
    return text.strip().upper().rstrip("-")


def _scenario_names(value: Any) -> list[str]:
    """scenarios_off as set at run time: a list of scenario names (``FLAKY`` or ``FLAKY-``); a name of none is an
    error, not a scenario silently left on."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("scenarios_off is a list of scenario names")
    unknown = [v for v in value if _scenario(v) not in SCENARIOS]
    if unknown:
        raise ValueError(f"no scenario {', '.join(map(repr, unknown))}; the scenarios: {', '.join(SCENARIOS)}")
    return list(value)


def unknown_scenario(request: web.Request) -> web.Response | None:
    """400 for an X-Sandbox-Scenario header that names no scenario: a typo must not read as a clean run."""
    header = (request.headers.get(SCENARIO_HEADER) or "").strip()
    if header and _scenario(header) not in SCENARIOS:
        reason = f"{SCENARIO_HEADER} {header!r} names no scenario; the scenarios: {', '.join(SCENARIOS)}"
        return _json({"code": "invalid", "reason": reason}, 400)
    return None


def scenario_of(header: str | None, values: Iterable[str]) -> str | None:
    """The scenario named by the header (``FLAKY`` or ``FLAKY-``) or by the first value with a known prefix."""
    if header:
        name = _scenario(header)
        if name in SCENARIOS:
            return name
    for v in values:
        head, sep, _ = v.partition("-")
        if sep and head.upper() in SCENARIOS:
            return head.upper()
    return None


def _doc_values(docs: Iterable[Document]) -> list[str]:
    return [d.head[f] for d in docs for f in SCENARIO_FIELDS if d.head.get(f)]


def _json_values(obj: Any) -> list[str]:
    """Values of orderNo / logisticsNo / payTransactionId anywhere in a JSON document."""
    out: list[str] = []
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for k, v in cur.items():
                if k in SCENARIO_FIELDS and isinstance(v, str):
                    out.append(v)
                elif isinstance(v, dict | list):
                    stack.append(v)
        elif isinstance(cur, list):
            stack.extend(cur)
    return out


def _dec(raw: str | None) -> Decimal:
    try:
        return Decimal((raw or "0").strip() or "0")
    except InvalidOperation:
        return Decimal(0)


def _gnum(raw: str | None) -> str:
    """An item number as a number (an xs:int: "01" is item 1), else as written."""
    text = (raw or "").strip()
    return str(int(text)) if text.isdigit() else text


def _differs(mine: str | None, theirs: str | None) -> bool:
    """Two values given, and not the same (a value left out is no difference)."""
    a, b = (mine or "").strip(), (theirs or "").strip()
    return bool(a and b and a != b)


def _qty_by_gnum(docs: Iterable[Document]) -> dict[str, Decimal]:
    """The qty of each item (by gnum) over the lines of ``docs``."""
    out: dict[str, Decimal] = {}
    for doc in docs:
        for line in doc.lines:
            gnum = _gnum(line.get("gnum"))
            out[gnum] = out.get(gnum, Decimal(0)) + _dec(line.get("qty"))
    return out


def dutiable_value(inv: Document) -> Decimal:
    """Σ line totalPrice + freight + insuredFee: what the limits are measured against (spec §7.1)."""
    return sum((_dec(li.get("totalPrice")) for li in inv.lines), Decimal(0)) + _dec(inv.head.get("freight")) + _dec(
        inv.head.get("insuredFee")
    )


def _json(body: Any, status: int = 200) -> web.Response:
    # orjson (UTF-8, Chinese text as is): every accepted message is answered with one of these
    data = orjson.dumps(body, default=str, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=data, status=status, content_type="application/json", charset="utf-8")


def _shut_down(records: Iterable[dict[str, Any]]) -> None:
    for record in records:
        record["delivered"] = False
        record["error"] = "sandbox shut down"


def _settle(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)


class Sandbox:
    """State and behaviour; the aiohttp handlers are thin wrappers around it."""

    def __init__(self, config: SandboxConfig, *, schemas: Any = None, state_dir: Path | str | None = None) -> None:
        self.config = config
        # where its ledgers outlive a run (gateway.sandbox.state): opened and read at start-up; None: in memory only
        self.state_dir = None if state_dir is None else Path(state_dir)
        self._state: st.StateFolder | None = None
        self._changed: set[tuple[str, Any]] | None = set() if self.state_dir is not None else None
        self._saved_serial = 0
        self.closing = asyncio.Event()
        self._sleepers: set[asyncio.Future[None]] = set()  # waits that shutting down ends (_sleep)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._schema: Any = None
        self._shared_schema = schemas  # a gateway.schema.SchemaSet to use rather than compile another
        self._schema_error: str | None = None
        self._serial = rc.SerialNumbers()  # numbers a restarted sandbox does not give again
        self._random = random.Random()
        self._batches: dict[tuple[str, str], _Batch] = {}  # open batches by (receipt code, receiver)
        self._inflight: Counter[tuple[str, str]] = Counter()  # receipt messages being posted, by the same key
        self.reset()

    # -- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        for t in list(getattr(self, "_tasks", ())):
            t.cancel()
        self._drop_batches("sandbox reset")
        self.attempts: Counter[str] = Counter()  # every HTTP request, per CopMsgId
        self.accepted: Counter[str] = Counter()  # requests past the transport scenarios, per CopMsgId
        self.by_type: Counter[str] = Counter()
        # The ledgers — what customs holds, kept in the state folder when there is one (TABLES): its tables note
        # their changes for it.
        changed = self._changed
        if changed is not None:
            changed.clear()
        self.orders: st.Table[tuple[str, str], Document] = st.Table("orders", changed)
        self.payments: st.Table[tuple[str, str], Document] = st.Table("payments", changed)
        self.payments_by_order: st.Table[tuple[str, str], Document] = st.Table("payments_by_order", changed)
        # 收款单 (CEB403) by (ebcCode, orderNo)
        self.export_receipts: st.Table[tuple[str, str], Document] = st.Table("export_receipts", changed)
        self.waybills: st.Table[tuple[str, str], Document] = st.Table("waybills", changed)
        self.inventories: st.Table[tuple[str, str], InventoryRecord] = st.Table("inventories", changed)
        # customs' export system is another system (DXPEDCCEB0000003): its orders, waybills and inventories are its own
        self.export_orders: st.Table[tuple[str, str], Document] = st.Table("export_orders", changed)
        self.export_waybills: st.Table[tuple[str, str], Document] = st.Table("export_waybills", changed)
        self.export_inventories: st.Table[tuple[str, str], InventoryRecord] = st.Table("export_inventories", changed)
        # CEB701 by (agentCode, copNo, msgSeqNo)
        self.summaries: st.Table[tuple[str, ...], SummaryRecord] = st.Table("summaries", changed)
        # the retail export returns (CEB213) it let back in, by (agentCode, coElNo): what an inventory's next return
        # adds to (A.32: an inventory may come back in parts, never more than it declared)
        self.export_returns: st.Table[tuple[str, str], Document] = st.Table("export_returns", changed)
        self.quota_used: st.Table[str, Decimal] = st.Table("quota_used", changed)
        # import inventories whose cancellation (CEB623) was concluded, by invtNo: void, their key free again
        self.cancelled_inventories: st.Table[str, InventoryRecord] = st.Table("cancelled_inventories", changed)
        # each import inventory's tax bill, by invtNo
        self.bills: st.Table[str, BillRecord] = st.Table("bills", changed)
        # the warehouse orders it took, by orderId: its warehouseOrderNo and where its callbacks go
        self.warehouse_orders: st.Table[str, dict[str, Any]] = st.Table("warehouse_orders", changed)
        # the 179 sessions it opened, by sessionID: the platform and order it asked about
        self.realtime_sessions: st.Table[str, dict[str, str]] = st.Table("realtime_sessions", changed)
        self._tables: dict[str, st.Table[Any, Any]] = {name: getattr(self, name) for name in TABLES}
        self.receipts: list[dict[str, Any]] = []
        self.inspection: list[dict[str, Any]] = []
        self.inspection_attempts: Counter[str] = Counter()
        self.warehouse: list[dict[str, Any]] = []
        self.warehouse_attempts: Counter[str] = Counter()
        self.warehouse_cancels: list[dict[str, Any]] = []  # the cancels received, as they came
        self.callbacks: list[dict[str, Any]] = []
        self.realtime_questions: list[dict[str, Any]] = []  # what it asked, and the platform's answer
        self.realtime_uploads: list[dict[str, Any]] = []  # what came, and its answer
        if self._state is not None:  # forgotten in the state folder too
            self._write_state()

    # -- its state between runs (gateway.sandbox.state) ----------------------------------------------

    def _open_state(self) -> None:
        """Open the state folder and read the ledgers it holds (then written back as one snapshot)."""
        assert self.state_dir is not None and self._changed is not None
        self._state = st.StateFolder(self.state_dir)
        try:
            for table, key, value in self._state.read():
                if table == "meta":
                    if key == "serial":
                        self._serial.resume(int(value))
                    continue
                holder, decode = self._tables.get(table), TABLES.get(table)
                if holder is None or decode is None:
                    raise st.StateUnusable(f"{self.state_dir}: no table {table!r} in this sandbox")
                if value is None:
                    dict.pop(holder, key, None)
                    continue
                try:
                    holder.load([(key, decode[1](value))])
                except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                    raise st.StateUnusable(f"{self.state_dir}: {table} {key!r} unreadable: {exc!r}") from None
            self._write_state()
        except BaseException:
            self._state.close()
            self._state = None
            raise
        log.info("sandbox state read from %s: %d inventories, %d tax bills", self.state_dir, len(self.inventories),
                 len(self.bills))  # fmt: skip

    def _snapshot(self) -> dict[str, list[tuple[Any, Any]]]:
        tables: dict[str, list[tuple[Any, Any]]] = {
            name: [(key, TABLES[name][0](value)) for key, value in table.items()]
            for name, table in self._tables.items()
        }
        tables["meta"] = [("serial", self._serial.last)]
        return tables

    def _write_state(self) -> None:
        assert self._state is not None and self._changed is not None
        self._state.write(self._snapshot())
        self._changed.clear()
        self._saved_serial = self._serial.last

    def _save(self) -> None:
        """Put what changed in the ledgers since the last call in the state folder's journal (nothing without one).
        Called once a change is complete (a message taken, a bill sent): never half of one."""
        if self._state is None or self._changed is None:
            return
        changes: list[tuple[str, Any, Any]] = []
        for name, key in self._changed:
            table = self._tables[name]
            changes.append((name, key, TABLES[name][0](table[key]) if key in table else None))
        if self._serial.last != self._saved_serial:
            changes.append(("meta", "serial", self._serial.last))
        if not changes:
            return
        try:
            self._state.append(changes)
            self._changed.clear()
            self._saved_serial = self._serial.last
            if self._state.journal_full:
                self._write_state()
        except OSError as exc:  # kept in memory: it goes on, and tries again with the next change
            log.error("sandbox state not written to %s: %s", self.state_dir, exc)

    def stats(self) -> dict[str, Any]:
        return {
            "received": sum(self.accepted.values()),
            "attempts": sum(self.attempts.values()),
            "by_type": dict(self.by_type),
            "by_cop_msg_id": dict(self.accepted),
            "attempts_by_cop_msg_id": dict(self.attempts),
            "duplicates": {k: n - 1 for k, n in self.accepted.items() if n > 1},
            "receipts": {
                "generated": len(self.receipts),
                "messages": len({r["cop_msg_id"] for r in self.receipts if r["cop_msg_id"]}),
                "delivered": sum(1 for r in self.receipts if r["delivered"]),
                # not delivered: withheld on purpose (LOSTRCPT), or refused by the receiver / not sent (shut down,
                # no receipt_url) — the second the one to look into
                "lost": sum(1 for r in self.receipts if r["delivered"] is False and r.get("lost")),
                "failed": sum(1 for r in self.receipts if r["delivered"] is False and not r.get("lost")),
                "pending": sum(1 for r in self.receipts if r["delivered"] is None),
            },
            "inspection": {"received": len(self.inspection), "attempts": dict(self.inspection_attempts)},
            "warehouse": {
                "received": len(self.warehouse),
                "orders": len(self.warehouse_orders),
                "cancels": len(self.warehouse_cancels),
                "attempts": dict(self.warehouse_attempts),
                "callbacks": len(self.callbacks),
            },
            "realtime": {"asked": len(self.realtime_questions), "uploads": len(self.realtime_uploads),
                         "accepted": sum(1 for u in self.realtime_uploads if u["code"] == realtime.SUCCESS)},
            "schema": "off" if not self.config.validate_schema
            else self._schema_error or ("on" if self._schema is not None else "loading"),
            "busy": len(self._tasks),
        }

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every scheduled receipt and callback has been sent (or given up)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"sandbox still busy with {len(self._tasks)} task(s)")
            await asyncio.wait(set(self._tasks), timeout=left)

    # -- life cycle --------------------------------------------------------------------------

    async def startup(self, app: web.Application) -> None:
        if self.state_dir is not None:
            self._open_state()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10, connect=3))
        self._resume_consolidations()
        if self.config.validate_schema:
            # Loaded before the sandbox answers, not by its first message (whose answer would wait for it).
            await self._schema_set()

    async def shutdown(self, app: web.Application) -> None:
        # Before the runner waits for in-flight handlers: ends TIMEOUT-/SLOW- waits and receipt delays at once.
        self._close()

    async def cleanup(self, app: web.Application) -> None:
        self._close()
        self._drop_batches("sandbox shut down")
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._state is not None:
            try:
                self._save()
                self._write_state()
            finally:
                self._state.close()
                self._state = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close(self) -> None:
        self.closing.set()
        for waiting in self._sleepers:
            _settle(waiting)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the sandbox shuts down first; False when interrupted."""
        if seconds <= 0 or self.closing.is_set():
            return not self.closing.is_set()
        # A timer settling a future, rather than wait_for(closing.wait()): that made a task and an event waiter
        # for each wait, and every receipt step of every accepted message waits (~3 % of the sandbox's CPU).
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _settle, waiting)
        self._sleepers.add(waiting)
        try:
            await waiting
        finally:
            timer.cancel()
            self._sleepers.discard(waiting)
        return not self.closing.is_set()

    # -- schema ------------------------------------------------------------------------------

    @property
    def schemas(self) -> Any:
        """The gateway.schema.SchemaSet it validates with (None until start-up, or when unavailable)."""
        return self._schema

    async def _schema_set(self) -> Any:
        if self._schema is None and self._schema_error is None:
            try:
                from gateway.schema import SchemaSet

                sset = self._shared_schema or SchemaSet()
                await asyncio.to_thread(sset.preload)  # nothing left to do for a set already compiled
                self._schema = sset
            except Exception as exc:  # missing module or schema folder: say so in the stats, keep running
                self._schema_error = f"unavailable: {exc.__class__.__name__}: {exc}"
                log.warning("sandbox schema validation disabled: %s", self._schema_error)
        return self._schema

    # -- transport scenarios -----------------------------------------------------------------

    def active(self, scenario: str | None) -> str | None:
        """The scenario unless the configuration turned it off."""
        off = {_scenario(s) for s in self.config.scenarios_off}
        return None if scenario is None or scenario in off else scenario

    async def transport(self, scenario: str | None, attempt: int) -> web.Response | None:
        """The HTTP-level misbehaviour of a scenario; None to go on normally."""
        cfg = self.config
        if cfg.failure_rate > 0 and self._random.random() < cfg.failure_rate:
            return _json({"code": "3001", "reason": "sandbox failure_rate: service unavailable"}, 503)
        if scenario == "FAIL5XX":
            return _json({"code": "3001", "reason": "sandbox scenario FAIL5XX: service unavailable"}, 503)
        if scenario == "FLAKY" and attempt <= cfg.flaky_failures:
            reason = f"sandbox scenario FLAKY: attempt {attempt} of {cfg.flaky_failures} failing ones"
            return _json({"code": "3001", "reason": reason}, 503)
        if scenario == "TIMEOUT":
            await self._sleep(cfg.timeout_delay)
            return _json({"code": "3003", "reason": "sandbox scenario TIMEOUT"}, 504)
        if scenario == "POISON":
            return _json({"code": "0001", "reason": "sandbox scenario POISON: rejected permanently"}, 400)
        if scenario == "SLOW":
            await self._sleep(cfg.slow_delay)
        return None

    # -- customs: intake ---------------------------------------------------------------------

    async def accept(
        self,
        ceb: bytes,
        *,
        cop_msg_id: str,
        sender_id: str,
        header_scenario: str | None,
        enveloped: bool,
        client_gone: Callable[[], bool] = lambda: False,
    ) -> web.Response:
        self.attempts[cop_msg_id] += 1
        attempt = self.attempts[cop_msg_id]
        try:
            root, mtype = parse_message(ceb)
        except MessageRejected as exc:
            if not enveloped:
                return _json({"code": "0001", "reason": str(exc), "issues": [i.as_dict() for i in exc.issues]}, 400)
            # Inside an envelope the exchange accepts the transport and answers with a format receipt.
            scenario = self.active(scenario_of(header_scenario, ()))
            resp = await self.transport(scenario, attempt)
            if resp is not None:
                return resp
            if client_gone():
                return _json({"code": "3002", "reason": "the client went away before the message was taken"}, 499)
            self.accepted[cop_msg_id] += 1
            self.by_type["Unknown"] += 1
            self._format_receipt(cop_msg_id, sender_id, "Unknown", ceb, str(exc), scenario)
            return self._ack(cop_msg_id, "Unknown", 0, scenario, format_error=True)

        parsed = extract(root, mtype)
        scenario = self.active(scenario_of(header_scenario, _doc_values(parsed.documents)))
        resp = await self.transport(scenario, attempt)
        if resp is not None:
            return resp
        if client_gone():
            # Like an exchange that commits only what it can acknowledge: a sender that died while the
            # request was held (SLOW-) sends it again, and that copy is the one taken.
            return _json({"code": "3002", "reason": "the client went away before the message was taken"}, 499)
        self.accepted[cop_msg_id] += 1
        self.by_type[mtype.root] += 1

        if self.config.validate_schema:
            sset = await self._schema_set()
            if sset is not None:
                issues = sset.validate(root, mtype)  # inline: far cheaper than a thread hand-off
                if issues:
                    info = "; ".join(f"{i.code} {i.path}: {i.message}" for i in issues[:20])
                    self._format_receipt(cop_msg_id, sender_id, mtype.root, ceb, info, scenario)
                    return self._ack(cop_msg_id, mtype.root, len(parsed.documents), scenario, format_error=True)

        plans = self.process(mtype, parsed, scenario)
        if mtype.code == "CEB311":  # customs may ask the platform for the payment behind the order (spec §10)
            for doc in parsed.documents:
                ebp, order_no = doc.head.get("ebpCode", ""), doc.head.get("orderNo", "")
                if ebp in self.config.realtime_ask_urls and order_no:
                    self._spawn(self.ask_payment_data(ebp, order_no))
        bills = self._released(parsed, plans) if self.config.tax_bills and mtype.code == "CEB621" else []
        if mtype.code == "CEB701":
            results = self._summary_results(parsed, plans)
        else:
            results = self._bill_changes(parsed, plans) if mtype.code in ("CEB623", "CEB625") else []
        self._schedule(plans, scenario, receiver=sender_id, ori_cop_msg_id=cop_msg_id, bills=bills, results=results)
        self._save()
        return self._ack(cop_msg_id, mtype.root, len(parsed.documents), scenario)

    # -- the 179 payment data ----------------------------------------------------------------------

    async def ask_payment_data(self, ebp_code: str, order_no: str) -> dict[str, Any]:
        """Ask the platform for an order's payment data at its platDataOpen URL, as customs does; the question and
        the platform's answer are recorded (and returned)."""
        url = self.config.realtime_ask_urls.get(ebp_code)
        # as developers' write-ups show customs' questions: an upper-case GUID, and the time in ms as a string
        now_ms = str(int(datetime.now().timestamp() * 1000))
        question = {"orderNo": order_no, "sessionID": str(uuid.uuid4()).upper(), "serviceTime": now_ms}
        record: dict[str, Any] = {"ebpCode": ebp_code, **question, "status": None, "answer": None}
        self.realtime_questions.append(record)
        self.realtime_sessions[question["sessionID"]] = {"ebpCode": ebp_code, "orderNo": order_no}
        self._save()
        if url is None:
            record["answer"] = f"no platDataOpen URL of platform {ebp_code}"
            return record
        assert self._session is not None
        try:
            async with self._session.post(url, data={"openReq": json.dumps(question)}) as resp:
                record["status"] = resp.status
                record["answer"] = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            record["answer"] = f"{exc.__class__.__name__}: {exc}"
        return record

    def take_upload(self, body: str | None) -> dict[str, Any]:
        """customs' answer to an upload: 10000 once read, of a session it asked, its signature verified."""
        now = int(datetime.now().timestamp() * 1000)
        variant: realtime.Variant = "spec" if self.config.realtime_variant == "spec" else "quoted"
        read = realtime.read_upload(body, variant) if body else "payExInfoStr is missing"
        record: dict[str, Any] = {"code": realtime.FAILURE, "message": "", "sessionID": None, "guid": None,
                                  "orderNos": [], "verified": False}  # fmt: skip
        self.realtime_uploads.append(record)
        if isinstance(read, str):
            record["message"] = read
            return realtime.reply(realtime.FAILURE, read, now)
        record.update(sessionID=read.session_id, guid=read.guid, orderNos=read.data.order_nos,
                      ebpCode=read.data.ebp_code)  # fmt: skip
        session = self.realtime_sessions.get(read.session_id)  # one it opened, before a restart too
        asked = [] if session is None else [session]
        reason = None
        if not asked:
            reason = f"session {read.session_id} is none customs opened"
        elif asked[0]["ebpCode"] != read.data.ebp_code:  # customs asked one platform: another's data is not its answer
            reason = (f"the upload is the payment data of platform {read.data.ebp_code}; customs asked "
                      f"{asked[0]['ebpCode']}")  # fmt: skip
        elif asked[0]["orderNo"] not in read.data.order_nos:
            reason = f"the upload does not list order {asked[0]['orderNo']}, which customs asked about"
        elif self.config.realtime_certs:
            certs = [c for c in self.config.realtime_certs if signing.key_name_for(signing.certificate_serial(c))
                     == read.cert_no.lower()]  # fmt: skip
            if not certs:
                reason = f"certNo {read.cert_no} is no certificate customs holds"
            elif not signing.verify_bytes(certs[0], read.signed.encode("utf-8"), read.signature):
                reason = "signValue does not verify with the certificate of certNo"
        if reason is not None:
            record["message"] = reason
            return realtime.reply(realtime.FAILURE, reason, now)
        record.update(code=realtime.SUCCESS, message="上传成功", verified=bool(self.config.realtime_certs))
        return {**realtime.reply(realtime.SUCCESS, "上传成功", now), "total": 0}

    def tax_status_delay(self) -> float:
        """Seconds from a tax bill to its status change (CEB818): tax_bill_status_delay, or one receipt_delay."""
        delay = self.config.tax_bill_status_delay
        return self.config.receipt_delay if delay is None else max(0.0, float(delay))

    def _ack(self, cop_msg_id: str, msg_type: str, documents: int, scenario: str | None, **extra: Any) -> web.Response:
        return _json(
            {
                "code": "0000",
                "status": "accepted",
                "copMsgId": cop_msg_id,
                "msgType": msg_type,
                "documents": documents,
                "scenario": scenario,
                "deliveries": self.accepted[cop_msg_id],
                **extra,
            }
        )

    # -- customs: business processing (synchronous: no await between check and store) ---------

    def process(self, mtype: MessageType, parsed: ParsedMessage, scenario: str | None) -> list[list[Step]]:
        handler = {
            "CEB311": self._order,
            "CEB411": self._payment,
            "CEB511": self._waybill,
            "CEB621": self._inventory,
            "CEB623": self._import_cancel,
            "CEB625": self._import_return,
            "CEB303": self._order,
            "CEB403": self._export_receipt,
            "CEB505": self._waybill,
            "CEB603": self._export_inventory,
            "CEB605": self._export_cancel,
            "CEB507": self._transport,
            "CEB509": self._transport,
            "CEB607": self._transport,
            "CEB701": self._summary,
            "CEB213": self._export_return,
            "CEB215": self._transport,
            "CEB513": self._transport,  # CEB514: 2 → 399 (CONCLUDED_NOT_ENTERED)
        }.get(mtype.code, self._other)
        return [handler(doc, scenario) for doc in parsed.documents]

    @staticmethod
    def _released(parsed: ParsedMessage, plans: list[list[Step]]) -> list[tuple[Document, str, str]]:
        """The inventories these plans release (their last receipt 800), each with its invtNo and key: customs
        sends each its tax bill."""
        return [(doc, plan[-1].values["invtNo"], plan[-1].key)
                for doc, plan in zip(parsed.documents, plans, strict=True)
                if plan and plan[-1].code == "CEB622" and plan[-1].status == "800"]  # fmt: skip

    @staticmethod
    def _step(code: str, status: str, values: Mapping[str, str], key: str, info: str = "") -> Step:
        guid = values.get("guid", "")
        text = info or f"{rc.STATUS_TEXT.get(status, status)}[{guid}]"
        return Step(code, status, text, dict(values), key)

    def _declare(
        self,
        doc: Document,
        scenario: str | None,
        table: dict[tuple[str, str], Document],
        key: tuple[str, str],
        values: dict[str, str],
        sequence: tuple[str, ...] = ("2", "120"),
        frozen: tuple[str, str] | None = None,
    ) -> list[Step]:
        """``frozen``: (code, reason) of a key on file that takes no change or deletion now (an order whose inventory
        was declared: -301011)."""
        code = doc.type.code
        rcode = rc.RECEIPT_FOR[code]
        if rcode in CONCLUDED_NOT_ENTERED:
            sequence = ("2", "399")
        label = "/".join(key)
        h = doc.head
        app_type, app_status = h.get("appType", "1"), h.get("appStatus", "2")
        if app_status == "1":
            return [self._step(rcode, "1", values, label)]
        existing = table.get(key)
        if app_type == "1" and existing is not None:
            info = f"{label} 已存在，不能重复新增 (sandbox: duplicate declaration)"
            return [self._step(rcode, DUPLICATE_CODE[code], values, label, info)]
        if app_type in ("2", "3") and existing is None:
            info = f"{label} 不存在，无法变更或删除 (sandbox: nothing to change)"
            return [self._step(rcode, NOTHING_TO_CHANGE[code], values, label, info)]
        if app_type == "2" and existing is not None and h.get("appTime", "") <= existing.head.get("appTime", ""):
            info = f"{label} 报文时间早于已接收的报文，忽略 (sandbox: older than the version held)"
            return [self._step(rcode, OLDER_CODE[code], values, label, info)]
        if app_type in ("2", "3") and existing is not None and frozen is not None:
            return [self._step(rcode, frozen[0], values, label, frozen[1])]
        if scenario == "REJECT":
            return self._rejected(rcode, values, label, "sandbox scenario REJECT")
        if app_type == "3":
            table.pop(key, None)
        else:
            table[key] = doc
        return [self._step(rcode, s, values, label) for s in sequence]

    def _rejected(self, rcode: str, values: Mapping[str, str], label: str, reason: str) -> list[Step]:
        return [
            self._step(rcode, "2", values, label),
            self._step(rcode, "100", values, label, f"海关退单：{reason}[{values.get('guid', '')}]"),
        ]

    def _order(self, doc: Document, scenario: str | None) -> list[Step]:
        h = doc.head
        values = {k: h.get(k, "") for k in ("guid", "ebpCode", "ebcCode", "orderNo")}
        orders = self.orders if doc.type.flow == "import" else self.export_orders
        key = (h.get("ebpCode", ""), h.get("orderNo", ""))
        frozen = None
        if h.get("appType", "1") in ("2", "3") and self._inventory_of(doc.type.flow, key) is not None:
            frozen = ("-301011", f"{'/'.join(key)} 清单已申报，订单不允许变更或删除 (sandbox: the order's inventory "
                                 "was declared, the order takes no change or deletion)")  # fmt: skip
        return self._declare(doc, scenario, orders, key, values, frozen=frozen)

    def _inventory_of(self, flow: str, order: tuple[str, str]) -> InventoryRecord | None:
        """The inventory on file declaring the order (ebpCode, orderNo) of ``flow``, if any (rare: looked up by a
        walk, for an order's change or deletion only)."""
        records = self.inventories if flow == "import" else self.export_inventories
        return next((r for r in records.values()
                     if (r.doc.head.get("ebpCode", ""), r.doc.head.get("orderNo", "")) == order), None)  # fmt: skip

    def _payment(self, doc: Document, scenario: str | None) -> list[Step]:
        h = doc.head
        values = {k: h.get(k, "") for k in ("guid", "payCode", "payTransactionId")}
        key = (h.get("payCode", ""), h.get("payTransactionId", ""))
        steps = self._declare(doc, scenario, self.payments, key, values)
        order_key = (h.get("ebpCode", ""), h.get("orderNo", ""))
        stored = self.payments.get(key)
        if stored is not None:
            self.payments_by_order[(stored.head.get("ebpCode", ""), stored.head.get("orderNo", ""))] = stored
        elif (current := self.payments_by_order.get(order_key)) is not None and current.keys == doc.keys:
            del self.payments_by_order[order_key]  # deleted with appType 3
        return steps

    def _export_receipt(self, doc: Document, scenario: str | None) -> list[Step]:
        h = doc.head
        values = {k: h.get(k, "") for k in ("guid", "ebcCode", "orderNo", "payNo")}
        key = (h.get("ebcCode", ""), h.get("orderNo", ""))
        return self._declare(doc, scenario, self.export_receipts, key, values)

    def _export_inventory(self, doc: Document, scenario: str | None) -> list[Step]:
        """An export inventory (CEB603): checked against its order, 收款单 and waybill as the gateway reconciles them,
        then 2 → 120 → 399 → 800 (CEB604, each carrying the preNo and invtNo its XSD requires)."""
        h = doc.head
        key = (h.get("agentCode", ""), h.get("copNo", ""))
        label = "/".join(key)
        existing = self.export_inventories.get(key)
        now = datetime.now(rc.CHINA_TZ)
        pre_no = existing.pre_no if existing is not None else rc.pre_no(next(self._serial), now)
        invt = existing.invt_no if existing is not None else rc.invt_no(h.get("customsCode", ""), next(self._serial),
                                                                           now, ie_flag="E")  # fmt: skip
        values = {name: h.get(name, "") for name in ("guid", "agentCode", "copNo", "ebcCode", "ebpCode", "orderNo",
                                                     "statisticsFlag")}  # fmt: skip
        values.update(preNo=pre_no, invtNo=invt)
        step = self._step
        app_type, app_status = h.get("appType", "1"), h.get("appStatus", "2")
        if app_status == "1":
            return [step("CEB604", "1", values, label)]
        if app_type == "1" and existing is not None:
            return [step("CEB604", DUPLICATE_CODE["CEB603"], values, label, f"清单{label}已申报 (sandbox: duplicate)")]
        if app_type in ("2", "3") and existing is None:
            return [step("CEB604", NOTHING_TO_CHANGE["CEB603"], values, label, "未找到可变更的清单 (sandbox)")]
        if app_type in ("2", "3") and existing is not None and existing.released_by(now):
            # the spec lists no export code for it (§5.3): refused as the export system refuses, 退单 with the reason
            reason = (f"清单{label}已放行，不允许变更或删除，请申报撤销申请单(CEB605) "
                      "(sandbox: the inventory was released; send a cancellation, CEB605)")  # fmt: skip
            return self._rejected("CEB604", values, label, reason)
        if scenario == "REJECT":
            return self._rejected("CEB604", values, label, "sandbox scenario REJECT")
        order = self.export_orders.get((h.get("ebpCode", ""), h.get("orderNo", "")))
        receipt = self.export_receipts.get((h.get("ebcCode", ""), h.get("orderNo", "")))
        waybill = self.export_waybills.get((h.get("logisticsCode", ""), h.get("logisticsNo", "")))
        problems = self._compare(doc, order, receipt, waybill)
        if problems:
            return self._rejected("CEB604", values, label, "三单对碰不通过: " + "; ".join(problems))
        if app_type == "3":
            self.export_inventories.pop(key, None)
            return [step("CEB604", "2", values, label), step("CEB604", "120", values, label)]
        due = self._release_due(now)
        self.export_inventories[key] = InventoryRecord(doc, pre_no, invt, Decimal(0), released=f"{due:%Y%m%d%H%M%S}",
                                                       release_due=due)  # fmt: skip
        return [step("CEB604", status, values, label) for status in ("2", "120", "399", "800")]

    def _release_due(self, now: datetime) -> datetime:
        """When an inventory accepted now is released: its 800 is its sequence's fourth receipt (_schedule)."""
        return now + timedelta(seconds=4 * self.config.receipt_delay)

    @staticmethod
    def _compare(
        inv: Document, order: Document | None, payment: Document | None, waybill: Document | None
    ) -> list[str]:
        """Reasons an inventory does not match its legs (gateway.reconcile, which knows both flows); [] when it does."""
        from gateway.reconcile import Shipment, ShipmentState, reconcile

        outcome = reconcile(Shipment(order=order, payment=payment, waybill=waybill, inventory=inv))
        if outcome.state == ShipmentState.MATCHED:
            return []
        reasons = [f"缺少{k}({k.value} missing)" for k in outcome.missing]
        return reasons + [f"{f.code}: {f.message}" for f in outcome.findings if f.blocking]

    def _waybill(self, doc: Document, scenario: str | None) -> list[Step]:
        h = doc.head
        values = {k: h.get(k, "") for k in ("guid", "logisticsCode", "logisticsNo")}
        key = (h.get("logisticsCode", ""), h.get("logisticsNo", ""))
        waybills = self.waybills if doc.type.flow == "import" else self.export_waybills
        return self._declare(doc, scenario, waybills, key, values)

    def _three_documents(self, inv: Document) -> list[str]:
        """Reasons the inventory does not match its order / payment / waybill; [] when it does."""
        h = inv.head
        order = self.orders.get((h.get("ebpCode", ""), h.get("orderNo", "")))
        payment = self.payments_by_order.get((h.get("ebpCode", ""), h.get("orderNo", "")))
        waybill = self.waybills.get((h.get("logisticsCode", ""), h.get("logisticsNo", "")))
        try:
            from gateway.reconcile import Shipment, ShipmentState, reconcile

            outcome = reconcile(Shipment(order=order, payment=payment, waybill=waybill, inventory=inv))
        except (ImportError, NotImplementedError):
            return self._three_documents_minimal(inv, order, payment, waybill)
        if outcome.state == ShipmentState.MATCHED:
            return []
        reasons = [f"缺少{k}({k.value} missing)" for k in outcome.missing]
        reasons += [f"{f.code}: {f.message}" for f in outcome.findings if f.blocking]
        return reasons

    @staticmethod
    def _three_documents_minimal(
        inv: Document, order: Document | None, payment: Document | None, waybill: Document | None
    ) -> list[str]:
        # Used only when gateway.reconcile is unavailable: the keys and the paid amount.
        reasons = [f"{name} missing" for name, d in (("order", order), ("payment", payment), ("waybill", waybill))
                   if d is None]  # fmt: skip
        if order is not None and order.head.get("ebcCode") != inv.head.get("ebcCode"):
            reasons.append("inventory ebcCode differs from the order's")
        if order is not None and payment is not None and _dec(order.head.get("acturalPaid")) != _dec(
            payment.head.get("amountPaid")
        ):
            reasons.append("order acturalPaid differs from payment amountPaid")
        if waybill is not None and waybill.head.get("orderNo") != inv.head.get("orderNo"):
            reasons.append("waybill orderNo differs from the inventory's")
        return reasons

    def _inventory(self, doc: Document, scenario: str | None) -> list[Step]:
        cfg = self.config
        h = doc.head
        key = (h.get("ebcCode", ""), h.get("orderNo", ""))
        label = "/".join(key)
        existing = self.inventories.get(key)
        now = datetime.now(rc.CHINA_TZ)
        # E-Port assigns preNo (18 characters, and the receipt's XSD takes nothing else): a declared one of that
        # length is echoed, any other is replaced
        declared = h.get("preNo") or ""
        if existing is not None:
            pre_no = existing.pre_no
        else:
            pre_no = declared if len(declared) == 18 else rc.pre_no(next(self._serial), now)
        values = {
            "guid": h.get("guid", ""),
            "customsCode": h.get("customsCode", ""),
            "ebpCode": h.get("ebpCode", ""),
            "ebcCode": h.get("ebcCode", ""),
            "agentCode": h.get("agentCode", ""),
            "copNo": (h.get("copNo") or h.get("orderNo", ""))[:20],
            "preNo": pre_no,
        }
        step = self._step
        app_type, app_status = h.get("appType", "1"), h.get("appStatus", "2")
        if app_status == "1":
            return [step("CEB622", "1", values, label)]
        if app_type == "1" and existing is not None:
            return [step("CEB622", "-621004", {**values, "invtNo": existing.invt_no}, label,
                         f"清单{label}已申报，不能重复申报 (sandbox: duplicate inventory)")]  # fmt: skip
        if app_type in ("2", "3") and existing is None:
            return [step("CEB622", NOTHING_TO_CHANGE["CEB621"], values, label, "未找到可变更的清单 (sandbox)")]
        if app_type in ("2", "3") and existing is not None and existing.released_by(now):
            reason = (f"清单{label}已放行，状态不允许变更或删除，请申报撤销申请单(CEB623) (sandbox: the inventory was "
                      "released, its state allows no change or deletion; send a cancellation, CEB623)")  # fmt: skip
            return [step("CEB622", "-621043", {**values, "invtNo": existing.invt_no}, label, reason)]
        if scenario == "REJECT":
            return self._rejected("CEB622", values, label, "sandbox scenario REJECT")
        problems = self._three_documents(doc)
        if problems:
            return self._rejected("CEB622", values, label, "三单对碰不通过: " + "; ".join(problems))
        value = dutiable_value(doc)
        if value > cfg.single_limit and len(doc.lines) > 1:
            info = f"订购金额{value}超过单次交易限值{cfg.single_limit} (sandbox: single-transaction limit)"
            return [step("CEB622", "-621005", values, label, info)]
        buyer = h.get("buyerIdNumber", "").upper()
        # a change or a deletion gives back the earlier version's amount, to the earlier version's buyer
        previous = existing.value if existing else Decimal(0)
        earlier = existing.doc.head.get("buyerIdNumber", "").upper() if existing else buyer
        if app_type == "3":
            self.inventories.pop(key, None)
            self.quota_used[earlier] = self.quota_used.get(earlier, Decimal(0)) - previous
            return [step("CEB622", "2", values, label), step("CEB622", "120", values, label)]
        used = self.quota_used.get(buyer, Decimal(0)) - (previous if earlier == buyer else Decimal(0))
        if used + value > cfg.annual_limit:
            info = f"年度已用额度{used}加本次{value}超过年度限值{cfg.annual_limit} (sandbox: annual limit)"
            return [step("CEB622", "-621018", values, label, info)]
        if earlier != buyer:
            self.quota_used[earlier] = self.quota_used.get(earlier, Decimal(0)) - previous
        invt = existing.invt_no if existing else rc.invt_no(h.get("customsCode", ""), next(self._serial), now)
        self.inventories[key] = InventoryRecord(doc, pre_no, invt, value, release_due=self._release_due(now))
        self.quota_used[buyer] = used + value
        released = {**values, "invtNo": invt}
        return [
            step("CEB622", "2", values, label),
            step("CEB622", "120", released, label),
            step("CEB622", "399", released, label),
            step("CEB622", "800", released, label),
        ]

    def _export_cancel(self, doc: Document, scenario: str | None) -> list[Step]:
        """An export cancellation (CEB605): 2 → 399 (the CEB606's statuses, spec §5.2: no 120), and the export
        inventory its invtNo names is gone from customs (declared again, it is no duplicate). One naming an invtNo
        customs gave no inventory of its agentCode on file: 2 → 100 with the reason (the spec lists no code)."""
        steps = self._other(doc, scenario)
        if [s.status for s in steps] != ["2", "120"]:  # temp-saved or refused: as any
            return steps
        invt_no = (doc.head.get("invtNo") or "").strip()
        agent = (doc.head.get("agentCode") or "").strip()
        named = [key for key, r in self.export_inventories.items()
                 if r.invt_no == invt_no and (r.doc.head.get("agentCode") or "").strip() == agent]  # fmt: skip
        if not named:
            return self._rejected("CEB606", steps[0].values, steps[0].key,
                                  f"清单{invt_no}不存在 (sandbox: no export inventory of agentCode {agent} on file has "
                                  "that invtNo)")  # fmt: skip
        for key in named:
            del self.export_inventories[key]
        accepted = steps[1]
        return [steps[0], self._step(accepted.code, "399", accepted.values, accepted.key)]

    def _named_inventory(self, doc: Document) -> tuple[InventoryRecord | None, str]:
        """The import inventory on file a cancellation (CEB623) or return (CEB625) names — by its key (ebcCode, orderNo)
        and the invtNo customs gave it (A.7, A.9) — or, when none, why: :data:`_CANCELLED` for an inventory whose
        cancellation was concluded, else the reason for returnInfo."""
        h = doc.head
        key = (h.get("ebcCode", ""), h.get("orderNo", ""))
        invt_no = (h.get("invtNo") or "").strip()
        record = self.inventories.get(key)
        if record is not None and record.invt_no == invt_no:
            return record, ""
        if invt_no in self.cancelled_inventories:
            return None, _CANCELLED
        if record is not None:
            return None, (f"清单编号{invt_no}不是{'/'.join(key)}的清单编号{record.invt_no} (sandbox: not the invtNo "
                          "customs gave the inventory)")  # fmt: skip
        return None, f"清单{invt_no}({'/'.join(key)})不存在 (sandbox: no such inventory on file)"

    def _import_cancel(self, doc: Document, scenario: str | None) -> list[Step]:
        """An import cancellation (CEB623) of an inventory on file (declared or released): 2 → 120 → 399 (CEB624), and
        customs holds the inventory no more — its amount goes back to its buyer's quota (less what a concluded return
        gave back already) and its key may be declared anew. Of an inventory whose release is still due, the receipts
        come after its 800, not before. A second cancellation of it: -623005 (状态不允许撤销); of an inventory customs
        does not hold: 2 → 100 with the reason (the spec lists no code)."""
        steps = self._other(doc, scenario)
        if [s.status for s in steps] != ["2", "120"]:  # temp-saved or refused: as any
            return steps
        values, label = steps[0].values, steps[0].key
        record, why = self._named_inventory(doc)
        if why == _CANCELLED:
            invt_no = (doc.head.get("invtNo") or "").strip()
            info = f"清单{invt_no}已撤销，状态不允许撤销 (sandbox: the inventory was cancelled already)"
            return [self._step("CEB624", "-623005", values, label, info)]
        if record is None:
            return self._rejected("CEB624", values, label, why)
        h = record.doc.head
        del self.inventories[(h.get("ebcCode", ""), h.get("orderNo", ""))]
        self.cancelled_inventories[record.invt_no] = record
        buyer = h.get("buyerIdNumber", "").upper()
        self.quota_used[buyer] = self.quota_used.get(buyer, Decimal(0)) - (record.value - record.returned)
        values = {**values, "preNo": record.pre_no, "invtNo": record.invt_no}
        plan = [self._step("CEB624", status, values, label) for status in ("2", "120", "399")]
        if not record.released_by(datetime.now(rc.CHINA_TZ)):
            plan[0].not_before = record.release_due
        return plan

    def _import_return(self, doc: Document, scenario: str | None) -> list[Step]:
        """An import return (CEB625) of a released inventory on file: 2 → 120 → 399 (CEB626), the value of the items
        returned (gateway.tax.returned_value, as the gateway counts it) back in the buyer's quota (spec §6.5). One per
        inventory: a change replaces it, a withdrawal (appType 3) takes its value back. A line whose gnum, gcode or
        unit is no item of the inventory: -625209; a qty above the item's, a return of an inventory customs does not
        hold, has cancelled or has not released (§6.5: a return follows the release), a second return or a change of
        none: 2 → 100 with the reason (the spec lists no code for them)."""
        steps = self._other(doc, scenario)
        if [s.status for s in steps] != ["2", "120"]:  # temp-saved or refused: as any
            return steps
        values, label = steps[0].values, steps[0].key
        record, why = self._named_inventory(doc)
        invt_no = (doc.head.get("invtNo") or "").strip()
        if why == _CANCELLED:
            return self._rejected("CEB626", values, label,
                                  f"清单{invt_no}已撤销，无货可退 (sandbox: the inventory was cancelled)")  # fmt: skip
        if record is None:
            return self._rejected("CEB626", values, label, why)
        values = {**values, "preNo": record.pre_no, "invtNo": record.invt_no}
        if not record.released_by(datetime.now(rc.CHINA_TZ)):
            return self._rejected("CEB626", values, label, f"清单{invt_no}未放行，不能申报退货 (sandbox: the inventory "
                                  "is not released; a return follows the release)")  # fmt: skip
        app_type = (doc.head.get("appType") or "1").strip()
        if app_type == "1" and record.refund is not None:
            return self._rejected("CEB626", values, label, f"清单{invt_no}已申报退货 (sandbox: duplicate return)")
        if app_type in ("2", "3") and record.refund is None:
            return self._rejected("CEB626", values, label, "未找到可变更的退货申请单 (sandbox: nothing to change)")
        buyer = record.doc.head.get("buyerIdNumber", "").upper()
        concluded = [self._step("CEB626", status, values, label) for status in ("2", "120", "399")]
        key = (record.doc.head.get("ebcCode", ""), record.doc.head.get("orderNo", ""))
        if app_type == "3":  # withdrawn: its goods count toward the buyer's year again
            self.quota_used[buyer] = self.quota_used.get(buyer, Decimal(0)) + record.returned
            record.returned, record.refund = Decimal(0), None
            self.inventories.touch(key)
            return concluded
        items = {_gnum(line.get("gnum")): line for line in record.doc.lines}
        foreign, over = [], []
        for line in doc.lines:
            gnum = _gnum(line.get("gnum"))
            item = items.get(gnum)
            if item is None or any(_differs(line.get(name), item.get(name)) for name in ("gcode", "unit")):
                foreign.append(gnum)
        for gnum, qty in _qty_by_gnum([doc]).items():
            declared = _dec(items[gnum].get("qty")) if gnum in items else qty
            if qty > declared:
                over.append(f"商品序号{gnum}退货数量{qty}超过申报数量{declared} (more than declared)")
        if foreign:
            info = (f"商品序号{'、'.join(foreign)}在原清单{invt_no}中不存在 (sandbox: no item of the inventory by its "
                    "gnum, gcode and unit)")  # fmt: skip
            return [self._step("CEB626", "-625209", values, label, info)]
        if over:
            return self._rejected("CEB626", values, label, f"退货商品与清单{invt_no}不符: " + "; ".join(over))
        given = min(tax.returned_value(record.doc, doc.lines), record.value)
        self.quota_used[buyer] = self.quota_used.get(buyer, Decimal(0)) - (given - record.returned)
        record.returned, record.refund = given, doc
        self.inventories.touch(key)
        return concluded

    def _export_return(self, doc: Document, scenario: str | None) -> list[Step]:
        """A retail export return (CEB213): the export inventory its invtNo names must be one this export system
        released to the return's agent (and not cancelled since), and its lines that inventory's items (by its gnum),
        each no more than declared with what the inventory's other returns took back (A.32), else 2 → 100 (海关退单,
        the reasons in returnInfo); then 2 → 120 → 800 (the CEB214's statuses, spec §5.2: no 399): customs lets the
        goods back in; its withdrawal (appType 3) 2 → 120 only, no goods come back with it. The site's tally (CEB215)
        is answered as a transport message is, 2 → 399 (CEB216's statuses), matched to no return: customs does that,
        not the site."""
        steps = self._other(doc, scenario)
        if [s.status for s in steps] != ["2", "120"]:  # temp-saved or refused: as any
            return steps
        h = doc.head
        invt_no, agent = (h.get("invtNo") or "").strip(), (h.get("agentCode") or "").strip()
        inventory = next((r for r in self.export_inventories.values()
                          if r.invt_no == invt_no and (r.doc.head.get("agentCode") or "").strip() == agent),
                         None)  # fmt: skip
        if inventory is None:
            return self._rejected("CEB214", steps[0].values, steps[0].key,
                                  f"出口清单{invt_no}不存在或非本企业申报 (sandbox)")  # fmt: skip
        key = (agent, (h.get("coElNo") or "").strip())
        if (h.get("appType") or "1").strip() == "3":  # a withdrawal lets nothing back in: taken, not released
            self.export_returns.pop(key, None)
            return steps
        problems = self._not_returnable(doc, inventory, key)
        if problems:
            return self._rejected("CEB214", steps[0].values, steps[0].key,
                                  f"退货商品与出口清单{invt_no}不符: " + "; ".join(problems))  # fmt: skip
        self.export_returns[key] = doc
        accepted = steps[1]
        return [*steps, self._step(accepted.code, "800", accepted.values, accepted.key)]

    def _not_returnable(self, doc: Document, inventory: InventoryRecord, key: tuple[str, str]) -> list[str]:
        """Why a return's lines are not the inventory's goods (A.32): a gnum that is no item of it, a qty more than
        the item declared with what the inventory's other returns let back in (a change of this return replaces its
        earlier version); [] when they are."""
        declared = _qty_by_gnum([inventory.doc])
        taken = _qty_by_gnum(other for k, other in self.export_returns.items()
                             if k != key and (other.head.get("invtNo") or "").strip() == inventory.invt_no)  # fmt: skip
        problems = []
        for line in doc.lines:
            gnum, qty = _gnum(line.get("gnum")), _dec(line.get("qty"))
            before = taken.get(gnum, Decimal(0))
            if gnum not in declared:
                problems.append(f"商品序号{gnum}不是清单商品 (gnum {gnum} is no item of the inventory)")
            elif qty + before > declared[gnum]:
                problems.append(f"商品序号{gnum}退货数量{qty}" + (f"加已退{before}" if before else "")
                                + f"超过申报数量{declared[gnum]} (more than declared)")  # fmt: skip
        return problems

    def _transport(self, doc: Document, scenario: str | None) -> list[Step]:
        """An arrival, departure or 清单总分单 (CEB507/509/607): 2 → 399, the statuses spec §5.2 gives their receipts
        (508/510 list no 120; for 608 the XSD lists 399 where the PDF has 120, and the XSD is what customs runs). Each
        receipt echoes its copNo, msgSeqNo and billNo (empty when an arrival names none) with a preNo of its own.
        Whether the parcels it lists were released is not asked: the spec prescribes no order there."""
        steps = self._other(doc, scenario)
        if [s.status for s in steps] != ["2", "120"]:  # temp-saved or refused: as any
            return steps
        accepted = steps[1]
        return [steps[0], self._step(accepted.code, "399", accepted.values, accepted.key)]
    def _summary(self, doc: Document, scenario: str | None) -> list[Step]:
        """A summary application (CEB701): each inventory it names must be a B-type export inventory of its consignor
        that this export system released (its 800 due) and no other live application of the consignor summarises (a
        period summarises all of those it released within the period), else 100; then 2 → 399 (CEB702, the
        sumNo with the 399), and its summary result (CEB792) follows (:meth:`_summary_results`)."""
        h = doc.head
        key = _summary_key(h)
        label = "/".join(key)
        existing = self.summaries.get(key)
        pre_no = existing.pre_no if existing is not None else rc.pre_no(next(self._serial))
        values = {name: h.get(name, "") for name in ("guid", "agentCode", "ebcCode", "copNo", "msgSeqNo")}
        values["preNo"] = pre_no
        step = self._step
        app_type, app_status = h.get("appType", "1"), h.get("appStatus", "2")
        if app_status == "1":
            return [step("CEB702", "1", values, label)]
        if app_type == "1" and existing is not None:
            return self._rejected("CEB702", values, label, f"汇总申请{label}已申报 (sandbox: duplicate)")
        if app_type in ("2", "3") and existing is None:
            return self._rejected("CEB702", values, label, "未找到可变更的汇总申请 (sandbox)")
        if scenario == "REJECT":
            return self._rejected("CEB702", values, label, "sandbox scenario REJECT")
        if app_type == "3":
            self.summaries.pop(key, None)
            return [step("CEB702", "2", values, label), step("CEB702", "399", values, label)]
        ebc = h.get("ebcCode", "")
        now = datetime.now(rc.CHINA_TZ)
        # only what this system released: an inventory whose 800 is still to come is not summarised (declared, then
        # perhaps inspected or cancelled, it may never leave)
        by_no = {r.invt_no: r for r in self.export_inventories.values() if r.released_by(now)}
        listed = [(line.get("invtNo") or "").strip() for line in doc.lines]
        start, end = (h.get("startTime") or "").strip(), (h.get("endTime") or "").strip()
        # an inventory is summarised once: not one a live application of the consignor summarises already
        taken = {r.invt_no: k for k, other in self.summaries.items()
                 if k != key and other.doc.head.get("ebcCode") == ebc for r in other.inventories}  # fmt: skip
        if start and end:  # a period: every B-type inventory of the consignor released within it (A.29)
            chosen = [r for r in by_no.values()
                      if r.doc.head.get("ebcCode") == ebc and r.doc.head.get("statisticsFlag") == "B"
                      and r.invt_no not in taken
                      and start <= (r.released or r.doc.head.get("appTime", "")) <= end]  # fmt: skip
            problems = [] if chosen else [f"该时段({start}-{end})无可汇总的B类清单"]
        else:
            chosen, problems = [], []
            for no in listed:
                r = by_no.get(no)
                if r is None:
                    problems.append(f"清单{no}不存在或未放行")
                elif no in taken:
                    problems.append(f"清单{no}已在汇总申请{'/'.join(taken[no])}中")
                elif r.doc.head.get("statisticsFlag") != "B":
                    problems.append(f"清单{no}不是B类(汇总)清单")
                elif r.doc.head.get("ebcCode") != ebc:
                    problems.append(f"清单{no}不属于收发货人{ebc}")
                else:
                    chosen.append(r)
        if problems:
            return self._rejected("CEB702", values, label, "汇总申请不通过: " + "; ".join(problems))
        customs = h.get("customsCode", "")
        district = customs if len(customs) == 4 and customs.isdigit() else "0000"
        sum_no = existing.sum_no if existing is not None else \
            f"{district}{datetime.now(rc.CHINA_TZ):%Y}S{next(self._serial) % 10**9:09d}"  # fmt: skip
        self.summaries[key] = SummaryRecord(doc, pre_no, sum_no, chosen)
        return [step("CEB702", "2", values, label), step("CEB702", "399", {**values, "sumNo": sum_no}, label)]

    def _summary_results(self, parsed: ParsedMessage, plans: list[list[Step]]) -> list[tuple[dict[str, Any], bytes]]:
        """The summary results (CEB792) of each application these plans conclude (CEB702 399, not a deletion): one per
        customs declaration made of its inventories (rc.declarations: by summaryFlag), an item (gseqno) per HS code
        (and item name, by itemNameFlag), as customs merges them (rc.summary_result)."""
        out: list[tuple[dict[str, Any], bytes]] = []
        # made once customs concluded the application: timed after the last receipt of the message (_schedule)
        made = datetime.now(rc.CHINA_TZ) + timedelta(seconds=self.config.receipt_delay * (max(map(len, plans)) + 1))
        for doc, plan in zip(parsed.documents, plans, strict=True):
            if not plan or plan[-1].status != "399" or doc.head.get("appType") == "3":
                continue
            record = self.summaries.get(_summary_key(doc.head))
            if record is None:
                continue
            for group in rc.declarations(record.doc, [r.doc for r in record.inventories]):
                members = [record.inventories[n] for n in group]
                head, lines = rc.summary_result(record.doc, record.sum_no, [r.doc for r in members],
                                                [r.invt_no for r in members], next(self._serial),
                                                moment=made)  # fmt: skip
                meta = {"code": "CEB792", "status": head["decState"], "key": plan[-1].key,
                        "info": f"汇总结果 {head['entryId']}"}  # fmt: skip
                out.append((meta, rc.build_customs_documents("CEB792", [(head, lines)])))
        return out

    def _bill_changes(self, parsed: ParsedMessage, plans: list[list[Step]]) -> list[tuple[dict[str, Any], bytes]]:
        """What the cancellations and returns these plans conclude (CEB624 / CEB626 399) do to their inventories' tax
        bills while they are out and not consolidated — within the return window, where the tax of goods that leave
        the trade is not collected (§6.5; the 2018 announcement: 相应税款不予征收): a cancellation, or a return of
        every item in full, voids the bill (CEB818 ``3``); a return of part of the goods corrects it (a CEB816 of the
        same taxNo, the taxes of the goods kept, rc.corrected_tax_bill); a return changed corrects it again (or voids
        it, now returning everything), and one withdrawn gives the whole inventory's bill again. Each a message of its
        own after the 399. A bill consolidated, or void, stays as it is."""
        out: list[tuple[dict[str, Any], bytes]] = []
        for doc, plan in zip(parsed.documents, plans, strict=True):
            if not plan or plan[-1].status != "399":
                continue
            invt_no = plan[-1].values.get("invtNo", "")
            bill = self.bills.get(invt_no)
            if bill is None or bill.status != "1":
                continue
            moment = datetime.now(rc.CHINA_TZ) + timedelta(seconds=self.config.receipt_delay * (len(plan) + 1))
            if plan[0].not_before is not None:
                moment += max(timedelta(0), plan[0].not_before - datetime.now(rc.CHINA_TZ))
            withdrawn = (doc.head.get("appType") or "1").strip() == "3"
            if doc.type.code == "CEB625":
                record = next((r for r in self.inventories.values() if r.invt_no == invt_no), None)
                if record is None:
                    continue
                returned = [] if withdrawn else doc.lines
                if withdrawn or _qty_by_gnum([doc]) != _qty_by_gnum([record.doc]):
                    if bill.due is not None and moment >= bill.due:
                        # concluded once the window closed: the bill is consolidated as it was (a correction after
                        # its consolidation would read as the bill generated again)
                        continue
                    # a part returned: the bill of what the buyer keeps; withdrawn: of everything again (the spec
                    # names no message for either: the sandbox's choice, docs/sandbox.md)
                    head, lines = rc.corrected_tax_bill(bill.head, record.doc, returned, moment=moment)
                    bill.head, bill.lines = head, lines
                    self.bills.touch(invt_no)
                    info = f"电子税单 {head['taxNo']} {'退货撤回' if withdrawn else '部分退货'}，更正"
                    meta = {"code": "CEB816", "status": "1", "key": plan[-1].key, "invt_no": invt_no, "info": info}
                    out.append((meta, rc.build_tax_bills("CEB816", [(head, lines)])))
                    continue
            elif withdrawn:
                continue
            bill.status = "3"  # decided now: a consolidation due before it is sent goes no more
            self.bills.touch(invt_no)
            meta = {"code": "CEB818", "status": "3", "key": plan[-1].key, "invt_no": invt_no,
                    "info": f"电子税单 {bill.head['taxNo']} 作废"}  # fmt: skip
            out.append((meta, rc.build_tax_bills("CEB818", [rc.tax_status(bill.head, "3", moment=moment)])))
        return out

    def _other(self, doc: Document, scenario: str | None) -> list[Step]:
        """513: accepted into customs (``2`` → ``120``), 711: entered (``2`` → ``120`` → ``399``, customs'
        warehouse-entry number rkdNo from ``120`` on), without further checks; the receipt values (and the answers to
        a temp-save or REJECT) of the other declarations that start here."""
        code = doc.type.code
        rcode = rc.RECEIPT_FOR.get(code)
        if rcode is None:  # a receipt type sent to customs: nothing sensible to answer
            return []
        h = doc.head
        fields = rc.RECEIPT_FIELDS[rcode][2]
        values = {f: h.get(f, "") for f in fields if f in h}
        values.setdefault("guid", h.get("guid", ""))
        if "copNo" in fields:  # as declared, within the receipt's length (import C..20, export C..30)
            limit = 30 if doc.type.flow == "export" else 20
            values["copNo"] = (h.get("copNo") or h.get("orderNo") or h.get("billNo") or "SANDBOX")[:limit]
        # preNo and invtNo are exactly 18 characters in the receipts (C18, spec A.6/A.8): a cancellation or return
        # gets its inventory's, else a declared value of that length, else preNo a new one and invtNo none
        inventory = self.inventories.get((h.get("ebcCode", ""), h.get("orderNo", ""))) \
            if code in ("CEB623", "CEB625") else None  # fmt: skip
        if "invtNo" in values and len(values["invtNo"]) != 18 and code in ("CEB623", "CEB625"):
            if inventory is not None:
                values["invtNo"] = inventory.invt_no
            else:
                del values["invtNo"]
        if "preNo" in fields and len(values.get("preNo", "")) != 18:
            values["preNo"] = inventory.pre_no if inventory is not None else \
                rc.pre_no(next(self._serial), prefix="R" if code == "CEB711" else "B")  # fmt: skip
        label = "/".join(v for v in doc.keys if v)
        if h.get("appStatus") == "1":
            return [self._step(rcode, "1", values, label)]
        if scenario == "REJECT":
            return self._rejected(rcode, values, label, "sandbox scenario REJECT")
        if code == "CEB711":  # the parcels entered at customs (入库), under a number of customs' own, then concluded
            entered = {**values, "rkdNo": rc.rkd_no(h.get("customsCode", ""), next(self._serial))}
            return [self._step(rcode, "2", values, label), self._step(rcode, "120", entered, label),
                    self._step(rcode, "399", entered, label)]  # fmt: skip
        return [self._step(rcode, "2", values, label), self._step(rcode, "120", values, label)]

    # -- customs: receipts -------------------------------------------------------------------

    def _format_receipt(
        self, cop_msg_id: str, receiver: str, msg_type: str, original: bytes, info: str, scenario: str | None
    ) -> None:
        xml = rc.format_receipt(ori_cop_msg_id=cop_msg_id, ori_message_type=msg_type, original=original, info=info)
        meta = {"code": "CEB900", "status": "-1", "key": cop_msg_id, "info": info[:300]}
        self._schedule_xml([(meta, xml)], scenario, receiver=receiver, ori_cop_msg_id=cop_msg_id)

    def _schedule(
        self, plans: list[list[Step]], scenario: str | None, *, receiver: str, ori_cop_msg_id: str,
        bills: Sequence[tuple[Document, str, str]] = (), results: Sequence[tuple[dict[str, Any], bytes]] = (),
    ) -> None:  # fmt: skip
        """Time and serialise the receipts: step i of every document is due at (i + 1) × receipt_delay; the tax
        bills of the released inventories (``bills``: inventory, invtNo, key) one step after the last receipt, and
        so the summary results (``results``: CEB792 messages, meta and XML each). The whole sequence waits until the
        latest ``not_before`` of its steps, if any is still to come."""
        step_ms = max(1, round(self.config.receipt_delay * 1000))
        start = datetime.now(rc.CHINA_TZ)
        hold = max([(s.not_before - start).total_seconds() for plan in plans for s in plan if s.not_before] + [0.0])
        start += timedelta(seconds=hold)
        ordered: list[tuple[int, int, Step]] = [
            (i, n, s) for n, plan in enumerate(plans) for i, s in enumerate(plan)
        ]
        ordered.sort(key=lambda t: (t[0], t[1]))  # first receipts of all documents first, like a real queue
        stages: list[list[tuple[dict[str, Any], dict[str, str]]]] = []  # per step: (meta, return values)
        for i, n, s in ordered:
            moment = start + timedelta(milliseconds=step_ms * (i + 1) + n)  # distinct, increasing returnTime
            values = {**s.values, "returnStatus": s.status, "returnTime": rc.return_time(moment), "returnInfo": s.info}
            meta = {"code": s.code, "status": s.status, "key": s.key, "info": s.info[:300]}
            if i == len(stages):
                stages.append([])
            stages[i].append((meta, values))
        taxes: list[tuple[dict[str, Any], TaxBill]] = []
        settled: list[tuple[dict[str, Any], TaxBill]] = []  # their status changes (CEB818), the window after them
        delay = self.tax_status_delay()
        slip = rc.ent_duty_no(next(self._serial), start) if bills and self.config.tax_bill_status else None
        for n, (doc, invt, key) in enumerate(bills):
            moment = start + timedelta(milliseconds=step_ms * (len(stages) + 1) + n)
            head, lines = rc.tax_bill(doc, invt, rc.tax_no(invt), moment=moment)
            meta = {"code": "CEB816", "status": "1", "key": key, "info": f"电子税单 {head['taxNo']}", "invt_no": invt}
            taxes.append((meta, (head, lines)))
            bill = BillRecord("1", head, lines, key=key, receiver=receiver[:16] or self.config.enterprise_dxp_id)
            if slip is not None:  # the bills of one declaration go into one payment slip
                bill.slip = slip
                bill.due = moment + timedelta(milliseconds=max(1, round(delay * 1000)))
                settled.append((self._consolidation_meta(invt, bill), self._consolidation(bill)))
            self.bills[invt] = bill
        if self.config.receipt_batch_max > 1 and scenario not in UNBATCHED_SCENARIOS:
            self._schedule_batched(stages, taxes, settled, receiver=receiver, ori_cop_msg_id=ori_cop_msg_id,
                                   results=results, hold=hold)  # fmt: skip
            return
        items = [(meta, rc.build_receipt(meta["code"], values)) for stage in stages for meta, values in stage]
        items += [(meta, rc.build_tax_bills("CEB816", [bill])) for meta, bill in taxes]
        items += [({**meta, "after": delay}, rc.build_tax_bills("CEB818", [bill])) for meta, bill in settled]
        items += list(results)
        self._schedule_xml(items, scenario, receiver=receiver, ori_cop_msg_id=ori_cop_msg_id, hold=hold)

    def _schedule_batched(
        self, stages: list[list[tuple[dict[str, Any], dict[str, str]]]], taxes: list[tuple[dict[str, Any], TaxBill]],
        settled: list[tuple[dict[str, Any], TaxBill]], *, receiver: str, ori_cop_msg_id: str,
        results: Sequence[tuple[dict[str, Any], bytes]] = (), hold: float = 0.0,
    ) -> None:  # fmt: skip
        """One record per receipt now; each step's receipts join the open batches once the step before was sent, the
        tax bills go together once the last step was, and their status changes once the return window is over."""

        def record(meta: dict[str, Any]) -> dict[str, Any]:
            out = {**meta, "cop_msg_id": None, "ori_cop_msg_id": ori_cop_msg_id, "copy": 1, "delivered": None,
                   "lost": False, "xml": None}  # fmt: skip
            self.receipts.append(out)
            return out

        recorded = [[(record(meta), values) for meta, values in stage] for stage in stages]
        bills = [(record(meta), bill) for meta, bill in taxes]
        statuses = [(record(meta), bill) for meta, bill in settled]
        summaries = [(record(meta), xml) for meta, xml in results]
        self._spawn(self._deliver_stages(recorded, bills, statuses, receiver[:16] or self.config.enterprise_dxp_id,
                                         summaries, hold))  # fmt: skip

    async def _deliver_stages(
        self, stages: list[list[tuple[dict[str, Any], dict[str, str]]]], bills: list[tuple[dict[str, Any], TaxBill]],
        statuses: list[tuple[dict[str, Any], TaxBill]], receiver: str,
        results: Sequence[tuple[dict[str, Any], bytes]] = (), hold: float = 0.0,
    ) -> None:  # fmt: skip
        for n, stage in enumerate(stages):
            if not await self._sleep(self.config.receipt_delay + (hold if n == 0 else 0.0)):
                _shut_down(record for record, _ in stage)
                continue
            # Per document, step i+1 joins a batch only after the message carrying step i was posted.
            sent = {id(f): f for f in (self._batch_add(record, values, receiver) for record, values in stage)}
            await asyncio.gather(*sent.values())
        for code, items, delay in (("CEB816", bills, self.config.receipt_delay),
                                   ("CEB818", statuses, self.tax_status_delay())):  # fmt: skip
            if not items:
                break
            if await self._sleep(delay):
                await self._send_tax_bills(code, items, receiver)
            else:
                _shut_down(record for record, _ in items)
        for record, xml in results:  # each a message of its own (a summary result, a bill voided), after the 399
            if not await self._sleep(self.config.receipt_delay):
                _shut_down([record])
                continue
            cop, code = str(uuid.uuid4()).upper(), record["code"]
            env = dxp.wrap(xml, msg_type=f"{code}Message", sender_id=dxp.receiver_for(code), receiver_ids=[receiver],
                           cop_msg_id=cop, created=datetime.now(rc.CHINA_TZ))  # fmt: skip
            record.update(cop_msg_id=cop, xml=xml.decode("utf-8"), returns=1, index=1)
            await self._post_receipt([record], env)

    async def _send_tax_bills(self, code: str, bills: list[tuple[dict[str, Any], TaxBill]], receiver: str) -> None:
        """The tax bills (CEB816) of one declaration's released inventories, or their status changes (CEB818):
        messages of up to receipt_batch_max."""
        size = max(1, self.config.receipt_batch_max)
        bills = [(record, bill) for record, bill in bills if not self._void_first(record)]
        for start in range(0, len(bills), size):
            chunk = bills[start : start + size]
            xml = rc.build_tax_bills(code, [bill for _, bill in chunk])
            cop = str(uuid.uuid4()).upper()
            env = dxp.wrap(xml, msg_type=f"{code}Message", sender_id=dxp.receiver_for(code), receiver_ids=[receiver],
                           cop_msg_id=cop, created=datetime.now(rc.CHINA_TZ))  # fmt: skip
            records = [record for record, _ in chunk]
            for n, record in enumerate(records, 1):
                record.update(cop_msg_id=cop, xml=xml.decode("utf-8"), returns=len(records), index=n)
            await self._post_receipt(records, env)

    def _batch_add(self, record: dict[str, Any], values: Mapping[str, str], receiver: str) -> asyncio.Future[None]:
        """Put one receipt in the open batch of its type and receiver; the future is done once that was sent."""
        code = record["code"]
        key = (code, receiver)
        batch = self._batches.get(key)
        if batch is None:
            loop = asyncio.get_running_loop()
            cap = max(1, min(self.config.receipt_batch_max, rc.max_returns(code)))
            batch = _Batch(code, receiver, cap, [], loop.create_future())
            self._batches[key] = batch
            batch.timer = loop.call_later(max(0.0, self.config.receipt_batch_window), self._batch_due, batch)
        batch.items.append((record, values))
        if len(batch.items) >= batch.cap:
            self._batch_flush(batch)
        return batch.sent

    def _batch_due(self, batch: _Batch) -> None:
        """The window is over: send, unless receipt_batch_inflight messages of its kind are still being posted
        (then it keeps filling and goes as soon as one of them is done: bigger messages when the receiver lags)."""
        batch.timer = None
        limit = self.config.receipt_batch_inflight
        if limit > 0 and self._inflight[batch.key] >= limit:
            batch.due = True
            return
        self._batch_flush(batch)

    def _batch_flush(self, batch: _Batch) -> None:
        if self._batches.get(batch.key) is batch:
            del self._batches[batch.key]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        self._inflight[batch.key] += 1
        self._spawn(self._batch_send(batch))

    async def _batch_send(self, batch: _Batch) -> None:
        try:
            xml = rc.build_receipts(batch.code, [values for _, values in batch.items])
            cop = str(uuid.uuid4()).upper()
            env = dxp.wrap(
                xml, msg_type=f"{batch.code}Message", sender_id=dxp.receiver_for(batch.code),
                receiver_ids=[batch.receiver], cop_msg_id=cop, created=datetime.now(rc.CHINA_TZ),
            )  # fmt: skip
            text = xml.decode("utf-8")
            records = [record for record, _ in batch.items]
            for n, record in enumerate(records, 1):
                record.update(cop_msg_id=cop, xml=text, returns=len(records), index=n)
            await self._post_receipt(records, env)
        except Exception as exc:  # a sandbox bug: say so on every receipt of the message, keep the others going
            log.exception("sandbox receipt message %s not built or sent", batch.code)
            for record, _ in batch.items:
                record["delivered"] = False
                record["error"] = f"{exc.__class__.__name__}: {exc}"
        finally:
            if not batch.sent.done():
                batch.sent.set_result(None)
            self._inflight[batch.key] -= 1
            waiting = self._batches.get(batch.key)
            if waiting is not None and waiting.due and not self.closing.is_set():
                self._batch_flush(waiting)

    def _drop_batches(self, reason: str) -> None:
        """Open batches are not sent any more (reset, shut-down): their receipts say so, their waiters go on."""
        for batch in list(self._batches.values()):
            if batch.timer is not None:
                batch.timer.cancel()
            for record, _ in batch.items:
                record["delivered"] = False
                record["error"] = reason
            if not batch.sent.done():
                batch.sent.set_result(None)
        self._batches.clear()

    def _schedule_xml(
        self, items: list[tuple[dict[str, Any], bytes]], scenario: str | None, *, receiver: str, ori_cop_msg_id: str,
        hold: float = 0.0,
    ) -> None:
        if not items:
            return
        if scenario == "OOORCPT":
            items = list(reversed(items))
        envelopes: list[tuple[dict[str, Any], bytes]] = []
        for meta, xml in items:
            cop = str(uuid.uuid4()).upper()
            env = dxp.wrap(
                xml,
                msg_type=f"{meta['code']}Message",
                sender_id=dxp.receiver_for(meta["code"]),  # the CEB system (import or export) that answers
                receiver_ids=[receiver[:16] or self.config.enterprise_dxp_id],
                cop_msg_id=cop,
                created=datetime.now(rc.CHINA_TZ),
            )
            copies = 2 if scenario == "DUPRCPT" else 1
            for copy_no in range(copies):
                record = {
                    **meta,
                    "cop_msg_id": cop,
                    "ori_cop_msg_id": ori_cop_msg_id,
                    "copy": copy_no + 1,
                    "delivered": None,
                    "lost": scenario == "LOSTRCPT",
                    "xml": xml.decode("utf-8"),
                }
                self.receipts.append(record)
                envelopes.append((record, env))
        if scenario == "LOSTRCPT":
            for record, _ in envelopes:
                record.pop("after", None)
                record["delivered"] = False
                record["error"] = "sandbox scenario LOSTRCPT: never sent"
            return
        self._spawn(self._deliver(envelopes, hold))

    async def _deliver(self, envelopes: list[tuple[dict[str, Any], bytes]], hold: float = 0.0) -> None:
        for n, (record, env) in enumerate(envelopes):
            # "after": a tax bill's status change waits for the return window instead (tax_bill_status_delay)
            if not await self._sleep(record.pop("after", self.config.receipt_delay) + (hold if n == 0 else 0.0)):
                record["delivered"] = False
                record["error"] = "sandbox shut down"
                continue
            if self._void_first(record):
                continue
            await self._post_receipt([record], env)

    def _void_first(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` is a consolidation (CEB818 2) of a bill voided since it was planned: then it is not sent
        (said in the record), else the bill counts as consolidated from now."""
        if record["code"] != "CEB818" or record["status"] != "2":
            return False
        invt_no = record.get("invt_no", "")
        bill = self.bills.get(invt_no)
        if bill is not None and bill.status == "3":
            record["delivered"] = False
            record["error"] = "not sent: the bill was voided before its consolidation"
            return True
        if bill is not None:
            bill.status, bill.due = "2", None
            self.bills.touch(invt_no)
            self._save()
        return False

    @staticmethod
    def _consolidation_meta(invt_no: str, bill: BillRecord) -> dict[str, Any]:
        return {"code": "CEB818", "status": "2", "key": bill.key, "invt_no": invt_no,
                "info": f"电子税单 {bill.head['taxNo']} 已汇总 缴款书 {bill.slip}"}  # fmt: skip

    @staticmethod
    def _consolidation(bill: BillRecord) -> TaxBill:
        """The CEB818 moving ``bill`` to 2 consolidated into its payment slip, timed when its return window closes."""
        return rc.tax_status(bill.head, "2", ent_duty_no=bill.slip, moment=bill.due)

    def _resume_consolidations(self) -> None:
        """At start-up: the consolidations an earlier run planned and did not send (bills the receiver took, neither
        consolidated nor void), sent when due — at once when that time has passed — each slip's in one message."""
        slips: dict[tuple[str, str], list[tuple[str, BillRecord]]] = {}
        for invt_no, bill in self.bills.items():
            if bill.status == "1" and bill.sent and bill.due is not None and bill.slip:
                slips.setdefault((bill.receiver, bill.slip), []).append((invt_no, bill))
        for (receiver, _), bills in slips.items():
            due = max(bill.due for _, bill in bills if bill.due is not None)
            records = []
            for invt_no, bill in bills:
                record = {**self._consolidation_meta(invt_no, bill), "cop_msg_id": None, "ori_cop_msg_id": None,
                          "copy": 1, "delivered": None, "lost": False, "xml": None}  # fmt: skip
                self.receipts.append(record)
                records.append((record, self._consolidation(bill)))
            self._spawn(self._send_when_due(due, records, receiver))

    async def _send_when_due(self, due: datetime, items: list[tuple[dict[str, Any], TaxBill]], receiver: str) -> None:
        if await self._sleep((due - datetime.now(rc.CHINA_TZ)).total_seconds()):
            await self._send_tax_bills("CEB818", items, receiver)
        else:
            _shut_down(record for record, _ in items)

    def _bills_taken(self, records: list[dict[str, Any]]) -> None:
        """The receiver took these tax bills (CEB816): their consolidation is resumed after a restart."""
        for record in records:
            bill = self.bills.get(record.get("invt_no", "")) if record["code"] == "CEB816" else None
            if bill is not None and not bill.sent:
                bill.sent = True
                self.bills.touch(record["invt_no"])
        self._save()

    async def _post_receipt(self, records: list[dict[str, Any]], env: bytes) -> None:
        """POST one receipt message (its records: one per return element) with retries; record the outcome."""
        url = self.config.receipt_url
        if not url:
            for record in records:
                record["delivered"] = False
                record["error"] = "no receipt_url configured"
            return
        assert self._session is not None
        headers = {"Content-Type": "application/xml; charset=utf-8", **self.config.receipt_headers}
        error = ""
        for attempt in range(1 + max(0, self.config.receipt_retries)):
            if attempt and not await self._sleep(min(2.0, 0.05 * 2**attempt)):
                break
            try:
                async with self._session.post(url, data=env, headers=headers) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        for record in records:
                            record["delivered"] = True
                            record["http_status"] = resp.status
                        self._bills_taken(records)
                        return
                    error = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break  # the receiver refuses it; retrying will not change its mind
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{exc.__class__.__name__}: {exc}"
        for record in records:
            record["delivered"] = False
            record["error"] = error
        first = records[0]
        log.warning("sandbox receipt %s %s (%d in the message) not delivered to %s: %s", first["code"], first["status"],
                    len(records), url, error)  # fmt: skip

    # -- inspection and warehouse ------------------------------------------------------------

    async def inspection_request(self, body: Any, header_scenario: str | None) -> web.Response:
        if not isinstance(body, dict) or not isinstance(body.get("requestId"), str) or not isinstance(
            body.get("declarations"), list
        ):
            return _json({"code": "invalid", "reason": "expected an object with requestId and declarations"}, 400)
        rid = body["requestId"]
        self.inspection_attempts[rid] += 1
        scenario = self.active(scenario_of(header_scenario, _json_values(body)))
        resp = await self.transport(scenario, self.inspection_attempts[rid])
        if resp is not None:
            return resp
        duplicate = any(r["requestId"] == rid for r in self.inspection)
        self.inspection.append(body)
        return _json({"status": "received", "requestId": rid, "inspectionId": f"INSP{len(self.inspection):08d}",
                      "duplicate": duplicate})  # fmt: skip

    async def warehouse_order(self, body: Any, header_scenario: str | None) -> web.Response:
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("orderId"), str)
            or body.get("direction") not in ("inbound", "outbound")
        ):
            return _json({"code": "invalid", "reason": "expected an object with orderId and direction"}, 400)
        oid = body["orderId"]
        self.warehouse_attempts[oid] += 1
        scenario = self.active(scenario_of(header_scenario, _json_values(body)))
        resp = await self.transport(scenario, self.warehouse_attempts[oid])
        if resp is not None:
            return resp
        self.warehouse.append(body)
        if oid in self.warehouse_orders:  # idempotent: same number, no new callbacks
            number = self.warehouse_orders[oid]["warehouseOrderNo"]
            return _json({"warehouseOrderNo": number, "orderId": oid, "duplicate": True}, 200)
        number = f"WH{len(self.warehouse_orders) + 1:08d}"
        url = body.get("callbackUrl") or self.config.warehouse_callback_url
        # what a cancel of it needs, after a restart too
        self.warehouse_orders[oid] = {"warehouseOrderNo": number, "callbackUrl": url if isinstance(url, str) else None,
                                      "direction": body["direction"], "reference": body.get("reference") or {},
                                      "cancelled": False}  # fmt: skip
        self._save()
        if isinstance(url, str) and url and scenario != "LOSTRCPT":
            statuses: list[tuple[str, str | None]]
            if scenario == "REJECT":
                statuses = [("rejected", "sandbox scenario REJECT")]
            else:
                final = "received" if body["direction"] == "inbound" else "shipped"
                statuses = [("accepted", None), (final, None)]
            events = [self._callback_body(body, number, s, r) for s, r in statuses]
            if scenario == "OOORCPT":
                events.reverse()
            if scenario == "DUPRCPT":
                events = [e for e in events for _ in range(2)]
            self._spawn(self._send_callbacks(url, events))
        return _json({"warehouseOrderNo": number, "orderId": oid, "duplicate": False}, 201)

    async def warehouse_cancel(self, order_id: str, body: Any, header_scenario: str | None) -> web.Response:
        """The cancel of an order it took: 404 for an orderId it never took; else as ``warehouse_cancel`` says — 200
        and (the first time) a ``cancelled`` callback (confirm), or the order going on (ship: ``delivered``, of an
        inbound order ``received``), or nothing more (ignore); or 409 ``cannot_cancel`` (refuse)."""
        if not isinstance(body, dict) or body.get("orderId") not in (None, order_id):
            return _json({"code": "invalid", "reason": "expected an object whose orderId is the path's"}, 400)
        self.warehouse_attempts[f"cancel:{order_id}"] += 1
        scenario = self.active(scenario_of(header_scenario, _json_values(body)))
        resp = await self.transport(scenario, self.warehouse_attempts[f"cancel:{order_id}"])
        if resp is not None:
            return resp
        order = self.warehouse_orders.get(order_id)
        if order is None:
            return _json({"code": "unknown_order", "reason": f"no order {order_id} here"}, 404)
        number, repeated = order["warehouseOrderNo"], bool(order["cancelled"])
        answer = self.config.warehouse_cancel
        self.warehouse_cancels.append({**body, "orderId": order_id, "sandbox_answer": answer})
        if answer == "refuse":  # not taken: a cancel taken after it is the first
            return _json({"code": "cannot_cancel", "reason": "sandbox: the parcel has left the warehouse "
                          "(warehouse_cancel refuse)", "warehouseOrderNo": number}, 409)  # fmt: skip
        if not repeated:
            self.warehouse_orders[order_id] = {**order, "cancelled": True}
            self._save()
        url = order["callbackUrl"] or self.config.warehouse_callback_url
        if not repeated and isinstance(url, str) and url and scenario != "LOSTRCPT" and answer != "ignore":
            if answer == "ship":  # it goes on with the order as though no cancel came
                status, reason = ("received" if order["direction"] == "inbound" else "delivered"), None
            else:
                status, reason = "cancelled", body.get("reason") or None
            event = self._callback_body({**order, "orderId": order_id}, number, status, reason)
            self._spawn(self._send_callbacks(url, [event]))
        return _json({"warehouseOrderNo": number, "orderId": order_id, "duplicate": repeated}, 200)

    @staticmethod
    def _callback_body(order: Mapping[str, Any], number: str, status: str, reason: str | None) -> dict[str, Any]:
        return {
            "schema": "cbec.warehouse-callback.v1",
            "orderId": order["orderId"],
            "warehouseOrderNo": number,
            "direction": order["direction"],
            "status": status,
            "reason": reason,
            "reference": order.get("reference") or {},
        }

    async def _send_callbacks(self, url: str, events: list[dict[str, Any]]) -> None:
        assert self._session is not None
        for event in events:
            if not await self._sleep(self.config.warehouse_callback_delay):
                return
            now = datetime.now(rc.CHINA_TZ)
            ts = int(now.timestamp())
            doc = {**event, "occurredAt": now.isoformat(timespec="seconds"), "timestamp": ts}
            data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers = {**self.config.warehouse_callback_headers, "Content-Type": "application/json"}
            if self.config.warehouse_callback_secret:
                headers["X-CBEC-Signature"] = sign_body(self.config.warehouse_callback_secret, data)
                headers["X-CBEC-Timestamp"] = str(ts)
            record: dict[str, Any] = {"url": url, "body": doc, "delivered": False}
            self.callbacks.append(record)
            try:
                async with self._session.post(url, data=data, headers=headers) as resp:
                    await resp.read()
                    record["delivered"] = 200 <= resp.status < 300
                    record["http_status"] = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                record["error"] = f"{exc.__class__.__name__}: {exc}"


# --- HTTP ------------------------------------------------------------------------------------

SANDBOX_KEY: web.AppKey[Sandbox] = web.AppKey("sandbox", Sandbox)


def _gone(request: web.Request) -> Callable[[], bool]:
    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    return gone


async def _dxp(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX_KEY]
    if (refused := unknown_scenario(request)) is not None:
        return refused
    body = await request.read()
    try:
        root = parse_xml(body, dxp.MAX_ENVELOPE_BYTES)
        env = dxp.read_envelope(root)
    except MessageRejected as exc:
        return _json({"code": "0001", "reason": str(exc), "issues": [i.as_dict() for i in exc.issues]}, 400)
    if sb.config.validate_schema:
        sset = await sb._schema_set()
        if sset is not None:
            issues = sset.validate_dxp(root)
            if issues:
                return _json({"code": "0002", "reason": "DxpMsg fails the DXP schema",
                              "issues": [i.as_dict() for i in issues[:20]]}, 400)  # fmt: skip
    if not any(r in CUSTOMS_IDS for r in env.receiver_ids):
        reason = f"receiver {', '.join(env.receiver_ids)} does not exist (expected {' or '.join(CUSTOMS_IDS)})"
        return _json({"code": "2001", "reason": reason}, 400)
    expected = dxp.receiver_for(env.msg_type)
    if expected not in env.receiver_ids:  # spec §5.4 2002: the import system is not the export one
        reason = f"{env.msg_type} goes to {expected}, not to {', '.join(env.receiver_ids)}"
        return _json({"code": "2002", "reason": reason}, 400)
    return await sb.accept(
        env.data,
        cop_msg_id=env.cop_msg_id,
        sender_id=env.sender_id,
        header_scenario=request.headers.get(SCENARIO_HEADER),
        enveloped=True,
        client_gone=_gone(request),
    )


async def _ceb(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX_KEY]
    if (refused := unknown_scenario(request)) is not None:
        return refused
    body = await request.read()
    cop = request.headers.get("X-CopMsgId") or ""
    if not cop:
        with contextlib.suppress(MessageRejected):
            cop = parse_xml(body).get("guid", "")
    return await sb.accept(
        body,
        cop_msg_id=cop or "unknown",
        sender_id=request.headers.get("X-Dxp-Sender") or sb.config.enterprise_dxp_id,
        header_scenario=request.headers.get(SCENARIO_HEADER),
        enveloped=False,
        client_gone=_gone(request),
    )


async def _read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return None


async def _inspection(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX_KEY]
    if (refused := unknown_scenario(request)) is not None:
        return refused
    return await sb.inspection_request(await _read_json(request), request.headers.get(SCENARIO_HEADER))


async def _warehouse(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX_KEY]
    if (refused := unknown_scenario(request)) is not None:
        return refused
    return await sb.warehouse_order(await _read_json(request), request.headers.get(SCENARIO_HEADER))


async def _warehouse_cancel(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX_KEY]
    if (refused := unknown_scenario(request)) is not None:
        return refused
    return await sb.warehouse_cancel(request.match_info["order_id"], await _read_json(request),
                                     request.headers.get(SCENARIO_HEADER))  # fmt: skip


async def _realtime_upload(request: web.Request) -> web.Response:
    form = await request.post()
    raw = form.get("payExInfoStr")
    return _json(request.app[SANDBOX_KEY].take_upload(raw if isinstance(raw, str) else None))


async def _realtime_ask(request: web.Request) -> web.Response:
    body = await _read_json(request)
    if not isinstance(body, dict) or not body.get("ebpCode") or not body.get("orderNo"):
        return _json({"code": "invalid", "reason": "expected {\"ebpCode\": ..., \"orderNo\": ...}"}, 400)
    return _json(await request.app[SANDBOX_KEY].ask_payment_data(str(body["ebpCode"]), str(body["orderNo"])))


async def _realtime_records(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX_KEY]
    return _json({"questions": sb.realtime_questions, "uploads": sb.realtime_uploads})


async def _stats(request: web.Request) -> web.Response:
    return _json(request.app[SANDBOX_KEY].stats())


async def _receipts(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX_KEY]
    full = request.query.get("full") in ("1", "true")
    items = [r if full else {k: v for k, v in r.items() if k != "xml"} for r in sb.receipts]
    return _json({"receipts": items})


async def _records(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX_KEY]
    return _json({"inspection": sb.inspection, "warehouse": sb.warehouse, "warehouse_cancels": sb.warehouse_cancels,
                  "callbacks": sb.callbacks})


async def _reset(request: web.Request) -> web.Response:
    request.app[SANDBOX_KEY].reset()
    return _json({"status": "reset"})


#: Fields that carry credentials (the gateway's customs key in the receipts' headers, the warehouse's shared
#: secret) or say where they go: never shown by GET /sandbox/config, never changed by POST — the sandbox answers
#: anyone on its port, and a changed receipt_url would send the key elsewhere. Set them where the sandbox starts.
_GUARDED = ("receipt_headers", "receipt_url", "warehouse_callback_secret", "warehouse_callback_url",
            "warehouse_callback_headers", "realtime_ask_urls", "realtime_certs")


def _shown(config: SandboxConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["realtime_certs"] = [signing.key_name_for(signing.certificate_serial(c)) for c in config.realtime_certs]
    out["receipt_headers"] = {name: "(set)" for name in config.receipt_headers}
    out["warehouse_callback_headers"] = {name: "(set)" for name in config.warehouse_callback_headers}
    # a platform's platDataOpen URL ends in its secret token (whoever has it can make the gateway upload the platform's
    # payment data): shown without it, as the gateway's log writes it
    out["realtime_ask_urls"] = {ebp: url.rsplit("/", 1)[0] + "/***" for ebp, url in config.realtime_ask_urls.items()}
    if config.warehouse_callback_secret:
        out["warehouse_callback_secret"] = "(set)"
    return out


async def _config(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX_KEY]
    if request.method == "POST":
        changes = await _read_json(request)
        if not isinstance(changes, dict):
            return _json({"code": "invalid", "reason": "expected a JSON object of config fields"}, 400)
        guarded = sorted(set(changes) & set(_GUARDED))
        if guarded:
            reason = f"{', '.join(guarded)} cannot be changed at run time: set them where the sandbox starts"
            return _json({"code": "invalid", "reason": reason}, 400)
        try:
            sb.config.update(changes)
        except KeyError as exc:
            return _json({"code": "invalid", "reason": f"unknown config field {exc.args[0]!r}"}, 400)
        except (TypeError, ValueError, ArithmeticError) as exc:
            return _json({"code": "invalid", "reason": str(exc)}, 400)
    return _json(_shown(sb.config))


async def _health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


def create_sandbox_app(
    config: SandboxConfig | None = None, *, schemas: Any = None, state_dir: Path | str | None = None
) -> web.Application:
    """The sandbox as an aiohttp application (run it with any aiohttp runner); ``schemas``: a
    gateway.schema.SchemaSet of the same process to validate with (by default it compiles its own); ``state_dir``: a
    folder where its ledgers outlive the run (gateway.sandbox.state; read when it starts), else they are in memory
    only."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    sb = Sandbox(config or SandboxConfig(), schemas=schemas, state_dir=state_dir)
    app[SANDBOX_KEY] = sb
    app.on_startup.append(sb.startup)
    app.on_shutdown.append(sb.shutdown)
    app.on_cleanup.append(sb.cleanup)
    app.router.add_post("/dxp", _dxp)
    app.router.add_post("/ceb", _ceb)
    app.router.add_post("/inspection", _inspection)
    app.router.add_post("/warehouse/orders", _warehouse)
    app.router.add_post("/warehouse/orders/{order_id}/cancel", _warehouse_cancel)
    app.router.add_post("/ceb2grab/grab/realTimeDataUpload", _realtime_upload)
    app.router.add_post("/sandbox/realtime/ask", _realtime_ask)
    app.router.add_get("/sandbox/realtime", _realtime_records)
    app.router.add_get("/sandbox/stats", _stats)
    app.router.add_get("/sandbox/receipts", _receipts)
    app.router.add_get("/sandbox/records", _records)
    app.router.add_post("/sandbox/reset", _reset)
    app.router.add_route("*", "/sandbox/config", _config)
    app.router.add_get("/healthz", _health)
    return app


def sandbox_state_dir(data_dir: Path | str | None) -> Path | None:
    """Where the sandbox of a data folder (``cbec serve``'s ``data_dir``, ``cbec sandbox --data-dir``) keeps its
    state: its ``sandbox`` folder; None (no data folder): in memory."""
    return None if data_dir is None else Path(data_dir) / "sandbox"


@dataclass
class RunningSandbox:
    url: str  # http://127.0.0.1:<port>, no trailing slash
    app: web.Application
    runner: web.AppRunner

    @property
    def sandbox(self) -> Sandbox:
        return self.app[SANDBOX_KEY]

    @property
    def config(self) -> SandboxConfig:
        return self.sandbox.config

    def stats(self) -> dict[str, Any]:
        return self.sandbox.stats()

    async def wait_idle(self, timeout: float = 10.0) -> None:
        await self.sandbox.wait_idle(timeout)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_sandbox(
    host: str = "127.0.0.1", port: int = 0, *, schemas: Any = None, state_dir: Path | str | None = None, **config: Any
) -> RunningSandbox:
    """Start the sandbox on ``host:port`` (0: a free port) and return its URL and handles (``schemas``, ``state_dir``:
    see create_sandbox_app)."""
    app = create_sandbox_app(SandboxConfig(**config), schemas=schemas, state_dir=state_dir)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    return RunningSandbox(f"http://{netloc(host, bound[1])}", app, runner)
