"""The summary declaration (汇总申报, spec §4.4 step 4, A.29–A.31): what the gateway checks of the inventories a
summary application (CEB701) names, and customs' summary results (CEB792) — pure, no I/O.

A B-type export inventory (CEB603 statisticsFlag B) is declared again, consolidated with others of its consignor,
as a customs declaration: the exporter's way to an export declaration and the VAT refund. The application names the
inventories by the invtNo customs gave them (CEB604). Customs is the authority on what it takes; the gateway tells
the declarant early what it already knows is wrong:

* an inventory the gateway holds under that invtNo that **cannot** be summarised refuses the application (HTTP 409,
  nothing stored): an import inventory (``summary.inventory_not_export``), an A-type one (simplified declaration,
  ``summary.inventory_not_b_type``), another consignor's (``summary.inventory_other_enterprise``), one withdrawn or
  cancelled (``summary.inventory_withdrawn``) — customs would refuse each, and a refused summary costs the
  exporter a day;
* what may still come right is a **warning** in the 202 answer, and the application is stored and forwarded: an
  invtNo the gateway holds no export inventory of (declared through another platform, or before the gateway —
  ``summary.inventory_unknown``), an inventory customs has not released yet (its 800 may be on its way,
  ``summary.inventory_not_released``).

These are not rules of the message (gateway.rules): only the stored inventories know them, so they are read when a
CEB701 is submitted (:data:`HELD_INVENTORIES`), before it is stored. A summary of a period (startTime, endTime)
names no inventory and is not checked here.

CEB792 (汇总结果单) comes from customs like a tax bill (gateway.taxbills): taken at ``POST /v1/receipts`` (or the
inbox), each SummaryResult stored as a receipt record of its message and matched to the summary application whose
CEB702 receipts gave it its sumNo (documents.invt_no holds a CEB701's sumNo, as it holds an inventory's invtNo).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.documents import Document
from gateway.errors import Issue
from gateway.keystate import STATE_LAYER
from gateway.receipts import RANK_RELEASED

CODES: dict[str, str] = {
    "summary.inventory_not_export": "a summary application (CEB701) names the invtNo of an import inventory (CEB621) "
    "the gateway holds: only export inventories are summarised (HTTP 409)",
    "summary.inventory_not_b_type": "a summary application (CEB701) names an export inventory whose statisticsFlag is "
    "A (simplified declaration, 清单核放): only B-type inventories are summarised (HTTP 409)",
    "summary.inventory_other_enterprise": "a summary application (CEB701) names an export inventory of another "
    "consignor (its ebcCode is not the application's): a summary is one consignor's (HTTP 409)",
    "summary.inventory_withdrawn": "a summary application (CEB701) names an export inventory that was withdrawn "
    "(appType 3) or cancelled (CEB605 concluded by customs) (HTTP 409)",
    "summary.inventory_unknown": "warning: the gateway holds no export inventory with an invtNo the summary "
    "application names (declared elsewhere, or a typo); it is stored and forwarded, customs decides",
    "summary.inventory_not_released": "warning: an export inventory the summary application names has not been "
    "released by customs yet (no CEB604 800); it is stored and forwarded, customs decides",
}

#: The codes that refuse the application; the others are warnings in the 202 answer.
REFUSING: frozenset[str] = frozenset({
    "summary.inventory_not_export", "summary.inventory_not_b_type", "summary.inventory_other_enterprise",
    "summary.inventory_withdrawn",
})  # fmt: skip

#: The inventories (import and export) customs gave one of the invtNos ($1) a summary application names, as their keys
#: stand now (the current version: a withdrawal's tombstone carries no invtNo of its own), with whether an export one
#: was cancelled (its CEB605 concluded: $2 the concluded rank). Read only for a CEB701: no other path runs it.
HELD_INVENTORIES = """
SELECT DISTINCT ON (v.invt_no, c.id)
       v.invt_no, c.message_type, c.ebc_code, c.head ->> 'statisticsFlag' AS statistics_flag, c.withdrawn,
       coalesce(c.customs_rank, 0) AS customs_rank, c.key1, c.key2,
       EXISTS (SELECT 1 FROM documents AS x
                WHERE x.message_type = 'CEB605' AND x.is_current AND x.key1 = c.key1
                  AND x.head ->> 'invtNo' = v.invt_no AND x.forward_state = 'receipted'
                  AND x.customs_rank >= $2) AS cancelled
  FROM documents AS v
  JOIN documents AS c ON c.message_type = v.message_type AND c.key1 = v.key1 AND c.key2 = v.key2 AND c.is_current
 WHERE v.invt_no = ANY ($1::text[]) AND v.message_type IN ('CEB603', 'CEB621')
 ORDER BY v.invt_no, c.id
