"""Receipt messages as customs writes them (spec §5, Appendix A) — pure builders for the sandbox.

Receipts use a default namespace (as the official receipts do), carry no BaseTransfer and no signature,
and echo the declared document's guid (as the official samples do; correlation should still use the
business keys). ``returnTime`` is ``YYYYMMDDhhmmssSSS`` China time.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from lxml import etree

from gateway import tax
from gateway.documents import Document
from gateway.messages import BY_CODE, CEB_NS, MESSAGE_TYPES
from gateway.schema import element_sequences
from gateway.tax import DEFAULT_RATES, TaxRates

CHINA_TZ = timezone(timedelta(hours=8), "CST")

#: The receipts the sandbox sends: code -> (root, return element, its children in XSD order). The names come from
#: the registry, the order from the type's schema itself (import or export).
RECEIPT_CODES: tuple[str, ...] = ("CEB312", "CEB412", "CEB512", "CEB514", "CEB622", "CEB624", "CEB626", "CEB712",
                                  "CEB900", "CEB304", "CEB404", "CEB506", "CEB604", "CEB606", "CEB508", "CEB510",
                                  "CEB608", "CEB702", "CEB214", "CEB216")  # fmt: skip
RECEIPT_FIELDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    code: (BY_CODE[code].root, BY_CODE[code].document,
           element_sequences(BY_CODE[code].schema)[BY_CODE[code].document])
    for code in RECEIPT_CODES
}  # fmt: skip

#: Declaration code -> receipt code, from the registry (MessageType.receipt_for): one source.
RECEIPT_FOR: dict[str, str] = {t.receipt_for: t.code for t in MESSAGE_TYPES if t.receipt_for}

#: Fields a receipt must carry even when the declaration has no value (XSD minOccurs 1).
_REQUIRED_ALWAYS = frozenset({"guid", "returnStatus", "returnTime", "returnInfo", "copNo", "preNo", "ebpCode",
                              "ebcCode", "orderNo", "payCode", "payTransactionId", "logisticsCode", "logisticsNo",
                              "logisticsStatus", "oriCopMsgId", "oriMessageType", "oriBizMessage", "agentCode",
                              "statisticsFlag", "operatorCode", "billNo", "msgSeqNo", "coElNo"})  # fmt: skip

_MAX_INFO = {"CEB900": 5000}
STATUS_TEXT = {
    "1": "电子口岸已暂存",
    "2": "电子口岸申报中",
    "3": "发送海关成功",
    "100": "海关退单",
    "120": "海关入库",
    "300": "人工审核",
    "399": "海关审结",
    "500": "查验",
    "800": "放行",
    "899": "结关",
}


def return_time(moment: datetime | None = None) -> str:
    """17 digits, ``YYYYMMDDhhmmssSSS``, China time."""
    moment = moment or datetime.now(CHINA_TZ)
    if moment.tzinfo is not None:
        moment = moment.astimezone(CHINA_TZ)
    return moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"


def new_guid() -> str:
    return str(uuid.uuid4()).upper()


def build_receipt(code: str, values: Mapping[str, str | None], *, message_guid: str | None = None) -> bytes:
    """One receipt message with one return element; optional fields without a value are left out."""
    return build_receipts(code, [values], message_guid=message_guid)


def build_receipts(code: str, returns: Sequence[Mapping[str, str | None]], *, message_guid: str | None = None) -> bytes:
    """One receipt message with a return element per entry of ``returns`` (1..max_returns(code)), in order."""
    if not 1 <= len(returns) <= max_returns(code):
        raise ValueError(f"{code} carries 1..{max_returns(code)} return elements, not {len(returns)}")
    root_name, element, fields = RECEIPT_FIELDS[code]
    ns = f"{{{CEB_NS}}}"
    root = etree.Element(ns + root_name, nsmap={None: CEB_NS})
    root.set("guid", message_guid or new_guid())
    root.set("version", "1.0")
    limit = _MAX_INFO.get(code, 1000)
    for values in returns:
        ret = etree.SubElement(root, ns + element)
        for name in fields:
            value = values.get(name)
            if value is None or value == "":
                if name not in _REQUIRED_ALWAYS:
                    continue
                value = value or ""
            if name == "returnInfo":
                value = value[:limit]
            etree.SubElement(ret, ns + name).text = value
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def build_tax_bills(
    code: str,
    taxes: Sequence[tuple[Mapping[str, str | None], Sequence[Mapping[str, str]]]],
    *,
    message_guid: str | None = None,
) -> bytes:
    """A CEB816 (tax bills: a head and its lines each) or CEB818 (status changes: a head each, no lines) message;
    optional fields without a value are left out, the rest in the XSD's order."""
    assert code in ("CEB816", "CEB818")
    return build_customs_documents(code, taxes, message_guid=message_guid)


