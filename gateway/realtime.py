"""The "179" real-time payment data (海关总署公告2018年第165号 and 第179号; spec §10), pure: no I/O.

Customs asks an import platform for the raw payment data behind one of its orders (``platDataOpen``: a form
parameter ``openReq`` holding ``{orderNo, sessionID, serviceTime}``), the platform answers at once
(``{"code": "10000", ...}``) and then uploads, within minutes, the payment exactly as its payment company saw it
(``realTimeDataUpload``: a form parameter ``payExInfoStr`` holding the signed JSON below). The gateway does both
for the platforms configured under ``[[realtime.platforms]]``: a platform hands it each payment's raw data once
(``POST /v1/payment-data``), customs' question is answered and the upload goes through the retry queue.

What is checked here: the payment data a platform hands over (the field table of spec §10.2: lengths, codes,
the amount's precision, one entry per order), customs' question, the upload's text and the string its
signature covers, and customs' reply.

The signed string joins the upload's four first items with ``||``. The official attachment writes the head and list
as bare JSON under ``payExchangeInfoList``, working implementations quote them under ``payExchangeInfoLists`` and quote
serviceTime too (spec §10.3, confidence [C]): ``quoted`` (the default) follows the implementations, ``spec`` the
attachment. Either way the JSON signed is byte for byte the JSON sent: both are written here, once.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from gateway.errors import Issue, Layer

SUCCESS = "10000"  # customs' and the platform's "OK"
FAILURE = "20000"
VARIANTS = ("quoted", "spec")
Variant = Literal["quoted", "spec"]

HEAD = "payExchangeInfoHead"
LISTS = "payExchangeInfoLists"

#: verDept: who can verify payTransactionId (1 UnionPay 银联, 2 NetsUnion 网联, 3 other); payType (1 APP, 2 PC,
#: 3 scanned code, 4 other).
VER_DEPT = frozenset({"1", "2", "3"})
PAY_TYPE = frozenset({"1", "2", "3", "4"})
_DIGITS14 = re.compile(r"[0-9]{14}")
_AMOUNT = re.compile(r"[0-9]{1,14}(\.[0-9]{1,5})?")  # N19,5
_SESSION = re.compile(r"[A-Za-z0-9._:-]{1,64}")


#: The latest serviceTime taken (9999-12-31T23:59:59.999Z in milliseconds): within the database's bigint.
MAX_MILLIS = 253_402_300_799_999


def _real_time(value: str) -> bool:
    """14 digits yyyyMMddHHmmss that make a real calendar time (customs checks the payment's time against it)."""
    if not _DIGITS14.fullmatch(value):
        return False
    try:
        datetime.strptime(value, "%Y%m%d%H%M%S")
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Field:
    name: str
    max_len: int
    required: bool = True


#: The head's fields as the platform hands them over, in the order the upload writes them (guid comes first and is
#: the gateway's, one per upload).
HEAD_FIELDS: tuple[Field, ...] = (
    Field("initalRequest", 8000),  # sic: customs' spelling
    Field("initalResponse", 8000),
    Field("ebpCode", 18),
    Field("payCode", 18),
    Field("payTransactionId", 60),
    Field("totalAmount", 19),
    Field("currency", 4),
    Field("verDept", 1),
    Field("payType", 1, required=False),
    Field("tradingTime", 14),
    Field("note", 1000, required=False),
)
LIST_FIELDS: tuple[Field, ...] = (
    Field("orderNo", 60),
    Field("recpAccount", 60),
    Field("recpCode", 18, required=False),
    Field("recpName", 100),
)
GOODS_FIELDS: tuple[Field, ...] = (Field("gname", 250), Field("itemLink", 3000))
MAX_ORDERS = 100  # one payment rarely pays more; bounds what one upload carries
MAX_GOODS = 200


@dataclass(frozen=True)
class PaymentData:
    """One payment's raw data as a platform handed it over, checked: ``head`` without guid, ``lists`` one entry per
    order the payment paid (each with its ``goodsInfo``), strings throughout (totalAmount its decimal text)."""

    head: dict[str, str]
    lists: list[dict[str, Any]]

    @property
    def ebp_code(self) -> str:
        return self.head["ebpCode"]

    @property
    def pay_transaction_id(self) -> str:
        return self.head["payTransactionId"]

    @property
    def order_nos(self) -> list[str]:
        return [item["orderNo"] for item in self.lists]


def _issue(code: str, path: str, message: str) -> Issue:
    return Issue(Layer.RULE, code, path, message)


def _text(value: Any, path: str, f: Field, issues: list[Issue]) -> str | None:
    if value is None or value == "":
        if f.required:
            issues.append(_issue("realtime.missing_field", path, f"{f.name} is required"))
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        issues.append(_issue("realtime.invalid_type", path, f"{f.name} must be a string; found {type(value).__name__}"))
        return None
    text = format(value, "f") if isinstance(value, Decimal) else str(value)
    if len(text) > f.max_len:
        issues.append(_issue("realtime.too_long", path, f"{f.name} has {len(text)} characters; at most {f.max_len}"))
        return None
    return text


def _fields(obj: Any, fields: tuple[Field, ...], path: str, issues: list[Issue]) -> dict[str, str]:
    if not isinstance(obj, Mapping):
        issues.append(_issue("realtime.invalid_type", path, "expected an object"))
        return {}
    known = {f.name for f in fields}
    for name in obj:
        if name not in known and name != "goodsInfo":
            issues.append(_issue("realtime.unknown_field", f"{path}/{name}", f"{name} is no field of the 179 data"))
    out: dict[str, str] = {}
    for f in fields:
        text = _text(obj.get(f.name), f"{path}/{f.name}", f, issues)
        if text is not None:
            out[f.name] = text
    return out


def payment_data(payload: Any) -> tuple[PaymentData | None, list[Issue]]:
    """The platform's payment data (``{payExchangeInfoHead, payExchangeInfoLists}`` as customs names them, without the
    head's guid), checked; paths are JSON pointers. None with the issues when anything is wrong."""
    issues: list[Issue] = []

    def bad(code: str, path: str, message: str) -> None:
        issues.append(_issue(code, path, message))

    if not isinstance(payload, Mapping):
        return None, [_issue("realtime.invalid_type", "", "the body must be a JSON object")]
    for name in payload:
        if name not in (HEAD, LISTS):
            bad("realtime.unknown_field", f"/{name}", f"{name} is neither {HEAD} nor {LISTS}")
    raw_head = payload.get(HEAD)
    if isinstance(raw_head, Mapping) and "guid" in raw_head:
        bad("realtime.unknown_field", f"/{HEAD}/guid", "guid is the gateway's to give, one for each upload")
        raw_head = {k: v for k, v in raw_head.items() if k != "guid"}
    head = _fields(raw_head, HEAD_FIELDS, f"/{HEAD}", issues)
    amount = head.get("totalAmount")
    if amount is not None and not _AMOUNT.fullmatch(amount):
        bad("realtime.invalid_amount", f"/{HEAD}/totalAmount",
            f"totalAmount {amount!r} is no amount of at most 14 digits and 5 decimals")  # fmt: skip
    elif amount is not None and Decimal(amount) <= 0:
        bad("realtime.invalid_amount", f"/{HEAD}/totalAmount", "totalAmount must be above 0")
    elif amount is not None:
        head["totalAmount"] = format(Decimal(amount), "f")  # "007.50" is no JSON number; "7.50" is, its scale kept
    if "verDept" in head and head["verDept"] not in VER_DEPT:
        bad("realtime.invalid_code", f"/{HEAD}/verDept",
            f"verDept {head['verDept']!r} is none of 1 (UnionPay), 2 (NetsUnion), 3 (other)")  # fmt: skip
    if "payType" in head and head["payType"] not in PAY_TYPE:
        bad("realtime.invalid_code", f"/{HEAD}/payType",
            f"payType {head['payType']!r} is none of 1 (APP), 2 (PC), 3 (scan), 4 (other)")  # fmt: skip
    if "tradingTime" in head and not _real_time(head["tradingTime"]):
        bad("realtime.invalid_time", f"/{HEAD}/tradingTime",
            f"tradingTime {head['tradingTime']!r} is not a time yyyyMMddHHmmss")  # fmt: skip
    raw_lists = payload.get(LISTS)
    lists: list[dict[str, Any]] = []
    if not isinstance(raw_lists, list) or not raw_lists:
        bad("realtime.missing_field", f"/{LISTS}", "one entry for every order the payment paid is required")
    elif len(raw_lists) > MAX_ORDERS:
        bad("realtime.too_many", f"/{LISTS}", f"{len(raw_lists)} orders; at most {MAX_ORDERS}")
    else:
        seen: set[str] = set()
        for i, raw in enumerate(raw_lists):
            path = f"/{LISTS}/{i}"
            item: dict[str, Any] = _fields(raw, LIST_FIELDS, path, issues)
            order_no = item.get("orderNo")
            if order_no is not None and order_no in seen:
                bad("realtime.duplicate_order", f"{path}/orderNo", f"orderNo {order_no} is listed twice")
            seen.add(order_no or "")
            goods = raw.get("goodsInfo") if isinstance(raw, Mapping) else None
            if not isinstance(goods, list) or not goods:
                bad("realtime.missing_field", f"{path}/goodsInfo",
                    "goodsInfo lists the goods of the order, each with gname and itemLink")  # fmt: skip
            elif len(goods) > MAX_GOODS:
                bad("realtime.too_many", f"{path}/goodsInfo", f"{len(goods)} goods; at most {MAX_GOODS}")
            else:
                item["goodsInfo"] = [_fields(g, GOODS_FIELDS, f"{path}/goodsInfo/{j}", issues)
                                     for j, g in enumerate(goods)]  # fmt: skip
            lists.append(item)
    if issues:
        return None, issues
    return PaymentData(head, lists), []


# --- customs' question (platDataOpen) -------------------------------------------------------------------


@dataclass(frozen=True)
class OpenRequest:
    order_no: str
    session_id: str
    service_time: int  # customs' clock, ms


def open_request(raw: str | None) -> OpenRequest | str:
    """Customs' ``openReq`` form value, or what is wrong with it."""
    if not raw:
        return "the form parameter openReq is missing"
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested
        return f"openReq is not JSON: {exc}"
    if not isinstance(doc, Mapping):
        return "openReq is not a JSON object"
    order_no, session_id, service_time = doc.get("orderNo"), doc.get("sessionID"), doc.get("serviceTime")
    if not isinstance(order_no, str) or not 0 < len(order_no.strip()) <= 60 or not order_no.isprintable():
        return "openReq.orderNo must be an order number of 1 to 60 printable characters"
    if not isinstance(session_id, str) or not _SESSION.fullmatch(session_id):
        return "openReq.sessionID must be customs' session id (1 to 64 letters, digits, '.', '_', ':' or '-')"
    if isinstance(service_time, str) and service_time.isascii() and service_time.isdigit():
        service_time = int(service_time)
    if not isinstance(service_time, int) or isinstance(service_time, bool) or not 0 <= service_time <= MAX_MILLIS:
        return "openReq.serviceTime must be customs' time in milliseconds"
    return OpenRequest(order_no.strip(), session_id, service_time)


def reply(code: str, message: str, service_time: int) -> dict[str, Any]:
    """What the platform answers customs' question with: 10000 taken, 20000 not."""
    return {"code": code, "message": message, "serviceTime": service_time}


# --- the upload (realTimeDataUpload) ---------------------------------------------------------------------


def _json_text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def head_json(guid: str, head: Mapping[str, str]) -> str:
    """The head's JSON as uploaded and signed: guid first, then the fields in their table's order, the optional ones
    only when given; totalAmount a JSON number written as the platform gave it (no binary float touches it)."""
    parts = [f'"guid":{_json_text(guid)}']
    for f in HEAD_FIELDS:
        if f.name in head:
            value = head[f.name] if f.name == "totalAmount" else _json_text(head[f.name])
            parts.append(f"{_json_text(f.name)}:{value}")
    return "{" + ",".join(parts) + "}"


def lists_json(lists: Sequence[Mapping[str, Any]]) -> str:
    """The orders' JSON as uploaded and signed, each entry's fields in their table's order, goodsInfo after orderNo."""
    out = []
    for item in lists:
        parts = [f'"orderNo":{_json_text(item["orderNo"])}']
        goods = ",".join("{" + ",".join(f"{_json_text(g.name)}:{_json_text(good[g.name])}" for g in GOODS_FIELDS)
                         + "}" for good in item["goodsInfo"])  # fmt: skip
        parts.append(f'"goodsInfo":[{goods}]')
        parts += [f"{_json_text(f.name)}:{_json_text(item[f.name])}" for f in LIST_FIELDS[1:] if f.name in item]
        out.append("{" + ",".join(parts) + "}")
    return "[" + ",".join(out) + "]"


def signed_string(session_id: str, head: str, lists: str, service_time: str, variant: Variant = "quoted") -> str:
    """What the platform's key signs (spec §10.3), from the JSON texts as they are sent."""
    if variant == "spec":
        return (f'"sessionID":{_json_text(session_id)}||"{HEAD}":{head}||"payExchangeInfoList":{lists}'
                f"||\"serviceTime\":{service_time}")  # fmt: skip
    return (f'"sessionID":{_json_text(session_id)}||"{HEAD}":"{head}"||"{LISTS}":"{lists}"'
            f'||"serviceTime":"{service_time}"')  # fmt: skip


@dataclass(frozen=True)
class Upload:
    """One upload: ``body`` is the form's ``payExInfoStr`` value, ``signed`` the string its signature covers."""

    guid: str
    body: str
    signed: str


@dataclass(frozen=True)
class Unsigned:
    """An upload before its signature: ``signed`` is the string the platform's key signs (its UTF-8 bytes), which
    :meth:`with_signature` completes — two steps, for a key that may sign elsewhere (a UKey: gateway.ukey)."""

    session_id: str
    guid: str
    head: str
    lists: str
    when: str
    variant: Variant

    @property
    def signed(self) -> str:
        return signed_string(self.session_id, self.head, self.lists, self.when, self.variant)

    def with_signature(self, signature: bytes, cert_no: str) -> Upload:
        """The upload signed: ``signature`` raw over the signed string's UTF-8, ``cert_no`` the key's certificate's
        serial."""
        value = base64.b64encode(signature).decode("ascii")
        time_json = self.when if self.variant == "spec" else _json_text(self.when)
        body = (f'{{"sessionID":{_json_text(self.session_id)},"{HEAD}":{self.head},"{LISTS}":{self.lists},'
                f'"serviceTime":{time_json},"certNo":{_json_text(cert_no)},'
                f'"signValue":{_json_text(value)}}}')  # fmt: skip
        return Upload(self.guid, body, self.signed)


def unsigned_upload(session_id: str, data: PaymentData, *, service_time: int, variant: Variant = "quoted",
                    guid: str | None = None) -> Unsigned:  # fmt: skip
    """The ``payExInfoStr`` answering customs' session, to be signed: every order the payment paid (customs wants
    them all, not only the one it asked about). ``guid``: the upload's, upper case (a retry sends the same)."""
    guid = (guid or str(uuid.uuid4())).upper()
    return Unsigned(session_id, guid, head_json(guid, data.head), lists_json(data.lists), str(service_time), variant)


@dataclass(frozen=True)
class ReadUpload:
    """An upload as customs (the sandbox) reads it back."""

    session_id: str
    guid: str
    data: PaymentData
    cert_no: str
    signature: bytes
    signed: str  # the string the signature must cover, rebuilt from what came


def read_upload(body: str, variant: Variant = "quoted") -> ReadUpload | str:
    """Customs' side: a ``payExInfoStr`` read and checked, or what is wrong with it. The signed string is rebuilt
    by writing the head and list again as :func:`upload` writes them, so an upload written otherwise (another key
    order, escaped Chinese) does not verify — as customs' own check is reported to behave."""
    try:
        doc = json.loads(body, parse_float=Decimal)
    except ValueError as exc:
        return f"payExInfoStr is not JSON: {exc}"
    if not isinstance(doc, Mapping):
        return "payExInfoStr is not a JSON object"
    for name in ("sessionID", HEAD, LISTS, "serviceTime", "certNo", "signValue"):
        if doc.get(name) in (None, ""):
            return f"{name} is missing"
    head = doc[HEAD]
    if not isinstance(head, Mapping) or not isinstance(head.get("guid"), str) or not head["guid"]:
        return f"{HEAD}.guid is missing"
    if head["guid"] != head["guid"].upper() or len(head["guid"]) > 36:
        return f"{HEAD}.guid must be upper case, at most 36 characters"
    data, issues = payment_data({HEAD: {k: v for k, v in head.items() if k != "guid"}, LISTS: doc[LISTS]})
    if data is None:
        return "; ".join(f"{i.path}: {i.message}" for i in issues[:3])
    try:
        signature = base64.b64decode(str(doc["signValue"]), validate=True)
    except (binascii.Error, ValueError):
        return "signValue is not base64"
    when = doc["serviceTime"]
    when_text = format(when, "f") if isinstance(when, Decimal) else str(when)
    signed = signed_string(str(doc["sessionID"]), head_json(head["guid"], data.head), lists_json(data.lists),
                           when_text, variant)  # fmt: skip
    return ReadUpload(str(doc["sessionID"]), head["guid"], data, str(doc["certNo"]), signature, signed)


def customs_answer(body: bytes) -> tuple[str, str] | None:
    """customs' reply to an upload as (code, message), None when it is no JSON object with a code."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, Mapping) or doc.get("code") is None:
        return None
    return str(doc["code"]), str(doc.get("message") or "")


# --- the stored payment data and customs' questions (gateway/sql/370_realtime_payment_data.sql) ------------------

#: A payment handed over ($1 ebpCode, $2 payTransactionId, $3 head, $4 lists, $5 submitter), or handed over again:
#: its id and whether it is new.
UPSERT_PAYMENT = """
INSERT INTO payment_data AS p (ebp_code, pay_transaction_id, head, lists, submitter)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (ebp_code, pay_transaction_id) DO UPDATE
   SET head = EXCLUDED.head, lists = EXCLUDED.lists, submitter = EXCLUDED.submitter, updated_at = now()
RETURNING p.id, (p.xmax = 0) AS created
"""
#: The orders payment $3 paid ($2) under platform $1: each taken unless another payment of the platform holds it
#: (waiting for one being stored meanwhile); the orderNos taken come back, the others are held elsewhere.
TAKE_ORDERS = """
INSERT INTO payment_orders AS o (ebp_code, order_no, payment_id)
SELECT $1, n, $3 FROM unnest($2::text[]) AS n
ON CONFLICT (ebp_code, order_no) DO UPDATE SET payment_id = EXCLUDED.payment_id
 WHERE o.payment_id = EXCLUDED.payment_id
RETURNING o.order_no
"""
#: The payment that paid order $2 of platform $1, withdrawn whole (its orders free again: payment_orders cascades):
#: its payTransactionId and the orders it listed; none when no payment paid that order.
WITHDRAW_PAYMENT = """
DELETE FROM payment_data AS p USING payment_orders AS o
 WHERE o.ebp_code = $1 AND o.order_no = $2 AND p.id = o.payment_id
RETURNING p.pay_transaction_id, p.lists
"""
#: The orders payment $1 no longer lists ($2 those it does) are free again.
DROP_ORDERS = "DELETE FROM payment_orders WHERE payment_id = $1 AND NOT (order_no = ANY($2::text[]))"
#: Customs' question ($1 ebpCode, $2 orderNo, $3 sessionID, $4 serviceTime): its id, none when the session was asked
#: already.
ASK = """
INSERT INTO realtime_requests (ebp_code, order_no, session_id, service_time) VALUES ($1, $2, $3, $4)
ON CONFLICT (ebp_code, session_id) DO NOTHING
RETURNING id
"""
ASKED = "SELECT id, order_no FROM realtime_requests WHERE ebp_code = $1 AND session_id = $2"
#: The uploads waiting for the payment data of orders $2 of platform $1: the jobs of customs' questions about them not
#: answered yet (queued or running: retrying until the data comes; dead: they gave up before it came). A question an
#: operator closed has its job run once more at once, to end uploading nothing (gateway.store.close_payment_question):
#: hastened or replayed here meanwhile, it ends the same.
WAITING_UPLOADS = """
SELECT r.job_id, j.state FROM realtime_requests AS r
  JOIN LATERAL (SELECT j.state FROM jobs AS j WHERE j.id = r.job_id OFFSET 0) AS j ON true
 WHERE r.ebp_code = $1 AND r.order_no = ANY($2::text[]) AND r.state = 'asked'
"""
#: The job that uploads question $1's answer ($2): what the operators' list shows of its attempts and dead letter.
QUESTION_JOB = "UPDATE realtime_requests SET job_id = $2 WHERE id = $1"
#: What an upload needs: the question $1 (closed: nothing to upload) and the payment its order was paid by (none yet:
#: NULL columns).
UPLOAD_INPUT = """
SELECT r.id, r.ebp_code, r.order_no, r.session_id, r.service_time, r.state, r.closed_at IS NOT NULL AS closed,
       p.head, p.lists
  FROM realtime_requests AS r
  LEFT JOIN payment_orders AS o ON o.ebp_code = r.ebp_code AND o.order_no = r.order_no
  LEFT JOIN payment_data AS p ON p.id = o.payment_id
 WHERE r.id = $1
"""
#: Customs' answer to the upload of question $1: state $2, the upload's guid $3, the answer $4.
ANSWERED = """
UPDATE realtime_requests
   SET state = $2, upload_guid = $3, answer = $4, uploaded_at = CASE WHEN $2 = 'uploaded' THEN now() END,
       answered_at = now()
 WHERE id = $1
"""
#: An order's payment ($1 ebpCode, $2 orderNo) and customs' questions about it, newest first.
PAYMENT_OF_ORDER = """
SELECT p.pay_transaction_id, p.head, p.lists, p.submitter, p.received_at, p.updated_at
  FROM payment_orders AS o JOIN payment_data AS p ON p.id = o.payment_id
 WHERE o.ebp_code = $1 AND o.order_no = $2
"""
QUESTIONS_OF_ORDER = """
SELECT session_id, service_time, received_at, state, upload_guid, uploaded_at, answer
  FROM realtime_requests WHERE ebp_code = $1 AND order_no = $2 ORDER BY id DESC LIMIT 50
"""

#: The operators' list of customs' questions, newest first: each with whether its order's payment was handed over,
#: its upload's job and, closed, who closed it, when and why. Arguments: $1 below this id (a page's cursor), $2 how
#: many, $3 one state only (NULL: any), $4 the platforms (ebpCodes; NULL: every one).
_QUESTIONS = """
SELECT r.id, r.ebp_code, r.order_no, r.session_id, r.service_time, r.received_at, r.state, r.upload_guid,
       r.uploaded_at, r.answered_at, r.answer, r.closed_at, r.closed_by, r.close_reason,
       o.order_no IS NOT NULL AS handed_over,
       j.id AS job_id, j.state AS job_state, j.attempts AS job_attempts, j.last_error AS job_last_error,
       j.run_after AS job_run_after
  FROM realtime_requests AS r
  LEFT JOIN LATERAL (SELECT o.order_no FROM payment_orders AS o
                      WHERE o.ebp_code = r.ebp_code AND o.order_no = r.order_no OFFSET 0) AS o ON true
  LEFT JOIN LATERAL (SELECT * FROM jobs AS j WHERE j.id = r.job_id OFFSET 0) AS j ON true
 WHERE {which} r.id < $1 AND ($3::text IS NULL OR r.state = $3) AND ($4::text[] IS NULL OR r.ebp_code = ANY($4::text[]))
 ORDER BY r.id DESC
 LIMIT $2
"""
#: Every question (through the primary key).
QUESTIONS = _QUESTIONS.format(which="")
#: The questions not uploaded (asked or refused) and not closed, through their partial index (sql/470): the list that
#: needs a look.
OPEN_QUESTIONS = _QUESTIONS.format(which="r.state <> 'uploaded' AND r.closed_at IS NULL AND")
#: The questions an operator closed (CLOSE_QUESTION), through theirs.
CLOSED_QUESTIONS = _QUESTIONS.format(which="r.closed_at IS NOT NULL AND")
#: The open questions as /metrics counts them: waiting (asked, the upload queued or retrying: for its data or for
#: customs), given up (asked, the upload a dead letter: it waited for its data, or for customs' endpoint to answer,
#: past its retries, or the platform's UKey refused to sign), refused by customs; and how long the longest waiting
#: one has waited (seconds; 0: none). The partial index read whole: the open questions are few (a closed one is
#: none of them).
OPEN_FIGURES = """
SELECT count(*) FILTER (WHERE r.state = 'asked' AND j.state IS DISTINCT FROM 'dead') AS waiting,
       count(*) FILTER (WHERE r.state = 'asked' AND j.state = 'dead') AS given_up,
       count(*) FILTER (WHERE r.state = 'refused') AS refused,
       coalesce(extract(epoch FROM now() - min(r.received_at)
                                           FILTER (WHERE r.state = 'asked' AND j.state IS DISTINCT FROM 'dead')), 0)
           AS oldest_wait_s
  FROM realtime_requests AS r
  LEFT JOIN LATERAL (SELECT j.state FROM jobs AS j WHERE j.id = r.job_id OFFSET 0) AS j ON true
 WHERE r.state <> 'uploaded' AND r.closed_at IS NULL
"""
#: The states a question is listed by (GET /v1/payment-data/questions?state=): ``open`` is asked or refused and not
#: closed, ``closed`` those an operator closed (whatever their upload's state); the others by the upload's state,
#: closed or not.
QUESTION_STATES = ("open", "closed", "asked", "refused", "uploaded", "any")

#: A question to close ($1), locked: its upload's state, its job, whether it was closed already.
QUESTION_TO_CLOSE = """
SELECT id, ebp_code, order_no, state, job_id, closed_at, closed_by, close_reason
  FROM realtime_requests WHERE id = $1 FOR UPDATE
"""
#: The state of a closing question's job ($1), locked: a worker claims no job another transaction holds (its claim
#: skips locked rows), so the question is closed either before the upload is claimed or not at all.
JOB_TO_CLOSE = "SELECT state FROM jobs WHERE id = $1 FOR UPDATE"
#: Question $1 closed by $2 (a key's name) for the reason $3.
CLOSE_QUESTION = "UPDATE realtime_requests SET closed_at = now(), closed_by = $2, close_reason = $3 WHERE id = $1"


CODES: dict[str, str] = {
    "realtime.missing_field": "payment data (POST /v1/payment-data): a required field of spec §10.2 is missing",
    "realtime.invalid_type": "payment data: a value is not a string (or the body not a JSON object)",
    "realtime.too_long": "payment data: a value is longer than spec §10.2 allows",
    "realtime.unknown_field": "payment data: a member that is no field of the 179 data (the head's guid is the "
    "gateway's)",
    "realtime.invalid_amount": "payment data: totalAmount is no positive amount of at most 14 digits and 5 decimals",
    "realtime.invalid_code": "payment data: verDept or payType is not one of its codes",
    "realtime.invalid_time": "payment data: tradingTime is not yyyyMMddHHmmss",
    "realtime.too_many": "payment data: more orders or goods than one upload carries",
    "realtime.duplicate_order": "payment data: an orderNo is listed twice",
    "realtime.not_configured": "payment data: the platform (ebpCode) is not one the gateway uploads for "
    "([[realtime.platforms]])",
    "realtime.payment_of_another_order": "payment data: an order is already paid by another stored payment "
    "(payTransactionId) of the platform: hand that one over again without it, or withdraw it (DELETE "
    "/v1/payment-data/{ebpCode}/{orderNo})",
}

__all__ = [
    "ANSWERED", "ASK", "ASKED", "CLOSED_QUESTIONS", "CLOSE_QUESTION", "CODES", "DROP_ORDERS", "FAILURE", "HEAD",
    "HEAD_FIELDS", "JOB_TO_CLOSE", "LISTS", "LIST_FIELDS", "OPEN_FIGURES", "OPEN_QUESTIONS", "PAYMENT_OF_ORDER",
    "QUESTIONS", "QUESTIONS_OF_ORDER", "QUESTION_JOB", "QUESTION_STATES", "QUESTION_TO_CLOSE", "SUCCESS",
    "TAKE_ORDERS", "UPLOAD_INPUT", "UPSERT_PAYMENT", "VARIANTS", "WAITING_UPLOADS", "WITHDRAW_PAYMENT",
    "OpenRequest", "PaymentData", "ReadUpload", "Unsigned", "Upload", "Variant", "customs_answer", "head_json",
    "lists_json", "open_request", "payment_data", "read_upload", "reply", "signed_string", "unsigned_upload",
]  # fmt: skip
