"""Inspection adapter: tell an inspection service (CIQ-style checks, a zone's inspection desk) about the
declarations configured for inspection — by default bonded (1210, 1239) import inventories.

The CEB spec has no inspection message since the 2018 customs–CIQ merger (spec §11), so the JSON below is
this gateway's own contract (docs/adapters.md). One request per CEB message, carrying every declaration in
it that qualifies; a message with none is skipped without a request.

Job payload: ``{"message": "<CEB XML>", "dedupe_key": "..."}`` (as for the customs adapter).

Request ``POST <url>`` (``Content-Type: application/json``, ``Idempotency-Key: <requestId>``)::

    {"schema": "cbec.inspection.v1",
     "requestId": "<uuid5 of the job's dedupe key; the same on every retry>",
     "messageType": "CEB621", "messageGuid": "<root guid>",
     "declarations": [{
         "guid": "...", "orderNo": "...", "ebpCode": "...", "ebcCode": "...", "copNo": "...",
         "logisticsCode": "...", "logisticsNo": "...", "tradeMode": "1210", "customsCode": "4604",
         "portCode": "4604", "emsNo": "...", "areaCode": "...", "areaName": "...", "declTime": "20261120",
         "items": [{"gnum": "1", "itemRecordNo": "...", "itemNo": "...", "itemName": "...", "gcode": "3304990099",
                    "gname": "...", "gmodel": "...", "barCode": "...", "country": "116", "qty": "2",
                    "unit": "142", "qty1": "0.1", "unit1": "035", "price": "199.00", "totalPrice": "398.00"}]}]}

All values are strings exactly as in the XML (money is never turned into a float); absent elements are
absent members. Buyer identity (name, ID number, phone) is deliberately not sent: inspection is about goods.
The service answers 2xx (any JSON) to accept; it must treat a repeated ``requestId`` as the same request.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from adapters import dxp
from adapters.base import AdapterTimeouts, HttpAdapter, PermanentError, SendResult
from adapters.customs import payload_message
from gateway.documents import Document, extract
from gateway.errors import MessageRejected
from gateway.rules import BONDED_IMPORT_MODES
from gateway.xmlsafe import parse_message

SCHEMA = "cbec.inspection.v1"

HEAD_FIELDS = (
    "guid", "orderNo", "ebpCode", "ebcCode", "copNo", "logisticsCode", "logisticsNo", "tradeMode", "customsCode",
    "portCode", "emsNo", "areaCode", "areaName", "declTime",
)  # fmt: skip
ITEM_FIELDS = (
    "gnum", "itemRecordNo", "itemNo", "itemName", "gcode", "gname", "gmodel", "barCode", "country", "qty", "unit",
    "qty1", "unit1", "qty2", "unit2", "price", "totalPrice",
)  # fmt: skip


@dataclass(frozen=True)
class InspectionConfig:
    url: str
    message_types: Collection[str] = ("CEB621",)
    trade_modes: Collection[str] | None = BONDED_IMPORT_MODES  # None: every declaration of those types
    timeouts: AdapterTimeouts = field(default_factory=lambda: AdapterTimeouts(total=15.0))
    headers: Mapping[str, str] = field(default_factory=dict)


def _pick(values: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {n: values[n] for n in names if values.get(n)}


def declaration(doc: Document) -> dict[str, Any]:
    out: dict[str, Any] = _pick(doc.head, HEAD_FIELDS)
    out["items"] = [_pick(line, ITEM_FIELDS) for line in doc.lines]
    return out


def build_request(job_payload: Mapping[str, Any], config: InspectionConfig) -> dict[str, Any] | None:
    """The request body for a job, or None when nothing in the message is configured for inspection."""
    try:
        root, mtype = parse_message(payload_message(job_payload))
    except MessageRejected as exc:
        raise PermanentError(f"inspection job payload is not a CEB message: {exc}") from exc
    if mtype.code not in config.message_types:
        return None
    parsed = extract(root, mtype)
    docs = [
        d for d in parsed.documents if config.trade_modes is None or d.head.get("tradeMode") in config.trade_modes
    ]
    if not docs:
        return None
    key = job_payload.get("dedupe_key") or parsed.guid
    if not isinstance(key, str) or not key:
        raise PermanentError("inspection job payload needs a dedupe_key (or a message guid) for a stable requestId")
    return {
        "schema": SCHEMA,
        "requestId": dxp.cop_msg_id_for(f"inspection:{key}"),
        "messageType": mtype.code,
        "messageGuid": parsed.guid,
        "declarations": [declaration(d) for d in docs],
    }


class InspectionAdapter(HttpAdapter):
    name = "inspection"

    def __init__(self, config: InspectionConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(timeouts=config.timeouts, headers=config.headers, session=session)
        self.config = config

    async def send(self, job_payload: Mapping[str, Any]) -> SendResult:
        body = build_request(job_payload, self.config)
        if body is None:
            return SendResult(self.name, None, None, {"skipped": "no declaration configured for inspection"})
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        reply = await self.post_checked(
            self.config.url, data=data, content_type="application/json", headers={"Idempotency-Key": body["requestId"]}
        )
        ack = reply.json()
        detail: dict[str, Any] = {"declarations": len(body["declarations"])}
        if isinstance(ack, Mapping):
            detail["ack"] = dict(ack)
        return SendResult(self.name, body["requestId"], reply.status, detail)