def build_customs_documents(
    code: str,
    documents: Sequence[tuple[Mapping[str, str | None], Sequence[Mapping[str, str]]]],
    *,
    message_guid: str | None = None,
) -> bytes:
    """A customs-originated message of documents with a head and lines (CEB816, CEB818, CEB792): a head and its lines
    each; optional fields without a value are left out, the rest in the order of the type's XSD."""
    mtype = BY_CODE[code]
    assert mtype.head is not None
    taxes = documents
    sequences = element_sequences(mtype.schema)
    ns = f"{{{CEB_NS}}}"
    root = etree.Element(ns + mtype.root, nsmap={None: CEB_NS})
    root.set("guid", message_guid or new_guid())
    root.set("version", "1.0")
    parts = [(mtype.head, None)] + ([(mtype.lines, True)] if mtype.lines else [])
    for head, lines in taxes:
        element = etree.SubElement(root, ns + mtype.document)
        for part, is_line in parts:
            for values in lines if is_line else [head]:
                holder = etree.SubElement(element, ns + part)
                for name in sequences[part]:
                    value = values.get(name)
                    if value is not None and value != "":
                        etree.SubElement(holder, ns + name).text = value
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def tax_bill(
    inventory: Document, invt_no: str, tax_no: str, *, moment: datetime | None = None,
    rates: TaxRates = DEFAULT_RATES,
) -> tuple[dict[str, str | None], list[dict[str, str]]]:  # fmt: skip
    """The head and lines of the tax bill customs would send for a released inventory, computed as the gateway
    estimates it (spec §7.2; the sandbox's customs knows no other rules): status 1 generated, the withholding agent
    its assureCode."""
    assessment = tax.assess(inventory, annual_used=Decimal(0), rates=rates)
    h = inventory.head
    head = {
        "guid": new_guid(), "returnTime": return_time(moment), "invtNo": invt_no, "taxNo": tax_no,
        **_taxes(assessment.lines), "status": "1",
        **{name: h.get(name) for name in ("assureCode", "ebcCode", "logisticsCode", "agentCode", "customsCode")},
    }  # fmt: skip
    return head, _tax_lines(assessment.lines)


def corrected_tax_bill(
    bill: Mapping[str, str | None], inventory: Document, returned: Sequence[Mapping[str, str]], *,
    moment: datetime | None = None, rates: TaxRates = DEFAULT_RATES,
) -> tuple[dict[str, str | None], list[dict[str, str]]]:  # fmt: skip
    """The tax bill ``bill`` (the head of its CEB816) corrected once a return of part of the inventory's goods
    (``returned``: its lines, gnum and qty) was concluded within the return window: the same taxNo, status 1
    generated, a new guid and returnTime, and the taxes of the goods kept (gateway.tax.after_return: the returned
    goods' tax is not levied). ``returned`` empty — the return withdrawn — gives the whole inventory's bill again."""
    kept = tax.after_return(inventory, returned, rates=rates)
    head = {**bill, "guid": new_guid(), "returnTime": return_time(moment), **_taxes(kept), "status": "1"}
    return head, _tax_lines(kept)


def _taxes(lines: Sequence[tax.LineTax]) -> dict[str, str]:
    """A bill's three taxes: the sums of its rounded lines (as gateway.tax.assess totals them)."""
    return {name: str(sum((getattr(t, attr) for t in lines), Decimal("0.00")))
            for name, attr in (("customsTax", "customs_tax"), ("valueAddedTax", "value_added_tax"),
                               ("consumptionTax", "consumption_tax"))}  # fmt: skip