"""


@dataclass(frozen=True, slots=True)
class HeldInventory:
    """What the gateway holds of an inventory a summary application names (a row of :data:`HELD_INVENTORIES`)."""

    invt_no: str
    message_type: str  # CEB603 (export) or CEB621 (import)
    ebc_code: str
    statistics_flag: str
    withdrawn: bool
    cancelled: bool
    customs_rank: int
    key: tuple[str, str]  # its agentCode and copNo (export) or ebcCode and orderNo (import)

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> HeldInventory:
        return cls(invt_no=r["invt_no"], message_type=r["message_type"], ebc_code=r["ebc_code"] or "",
                   statistics_flag=(r["statistics_flag"] or "").strip(), withdrawn=r["withdrawn"],
                   cancelled=r["cancelled"], customs_rank=r["customs_rank"], key=(r["key1"], r["key2"]))  # fmt: skip


def named_inventories(docs: Iterable[Document]) -> list[str]:
    """The invtNos the applications name, once each, in order."""
    return list(dict.fromkeys(no for doc in docs for line in doc.lines if (no := (line.get("invtNo") or "").strip())))


def judge(doc: Document, held: Mapping[str, list[HeldInventory]]) -> tuple[list[Issue], list[Issue]]:
    """(refusing issues, warnings) of one summary application against the inventories the gateway holds by invtNo."""
    errors: list[Issue] = []
    warnings: list[Issue] = []
    ebc = (doc.head.get("ebcCode") or "").strip()
    for i, line in enumerate(doc.lines):
        no = (line.get("invtNo") or "").strip()
        if not no:
            continue
        path = doc.line_path(i, "invtNo")
        found = held.get(no, [])
        exports = [h for h in found if h.message_type == "CEB603"]
        if not exports:
            if found:
                errors.append(Issue(STATE_LAYER, "summary.inventory_not_export", path,
                                    f"invtNo {no} is an import inventory's (CEB621 ebcCode {found[0].ebc_code}, "
                                    f"orderNo {found[0].key[1]}); only export inventories are summarised"))
            else:
                warnings.append(Issue(STATE_LAYER, "summary.inventory_unknown", path,
                                      f"the gateway holds no export inventory with invtNo {no}; customs will judge it"))
            continue
        inv = exports[0]
        named = f"the export inventory {inv.key[0]}/{inv.key[1]} (invtNo {no})"
        if inv.withdrawn or inv.cancelled:
            errors.append(Issue(STATE_LAYER, "summary.inventory_withdrawn", path,
                                f"{named} was {'withdrawn' if inv.withdrawn else 'cancelled (CEB605 concluded)'}"))
        elif inv.ebc_code != ebc:
            errors.append(Issue(STATE_LAYER, "summary.inventory_other_enterprise", path,
                                f"{named} is consignor {inv.ebc_code}'s; this application is {ebc}'s"))
        elif inv.statistics_flag != "B":
            errors.append(Issue(STATE_LAYER, "summary.inventory_not_b_type", path,
                                f"{named} has statisticsFlag {inv.statistics_flag or '(none)'}: a simplified "
                                "declaration (A) is not summarised, only B"))
        elif inv.customs_rank < RANK_RELEASED:
            warnings.append(Issue(STATE_LAYER, "summary.inventory_not_released", path,
                                  f"{named} is not released by customs yet"))
    return errors, warnings


__all__ = ["CODES", "HELD_INVENTORIES", "REFUSING", "HeldInventory", "judge", "named_inventories"]
