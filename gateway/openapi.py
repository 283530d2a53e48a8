"""The OpenAPI 3.1 description served at /openapi.json (kept beside the handlers it describes)."""

from __future__ import annotations

from typing import Any

from adapters.warehouse import CALLBACK_SCHEMA, CALLBACK_STATUSES, DIRECTIONS
from gateway.forward import (
    CHANGE_REFUSED_EVENT,
    DELIVERY_EVENTS,
    FORWARD_STATES,
    INVENTORY_EVENTS,
    RECONCILIATION_WEBHOOK_EVENT,
    SHIPMENT_CUSTOMS_STATUSES,
    WAREHOUSE_WEBHOOK_EVENT,
    WEBHOOK_EVENT,
)
from gateway.messages import Kind
from gateway.receipts import Outcome as ReceiptOutcome
from gateway.reconcile import ShipmentState
from gateway.render import JSON_TYPES, json_schema

_ISSUE = {
    "type": "object",
    "description": "what was found in a message: an error refuses it (an error body's issues); a warning, in the same "
    "shape, refuses nothing (a 202 answer's warnings)",
    "required": ["layer", "code", "path", "message"],
    "properties": {
        "layer": {"type": "string", "enum": ["parse", "schema", "rule"]},
        "code": {
            "type": "string",
            "description": "stable code, see docs/errors.md",
            "examples": ["rule.currency_not_cny"],
        },
        "path": {"type": "string", "examples": ["/CEB311Message/Order[2]/OrderHead/acturalPaid"]},
        "message": {"type": "string"},
        "pointer": {
            "type": "string",
            "description": "a JSON submission's only: where the issue is in the posted JSON (RFC 6901; '' the "
            "payload as a whole), where the JSON has such a place (not the Signature the gateway adds)",
            "examples": ["/documents/1/acturalPaid"],
        },
    },
}

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "status": {"type": "integer"},
                "title": {"type": "string"},
                "issues": {"type": "array", "items": {"$ref": "#/components/schemas/Issue"}},
            },
        }
    },
}


# --- success bodies -------------------------------------------------------------------------------------------------
# What the seller-facing routes answer, for clients generated from this document. Each object names the members a
# client may rely on; answers may carry more (a member added later is not a breaking change), so none is closed.
# tests/test_e2e.py checks real answers of whole flows against them.


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(required: tuple[str, ...], properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "required": list(required), "properties": properties}
    if description:
        out["description"] = description
    return out


_STR = {"type": "string"}
_STR_OR_NULL = {"type": ["string", "null"]}
_INT = {"type": "integer"}
_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_STRINGS = {"type": "array", "items": _STR}
_VALUES = {"type": "object", "additionalProperties": _STR_OR_NULL, "description": "element name -> text"}
_KINDS = [k.value for k in Kind]
_CUSTOMS_TIME = {"type": ["string", "null"], "description": "customs' returnTime as written: yyyyMMddHHmmssSSS, China "
                 "time"}  # fmt: skip


#: Who closed a receipt or a 179 question, when and why (POST .../close); null while it is open.
_CLOSED = {
    "closed_at": {**_TIME_OR_NULL, "description": "when an operator closed it: it can never be settled"},
    "closed_by": {**_STR_OR_NULL, "description": "the name of the key that closed it"},
    "close_reason": {**_STR_OR_NULL, "description": "why, as the operator wrote it"},
}

#: A warehouse cancel as the gateway recorded it (gateway.outbox.warehouse_cancel_dict).
_CANCEL_ASKED: dict[str, Any] = {
    "id": _INT, "endpoint": {**_STR, "description": "the warehouse endpoint it went to"},
    "reason": {**_STR, "examples": ["CEB623 concluded by customs: 买家取消订单"]},
    "requested_at": {**_TIME, "description": "when the gateway asked it"},
    "delivered_at": {**_TIME_OR_NULL, "description": "when the warehouse took it (2xx); null: not (yet)"},
    "refused_at": {**_TIME_OR_NULL, "description": "when the warehouse refused it (a 4xx: the job a dead letter)"},
    "answer": {"type": ["object", "null"], "description": "the warehouse's answer: {status, warehouseOrderNo} taken, "
               "{status, code, reason} refused; null: none yet",
               "properties": {"status": _INT, "warehouseOrderNo": _STR_OR_NULL, "code": _STR_OR_NULL,
                              "reason": _STR_OR_NULL}},
    "confirmed_at": {**_TIME_OR_NULL, "description": "when the warehouse confirmed it (its callback cancelled)"},
    "progress_at": {**_TIME_OR_NULL, "description": "when the warehouse first reported progress on the order after "
                    "it was asked (accepted … delivered: the goods may be leaving)"},
    "progress_status": {**_STR_OR_NULL, "description": "the latest such status"},
    "overdue_at": {**_TIME_OR_NULL, "description": "when the watchdog found it not confirmed within "
                   "forwarding.warehouse_cancel_timeout_s"},
    "flags": {"type": "array", "items": {"enum": ["progress_after_cancel", "refused", "unconfirmed"]},
              "description": "what was found wrong with it, the gravest first (kept once confirmed or closed)"},
    "needs_look": {"type": "boolean", "description": "flagged, and neither confirmed by the warehouse nor closed by "
                   "an operator: listed by GET /v1/warehouse/cancels, counted in cbec_warehouse_cancels_open"},
    **_CLOSED,
}

#: The site's delivery (CEB711) an inbound order was made from, as the operators' warehouse lists name it
#: (gateway.store.deliveries); null for an order of any other document.
_DELIVERY = {"anyOf": [_object(("message_guid", "billNo", "listed", "shipments"), {
    "message_guid": {**_STR, "description": "the delivery's message: GET /v1/messages/{guid} shows it whole"},
    "billNo": _STR_OR_NULL, "listed": {**_INT, "description": "how many parcels (waybills) it lists"},
    "shipments": {"type": "array", "description": "the shipments of the parcels the gateway holds, each once: their "
                  "pages show the delivery", "items": _object(("ebpCode", "orderNo"), {"ebpCode": _STR,
                                                                                       "orderNo": _STR})},
}), {"type": "null"}], "description": "the site's delivery (CEB711) its inbound order was made from; null for another"}

#: What the operators watch and may close: the receipts kept unmatched, customs' 179 questions, warehouse cancels.
_CLOSED_BY_OPERATORS = {
    "UnmatchedReceipt": _object(
        ("id", "received_at", "message_type", "keys", "return_status", "closed_at", "closed_by", "close_reason"), {
            "id": _INT, "received_at": _TIME, "message_type": _STR, "root_guid": _STR_OR_NULL,
            "element_index": _INT, "doc_guid": _STR_OR_NULL, "keys": {"type": "object"},
            "return_status": _STR_OR_NULL, "return_time": _CUSTOMS_TIME, "return_info": _STR_OR_NULL,
            "cop_msg_id": _STR_OR_NULL, "source": _STR_OR_NULL, **_CLOSED,
        }, "a customs receipt kept unmatched: customs' word on a document the gateway could not find, as stored"),
    "UnmatchedReceiptPage": _object(("items", "next_cursor"), {
        "items": {"type": "array", "items": _ref("UnmatchedReceipt")}, "next_cursor": _STR_OR_NULL}),
    "PaymentQuestion": _object(
        ("id", "ebpCode", "orderNo", "sessionID", "received_at", "state", "handed_over", "job", "closed_at",
         "closed_by", "close_reason"), {
            "id": _INT, "ebpCode": _STR, "orderNo": _STR, "sessionID": _STR, "serviceTime": _INT,
            "received_at": _TIME, "state": {"enum": ["asked", "uploaded", "refused"]},
            "handed_over": {"type": "boolean", "description": "the order's payment was handed over"},
            "upload_guid": _STR_OR_NULL, "uploaded_at": _TIME_OR_NULL, "answered_at": _TIME_OR_NULL,
            "answer": {"type": ["object", "null"], "description": "customs' {code, message}"},
            "job": {"anyOf": [_object(("id", "state"), {"id": _INT, "state": _STR, "attempts": _INT,
                                                        "last_error": _STR_OR_NULL, "run_after": _TIME_OR_NULL}),
                              {"type": "null"}],
                    "description": "the upload's job (dead: replay it with POST /v1/queue/replay)"},
            **_CLOSED,
        }, "customs' 179 question (platDataOpen) and what became of its upload"),
    "PaymentQuestionPage": _object(("items", "next_cursor"), {
        "items": {"type": "array", "items": _ref("PaymentQuestion")}, "next_cursor": _STR_OR_NULL}),
    "WarehouseCancel": _object(
        ("id", "order_id", "direction", "status", "message_type", "doc_guid", "ebpCode", "orderNo", "requested_at",
         "flags", "needs_look", "closed_at"), {
            **_CANCEL_ASKED, "order_id": _STR, "direction": {"enum": list(DIRECTIONS)},
            "warehouse_order_no": _STR_OR_NULL,
            "status": {"enum": [*CALLBACK_STATUSES, None], "description": "the order's furthest status as the "
                       "warehouse reported it (null: nothing)"},
            "message_type": _STR, "doc_guid": {**_STR, "description": "the document the order was made from"},
            "ebpCode": {**_STR_OR_NULL, "description": "that document's shipment (null: a site's delivery's)"},
            "orderNo": _STR_OR_NULL, "delivery": _DELIVERY,
        }, "a cancel the gateway asked of a warehouse, with its order and the document and shipment it was made of"),
    "WarehouseCancelPage": _object(("items", "next_cursor"), {
        "items": {"type": "array", "items": _ref("WarehouseCancel")}, "next_cursor": _STR_OR_NULL}),
}

