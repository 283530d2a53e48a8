"""Export and import shipments through the API (samples rendered to XML, or sent as JSON) for the tests of the
boundary between the two flows."""
from __future__ import annotations

import copy
import json
import random
from datetime import datetime
from typing import Any

from gateway import samples
from gateway.render import new_guid, render
from gateway.sandbox.receipts import build_receipt
from tests.apiutil import Client, sign_as_agent

NOW = datetime(2026, 11, 20, 15, 0, 0)


def export_ship(seed: int, order_no: str | None = None, mode: str = "9610") -> samples.ExportShipmentSample:
    s = samples.export_shipment(random.Random(seed), mode=mode, now=NOW)
    if order_no is not None:
        for p in s.payloads().values():
            if "orderNo" in p["documents"][0]:
                p["documents"][0]["orderNo"] = order_no
    return s


def import_ship(seed: int, order_no: str | None = None, **kw: Any) -> samples.ShipmentSample:
    s = samples.shipment(random.Random(seed), now=NOW, **kw)
    if order_no is not None:
        for p in (s.order, s.payment, s.waybill, s.inventory):
            p["documents"][0]["orderNo"] = order_no
    return s


def xml(payload: dict[str, Any]) -> bytes:
    signer = sign_as_agent if payload["type"] in ("CEB603", "CEB605", "CEB701") else None
    return render(payload, signer=signer)


def version(payload: dict[str, Any], app_type: str, app_time: str, **fields: Any) -> dict[str, Any]:
    p = copy.deepcopy(payload)
    p["guid"] = new_guid()
    p["documents"][0].update(guid=new_guid(), appType=app_type, appTime=app_time, **fields)
    return p


async def post_export(api: Client, payload: dict[str, Any]) -> Any:
    return await api.post_xml(xml(payload))


async def post_json(api: Client, payload: dict[str, Any]) -> Any:
    return await api.request("POST", "/v1/messages", json_body=json.loads(json.dumps(payload, default=str)))


async def post_receipt(api: Client, code: str, values: dict[str, str]) -> Any:
    body = build_receipt(code, values)
    return await api.request("POST", "/v1/receipts", data=body, content_type="application/xml")