def _tax_lines(lines: Sequence[tax.LineTax]) -> list[dict[str, str]]:
    return [{"gnum": t.gnum, "gcode": t.gcode, "taxPrice": str(t.dutiable_value), "customsTax": str(t.customs_tax),
             "valueAddedTax": str(t.value_added_tax), "consumptionTax": str(t.consumption_tax)}
            for t in lines]  # fmt: skip


def tax_bill_of(
    inventory: Document, invt_no: str, tax_no: str, *, moment: datetime | None = None,
    rates: TaxRates = DEFAULT_RATES,
) -> bytes:  # fmt: skip
    """The CEB816 message of :func:`tax_bill`."""
    return build_tax_bills("CEB816", [tax_bill(inventory, invt_no, tax_no, moment=moment, rates=rates)])


def tax_status(
    bill: Mapping[str, str | None], status: str, *, ent_duty_no: str | None = None, moment: datetime | None = None
) -> tuple[dict[str, str | None], list[dict[str, str]]]:
    """The CEB818 Tax (spec A.14: a head, no lines) moving the bill whose CEB816 head is ``bill`` to ``status``, with
    the payment slip (entDutyNo) it was consolidated into."""
    head = {"guid": new_guid(), "returnTime": return_time(moment), "invtNo": bill.get("invtNo"),
            "taxNo": bill.get("taxNo"), "status": status, "entDutyNo": ent_duty_no,
            "assureCode": bill.get("assureCode")}  # fmt: skip
    return head, []


def ent_duty_no(serial: int, moment: datetime | None = None) -> str:
    """The sandbox's payment slip number (缴款书编号, C..50; its form is customs' own): ``D`` + yyyymmdd + serial."""
    moment = moment or datetime.now(CHINA_TZ)
    return f"D{moment:%Y%m%d}{serial % 10**9:09d}"
def summary_result(
    application: Document, sum_no: str, inventories: Sequence[Document], invt_nos: Sequence[str], serial: int,
    *, moment: datetime | None = None,
) -> tuple[dict[str, str | None], list[dict[str, str]]]:  # fmt: skip
    """The head and lines of the summary result (CEB792, spec A.31) customs would send for one declaration of a
    concluded summary application: one declaration (declSeqNo, entryId) of every item of ``inventories`` (those of the
    application that go into it, :func:`declarations`), an item (gseqno) per HS code — and, with the application's
    itemNameFlag 1 (A.29: by the original item name), per HS code and itemName — in the order first met, the
    inventories' weights summed."""
    moment = moment or datetime.now(CHINA_TZ)
    h = application.head
    customs = h.get("customsCode", "")
    district = customs if len(customs) == 4 and customs.isdigit() else "0000"
    gross = sum((Decimal(i.head.get("grossWeight") or 0) for i in inventories), Decimal(0))
    net = sum((Decimal(i.head.get("netWeight") or 0) for i in inventories), Decimal(0))
    head: dict[str, str | None] = {
        "guid": new_guid(), "customsCode": customs, "sumNo": sum_no, "opDate": return_time(moment),
        "declSeqNo": f"{district}{moment:%Y}1{serial % 10**9:09d}",
        "entryId": f"{district}{moment:%Y}{serial % 10**10:010d}",
        "decState": "10", "grossWeight": str(gross), "netWeight": str(net), "msgCount": "1", "msgSeqNo": "1",
        **{name: h.get(name) for name in ("agentCode", "agentName", "ebcCode", "ebcName", "declAgentCode",
                                          "declAgentName")},
    }  # fmt: skip
    by_name = (h.get("itemNameFlag") or "").strip() == "1"
    items: dict[tuple[str, str], int] = {}
    lines = []
    for inv, invt_no in zip(inventories, invt_nos, strict=True):
        for line in inv.lines:
            gcode = line.get("gcode", "")
            seq = items.setdefault((gcode, line.get("itemName", "") if by_name else ""), len(items) + 1)
            lines.append({"invtNo": invt_no, "logisticsNo": inv.head.get("logisticsNo", ""), "gseqno": str(seq),
                          "gnum": line.get("gnum", ""), "gcode": gcode})  # fmt: skip
    return head, lines


