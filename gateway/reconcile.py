"""Three-document reconciliation (三单对碰) of one import shipment — pure, no I/O.

CONTRACT (filled in by the reconciliation work; signatures are fixed):
``reconcile(shipment) -> Outcome`` is a pure function of the shipment's current documents, so it
gives the same outcome whatever the arrival order. The store re-runs it whenever any leg
arrives, changes or is withdrawn, and stores state and findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from gateway.documents import Document
from gateway.messages import Kind


class ShipmentState(StrEnum):
    INCOMPLETE = "incomplete"  # one or more legs missing (see Outcome.missing)
    MATCHED = "matched"  # all four legs present, no blocking finding
    MISMATCHED = "mismatched"  # at least one blocking finding


@dataclass(frozen=True)
class Side:
    """One side of a finding: which document, which element, what value it holds."""

    doc: str  # message code, e.g. "CEB311"
    guid: str  # the document's head guid
    path: str  # element path inside that document's message
    value: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"doc": self.doc, "guid": self.guid, "path": self.path, "value": self.value}


@dataclass(frozen=True)
class Finding:
    code: str  # stable, documented in docs/errors.md (e.g. "recon.amount_paid_mismatch")
    field: str  # the spec's field name, e.g. "acturalPaid"
    message: str
    left: Side | None
    right: Side | None = None
    blocking: bool = True  # False: informational (e.g. full tax applies under the single-item rule)

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "field": self.field,
            "message": self.message,
            "blocking": self.blocking,
            "left": self.left.as_dict() if self.left else None,
            "right": self.right.as_dict() if self.right else None,
        }


@dataclass(frozen=True)
class Shipment:
    """The current (not withdrawn) document of each leg, or None when it has not arrived."""

    order: Document | None = None
    payment: Document | None = None
    waybill: Document | None = None
    inventory: Document | None = None

    def leg(self, kind: Kind) -> Document | None:
        return {
            Kind.ORDER: self.order,
            Kind.PAYMENT: self.payment,
            Kind.WAYBILL: self.waybill,
            Kind.INVENTORY: self.inventory,
        }[kind]


@dataclass(frozen=True)
class Outcome:
    state: ShipmentState
    missing: tuple[Kind, ...] = ()
    findings: tuple[Finding, ...] = field(default_factory=tuple)


def reconcile(shipment: Shipment, *, tolerance: Decimal = Decimal("0")) -> Outcome:
    raise NotImplementedError