#: A close's body: one short reason (gateway.store.close_reason).
_CLOSE_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["reason"], "additionalProperties": False,
    "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 200,
                              "description": "why it can never be settled, one line for the next operator"}}}}}}

_SCHEMAS: dict[str, dict[str, Any]] = {
    "Side": _object(("doc", "guid", "path", "value"), {
        "doc": {**_STR, "description": "the message type of the document, e.g. CEB311"},
        "guid": _STR_OR_NULL, "path": {**_STR, "description": "the element inside that document's message"},
        "value": _STR_OR_NULL,
        "withheld": {"type": "boolean", "description": "true: a document the key is no party of; its guid and value "
                     "are null"},
    }, "one side of a finding: which document, which element, what it holds"),
    "Finding": _object(("code", "field", "message", "blocking", "left", "right"), {
        "code": {**_STR, "description": "stable, see docs/errors.md", "examples": ["recon.amount_paid_mismatch"]},
        "field": _STR, "message": _STR,
        "blocking": {"type": "boolean", "description": "false: a warning, the shipment may still match"},
        "left": _or_null(_ref("Side")), "right": _or_null(_ref("Side")),
    }, "what reconciliation or the tax pre-check found on a shipment"),
    "ShipmentState": _object(("ebpCode", "orderNo", "flow", "state", "missing"), {
        "ebpCode": _STR, "orderNo": _STR, "flow": {"enum": ["import", "export"]},
        "state": {"enum": [s.value for s in ShipmentState]},
        "missing": {"type": "array", "items": {"enum": _KINDS}, "description": "the legs still to come"},
    }),
    "DocumentOutcome": _object(("index", "doc_guid", "kind", "keys", "outcome", "shipment", "code", "message"), {
        "index": {**_INT, "description": "1-based, in the message"}, "doc_guid": _STR, "kind": {"enum": _KINDS},
        "keys": {**_VALUES, "description": "the document's business keys (spec §6.2)"},
        "outcome": {"enum": ["accepted", "replaced", "withdrawn", "ignored_older", "recorded"]},
        "shipment": {**_or_null(_ref("ShipmentState")), "description": "the shipment the document belongs to, after "
                     "the message: of a leg, as reconciled; of a cancellation or return (CEB623, 625, 605, 213), its "
                     "inventory's, as it stands. null for what belongs to no shipment (a transport message, a "
                     "summary application, a receipt) and for an ignored_older document"},
        "code": {**_STR_OR_NULL, "description": "why, when the outcome is not plain success (state.ignored_older; "
                 "state.withdrawn_unsent: withdrawn before it was sent, nothing sent to customs)"},
        "message": _STR_OR_NULL,
    }),
    "Accepted": _object(("id", "guid", "message_type", "documents", "shipments"), {
        "id": _INT, "guid": _STR, "message_type": {**_STR, "examples": ["CEB311"]},
        "documents": {"type": "array", "items": _ref("DocumentOutcome")},
        "shipments": {"type": "array", "description": "the shipments the message touched, after it, and those its "
                      "cancellations and returns name, as they stand",
                      "items": {"allOf": [_ref("ShipmentState"), _object(("findings",), {
                          "findings": {"type": "array", "items": _ref("Finding")}})]}},
        "warnings": {
            "type": "array", "items": _ref("Issue"),
            "description": "findings that refuse nothing (docs/errors.md marks their codes 'warning'), e.g. "
            "rule.mode_field_unexpected: a field the inventory's trade mode leaves out; the message is stored and "
            "forwarded. Absent when there are none; kept with the answer (GET /v1/messages/{guid} shows it as "
            "response)",
        },
    }, "a message stored (committed) and reconciled"),
    "ShipmentSummary": _object(("ebpCode", "orderNo", "state", "missing", "findings", "flow", "customs_status",
                                "created_at", "updated_at"), {
        "ebpCode": _STR, "orderNo": _STR, "ebcCode": _STR_OR_NULL,
        "state": {"enum": [s.value for s in ShipmentState]},
        "missing": {"type": "array", "items": {"enum": _KINDS}},
        "findings": {"type": "array", "items": _ref("Finding")},
        "parties": {**_STRINGS, "description": "the enterprise codes its documents name"},
        "mode": {**_STR_OR_NULL, "description": "the inventory's tradeMode"},
        "flow": {"enum": ["import", "export"]},
        "customs_status": {"enum": list(SHIPMENT_CUSTOMS_STATUSES)},
        "customs_updated_at": _TIME_OR_NULL, "created_at": _TIME, "updated_at": _TIME,
    }),
    "ShipmentPage": _object(("items", "next_cursor"), {
        "items": {"type": "array", "items": _ref("ShipmentSummary")},
        "next_cursor": {**_STR_OR_NULL, "description": "null on the last page"},
    }),
    "CustomsStatus": _object(("code", "name"), {
        "code": {**_STR, "description": "the returnStatus in force", "examples": ["800", "-301010"]},
        "rank": {"type": ["integer", "null"]}, "name": _STR_OR_NULL, "info": _STR_OR_NULL, "time": _CUSTOMS_TIME,
    }, "the customs state of a document: its furthest receipt"),
    "Attempt": _object(("attempt", "started_at", "outcome"), {
        "replay": _INT, "attempt": _INT, "worker_id": _STR_OR_NULL, "started_at": _TIME,
        "finished_at": _TIME_OR_NULL,
        "outcome": {"enum": ["ok", "transient", "permanent", "lease_expired", "replayed", None]},
        "error": _STR_OR_NULL, "duration_ms": {"type": ["integer", "null"]},
    }),
    "Transmission": _object(("id", "endpoint", "state", "attempts", "history"), {
        "id": _INT, "endpoint": _STR, "kind": _STR, "dedupe_key": _STR_OR_NULL, "message_guid": _STR_OR_NULL,
        "state": {"enum": ["queued", "running", "done", "dead"]}, "attempts": _INT,
        "max_attempts": {"type": ["integer", "null"]}, "replays": _INT, "last_error": _STR_OR_NULL,
        "dead_reason": _STR_OR_NULL, "run_after": _TIME, "created_at": _TIME, "updated_at": _TIME,
        "finished_at": _TIME_OR_NULL, "history": {"type": "array", "items": _ref("Attempt")},
    }, "a delivery of the document's message to an endpoint (a queue job) and its attempts"),
    "Receipt": _object(("id", "message_type", "return_status", "return_time", "outcome"), {
        "id": _INT, "received_at": _TIME, "message_type": {**_STR, "examples": ["CEB622"]},
        "root_guid": _STR_OR_NULL, "element_index": _INT, "doc_guid": _STR_OR_NULL, "keys": _VALUES,
        "return_status": _STR, "return_time": _CUSTOMS_TIME, "return_info": _STR_OR_NULL,
        "cop_msg_id": _STR_OR_NULL, "source": _STR, "message_id": {"type": ["integer", "null"]},
        "document_id": {"type": ["integer", "null"]}, "applied": {"type": "boolean"},
        "outcome": {"enum": [o.value for o in ReceiptOutcome]},
    }, "a customs receipt of the document, as stored"),
    "WarehouseOrder": _object(("order_id", "status", "cancel"), {
        "order_id": _STR, "warehouse_order_no": _STR_OR_NULL, "direction": {"enum": list(DIRECTIONS)},
        "status": {"enum": [*CALLBACK_STATUSES, None], "description": "the furthest the warehouse reported (null: "
                   "nothing yet — an order shown for the cancel the gateway asked of it)"},
        "reason": _STR_OR_NULL,
        "events": {"type": "array", "items": _object(("status",), {
            "status": {"enum": list(CALLBACK_STATUSES)}, "reason": _STR_OR_NULL, "occurred_at": _TIME,
            "received_at": _TIME,
            "after_cancel": {"type": "boolean", "description": "a status of the goods moving (received … delivered; "
                             "not an acceptance of the order) that came after the gateway asked the warehouse to "
                             "cancel the order: the goods may be leaving"}})},
        "cancel": {"anyOf": [_ref("WarehouseCancelAsked"), {"type": "null"}],
                   "description": "the cancel the gateway asked of the warehouse (null: none)"},
    }, "a warehouse order made from the document, as its warehouse reported it, and the cancel the gateway asked"),
    "WarehouseCancelAsked": _object(
        ("id", "endpoint", "reason", "requested_at", "delivered_at", "refused_at", "answer", "confirmed_at", "flags",
         "needs_look"), _CANCEL_ASKED,
        "the cancel of a warehouse order the gateway asked (a job of kind warehouse.cancel: customs concluded the "
        "cancellation of the inventory the order was made from, or the delivery or order a route made it from was "
        "changed or withdrawn) and what became of it"),
    "Document": _object(("id", "doc_guid", "kind", "message_type", "keys", "is_current"), {
        "id": _INT, "index": _INT, "doc_guid": _STR, "kind": {"enum": _KINDS}, "message_type": _STR,
        "message_guid": _STR, "keys": _VALUES, "app_type": _STR_OR_NULL, "app_time": _STR_OR_NULL,
        "app_status": _STR_OR_NULL, "path": _STR, "is_current": {"type": "boolean"},
        "withdrawn": {"type": "boolean"}, "superseded_by": {"type": ["integer", "null"]},
        "received_at": _TIME, "parties": _STRINGS,
        "head": {**_VALUES, "description": "the document's head as declared (absent for a limited one)"},
        "lines": {"type": "array", "items": _VALUES},
        "parcels": {"type": "array", "description": "a site delivery's (CEB711) in GET /v1/messages/{guid}: each line "
                    "with what the gateway holds of its parcel — waybill: its import waybill is held; customs_status "
                    "of its shipment (released: it may leave the site), null with shipment for a parcel the gateway "
                    "never saw; shipment (ebpCode, orderNo) only to a key that may read that shipment. Until customs "
                    "took the delivery (a receipt accepting it), waybill and customs_status are null on the lines of "
                    "shipments the key may not read: the operatorCode is only what the sending key claims",
                    "items": _object(("gnum", "logisticsNo", "waybill", "customs_status", "shipment"), {
                        "gnum": _STR_OR_NULL, "logisticsNo": _STR_OR_NULL, "waybill": {"type": ["boolean", "null"]},
                        "customs_status": {"enum": [*SHIPMENT_CUSTOMS_STATUSES, None]},
                        "shipment": _or_null(_object(("ebpCode", "orderNo"), {"ebpCode": _STR, "orderNo": _STR})),
                    })},
        "listed": {**_INT, "description": "a site's delivery (CEB711) on a shipment: how many waybills its whole list "
                   "names; its lines there are the shipment's parcel's alone (the message shows them all)"},
        "limited": {"type": "boolean", "description": "a document of which the key holds no party code (another "
                    "company's leg, another seller's inventory of an agent's message): what identifies it and where it "
                    "stands, without head, lines, parties, transmissions or warehouse orders"},
        "forward_state": {"enum": list(FORWARD_STATES)}, "cop_msg_id": _STR_OR_NULL, "sent_at": _TIME_OR_NULL,
        "last_receipt_at": _TIME_OR_NULL, "receipt_overdue": {"type": "boolean"}, "resends": _INT,
        "pre_no": _STR_OR_NULL, "invt_no": _STR_OR_NULL,
        "sum_no": {**_STR_OR_NULL, "description": "a summary application's (CEB701)"},
        "rkd_no": {**_STR_OR_NULL, "description": "a site delivery's (CEB711): the warehouse-entry number (入库单编号) "
                   "customs gave it in its CEB712"},
        "customs": _or_null(_ref("CustomsStatus")),
        "held_until": {"type": "array", "description": "a held inventory: what each parcel of its message waits for",
                       "items": _object(("ebpCode", "orderNo", "waiting_for"), {
                           "ebpCode": _STR, "orderNo": _STR, "waiting_for": _STRINGS})},
        "unsent": {**_object(("because", "info"), {"because": {"enum": ["withdrawn", "replaced"]}, "info": _STR}),
                   "description": "a document never sent and never to be (forward_state unsent): withdrawn, or "
                                  "replaced by a newer version, while the gateway held it; info says so in words"},
        "transmissions": {"type": "array", "items": _ref("Transmission")},
        "receipts": {"type": "array", "items": _ref("Receipt")},
        "warehouse_orders": {"type": "array", "items": _ref("WarehouseOrder")},
    }, "one declared document with its forwarding and customs state"),
    "TaxBill": _object(("taxNo", "invtNo", "status", "status_name", "total", "estimate", "findings"), {
        "taxNo": _STR, "invtNo": _STR, "status": {"enum": ["1", "2", "3"]},
        "status_name": {"enum": ["generated", "consolidated", "void"]}, "status_time": _CUSTOMS_TIME,
        "entDutyNo": _STR_OR_NULL, "customsTax": _STR, "valueAddedTax": _STR, "consumptionTax": _STR,
        "total": _STR,
        "estimate": _object(("total",), {
            "customsTax": _STR, "valueAddedTax": _STR, "consumptionTax": _STR, "total": _STR,
            "full_rate": {"type": "boolean"},
            "return": {**_or_null(_object(("guid", "concluded_at", "items"), {
                "guid": _STR, "concluded_at": _STR,
                "items": {"type": "array", "items": _object(("gnum", "qty"), {"gnum": _STR, "qty": _STR})}})),
                "description": "the return (CEB625 version) customs concluded that the estimate takes back: the "
                               "latest concluded before the bill's consolidation (any while it is not consolidated); "
                               "the estimate is then of the goods kept (gateway.tax.after_return). null: none, or "
                               "withdrawn"},
            "uncounted_return": {**_or_null(_object(("guid", "concluded_at", "withdrawn"), {
                "guid": _STR, "concluded_at": _STR, "withdrawn": {"type": "boolean"}})),
                "description": "the latest version of the return customs concluded at or after the bill's "
                               "consolidation: customs corrects no consolidated bill, so the estimate does not "
                               "count it"},
        }),
        "findings": {"type": "array", "items": _ref("Finding")}, "document_id": {"type": ["integer", "null"]},
    }, "customs' electronic tax bill (CEB816/818) of the shipment's inventory, beside the gateway's estimate"),
    "Shipment": {"allOf": [_ref("ShipmentSummary"), _object(("documents", "tax_bills"), {
        "buyer_id_number": _STR_OR_NULL, "customs_info": _STR_OR_NULL,
        "documents": {"type": "array", "items": _ref("Document"), "description": "current and history"},
        "tax_bills": {"type": "array", "items": _ref("TaxBill")},
        "summary": {"type": ["object", "null"], "description": "an export shipment's: its B-type inventory's "
                    "summary declaration (null for none)"},
        "payment_data": {"type": ["object", "null"], "description": "an import order of a 179 platform, to its key"},
    })]},
    "Message": _object(("id", "guid", "message_type", "received_at", "response", "documents"), {
        "id": _INT, "guid": _STR, "message_type": _STR, "sha256": _STR, "source": _STR, "submitter": _STR,
        "received_at": _TIME, "http_status": _INT,
        "response": {**_ref("Accepted"), "description": "the 202 answer it was given, warnings included"},
        "documents": {"type": "array", "items": _ref("Document")},
        "raw_xml": {**_STR_OR_NULL, "description": "null (raw_xml_withheld) to a key no party of some document of it"},
        "raw_xml_withheld": {"type": "boolean"},
    }),
    "Rejection": _object(("id", "received_at", "submitter", "http_status", "issues"), {
        "id": _INT, "received_at": _TIME, "submitter": _STR, "guid": _STR_OR_NULL, "message_type": _STR_OR_NULL,
        "http_status": _INT, "raw_size": _INT, "issues": {"type": "array", "items": _ref("Issue")},
        "raw": {**_STR, "description": "GET /v1/rejections/{id}: the first 64 KiB of what was sent"},
        "raw_truncated": {"type": "boolean"},
    }, "a refused message with what refused it"),
    "RejectionPage": _object(("items", "next_cursor"), {
        "items": {"type": "array", "items": _ref("Rejection")}, "next_cursor": _STR_OR_NULL}),
    **_CLOSED_BY_OPERATORS,
}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _err(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


#: A message is answered only once committed: away, the store answers nothing but this (with Retry-After).
_UNAVAILABLE = {"503": _err("the database (or, in `cbec serve --processes N`, the first process's store) cannot be "
                            "reached: send it again after Retry-After seconds; a message committed before its answer "
                            "was lost answers as a replay")}  # fmt: skip

#: What every route with a key may answer: besides its own, the key's refusals and the database away.
_AUTH_ERRORS = {
    "401": _err("missing or unknown API key"),
    "403": _err("the key may not act on these documents"),
    "429": _err("the key's rate (its rate_per_s and rate_burst) is spent: send again after Retry-After seconds"),
    **_UNAVAILABLE,
}


def _path(*names: str) -> list[dict[str, Any]]:
    """The string path parameters of a route, in order."""
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


def _page_list(summary: str, filters: tuple[tuple[str, str], ...], bad: str,
               cursor: str = "next_cursor of the previous page",
               page: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The GET of a keyset-paged list, answered {items, next_cursor} (described by the component ``page``, when
    given): its filters, then limit and cursor (query strings), and the 400 it answers bad ones with (``bad``)."""
    params = (*filters, ("limit", "1..500, default 50 (more is served as 500)"), ("cursor", cursor))
    ok = _ok("{items, next_cursor}", page) if page else {"description": "{items, next_cursor}"}
    return {
        "summary": summary,
        "parameters": _query(params),
        "responses": {"200": ok, "400": _err(bad), **_AUTH_ERRORS},
    }


#: The form of the query parameters that have one; the others are strings (a list's `state`, for one, whose values
#: the description names).
_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1},
    "since": {"type": "string", "format": "date-time"},
    "until": {"type": "string", "format": "date-time"},
    "customs_since": {"type": "string", "format": "date-time"},
    "customs_until": {"type": "string", "format": "date-time"},
    "linked": {"type": "string", "enum": ["true", "false"]},
    "flow": {"type": "string", "enum": ["import", "export"]},
}


def _query(params: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """Query parameters (name, description), each with its form (_QUERY_SCHEMAS)."""
    return [{"name": n, "in": "query", "schema": _QUERY_SCHEMAS.get(n, {"type": "string"}), "description": d}
            for n, d in params]  # fmt: skip


#: A warehouse's callback (adapters/warehouse.py's contract, docs/adapters.md).
_CALLBACK = {
    "type": "object",
    "required": ["schema", "orderId", "warehouseOrderNo", "direction", "status", "occurredAt"],
    "properties": {
        "schema": {"const": CALLBACK_SCHEMA},
        "orderId": {"type": "string", "minLength": 1},
        "warehouseOrderNo": {"type": "string", "minLength": 1},
        "direction": {"enum": list(DIRECTIONS)},
        "status": {"enum": list(CALLBACK_STATUSES)},
        "occurredAt": {"type": "string", "format": "date-time"},
        "reason": {"type": ["string", "null"]},
        "reference": {"type": ["object", "null"], "description": "the document the order was made from"},
    },
}

#: The filters of GET /v1/shipments and its CSV.
_SHIPMENT_FILTERS = (
    ("state", "incomplete | matched | mismatched"),
    ("customs_status", " | ".join(SHIPMENT_CUSTOMS_STATUSES)),
    ("ebpCode", "platform code (- for a waybill-only shipment's empty one)"),
    ("ebcCode", "e-commerce enterprise code"),
    ("flow", "import | export"),
    ("mode", "the inventory's trade mode: 9610 | 1210 | 1239 | 9710 | 9810"),
    ("since", "ISO 8601 time, updated at or after (without an offset: UTC)"),
    ("until", "ISO 8601 time, updated before (without an offset: UTC)"),
    ("customs_since", "ISO 8601 time, customs status changed at or after (customs_updated_at; without an offset: UTC)"),
    ("customs_until", "ISO 8601 time, customs status changed before (customs_updated_at; without an offset: UTC)"),
)

_TEXT_OR_NULL = {"type": ["string", "null"]}
#: The data of each event a seller's webhook receives (gateway.forward's Router: webhook_jobs, warehouse_webhook_jobs,
#: inventory_webhook_jobs; docs/adapters.md).
_SHIPMENT = {"ebpCode": {"type": "string"}, "orderNo": {"type": "string"}}
_CUSTOMS_STATUS = {"enum": list(SHIPMENT_CUSTOMS_STATUSES)}
_WAREHOUSE_STATUS = {"enum": list(CALLBACK_STATUSES)}
#: Customs' word on a document as a webhook carries it: returnStatus, its meaning, returnInfo, returnTime.
_CUSTOMS_WORD = {"type": "object", "required": ["code", "name", "info", "time"],
                 "properties": {"code": {"type": "string"}, "name": _TEXT_OR_NULL, "info": _TEXT_OR_NULL,
                                "time": {**_TEXT_OR_NULL, "description": "returnTime as customs wrote it: "
                                         "yyyyMMddHHmmssSSS, China time"}}}  # fmt: skip
_INVENTORY_DATA = {
    "type": "object",
    "required": ["ebpCode", "orderNo", "messageType", "guid", "invtNo", "customs", "warehouseOrders"],
    "properties": {
        **_SHIPMENT,
        "messageType": {"type": "string", "description": "CEB623, CEB605 (cancellation), CEB625, CEB213 (return), "
                                                         "CEB621, CEB603 (an inventory declared anew)"},
        "guid": {"type": "string", "description": "the document's guid (the 202's documents[].doc_guid)"},
        "invtNo": _TEXT_OR_NULL,
        "reason": {"type": "string", "description": "the cancellation's or return's own (not an inventory's)"},
        "customs": {**_CUSTOMS_WORD, "description": "customs' returnStatus, its meaning, returnInfo and returnTime "
                    "(yyyyMMddHHmmssSSS)"},
        "warehouseOrders": {"type": "array", "items": {"type": "string"},
                            "description": "the orderIds of the warehouse orders cancelled or made for it"},
    },
}  # fmt: skip
_DELIVERY_DATA = {
    "type": "object",
    "required": ["ebpCode", "orderNo", "messageType", "guid", "messageGuid", "kind", "appType", "customsStatus"],
    "properties": {
        **_SHIPMENT,
        "messageType": {"type": "string", "description": "the document's: a leg's (CEB311, CEB621 …), a cancellation's "
                                                         "(CEB623, CEB605), a return's (CEB625, CEB213)"},
        "guid": {"type": "string", "description": "the document's guid (the 202's documents[].doc_guid)"},
        "messageGuid": {"type": "string", "description": "the guid of the message that carried it (the 202's guid)"},
        "kind": {"type": "string", "description": "order, payment, waybill, inventory, cancel, refund"},
        "appType": {"type": "string", "description": "1 a declaration, 2 a change, 3 a withdrawal"},
        "customsStatus": {**_CUSTOMS_STATUS, "description": "the shipment's customs status now: failed when the "
                          "document is a leg customs holds no word on (its own status change tells it too); a "
                          "cancellation, return, withdrawal or a change of an accepted or released inventory leaves it "
                          "as customs left it"},
        "error": {**_TEXT_OR_NULL, "description": "shipment.delivery_failed only: why the last attempt failed "
                  "(null to a seller none of whose codes the document carries)"},
    },
}  # fmt: skip
_SHIPMENT_STATE = {"enum": [s.value for s in ShipmentState]}
#: A finding as a webhook carries it: the components' Finding with its sides written out, so that an event's body is
#: described by its own schema.
_WEBHOOK_FINDING = {**_SCHEMAS["Finding"], "properties": {
    **_SCHEMAS["Finding"]["properties"], "left": _or_null(_SCHEMAS["Side"]), "right": _or_null(_SCHEMAS["Side"])}}
_WEBHOOK_DATA: dict[str, tuple[str, dict[str, Any]]] = {
    WEBHOOK_EVENT: ("the shipment's customs status changed", {
        "type": "object",
        "required": ["ebpCode", "orderNo", "customsStatus", "previous", "info", "customs", "document", "changedAt"],
        "properties": {**_SHIPMENT, "customsStatus": _CUSTOMS_STATUS,
                       "previous": {"anyOf": [_CUSTOMS_STATUS, {"type": "null"}]}, "info": _TEXT_OR_NULL,
                       "customs": {"anyOf": [{**_CUSTOMS_WORD, "description": "the receipt that moved it: customs' "
                                              "returnStatus, its meaning, returnInfo and returnTime — customs' own "
                                              "time, which orders the changes customs made"}, {"type": "null"}],
                                   "description": "null for a status no receipt decides: declared (a leg on its "
                                   "way or taken — delivered, replayed, or declared anew after a refusal), failed (a "
                                   "delivery a dead letter), pending"},
                       "document": {"anyOf": [{"type": "object", "required": ["kind", "messageType", "guid"],
                                               "description": "the document that receipt answers (the leg "
                                               "rejected; the inventory accepted, released or returned 700; the "
                                               "cancellation concluded)",
                                               "properties": {"kind": {"enum": _KINDS}, "messageType": _STR,
                                                              "guid": _TEXT_OR_NULL}},
                                              {"type": "null"}]},
                       "changedAt": {"type": "string", "format": "date-time",
                                     "description": "when the gateway recorded the change (the shipment's "
                                     "customs_updated_at at GET /v1/shipments/{ebpCode}/{orderNo}): orders every "
                                     "change, those no receipt made too"}}}),
    WAREHOUSE_WEBHOOK_EVENT: ("a warehouse order made from one of the shipment's documents went further", {
        "type": "object", "required": ["ebpCode", "orderNo", "orderId", "warehouseOrderNo", "direction", "status",
                                       "previous", "reason", "occurredAt"],
        "properties": {**_SHIPMENT, "orderId": {"type": "string"}, "warehouseOrderNo": {"type": "string"},
                       "direction": {"enum": list(DIRECTIONS)}, "status": _WAREHOUSE_STATUS,
                       "previous": {"anyOf": [_WAREHOUSE_STATUS, {"type": "null"}]}, "reason": _TEXT_OR_NULL,
                       "occurredAt": {"type": "string", "format": "date-time"}}}),
    INVENTORY_EVENTS[("cancel", "concluded")]: ("customs concluded a cancellation of the shipment's inventory",
                                                _INVENTORY_DATA),
    INVENTORY_EVENTS[("cancel", "refused")]: ("customs refused a cancellation of the shipment's inventory",
                                              _INVENTORY_DATA),
    INVENTORY_EVENTS[("refund", "concluded")]: ("customs concluded a return of the shipment's goods", _INVENTORY_DATA),
    INVENTORY_EVENTS[("refund", "refused")]: ("customs refused a return of the shipment's goods", _INVENTORY_DATA),
    INVENTORY_EVENTS[("inventory", "released")]: ("customs released an inventory declared anew after a cancellation "
                                                  "(the shipment was released before)", _INVENTORY_DATA),
    CHANGE_REFUSED_EVENT: ("customs refused a change or withdrawal of one of the shipment's legs: it holds the version "
                           "before, which stands (no customs status moves)", {
        "type": "object", "required": ["ebpCode", "orderNo", "kind", "messageType", "guid", "appType", "customs"],
        "properties": {**_SHIPMENT, "kind": {"enum": ["order", "payment", "waybill", "inventory"]},
                       "messageType": {"type": "string", "description": "of the refused document, e.g. CEB411"},
                       "guid": {"type": "string", "description": "the refused document's guid (the 202's "
                                "documents[].doc_guid)"},
                       "appType": {"enum": ["2", "3"], "description": "2 a change, 3 a withdrawal"},
                       "customs": {**_CUSTOMS_WORD, "description": "customs' refusal: returnStatus (100 or a "
                                   "negative code), its meaning, returnInfo and returnTime"}}}),
    DELIVERY_EVENTS["failed"]: ("the delivery to customs of one of the shipment's documents died (a dead letter: "
                                "refused for good, or out of attempts); an operator replays it once the cause is "
                                "fixed", _DELIVERY_DATA),
    DELIVERY_EVENTS["recovered"]: ("a replayed delivery of one of the shipment's documents reached customs; customs' "
                                   "answer follows as any", _DELIVERY_DATA),
    RECONCILIATION_WEBHOOK_EVENT: ("the shipment's reconciliation became mismatched (its inventory held), what holds "
                                   "it changed while it stays so (state and previous both mismatched), or it no "
                                   "longer is", {
        "type": "object", "required": ["ebpCode", "orderNo", "state", "previous", "missing", "findings"],
        "properties": {**_SHIPMENT, "state": _SHIPMENT_STATE,
                       "previous": {"anyOf": [_SHIPMENT_STATE, {"type": "null"}],
                                    "description": "null: the shipment's first document made it mismatched; "
                                    "mismatched, as state: it stays so, held by other findings"},
                       "missing": {"type": "array", "items": {"enum": _KINDS}, "description": "the legs still to come"},
                       "findings": {"type": "array", "items": _WEBHOOK_FINDING,
                                    "description": "the blocking findings, as the seller's API key sees them: a "
                                    "document none of whose parties is the seller's has its guid and value "
                                    "withheld"}}}),
}  # fmt: skip
_WEBHOOK_HEADERS = (
    ("X-CBEC-Signature", "sha256=<hex HMAC-SHA256 of the raw body with the seller's secret>"),
    ("X-CBEC-Timestamp", "Unix seconds of this attempt; the body's timestamp"),
    ("X-CBEC-Event", "the event"),
    ("X-CBEC-Delivery", "the body's id: the same on every retry of this event (deduplicate on it)"),
)


def _webhook(event: str, summary: str, data: dict[str, Any]) -> dict[str, Any]:
    """What the gateway POSTs to a seller's webhook URL for ``event`` (adapters/webhook.py)."""
    body = {"type": "object", "required": ["id", "event", "timestamp", "data"],
            "properties": {"id": {"type": "string"}, "event": {"const": event}, "timestamp": {"type": "integer"},
                           "data": data}}  # fmt: skip
    return {"post": {
        "summary": summary,
        "parameters": [{"name": n, "in": "header", "required": True, "schema": {"type": "string"}, "description": d}
                       for n, d in _WEBHOOK_HEADERS],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"2XX": {"description": "taken; 5xx, 408, 429 or no answer: sent again later; another 4xx: "
                                             "not sent again"}},
    }}  # fmt: skip


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "cbec-gateway",
        "version": "0.1.0",
        "description": "Cross-border e-commerce (CEB) declaration gateway: submit import order (CEB311), payment "
        "(CEB411), waybill (CEB511) and inventory (CEB621) messages and export order (CEB303), 收款单 (CEB403), "
        "waybill (CEB505), inventory (CEB603) and cancellation (CEB605) messages, the parcels' 清单总分单 "
        "(CEB607), arrival (CEB507) and departure (CEB509), the summary application of B-type export inventories "
        "(CEB701), and the retail export return (CEB213) with the site's tally of the returned parcel (CEB215), as "
        "XML or JSON; watch each shipment's reconciliation and each summary's customs declarations "
        "(CEB792).",
    },
    "components": {
        "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "bearer": {"type": "http", "scheme": "bearer"},
        },
        "schemas": {"Issue": _ISSUE, "Error": _ERROR, **_SCHEMAS,
                    **{f"{code}Json": json_schema(code) for code in JSON_TYPES}},
    },
    "security": [{"apiKey": []}, {"bearer": []}],
    # what a seller's webhook URL receives (forwarding.webhooks; docs/adapters.md "Seller webhooks")
    "webhooks": {event: _webhook(event, summary, data) for event, (summary, data) in _WEBHOOK_DATA.items()},
    "paths": {
        "/v1/messages": {
            "post": {
                "summary": "Submit one CEB message (XML) or a friendly JSON document set (see docs/json-api.md)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/xml": {"schema": {"type": "string"}},
                        "application/json": {
                            # the fields of each type, read from the tables the renderer follows and the XSD
                            "schema": {"oneOf": [{"$ref": f"#/components/schemas/{code}Json"} for code in JSON_TYPES]}
                        },
                    },
                },
                "responses": {
                    "202": _ok("stored (committed) and reconciled; body lists each document's outcome, its shipments' "
                               "state and findings, and `warnings`: the same answer again for a replay (same guid and "
                               "bytes, Idempotent-Replay: true)", "Accepted"),
                    "400": _err("not a safe, well-formed CEB message"),
                    "409": _err("duplicate business key, unknown document to change, or guid reused with other bytes"),
                    "413": _err("body too large"),
                    "415": _err("unsupported Content-Type"),
                    "422": _err("schema or business-rule errors (a JSON shape error's path is a JSON pointer into "
                                "the payload)"),
                    **_AUTH_ERRORS,
                    "503": _err(_UNAVAILABLE["503"]["description"] + "; or (issue signing.certificate_expired / "
                                "signing.certificate_not_yet_valid, no Retry-After) a JSON declaration the gateway "
                                "signs came while its signing certificate is outside its validity: send it again once "
                                "the zone's operators have installed the renewed key"),
                },
            }
        },
        "/v1/messages/{guid}": {
            "get": {
                "summary": "A stored message: its documents, outcome (response: the 202's body, its warnings in "
                "it) and raw XML",
                "parameters": _path("guid"),
                "responses": {
                    "200": _ok("the message", "Message"),
                    "404": _err("unknown or not yours"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/shipments": {
            "get": _page_list(
                "Shipments with their reconciliation state and customs status, newest first (keyset pages)",
                _SHIPMENT_FILTERS,
                "an unknown query parameter, state, customs_status or flow, a mode, time or cursor that is not one, "
                "a bad limit",
                page="ShipmentPage",
            )
        },
        "/v1/summaries/pending": {
            "get": _page_list(
                "A consignor's export inventories awaiting their summary declaration (汇总申报), or every consignor's "
                "for an operator's or admin's key without ebcCode, newest first (keyset pages): B-type, released by "
                "customs, neither withdrawn nor cancelled, named by no live summary application of the consignor — "
                "what its next CEB701 may name; each {invtNo, ebcCode, agentCode, copNo, ebpCode, orderNo, "
                "logisticsNo, ieDate, released_at, customsCode, portCode, tradeMode, country}",
                (("ebcCode", "the consignor (a submitter's key must name one it holds; operators and admins may leave "
                              "it out for every consignor's)"),),
                "a submitter's key naming no ebcCode, a bad limit or cursor",
                cursor="next_cursor of the previous page (a page may hold fewer than limit)",
            )
        },
        "/v1/rejections": {
            "get": _page_list(
                "Refused messages, newest first (keyset pages), each {id, received_at, submitter, guid, message_type, "
                "http_status, raw_size, issues [{layer, code, path, message}]}: a submitter's key sees its own, an "
                "operator's every one",
                (
                    ("submitter", "the name of the key that sent them (operators; a submitter sees its own)"),
                    ("message_type", "CEB311 ..."),
                    ("code", "an issue's code, e.g. rule.actural_paid_mismatch"),
                    ("since", "ISO 8601 time, received at or after"),
                    ("until", "ISO 8601 time, received before"),
                ),
                "a time or cursor that is not one, a bad limit",
                page="RejectionPage",
            )
        },
        "/v1/rejections/{id}": {
            "get": {
                "summary": "One refused message with its issues and raw: the first 64 KiB of what was sent (as UTF-8, "
                "raw_truncated when it was longer)",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": {
                    "200": _ok("the refusal", "Rejection"),
                    "404": _err("no such refusal (or another key's)"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/shipments.csv": {
            "get": {
                "summary": "Every shipment GET /v1/shipments lists with the same query parameters (but limit and "
                "cursor: all its pages, newest first) as CSV: UTF-8 with a byte order mark, columns updated_at, "
                "ebpCode, orderNo, ebcCode, flow, mode, state, missing, customs_status, findings; a cell a "
                "spreadsheet would run as a formula starts with an apostrophe",
                "parameters": _query(_SHIPMENT_FILTERS),
                "responses": {
                    "200": {"description": "the CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                    "400": _err("an unknown state, customs_status or flow, or a time that is not ISO 8601"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/shipments/{ebpCode}/{orderNo}": {
            "get": {
                "summary": "One shipment: documents (current and history), state, missing legs, findings; "
                f"customs_status ({' | '.join(SHIPMENT_CUSTOMS_STATUSES)}) and, per document, forward_state "
                f"({' | '.join(FORWARD_STATES)}), customs {{code, rank, name, info, time}}, "
                "transmissions (jobs with their attempts) and receipts; an import shipment's parcel unloaded at the "
                "supervision site: the site's deliveries (入库明细单 CEB711, kind delivery, every version) naming its "
                "waybill, each with only the line of its parcel (listed: how many the delivery names; two live "
                "deliveries of different keys naming it: the warning site.waybill_on_two_deliveries); an export "
                "transport message (arrival, departure, manifest) or a delivery of which the key holds no party code "
                "is limited: true, with no head, parties "
                "or transmissions and only its lines naming this shipment's waybill; tax_bills: customs' electronic "
                "tax bills "
                "(CEB816/818) of its inventory, each [{taxNo, invtNo, status (1 generated | 2 consolidated | 3 void), "
                "status_name, status_time, entDutyNo, customsTax, valueAddedTax, consumptionTax, total, estimate "
                "{customsTax, valueAddedTax, consumptionTax, total, full_rate, return, uncounted_return}: the "
                "gateway's own, of the goods kept when a return customs concluded before the bill's consolidation "
                "counts, findings (tax.bill_differs when a tax differs from the estimate by more than 0.01, also "
                "among the shipment's findings; none for a void bill), document_id}]; payment_data (an import "
                "order of a 179 platform, to the "
                "platform's key): {payTransactionId, handed_over_at, questions} as /v1/payment-data",
                "parameters": [
                    {"name": "ebpCode", "in": "path", "required": True, "schema": {"type": "string"},
                     "description": "- for a waybill-only shipment (its order has not come; ebpCode empty)"},
                    {"name": "orderNo", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _ok("the shipment", "Shipment"),
                    "404": _err("unknown or not yours"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/summaries/{agentCode}/{copNo}": {
            "get": {
                "summary": "One summary application (CEB701 汇总申请单): every version of every part (msgSeqNo; "
                "documents, newest first) with its forwarding and CEB702 receipts; parts: per msgSeqNo {msgSeqNo, "
                "msgCount, preNo, sumNo, customs, forward_state, withdrawn} of its current version, with results: "
                "those of the sumNo any version of the part was given, without their items; preNo, sumNo "
                "(from its CEB702), customs {code, ...}, forward_state and withdrawn of the first part's; results: "
                "customs' summary results (CEB792), each {sumNo, declSeqNo, entryId, decTmpNo, decPreNo, decState, "
                "opDate, customsCode, grossWeight, netWeight, msgCount, msgSeqNo, note, items: [{invtNo, "
                "logisticsNo, gseqno, gnum, gcode}]}; "
                "declarations: the customs declarations' numbers (entryId, else declSeqNo)",
                "parameters": _path("agentCode", "copNo"),
                "responses": {
                    "200": {"description": "the summary application"},
                    "404": _err("unknown or not yours"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/payment-data": {
            "post": {
                "summary": "The 179 real-time payment data (spec §10): a payment's raw data from its platform, as "
                "customs names it, {payExchangeInfoHead: {initalRequest, initalResponse, ebpCode, payCode, "
                "payTransactionId, totalAmount, currency, verDept, payType?, tradingTime, note?}, "
                "payExchangeInfoLists: [{orderNo, goodsInfo: [{gname, itemLink}], recpAccount, recpCode?, "
                "recpName}]} (no guid: the gateway gives each upload its own). Stored once committed, one per "
                "(ebpCode, payTransactionId); handed over again, it replaces the stored one. Uploaded, signed with "
                "the platform's key, when customs asks about one of its orders (POST /ceb/platDataOpen/{token}). "
                "A submitter's key must hold the ebpCode; the platform must be one of [[realtime.platforms]]",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "201": {"description": "{ebpCode, payTransactionId, orderNos, outcome: created}"},
                    "200": {"description": "the same, outcome replaced"},
                    "400": _err("not JSON (parse.invalid_json)"),
                    "409": _err("an order is paid by another stored payment of the platform "
                                "(realtime.payment_of_another_order); nothing stored"),
                    "415": _err("not application/json"),
                    "422": _err("the field table refuses it, or the platform is not configured (realtime.*)"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/payment-data/questions": {
            "get": _page_list(
                "Customs' 179 questions (platDataOpen), newest first (keyset pages; an operator's key every "
                "platform's, a submitter's those of the platforms it holds), each {id, ebpCode, orderNo, sessionID, "
                "serviceTime, received_at, state (asked | uploaded | refused), handed_over (the order's payment was "
                "handed over), "
                "upload_guid, uploaded_at, answered_at, answer: customs' {code, message}, job: the upload's {id, "
                "state, attempts, last_error, run_after} (dead: replay it with POST /v1/queue/replay), closed_at, "
                "closed_by, close_reason (an operator closed it: null while open)}",
                (
                    ("state", "open (the default: asked or refused, those not uploaded, and not closed), closed (those "
                              "an operator closed), asked, refused, uploaded or any (closed or not)"),
                    ("ebpCode", "one platform's"),
                ),
                "a state, limit or cursor that is not one",
                page="PaymentQuestionPage",
            ),
        },
        "/v1/payment-data/questions/{id}/close": {
            "post": {
                "summary": "Close a 179 question that can never be answered (operator / admin), with a short reason: "
                "it leaves the open list and cbec_payment_data_questions (and so their alerts), kept with who closed "
                "it, when and why (state=closed). Its upload's job, queued or a dead letter, runs once more and ends "
                "done without uploading: no dead letter stays, nothing is uploaded later. Customs asking again is a "
                "new question",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "requestBody": _CLOSE_BODY,
                "responses": {
                    "200": _ok("the question as listed, closed", "PaymentQuestion"),
                    "400": _err("a body that is not {reason}: none, empty, over 200 characters, several lines"),
                    "404": _err("no such question"),
                    "409": _err("the question was uploaded, closed already (by whom, when, why), or its upload is "
                                "being sent now (close it once customs answered, if it still needs closing)"),
                    "413": _err("a body over 4 KiB (parse.too_large)"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/payment-data/{ebpCode}/{orderNo}": {
            "get": {
                "summary": "An order's stored payment data and customs' questions about it, newest first: {ebpCode, "
                "orderNo, payment: {payExchangeInfoHead, payExchangeInfoLists, submitter, received_at, updated_at} "
                "| null, questions: [{sessionID, serviceTime, received_at, state (asked | uploaded | refused), "
                "upload_guid, uploaded_at, answer: customs' {code, message}}]}",
                "parameters": _path("ebpCode", "orderNo"),
                "responses": {"200": {"description": "the order's payment data"},
                              "404": _err("neither payment data nor a question, or not yours"), **_AUTH_ERRORS},
            },
            "delete": {
                "summary": "The payment that paid the order withdrawn whole, every order it lists free again for "
                "the payment handed over next (one handed over in error, or an order paid again under another "
                "payTransactionId); customs' questions stay, those waiting wait for the next payment",
                "parameters": _path("ebpCode", "orderNo"),
                "responses": {"200": {"description": "{ebpCode, payTransactionId, orderNos, outcome: withdrawn}"},
                              "404": _err("no payment paid the order, or not yours"), **_AUTH_ERRORS},
            },
        },
        "/ceb/platDataOpen/{token}": {
            "post": {
                "summary": "customs asks a platform for an order's payment data (platDataOpen, spec §10.1), at the URL "
                "the platform registered with customs (no API key: the token is the platform's secret, "
                "[[realtime.platforms]]). Form parameter openReq: {orderNo, sessionID, serviceTime}. The question "
                "and its upload's job are committed, then answered; the upload (realTimeDataUpload) follows through "
                "the retry queue, waiting there for payment data not handed over yet",
                "security": [],
                "parameters": _path("token"),
                "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "properties": {"openReq": {"type": "string"}}}}}},
                "responses": {
                    "200": {"description": "{code: 10000 (taken) | 20000 (openReq unreadable, or its session asked "
                                           "already about another order), message, serviceTime}"},
                    "400": {"description": "{code: 20000, ...}: the form cannot be read (a broken multipart, an "
                                           "unknown charset)"},
                    "404": _err("no platform's token"),
                    "408": {"description": "{code: 20000, ...}: the body did not arrive within 10 s"},
                    "413": {"description": "{code: 20000, ...}: larger than a question is (16 KiB), chunked too"},
                    "503": {"description": "{code: 20000, ...}: the question could not be stored; ask again"},
                },
            }
        },
        "/v1/receipts": {
            "post": {
                "summary": "Customs receipts: a bare CEB312/412/512/514/622/624/626/712/900 (export "
                "CEB304/404/506/508/510/604/606/608/702/214/216) or one in a DxpMsg "
                "(customs and admin keys). Every return element is stored once (type, business keys, "
                "returnStatus, returnTime) and applied: the document's customs status (monotonic), the "
                "shipment's customs_status, held inventories released, webhooks and warehouse orders. Tax bills "
                "(CEB816) and their status changes (CEB818) come the same way: each Tax element stored once (its "
                "status as return_status), matched to the inventory by invtNo and every enterprise code it names, "
                "its status moving forward by returnTime (void is final); shown on the shipment (tax_bills). "
                "Summary results (CEB792) too: each SummaryResult stored once (decState as return_status), matched "
                "to the summary application by the sumNo its CEB702 gave it and every enterprise code it names; "
                "shown at /v1/summaries/{agentCode}/{copNo}",
                "requestBody": {"required": True, "content": {t: {"schema": {"type": "string"}} for t in (
                    "application/xml", "text/xml", "application/octet-stream")}},
                "responses": {
                    "200": {
                        "description": "{message_type, guid, cop_msg_id, stored, already_stored, receipts: [{index, "
                        "message_type, return_status, status_name, outcome (applied | stale | transient | "
                        "unknown_status | unmatched | duplicate | ignored_older | not_sent), document_ids, message_id, "
                        "resend}]}; a receipt "
                        "received before answers outcome duplicate (already stored), not an error; one that matched "
                        "nothing is kept (unmatched) and tried again when delivered again"
                    },
                    "400": _err("not a safe, well-formed receipt or DxpMsg"),
                    "413": _err("body too large"),
                    "415": _err("unsupported Content-Type"),
                    "422": _err("schema errors, a tax bill's or summary result's rule errors (e.g. rule.tax_status), "
                                "or not a receipt (rule.not_a_receipt)"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/warehouse/callbacks": {
            "post": {
                "summary": "A warehouse's status of an order the gateway sent it (warehouse and admin keys; the "
                "contract in docs/adapters.md, schema cbec.warehouse-callback.v1): stored once per order, status and "
                "occurredAt, and shown on the shipment under the document the order's reference names (messageType, "
                "guid) as warehouse_orders, each with its furthest status and its callbacks",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _CALLBACK}}},
                "responses": {
                    "400": _err("not JSON, a member named twice, a character no text may hold, or a body its "
                                "Content-Encoding does not decode"),
                    "200": {"description": "{order_id, stored (false: this callback came before), linked (false: "
                                           "not an order the gateway made from the document its reference names; "
                                           "kept all the same), "
                                           "status (the order's furthest so far)}"},
                    "413": _err("body too large (64 KiB)"),
                    "422": _err("not a callback of the contract (warehouse.bad_callback)"),
                    **_AUTH_ERRORS,
                },
            },
            "get": _page_list(
                "The warehouses' callbacks as they came, newest first (keyset pages; operator / admin), each {id, "
                "received_at, submitter, order_id, warehouse_order_no, direction, status, reason, occurred_at, "
                "reference, linked, unlinked_because, ebpCode, orderNo, after_cancel, delivery}: linked=false lists "
                "those no shipment shows, unlinked_because unknown_reference (no document the gateway holds) or "
                "order_id_not_ours (a document the gateway holds, whose order has another orderId); after_cancel a "
                "status of progress (accepted … delivered) that came after the gateway asked the warehouse to cancel "
                "the order (GET /v1/warehouse/cancels); delivery, of a callback on an inbound order made from a "
                "site's delivery (CEB711), that delivery {message_guid, billNo, listed, shipments: [{ebpCode, "
                "orderNo}] of its parcels the gateway holds}, else null",
                (
                    ("linked", "true or false (absent: both)"),
                    ("submitter", "the name of the warehouse's key"),
                    ("order_id", "the orderId a callback names"),
                    ("status", "accepted, received, picked, shipped, delivered, rejected or cancelled; several "
                               "separated by commas"),
                    ("since", "ISO 8601 time, received at or after"),
                    ("until", "ISO 8601 time, received before"),
                ),
                "a linked, status, time or cursor that is not one, a bad limit",
            ),
        },
        "/v1/warehouse/cancels": {
            "get": _page_list(
                "The cancels the gateway asked of warehouses, newest first (keyset pages; operator / admin): a "
                "cancelled inventory's outbound order, a changed or withdrawn delivery's or order's; each with when "
                "and why it was asked, the warehouse's answer, whether it confirmed it (cancelled), the progress it "
                "reported on the order after it, whether it is overdue (forwarding.warehouse_cancel_timeout_s), the "
                "order and the document's shipment (an inbound order: its delivery)",
                (("state", "open (the default: those that need a look — the warehouse went on with the order after "
                           "the cancel, refused it, or did not confirm it in time —, neither confirmed nor closed), "
                           "closed or any"),),
                "a state, limit or cursor that is not one",
                page="WarehouseCancelPage",
            )
        },
        "/v1/warehouse/cancels/{id}/close": {
            "post": {
                "summary": "Close a warehouse cancel that needs a look once it is settled with the warehouse (operator "
                "/ admin), with a short reason: it leaves the open list and cbec_warehouse_cancels_open (and so its "
                "alert), kept with who closed it, when and why (state=closed); progress the warehouse reports after "
                "flags it no more",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "requestBody": _CLOSE_BODY,
                "responses": {
                    "200": _ok("the cancel as listed, closed", "WarehouseCancel"),
                    "400": _err("a body that is not {reason}: none, empty, over 200 characters, several lines"),
                    "404": _err("no such cancel"),
                    "409": _err("the warehouse confirmed the cancel, it needs no look (yet), or it was closed already "
                                "(by whom, when, why)"),
                    "413": _err("a body over 4 KiB (parse.too_large)"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/queue": {
            "get": {
                "summary": "Delivery queue per endpoint: jobs queued, due, running, done (kept) and dead, oldest "
                "queued age (s), circuit state (the severest of every worker's), for a webhook endpoint the sellers "
                "whose webhooks are paused (paused_sellers: [{seller, waiting}]); and the documents sent to customs "
                "still awaiting a receipt (operator / admin)",
                "responses": {
                    "200": {"description": "{endpoints: [...], receipts_awaited: {count, oldest_sent_at, "
                            "oldest_wait_s}}"},
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/queue/awaited": {
            "get": _page_list(
                "The documents sent to customs still without any receipt, the longest waiting first (keyset pages; "
                "operator / admin), each {document_id, message_guid, message_type, kind, keys, ebpCode, orderNo, "
                "logisticsNo, sent_at, wait_s, receipt_overdue, repushes}",
                (),
                "a limit or cursor that is not one",
            )
        },
        "/v1/receipts/unmatched": {
            "get": _page_list(
                "The customs receipts kept unmatched, newest first (keyset pages; operator / admin): customs' word on "
                "a document the gateway could not find (declared around it, keys that differ; a tax bill or summary "
                "result whose number no receipt has taught yet leaves the list when one does), each {id, received_at, "
                "message_type, root_guid, element_index, doc_guid, keys, return_status, return_time, return_info, "
                "cop_msg_id, source, closed_at, closed_by, close_reason (an operator closed it: null while open)}",
                (("state", "open (the default: not closed), closed or any"),
                 ("message_type", "only receipts of this type, e.g. CEB622")),
                "a state, limit or cursor that is not one",
                page="UnmatchedReceiptPage",
            )
        },
        "/v1/receipts/unmatched/{id}/close": {
            "post": {
                "summary": "Close a receipt kept unmatched that no document will ever answer (operator / admin), "
                "with a short reason: it leaves the open list and cbec_receipts_unmatched (and so its alert), kept "
                "with who closed it, when and why (state=closed). It stays unmatched: should its document come after "
                "all, customs delivering it again (or, a tax bill or summary result, the receipt teaching its number) "
                "links it as any",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "requestBody": _CLOSE_BODY,
                "responses": {
                    "200": _ok("the receipt as listed, closed", "UnmatchedReceipt"),
                    "400": _err("a body that is not {reason}: none, empty, over 200 characters, several lines"),
                    "404": _err("no such receipt"),
                    "409": _err("the receipt matched its document (no unmatched receipt), or was closed already (by "
                                "whom, when, why)"),
                    "413": _err("a body over 4 KiB (parse.too_large)"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/queue/dead": {
            "get": {
                "summary": "Dead letters, newest first, each with its whole attempt history (operator / admin)",
                "parameters": [*_query((("endpoint", "only this endpoint"), ("limit", "1..500, default 50"))),
                               {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0},
                                "description": "default 0"}],
                "responses": {
                    "200": {"description": "{items, limit, offset, total (the dead letters of the filter)}"},
                    "400": _err("a limit or offset that is not a number in range, or an endpoint neither configured "
                                "nor holding dead letters"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/queue/replay": {
            "post": {
                "summary": "Move dead letters back to the queue (attempts reset, history kept; operator / admin)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "job_ids": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                                    "endpoint": {"type": "string", "minLength": 1},
                                    "all": {"const": True},
                                },
                                "additionalProperties": False,
                                # job_ids and / or an endpoint, or all alone
                                "oneOf": [{"anyOf": [{"required": ["job_ids"]}, {"required": ["endpoint"]}],
                                           "not": {"required": ["all"]}},
                                          {"required": ["all"], "not": {"anyOf": [{"required": ["job_ids"]},
                                                                                  {"required": ["endpoint"]}]}}],
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "{replayed: n, job_ids: [the jobs replayed], not_dead: [those of the "
                                           "job_ids asked for that were no dead letter: unknown, queued, running or "
                                           "done], other_endpoint: [dead letters of another endpoint than the one "
                                           "named]}"},
                    "400": _err("no filter given, all: true beside job_ids or an endpoint, a malformed body, or an "
                                "endpoint neither configured nor holding dead letters"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Readiness: the process and its database answer",
                "security": [],
                "responses": {"200": {"description": "ok"},
                              "503": {"description": "the database cannot be reached ({status: unavailable}), or the "
                                                     "process is stopping ({status: stopping}: it answers on for "
                                                     "shutdown_drain_s, then closes its port)"}},
            }
        },
        "/livez": {
            "get": {
                "summary": "Liveness: the process answers, whatever the database does",
                "security": [],
                "responses": {"200": {"description": "ok"}},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "security": [], "responses": {"200": {"description": "ok"}}}
        },
    },
}