def declarations(application: Document, inventories: Sequence[Document]) -> list[list[int]]:
    """The customs declarations a concluded summary application makes of its inventories, as their indexes, in the
    order first met: one of all of them — they are of its consignor — or, with summaryFlag 2 (A.29: by consignor and
    producer / seller), one per ownerCode."""
    by_owner = (application.head.get("summaryFlag") or "").strip() == "2"
    groups: dict[str, list[int]] = {}
    for n, inv in enumerate(inventories):
        groups.setdefault((inv.head.get("ownerCode") or "").strip() if by_owner else "", []).append(n)
    return list(groups.values())


def tax_no(invt_no: str) -> str:
    """The sandbox's taxNo of an inventory's bill: one bill per invtNo, so a changed inventory released again gets
    the same bill with new amounts (a corrected bill), not a second one."""
    return f"{invt_no}T1"


def max_returns(code: str) -> int:
    """How many return elements one message of this receipt type may carry (the XSD's maxOccurs: 100, CEB900 1)."""
    mtype = BY_CODE[code]
    return mtype.max_documents or 1


def format_receipt(
    *,
    ori_cop_msg_id: str,
    ori_message_type: str,
    original: bytes,
    info: str,
    status: str = "-1",
    moment: datetime | None = None,
) -> bytes:
    """A CEB900 format receipt for a message that failed parsing or the schema."""
    try:
        text = original.decode("utf-8")
        etree.SubElement(etree.Element("probe"), "x").text = text  # raises on XML-illegal characters
    except (UnicodeDecodeError, ValueError):
        text = base64.b64encode(original).decode("ascii")  # not representable as XML text
    return build_receipt(
        "CEB900",
        {
            "guid": new_guid(),
            "returnStatus": status,
            "returnInfo": info or "报文格式校验失败",
            "returnTime": return_time(moment),
            "oriCopMsgId": ori_cop_msg_id[:255],
            "oriMessageType": (ori_message_type or "Unknown")[:15],
            "oriBizMessage": text,
        },
    )


class SerialNumbers:
    """The serials of the numbers the sandbox gives (preNo, invtNo, sumNo, payment slips …): each one more than the
    last, and never less than the tenths of a second since the year began (China time). A sandbox started again —
    ``./ops/run`` a second time on the same data, whose database keeps the numbers of the first run — so gives none
    its earlier run gave, unless that run gave more than ten a second for longer than it has been stopped. A year
    holds ~316 million tenths: within the numbers' 9 digits, and the year or date is part of each number."""

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(CHINA_TZ)) -> None:
        self._now = now
        self._last = 0

    @property
    def last(self) -> int:
        """The last serial given (0: none yet)."""
        return self._last

    def resume(self, last: int) -> None:
        """Go on from a serial an earlier run gave (its state folder): the next is above it, whatever the clock."""
        self._last = max(self._last, last)

    def __iter__(self) -> SerialNumbers:
        return self

    def __next__(self) -> int:
        moment = self._now()
        start = moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        self._last = max(self._last + 1, int((moment - start).total_seconds() * 10))
        return self._last


def pre_no(serial: int, moment: datetime | None = None, prefix: str = "B") -> str:
    """E-Port pre-entry number: ``B`` (``R`` for a warehouse entry, 入库单, spec §3.6) + yyyymmdd + 9-digit serial (18
    chars)."""
    moment = moment or datetime.now(CHINA_TZ)
    return f"{prefix}{moment:%Y%m%d}{serial % 10**9:09d}"


def rkd_no(customs_code: str, serial: int, moment: datetime | None = None) -> str:
    """Customs' warehouse-entry number (入库单编号, CEB712 rkdNo, C..18): 4-digit district + year + 10-digit serial, as
    the official sample has it."""
    moment = moment or datetime.now(CHINA_TZ)
    district = (customs_code if len(customs_code) == 4 and customs_code.isdigit() else "0000")
    return f"{district}{moment:%Y}{serial % 10**10:010d}"


def invt_no(customs_code: str, serial: int, moment: datetime | None = None, ie_flag: str = "I") -> str:
    """Customs inventory number: 4-digit district + year + ``I`` (import) or ``E`` (export) + 9-digit serial (18
    chars)."""
    moment = moment or datetime.now(CHINA_TZ)
    district = (customs_code if len(customs_code) == 4 and customs_code.isdigit() else "0000")
    return f"{district}{moment:%Y}{ie_flag}{serial % 10**9:09d}"
