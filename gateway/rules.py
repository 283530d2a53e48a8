"""Business rules of one CEB message that the customs XSD cannot express (spec §14) — pure, no I/O.

The XSDs carry no enumerations, patterns or arithmetic, so this layer enforces: non-empty, trimmed
values without control characters (the 2022 export XSD lets most required strings be empty, §2.6: here
they are refused); the code lists of spec §3.6; date formats and plausibility; the
single-message consistency rules R1, R4–R10 of §6.3 and the high-confidence single-message rows of
§6.4; signature presence (§2.7); guid lengths. Rules that compare documents with each other (R2, R3,
buyer = payer, order vs inventory) belong to :mod:`gateway.reconcile`, not here.

Organisation: :data:`RULES` maps a message code to a tuple of rule entries, one line per rule —

* :class:`Field` — a value check (code list, format, sign) on one or more named elements of the head,
  the lines, BaseTransfer or each BaseSubscribe;
* :class:`Required` — elements that must not be empty when present (their *presence* is the XSD's job);
* a plain function ``(Document, RuleContext) -> Iterable[Issue]`` for arithmetic and mode rules.

:data:`MESSAGE_RULES` holds the few rules about the message as a whole (root guid, signature, the same
document twice). Every issue is ``Layer.RULE`` and refuses the message, except the codes of :data:`WARNINGS`:
what the spec says a mode leaves out but not that customs refuses (a bonded-only field on a direct-purchase
inventory …) is a *warning*, reported beside the accepted message (:func:`findings`), never refusing it.

Conventions:

* Checks run on the value with surrounding whitespace removed; an untrimmed value is reported once,
  as ``rule.untrimmed``. An empty optional element is treated like an absent one (samples carry
  ``<invtNo></invtNo>`` on first declarations); an empty *required* one is ``rule.required_empty``.
* Money and quantities are :class:`decimal.Decimal`. "Equal" for money means equal after quantising
  both sides to 2 decimals with ROUND_HALF_UP (``0.005`` → ``0.01``); quantities compare exactly.
* Values that are not numbers are reported as ``rule.decimal_format`` / ``rule.integer_format`` and the
  arithmetic rules that need them are skipped, so one bad value gives one issue.
* Paths point at the offending element; for a required-by-rule element that is absent they point at
  its parent head or line.
"""

from __future__ import annotations

import datetime
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from enum import StrEnum
from functools import lru_cache, partial
from typing import NamedTuple

from gateway.documents import Document, ParsedMessage
from gateway.errors import Issue, Layer
from gateway.messages import BY_CODE, MESSAGE_TYPES, Direction, Signature

# ---------------------------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------------------------

CODES: dict[str, str] = {
    "rule.required_empty": "a required element is empty or holds only whitespace (the export XSD and "
    "minLength=1 both let whitespace through)",
    "rule.untrimmed": "a value starts or ends with whitespace",
    "rule.control_character": "a value contains a control character (free-text elements such as note may "
    "contain tab, CR and LF; nothing else may), or, outside free text, an invisible formatting character (a "
    "zero-width space or joiner, a direction mark, a BOM): an orderNo with one looks like another and is not",
    "rule.guid_length": "a guid (root attribute or document guid) is not exactly 36 characters",
    "rule.duplicate_guid": "two documents of one declaration message carry the same guid",
    "rule.duplicate_document": "two documents of one declaration message carry the same business key "
    "(e.g. ebpCode + orderNo)",
    "rule.app_type": "appType is not 1 (new), 2 (change) or 3 (delete); CEB623 allows only 1",
    "rule.app_status": "appStatus is not 1 (temp-save) or 2 (declare)",
    "rule.order_type": "orderType of an import order is not I; of an export order (CEB303) not E (B2C), B (B2B) or "
    "W (overseas-warehouse booking), as the 2022 spec text has it",
    "rule.id_type": "buyerIdType / payerIdType is not 1 (ID card), the only type customs accepts",
    "rule.ie_flag": "ieFlag is not I on an import inventory, not E on an export inventory (CEB603) or arrival "
    "(CEB507); CEB711: not I or E; not I on a retail export return or its tally (CEB213/215: the goods come back in)",
    "rule.currency_not_cny": "an import amount is not in currency 142 (CNY) — order head and lines, payment, "
    "waybill, inventory head and lines (R5)",
    "rule.logistics_status": "logisticsStatus is not S (signed for), the only status of CEB513/514",
    "rule.tax_status": "tax bill status is not 1 (generated), 2 (consolidated) or 3 (void)",
    "rule.trade_mode": "tradeMode of an import inventory is not 9610 (direct purchase), 1210 (bonded) or 1239 "
    "(bonded 'A'; not in the spec text but used in practice, accepted and treated like 1210); of an export inventory "
    "(CEB603) not 9610 (general), 1210 (special-zone), 9710 (B2B direct) or 9810 (overseas warehouse); of a retail "
    "export return (CEB213) not 9661 (general export return) or 1261 (special-zone export return)",
    "rule.statistics_flag": "statisticsFlag of an export inventory or its receipt is not A (simplified declaration) or "
    "B (consolidated declaration)",
    "rule.fee_flag": "fFlag / iFlag of an export inventory is not 1 (rate), 2 (unit price) or 3 (total)",
    "rule.currency_code": "an export amount's currency (CEB303/403/505/603) is not 3 digits: any currency code of "
    "customs' table JGS-20 is taken (spec §4.1; e.g. 142 CNY, 110 HKD, 116 JPY, 133 KRW, 300 EUR, 303 GBP, 502 USD); "
    "export amounts are not fixed to 142",
    "rule.traf_mode": "trafMode is not a transport-mode code of spec §3.6 (0–9, A, H, T, W, X, Y, Z)",
    "rule.dxp_mode": "dxpMode of BaseTransfer or of a BaseSubscribe is not DXP",
    "rule.subscribe_status": "a BaseSubscribe's status is not ALL (data and receipts), DATA (data only) or RET "
    "(receipts only) (spec §2.4)",
    "rule.return_status_format": "returnStatus of a receipt is not an integer: digits, with a minus sign for an "
    "error code (spec §5.1)",
    "rule.country_code": "a country code (head or line country) is not 3 digits",
    "rule.unit_code": "a unit code (unit / unit1 / unit2) is not 3 digits",
    "rule.customs_code": "customsCode / portCode is not a 4-digit customs district code",
    "rule.gcode": "gcode is not a 10-digit HS code",
    "rule.district_code": "consigneeDistrict is not a 6-digit administrative division code",
    "rule.date_format": "a time or date does not have its digit layout (14 YYYYMMDDhhmmss, 8 YYYYMMDD, "
    "17 YYYYMMDDhhmmssSSS) or is not a real calendar time",
    "rule.date_implausible": "a time or date lies before 2010 or more than one day after today (an inventory's "
    "ieDate, the planned arrival or departure: more than 31 days); customs' own times (a receipt's returnTime) are "
    "taken whatever they read",
    "rule.decimal_format": "an amount, quantity or weight is not a decimal number",
    "rule.integer_format": "gnum / packNo / msgCount / msgSeqNo is not an integer",
    "rule.negative_amount": "an amount that may be zero is negative",
    "rule.not_positive": "a value that must be greater than zero is not (inventory price, totalPrice, "
    "quantities, weights, gnum)",
    "rule.actural_paid_mismatch": "CEB311 acturalPaid ≠ goodsValue + freight + taxTotal − discount (R1), "
    "compared at 2 decimals",
    "rule.total_price_mismatch": "a line's totalPrice ≠ price × qty (R4), compared at 2 decimals",
    "rule.goods_value_mismatch": "CEB311 goodsValue ≠ the sum of the OrderList totalPrice values, compared at "
    "2 decimals (spec §6.4: inferred from the field definitions, medium confidence; enforced because "
    "goodsValue is defined as the goods' transaction price)",
    "rule.net_weight_exceeds_gross": "inventory netWeight is greater than grossWeight",
    "rule.pack_no": "packNo of a waybill or inventory is not 1 (R7)",
    "rule.qty1_mismatch": "an inventory line has unit == unit1 but qty ≠ qty1",
    "rule.qty2_unit2": "an inventory line has qty2 without unit2 or unit2 without qty2 (they go together)",
    "rule.gnum_sequence": "line gnum values do not run 1, 2, 3 … in line order (R8)",
    "rule.gnum_duplicate": "two lines of one document carry the same gnum",
    "rule.msg_seq_no": "msgSeqNo of a split message (the export transport CEB507/509/607, the summary CEB701/792, and "
    "their receipts) is greater than its msgCount: the parts run 1 … msgCount",
    "rule.waybill_listed_twice": "the list of an arrival, departure or 清单总分单 (CEB507/509/607) names the same "
    "logisticsNo on two lines",
    "rule.invt_no_format": "an invtNo a 清单总分单 (CEB607) line, a retail export return (CEB213) or its tally "
    "(CEB215) names is not an export inventory number: 4-digit district, 4-digit year, E, 9–11 digit serial (spec "
    "§3.6); an import inventory's number (I) is refused as such",
    "rule.assure_code": "inventory assureCode is none of its ebpCode, ebcCode or logisticsCode (R9)",
    "rule.mode_field_missing": "an element the trade mode requires is absent or empty (R10): 1210/1239 need "
    "emsNo, areaCode, areaName and itemRecordNo on every line; 9610 needs trafNo, voyageNo and billNo. Export "
    "(CEB603) 1210 needs iacCode, emsNo and itemRecordNo on every line",
    "rule.bonded_country": "a bonded (1210/1239) inventory's head country is not 142 (R10)",
    "rule.mode_field_unexpected": "warning: an import inventory (CEB621) fills an element its trade mode leaves out "
    "(spec §3.4): emsNo, areaCode, areaName or a line's itemRecordNo (bonded, 1210/1239, only) on a 9610 inventory; "
    "trafNo, voyageNo or billNo (direct purchase, 9610, only; \"omit for bonded\") on a 1210/1239 one. The spec does "
    "not say customs refuses it: the message is taken",
    "rule.direct_purchase_country": "warning: a direct-purchase (9610) import inventory's head country (起运国, where "
    "the goods departed) is 142, China — the value a bonded (1210) inventory fills (spec §3.4); a direct purchase "
    "comes from abroad. Inferred, not stated by the spec: the message is taken",
    "rule.signature_missing": "the message is not signed although its type requires ds:Signature "
    "(always, or when a document is declared with appStatus = 2)",
    # --- the summary declaration (CEB701/702/792, spec A.29–A.31)
    "rule.summary_flag": "CEB701 summaryFlag is not 1 (by consignor) or 2 (by consignor and producer/seller)",
    "rule.summary_period": "CEB701 startTime without endTime or endTime without startTime, or startTime after "
    "endTime: a summarised period needs both ends in order",
    "rule.summary_nothing": "CEB701 names neither inventories (SummaryApplyList) nor a period (startTime and "
    "endTime): there is nothing to summarise",
    "rule.summary_duplicate_inventory": "CEB701 names the same invtNo twice in one application",
    # --- retail export returns (CEB213/215, spec A.32–A.35)
    "rule.return_country": "a retail export return's country (启运国, where the goods come back from) is 142, China",
}

#: Codes whose issues are warnings: reported with the accepted message (the 202 answer's ``warnings``, ``cbec
#: validate``), never refusing it — the spec says the mode leaves the value out, not that customs refuses it.
WARNINGS: frozenset[str] = frozenset({"rule.mode_field_unexpected", "rule.direct_purchase_country"})

# ---------------------------------------------------------------------------------------------
# Value checks: (stripped, non-empty value, context) -> (code, what is wrong) or None
# ---------------------------------------------------------------------------------------------

EARLIEST = datetime.date(2010, 1, 1)
CENT = Decimal("0.01")
_ZERO = Decimal(0)
# N19,5 × N19,5 has up to 38 digits; a wide private context keeps products and sums exact.
_CTX = Context(prec=80, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class RuleContext:
    today: datetime.date
    latest: datetime.date  # the latest plausible calendar date: today + 1 day (time zones, clock skew)


Problem = tuple[str, str]
Check = Callable[[str, RuleContext], Problem | None]
DocRule = Callable[[Document, RuleContext], Iterable[Issue]]


@lru_cache(maxsize=8192)
def parse_decimal(value: str) -> Decimal | None:
    """xs:decimal lexical form (no exponent, NaN or underscores) to Decimal; None if it is not one.

    Cached: the same amounts recur across lines and documents, and field and arithmetic rules read them.
    """
    body = value[1:] if value[:1] in "+-" else value
    if not body or not body.isascii() or body == ".":
        return None
    intpart, _, frac = body.partition(".")
    if (intpart and not intpart.isdigit()) or (frac and not frac.isdigit()):
        return None
    try:
        return Decimal(value)
    except InvalidOperation:  # pragma: no cover - the lexical check above already rules this out
        return None


def _parse_int(value: str) -> int | None:
    body = value[1:] if value[:1] in "+-" else value
    return int(value) if body.isascii() and body.isdigit() else None


def q2(value: Decimal) -> Decimal:
    """Money as compared by the rules: 2 decimals, ROUND_HALF_UP."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP, context=_CTX)


def _fmt(value: Decimal) -> str:
    """Show money with at least 2 decimals (300 → 300.00) without hiding finer digits (12.345)."""
    exp = value.as_tuple().exponent
    return str(q2(value)) if isinstance(exp, int) and exp >= -2 else str(value)


def one_of(code: str, allowed: dict[str, str]) -> Check:
    """The value must be one of ``allowed`` (code -> meaning, used in the message)."""
    listing = ", ".join(f"{k} ({v})" if v else k for k, v in allowed.items())

    def check(value: str, ctx: RuleContext) -> Problem | None:
        return None if value in allowed else (code, f"is {value!r}; allowed: {listing}")

    return check


def digits(code: str, n: int, what: str) -> Check:
    def check(value: str, ctx: RuleContext) -> Problem | None:
        if len(value) == n and value.isascii() and value.isdigit():
            return None
        return code, f"is {value!r}; expected {what} of exactly {n} digits"

    return check


def exact_length(code: str, n: int) -> Check:
    def check(value: str, ctx: RuleContext) -> Problem | None:
        return None if len(value) == n else (code, f"has {len(value)} characters ({value!r}); expected exactly {n}")

    return check


def _plausible(day: datetime.date, value: str, ctx: RuleContext, ahead: int) -> Problem | None:
    if day < EARLIEST:
        return "rule.date_implausible", f"is {value}, before {EARLIEST.isoformat()}"
    if day > (ctx.latest if ahead == 1 else ctx.today + datetime.timedelta(days=ahead)):  # latest: worked out once
        days = "one day" if ahead == 1 else f"{ahead} days"
        return "rule.date_implausible", f"is {value}, more than {days} after today ({ctx.today.isoformat()})"
    return None


def timestamp(n: int, layout: str, *, ahead: int | None = 1) -> Check:
    """``n`` digits laid out as ``layout`` (8, 14 or 17), a real calendar time, and plausible: from 2010 to
    ``ahead`` days after today (None: any, the form alone)."""

    def check(value: str, ctx: RuleContext) -> Problem | None:
        if len(value) != n or not value.isascii() or not value.isdigit():
            return "rule.date_format", f"is {value!r}; expected {n} digits {layout}"
        try:
            if n == 8:
                day = datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
            else:  # the seconds (and milliseconds) parts only need to be in range
                day = datetime.datetime(
                    int(value[:4]), int(value[4:6]), int(value[6:8]),
                    int(value[8:10]), int(value[10:12]), int(value[12:14]),
                ).date()
        except ValueError:
            return "rule.date_format", f"is {value}, which is not a real calendar {'date' if n == 8 else 'time'}"
        return None if ahead is None else _plausible(day, value, ctx, ahead)

    return check


def amount(*, positive: bool) -> Check:
    """A decimal number ≥ 0, or > 0 when ``positive``."""

    def check(value: str, ctx: RuleContext) -> Problem | None:
        d = parse_decimal(value)
        if d is None:
            return "rule.decimal_format", f"is {value!r}, not a decimal number"
        if positive and d <= _ZERO:
            return "rule.not_positive", f"is {value}; it must be greater than 0"
        if d < _ZERO:
            return "rule.negative_amount", f"is {value}; it must not be negative"
        return None

    return check


def integer(*, minimum: int | None = None, exactly: int | None = None, code: str = "rule.not_positive") -> Check:
    def check(value: str, ctx: RuleContext) -> Problem | None:
        i = _parse_int(value)
        if i is None:
            return "rule.integer_format", f"is {value!r}, not an integer"
        if exactly is not None and i != exactly:
            return code, f"is {value}; it must be {exactly}"
        if minimum is not None and i < minimum:
            return code, f"is {value}; it must be at least {minimum}"
        return None

    return check


def _return_status(value: str, ctx: RuleContext) -> Problem | None:
    # Unknown codes (the official samples carry 18 and 23) are accepted; only the form is checked. Customs writes a
    # minus sign for errors and none else: "+120" would be kept as a status in no table, not as 120.
    digits = value[1:] if value.startswith("-") else value
    if not (digits.isascii() and digits.isdigit()):
        return "rule.return_status_format", f"is {value!r}, not an integer status code"
    return None


# --- the checks used in the table -----------------------------------------------------------

GUID = exact_length("rule.guid_length", 36)
APP_TYPE = one_of("rule.app_type", {"1": "new", "2": "change", "3": "delete"})
APP_TYPE_NEW_ONLY = one_of("rule.app_type", {"1": "new"})  # CEB623: a cancellation is never changed
APP_STATUS = one_of("rule.app_status", {"1": "temp-save", "2": "declare"})
ORDER_TYPE_IMPORT = one_of("rule.order_type", {"I": "import"})
ID_CARD = one_of("rule.id_type", {"1": "ID card"})
IE_IMPORT = one_of("rule.ie_flag", {"I": "import"})
IE_FLAG = one_of("rule.ie_flag", {"I": "import", "E": "export"})
IE_EXPORT = one_of("rule.ie_flag", {"E": "export"})
ORDER_TYPE_EXPORT = one_of("rule.order_type", {"E": "B2C export", "B": "B2B export", "W": "overseas-warehouse booking"})
CNY = one_of("rule.currency_not_cny", {"142": "CNY"})
SIGNED_FOR = one_of("rule.logistics_status", {"S": "signed for"})
TAX_STATUS = one_of("rule.tax_status", {"1": "generated", "2": "consolidated", "3": "void"})
DXP = one_of("rule.dxp_mode", {"DXP": ""})
SUBSCRIBE_STATUS = one_of("rule.subscribe_status", {"ALL": "data and receipts", "DATA": "data only",
                                                    "RET": "receipts only"})  # fmt: skip

#: Import inventory trade modes -> "direct" (9610) or "bonded". 1239 ("保税电商A") is not in the spec
#: text but is used in practice for bonded imports; rejecting it would block real declarations that
#: customs accepts, so it is accepted and held to the bonded (1210) field rules. Customs stays the
#: authority on whether the mode fits the site.
IMPORT_TRADE_MODES: dict[str, str] = {"9610": "direct", "1210": "bonded", "1239": "bonded"}
#: The bonded import modes: what the inspection route and adapter take by default.
BONDED_IMPORT_MODES: tuple[str, ...] = tuple(m for m, kind in IMPORT_TRADE_MODES.items() if kind == "bonded")
TRADE_MODE = one_of("rule.trade_mode", {k: f"{v} import" for k, v in IMPORT_TRADE_MODES.items()})
TRAF_MODE = one_of("rule.traf_mode", dict.fromkeys("0123456789AHTWXYZ", ""))

#: Export inventory trade modes (spec §3.6, the 2022 text; the export XSD's annotation still says 9610, 1210/1239).
#: Only 1210 has fields of its own (the zone's account book); 9710/9810 are judged like 9610 here.
EXPORT_TRADE_MODES: dict[str, str] = {
    "9610": "general CBEC export", "1210": "special-zone export", "9710": "B2B direct export",
    "9810": "export to an overseas warehouse",
}  # fmt: skip
EXPORT_TRADE_MODE = one_of("rule.trade_mode", EXPORT_TRADE_MODES)
STATISTICS_FLAG = one_of("rule.statistics_flag", {"A": "simplified", "B": "consolidated"})
FEE_FLAG = one_of("rule.fee_flag", {"1": "rate", "2": "unit price", "3": "total"})
#: Export amounts may be in any currency of customs' table JGS-20 (spec §4.1 #13): the fifteen codes §3.6 lists are
#: examples [C] (a sale priced in won, 133, or baht, 136, is no error), so the form is checked, as for country codes.
CURRENCY = digits("rule.currency_code", 3, "a currency code (JGS-20)")
COUNTRY = digits("rule.country_code", 3, "a country code")
UNIT = digits("rule.unit_code", 3, "a unit code")
CUSTOMS = digits("rule.customs_code", 4, "a customs district code")
GCODE = digits("rule.gcode", 10, "an HS code")
DISTRICT = digits("rule.district_code", 6, "an administrative division code")

DATETIME14 = timestamp(14, "YYYYMMDDhhmmss")
DATE8 = timestamp(8, "YYYYMMDD")
#: ieDate, the day the means of transport arrives (import) or leaves (export), may lie ahead: an import inventory may
#: be declared before the arrival (spec §3.4 #22: omitted when not known yet), an export one is declared and released
#: before the goods leave. A month ahead is the gateway's bound for a typo (a year 2062), not customs'.
IE_DATE = timestamp(8, "YYYYMMDD", ahead=31)
#: Customs' own times (a receipt's returnTime, a tax bill's, a summary result's opDate): the form only. What customs
#: says is taken whatever its clock (or ours) reads: one receipt dated days ahead refused its whole message, up to a
#: hundred receipts customs sends once.
CUSTOMS_TIME = timestamp(17, "YYYYMMDDhhmmssSSS", ahead=None)

NON_NEGATIVE = amount(positive=False)
POSITIVE = amount(positive=True)
GNUM = integer(minimum=1)
PACK_NO_ONE = integer(exactly=1, code="rule.pack_no")
PACK_NO = integer(minimum=1)  # export: the parcels under one waybill or inventory, not fixed to 1
RETURN_STATUS: Check = _return_status
MSG_COUNT = integer(minimum=1)  # msgCount / msgSeqNo of a split message (CEB507/509/607, 701/702/792); 1: not split


def _export_invt_no(value: str, ctx: RuleContext) -> Problem | None:
    """Spec §3.6: an export invtNo is district (4) + year (4) + E + a 9–11 digit serial (18–20 characters)."""
    district, year, flag, serial = value[:4], value[4:8], value[8:9], value[9:]
    if (value.isascii() and (district + year).isdigit() and flag == "E" and serial.isdigit()
            and 9 <= len(serial) <= 11):  # fmt: skip
        return None
    if flag == "I" and value.isascii() and (district + year).isdigit():
        return "rule.invt_no_format", f"is {value!r}, an import inventory's number (I); an export one (E) is named here"
    return "rule.invt_no_format", f"is {value!r}; expected district (4 digits), year (4), E and a 9–11 digit serial"


EXPORT_INVT_NO: Check = _export_invt_no
SUMMARY_FLAG = one_of("rule.summary_flag", {"1": "by consignor", "2": "by consignor and producer/seller"})
#: The return's supervision mode (spec §3.6, A.32; the XSD annotation is outdated): 9661 returns a general export
#: (9610, 9710, 9810), 1261 a special-zone one (1210).
RETURN_TRADE_MODES: dict[str, str] = {"9661": "general export return", "1261": "special-zone export return"}
RETURN_TRADE_MODE = one_of("rule.trade_mode", RETURN_TRADE_MODES)


def _not_china(value: str, ctx: RuleContext) -> Problem | None:
    return ("rule.return_country", "is 142 (China): a return comes back from abroad") if value == "142" else None


RETURN_COUNTRY: Check = _not_china

# ---------------------------------------------------------------------------------------------
# Table entries
# ---------------------------------------------------------------------------------------------


class Scope(StrEnum):
    HEAD = "head"  # the head element (or the document itself when the type has no head)
    LINE = "line"  # every list line of the document
    TRANSFER = "transfer"  # the message's BaseTransfer
    SUBSCRIBE = "subscribe"  # each of the message's BaseSubscribe (0..5)


H, L, T, S = Scope.HEAD, Scope.LINE, Scope.TRANSFER, Scope.SUBSCRIBE


@dataclass(frozen=True, slots=True)
class Field:
    """Run ``check`` on each named element (space-separated names) wherever it is present and non-empty."""

    scope: Scope
    names: str
    check: Check


@dataclass(frozen=True, slots=True)
class Required:
    """Named elements (space-separated) that must not be empty or whitespace-only when present."""

    scope: Scope
    names: str


Rule = Field | Required | DocRule

#: Elements holding free text: they may contain tab/CR/LF and are not required to be trimmed.
FREE_TEXT = frozenset({"note", "reason", "returnInfo", "oriBizMessage", "goodsInfo", "itemDescribe"})


# ---------------------------------------------------------------------------------------------
# Document rules (arithmetic, cross-field, mode)
# ---------------------------------------------------------------------------------------------


def _issue(code: str, path: str, message: str) -> Issue:
    return Issue(Layer.RULE, code, path, message)


def _num(fields: dict[str, str], name: str) -> Decimal | None:
    v = fields.get(name)
    return parse_decimal(v.strip()) if v else None


def _filled(fields: dict[str, str], name: str) -> str:
    return (fields.get(name) or "").strip()


def actural_paid(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """R1: acturalPaid = goodsValue + freight + taxTotal − discount, at 2 decimals."""
    h = doc.head
    paid, goods, freight, tax, discount = (
        _num(h, n) for n in ("acturalPaid", "goodsValue", "freight", "taxTotal", "discount")
    )
    if paid is None or goods is None or freight is None or tax is None or discount is None:
        return
    expected = _CTX.subtract(_CTX.add(_CTX.add(goods, freight), tax), discount)
    if q2(paid) != q2(expected):
        yield _issue(
            "rule.actural_paid_mismatch",
            doc.field_path("acturalPaid"),
            f"acturalPaid {_fmt(paid)} ≠ goodsValue {_fmt(goods)} + freight {_fmt(freight)} + taxTotal {_fmt(tax)}"
            f" − discount {_fmt(discount)} = {_fmt(expected)}",
        )


def line_total_price(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """R4: every line's totalPrice = price × qty, both sides quantised to 2 decimals ROUND_HALF_UP."""
    for i, line in enumerate(doc.lines):
        total, price, qty = _num(line, "totalPrice"), _num(line, "price"), _num(line, "qty")
        if total is None or price is None or qty is None:
            continue
        product = _CTX.multiply(price, qty)
        if q2(total) != q2(product):
            shown = _fmt(product)
            if shown != str(q2(product)):
                shown += f" (→ {q2(product)})"
            yield _issue(
                "rule.total_price_mismatch",
                doc.line_path(i, "totalPrice"),
                f"totalPrice {_fmt(total)} ≠ price {price} × qty {qty} = {shown} (compared at 2 decimals)",
            )


def goods_value_sum(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """CEB311 goodsValue = Σ line totalPrice (spec §6.4, medium confidence), at 2 decimals."""
    goods = _num(doc.head, "goodsValue")
    if goods is None or not doc.lines:
        return
    total = _ZERO
    for line in doc.lines:
        t = _num(line, "totalPrice")
        if t is None:
            return  # a missing or malformed line total is reported elsewhere
        total = _CTX.add(total, t)
    if q2(goods) != q2(total):
        n = len(doc.lines)
        yield _issue(
            "rule.goods_value_mismatch",
            doc.field_path("goodsValue"),
            f"goodsValue {_fmt(goods)} ≠ Σ {doc.type.lines} totalPrice {_fmt(total)} "
            f"({n} line{'s' if n != 1 else ''})",
        )


def gnum_sequence(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """R8: gnum is 1, 2, 3 … in line order, without duplicates."""
    gnums: list[int] = []
    for line in doc.lines:
        g = _parse_int(_filled(line, "gnum"))
        if g is None:
            return  # absent (XSD) or malformed (rule.integer_format): the sequence cannot be judged
        gnums.append(g)
    first_at: dict[int, int] = {}
    duplicate = False
    for i, g in enumerate(gnums):
        if g in first_at:
            duplicate = True
            yield _issue(
                "rule.gnum_duplicate",
                doc.line_path(i, "gnum"),
                f"gnum {g} is repeated; {doc.type.lines}[{first_at[g] + 1}] already has it",
            )
        else:
            first_at[g] = i
    if duplicate:
        return
    for i, g in enumerate(gnums):
        if g != i + 1:
            found = ", ".join(map(str, gnums[:12])) + (" …" if len(gnums) > 12 else "")
            yield _issue(
                "rule.gnum_sequence",
                doc.line_path(i, "gnum"),
                f"gnum {g} at {doc.type.lines}[{i + 1}]; gnum must run 1, 2, 3 … in line order (found {found})",
            )
            return


def assure_code(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """R9: the guarantor is the platform, the e-commerce enterprise or the logistics enterprise."""
    h = doc.head
    code = _filled(h, "assureCode")
    if not code:
        return
    parties = {n: _filled(h, n) for n in ("ebpCode", "ebcCode", "logisticsCode")}
    if code not in parties.values():
        listed = ", ".join(f"{n} {v or '(empty)'}" for n, v in parties.items())
        yield _issue(
            "rule.assure_code", doc.field_path("assureCode"), f"assureCode {code} is none of {listed}"
        )


def weights(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """netWeight ≤ grossWeight (spec §6.4, high confidence)."""
    gross, net = _num(doc.head, "grossWeight"), _num(doc.head, "netWeight")
    if gross is not None and net is not None and net > gross:
        yield _issue(
            "rule.net_weight_exceeds_gross",
            doc.field_path("netWeight"),
            f"netWeight {net} is greater than grossWeight {gross}",
        )


def legal_quantities(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """unit == unit1 ⇒ qty == qty1; qty2 present iff unit2 present (spec §6.4, −625009)."""
    for i, line in enumerate(doc.lines):
        unit, unit1 = _filled(line, "unit"), _filled(line, "unit1")
        if unit and unit == unit1:
            qty, qty1 = _num(line, "qty"), _num(line, "qty1")
            if qty is not None and qty1 is not None and qty != qty1:
                yield _issue(
                    "rule.qty1_mismatch",
                    doc.line_path(i, "qty1"),
                    f"qty1 {qty1} ≠ qty {qty} although unit and unit1 are both {unit}",
                )
        qty2, unit2 = _filled(line, "qty2"), _filled(line, "unit2")
        if qty2 and not unit2:
            yield _issue(
                "rule.qty2_unit2", doc.line_path(i, "qty2"), f"qty2 is {qty2} but the line has no unit2"
            )
        elif unit2 and not qty2:
            path = doc.line_path(i, "qty2") if "qty2" in line else doc.line_path(i)
            yield _issue("rule.qty2_unit2", path, f"unit2 is {unit2} but the line has no qty2")


_BONDED_HEAD = ("emsNo", "areaCode", "areaName")
_DIRECT_HEAD = ("trafNo", "voyageNo", "billNo")


def trade_mode_fields(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """R10: bonded (1210/1239) needs the account-book fields and country 142; 9610 needs transport ids. A field the
    spec gives the other mode alone (§3.4: "bonded (1210) only", "direct purchase only", "omit for bonded") and a
    direct purchase departing from China are warnings (rule.mode_field_unexpected, rule.direct_purchase_country)."""
    mode_code = _filled(doc.head, "tradeMode")
    mode = IMPORT_TRADE_MODES.get(mode_code)
    if mode is None:
        return  # unknown mode: rule.trade_mode already says so
    h = doc.head
    bonded = mode == "bonded"
    for name in _BONDED_HEAD if bonded else _DIRECT_HEAD:
        if not _filled(h, name):
            path = doc.field_path(name) if name in h else doc.head_path
            state = "empty" if name in h else "missing"
            yield _issue("rule.mode_field_missing", path, f"tradeMode {mode_code} requires {name}; it is {state}")
    own, other = ("bonded", "direct purchase (9610)") if bonded else ("direct purchase", "bonded (1210/1239)")
    for name in _DIRECT_HEAD if bonded else _BONDED_HEAD:
        if value := _filled(h, name):  # an empty one is as good as absent
            yield _issue("rule.mode_field_unexpected", doc.field_path(name),
                         f"{name} is {value!r}, but tradeMode {mode_code} ({own}) leaves it out: it is for "
                         f"{other} inventories only")  # fmt: skip
    country = _filled(h, "country")
    if not bonded:
        if country == "142":
            yield _issue("rule.direct_purchase_country", doc.field_path("country"),
                         f"country (where the goods departed) is 142, China, on a tradeMode {mode_code} (direct "
                         "purchase) inventory: a direct purchase comes from abroad; 142 is what a bonded (1210) "
                         "inventory fills")  # fmt: skip
        for i, line in enumerate(doc.lines):
            if value := _filled(line, "itemRecordNo"):
                yield _issue("rule.mode_field_unexpected", doc.line_path(i, "itemRecordNo"),
                             f"itemRecordNo is {value!r}, but tradeMode {mode_code} (direct purchase) has no account "
                             "book: it is for bonded (1210/1239) inventories only")  # fmt: skip
        return
    if country and country != "142":
        yield _issue(
            "rule.bonded_country",
            doc.field_path("country"),
            f"tradeMode {mode_code} (bonded) requires country 142 (China); found {country}",
        )
    for i, line in enumerate(doc.lines):
        if not _filled(line, "itemRecordNo"):
            path = doc.line_path(i, "itemRecordNo") if "itemRecordNo" in line else doc.line_path(i)
            state = "empty" if "itemRecordNo" in line else "missing"
            yield _issue(
                "rule.mode_field_missing",
                path,
                f"tradeMode {mode_code} requires itemRecordNo on every line; it is {state}",
            )


_ZONE_HEAD = ("iacCode", "emsNo")


def special_zone_fields(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """Export from a special customs zone (CEB603 tradeMode 1210) names the zone enterprise (iacCode), its account
    book (emsNo) and every line's item in that book (itemRecordNo), spec §4.3 and §11."""
    h = doc.head
    if _filled(h, "tradeMode") != "1210":
        return
    for name in _ZONE_HEAD:
        if not _filled(h, name):
            path = doc.field_path(name) if name in h else doc.head_path
            state = "empty" if name in h else "missing"
            yield _issue("rule.mode_field_missing", path, f"tradeMode 1210 (special-zone export) requires {name}; "
                                                          f"it is {state}")  # fmt: skip
    for i, line in enumerate(doc.lines):
        if not _filled(line, "itemRecordNo"):
            path = doc.line_path(i, "itemRecordNo") if "itemRecordNo" in line else doc.line_path(i)
            state = "empty" if "itemRecordNo" in line else "missing"
            yield _issue("rule.mode_field_missing", path,
                         f"tradeMode 1210 (special-zone export) requires itemRecordNo on every line; it is {state}")


# ---------------------------------------------------------------------------------------------
# THE TABLE: message code -> rules. Adding a rule is one line here.
# ---------------------------------------------------------------------------------------------

def msg_sequence(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """A split message (CEB507/509/607, CEB701/792; spec A.20: "1-based sequence ... no gaps") is part msgSeqNo of
    msgCount: never beyond the count. Whether every part arrived is customs' to judge, not one message's."""
    count, seq = _parse_int(_filled(doc.head, "msgCount")), _parse_int(_filled(doc.head, "msgSeqNo"))
    if count is not None and seq is not None and count >= 1 and seq > count:
        yield _issue("rule.msg_seq_no", doc.field_path("msgSeqNo"),
                     f"msgSeqNo is {seq} but msgCount is {count}; the parts run 1 … {count}")  # fmt: skip


def listed_once(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """A waybill arrives, leaves or is put under a B/L once per document: the same logisticsNo on two lines is a
    mistake of the list (which of the two lines' bags holds the parcel?)."""
    first_at: dict[str, int] = {}
    for i, line in enumerate(doc.lines):
        no = _filled(line, "logisticsNo")
        if not no:
            continue
        if no in first_at:
            yield _issue("rule.waybill_listed_twice", doc.line_path(i, "logisticsNo"),
                         f"logisticsNo {no} is listed again; {doc.type.lines}[{first_at[no] + 1}] already names it")
        else:
            first_at[no] = i
def items_once(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """A return's gnum is the item number of the inventory it returns (A.9, A.32), not a running number: a partial
    return lists items 2 and 5 alone. Each item once; whether it is an item of that inventory the store judges."""
    first_at: dict[int, int] = {}
    for i, line in enumerate(doc.lines):
        g = _parse_int(_filled(line, "gnum"))
        if g is None:
            continue
        if g in first_at:
            yield _issue("rule.gnum_duplicate", doc.line_path(i, "gnum"),
                         f"gnum {g} is repeated; {doc.type.lines}[{first_at[g] + 1}] already returns that item")
        else:
            first_at[g] = i


def summary_scope(doc: Document, ctx: RuleContext) -> Iterator[Issue]:
    """CEB701 summarises either the inventories it lists or a period (startTime and endTime; when a period is given
    customs ignores the list, A.29): a period needs both ends in order, and an application needs one or the other;
    the same invtNo listed twice is a mistake customs would refuse."""
    start, end = _filled(doc.head, "startTime"), _filled(doc.head, "endTime")
    if bool(start) != bool(end):
        given, missing = ("startTime", "endTime") if start else ("endTime", "startTime")
        yield _issue("rule.summary_period", doc.field_path(given), f"{given} is given without {missing}")
    elif start and end and len(start) == len(end) == 14 and (start + end).isascii() and (start + end).isdigit() \
            and start > end:  # fmt: skip
        yield _issue("rule.summary_period", doc.field_path("startTime"), f"startTime {start} is after endTime {end}")
    listed = [(i, _filled(line, "invtNo")) for i, line in enumerate(doc.lines)]
    if not start and not end and not any(no for _, no in listed):
        yield _issue("rule.summary_nothing", doc.head_path,
                     "the application lists no inventory (SummaryApplyList) and gives no period (startTime, endTime)")
    first: dict[str, int] = {}
    for i, no in listed:
        if not no:
            continue
        if no in first:
            yield _issue("rule.summary_duplicate_inventory", doc.line_path(i, "invtNo"),
                         f"invtNo {no} is already listed at {doc.type.lines}[{first[no] + 1}]")
        else:
            first[no] = i


_TRANSFER: tuple[Rule, ...] = (
    Required(T, "copCode copName dxpMode dxpId"),
    Field(T, "dxpMode", DXP),
    # a subscription that names no status, mode or address goes nowhere, silently: customs' XSD takes it
    Required(S, "status dxpMode dxpAddress"),
    Field(S, "status", SUBSCRIBE_STATUS),
    Field(S, "dxpMode", DXP),
)
# appType is per type (CEB623 allows only 1), so it is not in the common part.
_DECLARATION: tuple[Rule, ...] = (
    *_TRANSFER,
    Required(H, "guid appType appTime appStatus"),
    Field(H, "guid", GUID),
    Field(H, "appTime", DATETIME14),
    Field(H, "appStatus", APP_STATUS),
)
# Receipts from customs: form only, and returnInfo (free text) may be empty.
_RECEIPT: tuple[Rule, ...] = (
    Required(H, "guid returnStatus returnTime"),
    Field(H, "guid", GUID),
    Field(H, "returnStatus", RETURN_STATUS),
    Field(H, "returnTime", CUSTOMS_TIME),
)
_BUYER = "buyerIdType buyerIdNumber buyerName buyerTelephone"
_INVT_PARTIES = "orderNo ebpCode ebpName ebcCode ebcName logisticsNo logisticsCode logisticsName agentCode agentName"

RULES: dict[str, tuple[Rule, ...]] = {
    "CEB311": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "orderType orderNo ebpCode ebpName ebcCode ebcName goodsValue freight discount taxTotal"),
        Required(H, "acturalPaid currency buyerRegNo buyerName buyerTelephone buyerIdType buyerIdNumber"),
        Required(H, "consignee consigneeTelephone consigneeAddress"),
        Required(L, "gnum itemName gmodel unit qty price totalPrice currency country"),
        Field(H, "orderType", ORDER_TYPE_IMPORT),
        Field(H, "goodsValue freight discount taxTotal acturalPaid", NON_NEGATIVE),
        Field(H, "currency", CNY),
        Field(H, "buyerIdType", ID_CARD),
        Field(H, "consigneeDistrict", DISTRICT),
        Field(L, "gnum", GNUM),
        Field(L, "unit", UNIT),
        Field(L, "country", COUNTRY),
        Field(L, "currency", CNY),
        Field(L, "qty", POSITIVE),
        Field(L, "price totalPrice", NON_NEGATIVE),  # gifts are declared at price 0 (spec §3.1)
        actural_paid,
        line_total_price,
        goods_value_sum,
        gnum_sequence,
    ),
    "CEB411": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "payCode payName payTransactionId orderNo ebpCode ebpName payerIdType payerIdNumber"),
        Required(H, "payerName amountPaid currency payTime"),
        Field(H, "payerIdType", ID_CARD),
        Field(H, "amountPaid", NON_NEGATIVE),
        Field(H, "currency", CNY),
        Field(H, "payTime", DATETIME14),
    ),
    "CEB511": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "logisticsCode logisticsName logisticsNo orderNo currency weight packNo"),
        Required(H, "consignee consigneeAddress consigneeTelephone"),
        Field(H, "freight insuredFee", NON_NEGATIVE),
        Field(H, "currency", CNY),
        Field(H, "weight", POSITIVE),  # the waybill weight is the gross weight (§6.4: > 0)
        Field(H, "packNo", PACK_NO_ONE),
    ),
    "CEB513": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "logisticsCode logisticsName logisticsNo logisticsStatus logisticsTime"),
        Field(H, "logisticsStatus", SIGNED_FOR),
        Field(H, "logisticsTime", DATETIME14),
    ),
    "CEB621": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, _INVT_PARTIES),
        Required(H, f"assureCode ieFlag declTime customsCode portCode {_BUYER} consigneeAddress"),
        Required(H, "tradeMode trafMode country freight insuredFee currency packNo grossWeight netWeight"),
        Required(L, "gnum gcode gname gmodel country currency qty unit qty1 unit1 price totalPrice"),
        Field(H, "ieFlag", IE_IMPORT),
        Field(H, "declTime", DATE8),
        Field(H, "ieDate", IE_DATE),
        Field(H, "customsCode portCode", CUSTOMS),
        Field(H, "buyerIdType", ID_CARD),
        Field(H, "tradeMode", TRADE_MODE),
        Field(H, "trafMode", TRAF_MODE),
        Field(H, "country", COUNTRY),
        Field(H, "freight insuredFee", NON_NEGATIVE),
        Field(H, "currency", CNY),
        Field(H, "packNo", PACK_NO_ONE),
        Field(H, "grossWeight netWeight", POSITIVE),
        Field(L, "gnum", GNUM),
        Field(L, "gcode", GCODE),
        Field(L, "country", COUNTRY),
        Field(L, "currency", CNY),
        Field(L, "unit unit1 unit2", UNIT),
        Field(L, "qty qty1 qty2 price totalPrice", POSITIVE),
        line_total_price,
        gnum_sequence,
        assure_code,
        weights,
        legal_quantities,
        trade_mode_fields,
    ),
    "CEB623": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE_NEW_ONLY),
        Required(H, f"customsCode {_INVT_PARTIES} invtNo {_BUYER} reason"),
        Field(H, "customsCode", CUSTOMS),
        Field(H, "buyerIdType", ID_CARD),
    ),
    "CEB625": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, f"customsCode {_INVT_PARTIES} invtNo {_BUYER} reason"),
        Required(L, "gnum gcode gname qty unit"),
        Field(H, "customsCode", CUSTOMS),
        Field(H, "buyerIdType", ID_CARD),
        Field(L, "gnum", GNUM),
        Field(L, "gcode", GCODE),
        Field(L, "qty", POSITIVE),
        Field(L, "unit", UNIT),
        items_once,
    ),
    "CEB711": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "customsCode operatorCode operatorName ieFlag trafMode trafNo voyageNo billNo"),
        Required(H, "logisticsCode logisticsName"),
        Required(L, "gnum logisticsNo"),
        Field(H, "customsCode", CUSTOMS),
        Field(H, "ieFlag", IE_FLAG),
        Field(H, "trafMode", TRAF_MODE),
        Field(L, "gnum", GNUM),
    ),
    "CEB312": (*_RECEIPT, Required(H, "ebpCode ebcCode orderNo")),
    "CEB412": (*_RECEIPT, Required(H, "payCode payTransactionId")),
    "CEB512": (*_RECEIPT, Required(H, "logisticsCode logisticsNo")),
    "CEB514": (
        *_RECEIPT,
        Required(H, "logisticsCode logisticsNo logisticsStatus"),
        Field(H, "logisticsStatus", SIGNED_FOR),
    ),
    "CEB622": (*_RECEIPT, Required(H, "copNo preNo"), Field(H, "customsCode", CUSTOMS)),
    "CEB624": (*_RECEIPT, Required(H, "copNo preNo"), Field(H, "customsCode", CUSTOMS)),
    "CEB626": (*_RECEIPT, Required(H, "copNo preNo"), Field(H, "customsCode", CUSTOMS)),
    "CEB712": (*_RECEIPT, Field(H, "customsCode", CUSTOMS)),
    "CEB816": (
        Required(H, "guid returnTime invtNo taxNo customsTax valueAddedTax consumptionTax status"),
        Required(L, "gnum gcode taxPrice customsTax valueAddedTax consumptionTax"),
        Field(H, "guid", GUID),
        Field(H, "returnTime", CUSTOMS_TIME),
        Field(H, "customsTax valueAddedTax consumptionTax", NON_NEGATIVE),
        Field(H, "status", TAX_STATUS),
        Field(H, "customsCode", CUSTOMS),
        Field(L, "gnum", GNUM),
        Field(L, "gcode", GCODE),
        Field(L, "taxPrice customsTax valueAddedTax consumptionTax", NON_NEGATIVE),
    ),
    "CEB818": (
        Required(H, "guid returnTime invtNo taxNo status"),
        Field(H, "guid", GUID),
        Field(H, "returnTime", CUSTOMS_TIME),
        Field(H, "status", TAX_STATUS),
    ),
    "CEB900": (
        Required(H, "guid returnStatus returnTime oriCopMsgId oriMessageType"),
        Field(H, "guid", GUID),
        Field(H, "returnStatus", RETURN_STATUS),
        Field(H, "returnTime", CUSTOMS_TIME),
    ),
    # --- export (spec §4, Appendix A.16–A.26). The 2022 export XSD lets most required strings be empty: the
    # Required lines below are where an empty one is refused.
    "CEB303": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "orderType orderNo ebpCode ebpName ebcCode ebcName goodsValue freight currency"),
        Required(L, "gnum itemNo itemName unit currency qty price totalPrice"),
        Field(H, "orderType", ORDER_TYPE_EXPORT),
        Field(H, "goodsValue freight", NON_NEGATIVE),
        Field(H, "currency", CURRENCY),
        Field(L, "gnum", GNUM),
        Field(L, "unit", UNIT),
        Field(L, "currency", CURRENCY),
        Field(L, "qty", POSITIVE),
        Field(L, "price totalPrice", NON_NEGATIVE),
        line_total_price,
        gnum_sequence,
    ),
    "CEB403": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "ebpCode ebpName ebcCode ebcName orderNo payName charge currency accountingDate"),
        Field(H, "charge", NON_NEGATIVE),
        Field(H, "currency", CURRENCY),
        Field(H, "accountingDate", DATETIME14),
    ),
    "CEB505": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "logisticsCode logisticsName logisticsNo freight insuredFee currency grossWeight packNo goodsInfo"),
        Field(H, "freight insuredFee", NON_NEGATIVE),
        Field(H, "currency", CURRENCY),
        Field(H, "grossWeight", POSITIVE),
        Field(H, "packNo", PACK_NO),
    ),
    "CEB603": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "customsCode ebpCode ebpName orderNo logisticsCode logisticsName logisticsNo copNo ieFlag"),
        Required(H, "portCode ieDate statisticsFlag agentCode agentName ebcCode ebcName ownerCode ownerName"),
        Required(H, "tradeMode trafMode country POD freight fCurrency fFlag insuredFee iCurrency iFlag wrapType"),
        Required(H, "packNo grossWeight netWeight"),
        Required(L, "gnum itemNo gcode gname gmodel barCode country currency qty qty1 unit unit1 price totalPrice"),
        Field(H, "customsCode portCode", CUSTOMS),
        Field(H, "ieFlag", IE_EXPORT),
        Field(H, "ieDate", IE_DATE),
        Field(H, "statisticsFlag", STATISTICS_FLAG),
        Field(H, "tradeMode", EXPORT_TRADE_MODE),
        Field(H, "trafMode", TRAF_MODE),
        Field(H, "country", COUNTRY),
        Field(H, "freight insuredFee", NON_NEGATIVE),
        Field(H, "fCurrency iCurrency", CURRENCY),
        Field(H, "fFlag iFlag", FEE_FLAG),
        Field(H, "packNo", PACK_NO),
        Field(H, "grossWeight netWeight", POSITIVE),
        Field(L, "gnum", GNUM),
        Field(L, "gcode", GCODE),
        Field(L, "country", COUNTRY),
        Field(L, "currency", CURRENCY),
        Field(L, "unit unit1 unit2", UNIT),
        Field(L, "qty qty1 qty2 price totalPrice", POSITIVE),
        line_total_price,
        gnum_sequence,
        weights,
        legal_quantities,
        special_zone_fields,
    ),
    "CEB605": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "customsCode copNo invtNo reason agentCode agentName ebcCode ebcName"),
        Field(H, "customsCode", CUSTOMS),
    ),
    # --- export transport (spec §4.4 step 3, Appendix A.20–A.28): the supervision site's arrival, the carrier's
    # departure, the declarant's 清单总分单. Lists name waybills (gnum 1, 2, 3 …, each logisticsNo once).
    "CEB507": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "customsCode copNo operatorCode operatorName ieFlag trafMode domesticTrafNo logisticsCode"),
        Required(H, "logisticsName msgCount msgSeqNo"),
        Required(L, "gnum logisticsNo"),
        Field(H, "customsCode", CUSTOMS),
        Field(H, "ieFlag", IE_EXPORT),
        Field(H, "trafMode", TRAF_MODE),
        Field(H, "msgCount msgSeqNo", MSG_COUNT),
        Field(L, "gnum", GNUM),
        msg_sequence,
        gnum_sequence,
        listed_once,
    ),
    "CEB509": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "customsCode copNo logisticsCode logisticsName trafMode leaveTime msgCount msgSeqNo"),
        Required(L, "gnum logisticsNo"),
        Field(H, "customsCode", CUSTOMS),
        Field(H, "trafMode", TRAF_MODE),
        Field(H, "leaveTime", DATETIME14),
        Field(H, "msgCount msgSeqNo", MSG_COUNT),
        Field(L, "gnum", GNUM),
        msg_sequence,
        gnum_sequence,
        listed_once,
    ),
    "CEB607": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "customsCode copNo agentCode agentName trafMode trafName voyageNo billNo grossWeight"),
        Required(H, "logisticsCode logisticsName msgCount msgSeqNo"),
        Required(L, "gnum logisticsNo"),
        Field(H, "customsCode", CUSTOMS),
        Field(H, "trafMode", TRAF_MODE),
        Field(H, "grossWeight", POSITIVE),
        Field(H, "msgCount msgSeqNo", MSG_COUNT),
        Field(L, "gnum", GNUM),
        Field(L, "invtNo", EXPORT_INVT_NO),
        msg_sequence,
        gnum_sequence,
        listed_once,
    ),
    "CEB304": (*_RECEIPT, Required(H, "ebpCode ebcCode orderNo")),
    "CEB404": (*_RECEIPT, Required(H, "ebcCode orderNo")),
    "CEB506": (*_RECEIPT, Required(H, "logisticsCode logisticsNo")),
    "CEB604": (
        *_RECEIPT,
        Required(H, "agentCode copNo preNo invtNo ebcCode ebpCode orderNo statisticsFlag"),
        Field(H, "statisticsFlag", STATISTICS_FLAG),
    ),
    "CEB606": (*_RECEIPT, Required(H, "agentCode copNo preNo invtNo")),
    # an arrival may name no B/L (A.20 billNo 0..1): its receipt's billNo (required, no minimum) may then be empty
    "CEB508": (*_RECEIPT, Required(H, "operatorCode logisticsCode preNo copNo msgSeqNo"),
               Field(H, "msgSeqNo", MSG_COUNT)),
    "CEB510": (*_RECEIPT, Required(H, "logisticsCode copNo preNo msgSeqNo"), Field(H, "msgSeqNo", MSG_COUNT)),
    "CEB608": (*_RECEIPT, Required(H, "agentCode logisticsCode copNo preNo billNo msgSeqNo"),
               Field(H, "msgSeqNo", MSG_COUNT)),
    # --- the summary declaration (spec §4.4 step 4, A.29–A.31). Whether the inventories a CEB701 names are B-type
    # export inventories of its ebcCode is not a rule of the message: only the stored CEB603s know (gateway.summary).
    "CEB701": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "customsCode copNo agentCode agentName ebcCode ebcName declAgentCode declAgentName"),
        Required(H, "summaryFlag itemNameFlag msgCount msgSeqNo"),
        Required(L, "invtNo"),
        Field(H, "customsCode", CUSTOMS),
        Field(H, "startTime endTime", DATETIME14),
        Field(H, "summaryFlag", SUMMARY_FLAG),
        Field(H, "msgCount msgSeqNo", MSG_COUNT),
        msg_sequence,
        summary_scope,
    ),
    "CEB702": (
        *_RECEIPT,
        Required(H, "agentCode ebcCode copNo preNo msgSeqNo"),
        Field(H, "msgSeqNo", MSG_COUNT),
    ),
    "CEB792": (
        Required(H, "guid customsCode sumNo opDate declSeqNo decState agentCode agentName ebcCode ebcName"),
        Required(H, "declAgentCode declAgentName grossWeight netWeight msgCount msgSeqNo"),
        Required(L, "invtNo logisticsNo gseqno gnum gcode"),
        Field(H, "guid", GUID),
        Field(H, "customsCode", CUSTOMS),
        Field(H, "opDate", CUSTOMS_TIME),
        Field(H, "grossWeight netWeight", NON_NEGATIVE),
        Field(H, "msgCount msgSeqNo", MSG_COUNT),
        Field(L, "gseqno gnum", GNUM),
        Field(L, "gcode", GCODE),
        msg_sequence,
    ),
    # --- retail export returns (公告2020年第44号, spec §4.4 step 5, A.32–A.35). A return is an import (ieFlag I) from
    # abroad of goods an export inventory declared; whether that inventory is stored, the submitter's, and holds the
    # items and quantities is the store's to judge (gateway.keystate._numbered), as for an export cancellation.
    "CEB213": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "customsCode ebpCode ebpName ebcCode ebcName logisticsNo logisticsCode logisticsName coElNo"),
        Required(H, "invtNo agentCode agentName billNo ieFlag trafMode trafName portCode reason country voyageNo"),
        Required(L, "gnum gcode gname gmodel qty qty1 unit unit1"),
        Field(H, "customsCode portCode", CUSTOMS),
        Field(H, "invtNo", EXPORT_INVT_NO),
        Field(H, "tradeMode", RETURN_TRADE_MODE),
        Field(H, "ieFlag", IE_IMPORT),
        Field(H, "trafMode", TRAF_MODE),
        Field(H, "country", COUNTRY),
        Field(H, "country", RETURN_COUNTRY),
        Field(L, "gnum", GNUM),
        Field(L, "gcode", GCODE),
        Field(L, "unit unit1 unit2", UNIT),
        Field(L, "qty qty1 qty2", POSITIVE),
        items_once,
        legal_quantities,
    ),
    # the site operator's tally of one returned parcel (its waybill); the invtNo of the return, when it knows it
    "CEB215": (
        *_DECLARATION,
        Field(H, "appType", APP_TYPE),
        Required(H, "customsCode operatorCode operatorName logisticsCode logisticsName logisticsNo coElNo billNo"),
        Required(H, "ieFlag trafMode trafName voyageNo"),
        Field(H, "customsCode", CUSTOMS),
        Field(H, "invtNo", EXPORT_INVT_NO),
        Field(H, "ieFlag", IE_IMPORT),
        Field(H, "trafMode", TRAF_MODE),
    ),
    "CEB214": (*_RECEIPT, Required(H, "agentCode coElNo invtNo")),
    "CEB216": (*_RECEIPT, Required(H, "operatorCode logisticsCode logisticsNo coElNo")),
}


# ---------------------------------------------------------------------------------------------
# Message rules
# ---------------------------------------------------------------------------------------------


def root_guid(msg: ParsedMessage, ctx: RuleContext) -> Iterator[Issue]:
    problem = GUID(msg.guid, ctx)
    if problem:
        yield _issue(problem[0], f"{msg.path}/@guid", f"root guid {problem[1]}")


def signature(msg: ParsedMessage, ctx: RuleContext) -> Iterator[Issue]:
    """§2.7: REQUIRED types are always signed; ON_DECLARE types when a document has appStatus = 2."""
    if msg.signed:
        return
    rule = msg.type.signature
    if rule is Signature.REQUIRED:
        yield _issue("rule.signature_missing", msg.path, f"{msg.type.code} must carry ds:Signature; none found")
    elif rule is Signature.ON_DECLARE:
        for doc in msg.documents:
            if _filled(doc.head, "appStatus") == "2":
                yield _issue(
                    "rule.signature_missing",
                    msg.path,
                    f"{msg.type.code} must carry ds:Signature when declared; {doc.path} has appStatus 2 "
                    "and no signature was found",
                )
                return


def unique_documents(msg: ParsedMessage, ctx: RuleContext) -> Iterator[Issue]:
    """One declaration message must not carry the same document (guid or business key) twice."""
    if msg.type.direction is not Direction.DECLARATION or len(msg.documents) < 2:
        return  # receipts may legitimately repeat a document (several statuses in one batch)
    guids: dict[str, str] = {}
    keys: dict[tuple[str, ...], str] = {}
    for doc in msg.documents:
        g = _filled(doc.head, "guid")
        if g:
            if g in guids:
                yield _issue("rule.duplicate_guid", doc.field_path("guid"), f"guid {g} is also used by {guids[g]}")
            else:
                guids[g] = doc.path
        key = tuple(k.strip() for k in doc.keys)
        if all(key):
            if key in keys:
                shown = ", ".join(f"{n} {v}" for n, v in zip(doc.type.keys, key, strict=True))
                yield _issue("rule.duplicate_document", doc.path, f"{shown} is also declared by {keys[key]}")
            else:
                keys[key] = doc.path


MessageRule = Callable[[ParsedMessage, RuleContext], Iterable[Issue]]
MESSAGE_RULES: tuple[MessageRule, ...] = (root_guid, signature, unique_documents)


# ---------------------------------------------------------------------------------------------
# Compilation of the table and the driver
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Compiled:
    checks: dict[Scope, dict[str, tuple[Check, ...]]]
    required: dict[Scope, frozenset[str]]
    doc_rules: tuple[DocRule, ...]


def _compile(rules: tuple[Rule, ...]) -> _Compiled:
    checks: dict[Scope, dict[str, list[Check]]] = {s: {} for s in Scope}
    required: dict[Scope, set[str]] = {s: set() for s in Scope}
    doc_rules: list[DocRule] = []
    for rule in rules:
        if isinstance(rule, Field):
            for name in rule.names.split():
                checks[rule.scope].setdefault(name, []).append(rule.check)
        elif isinstance(rule, Required):
            required[rule.scope].update(rule.names.split())
        else:
            doc_rules.append(rule)
    return _Compiled(
        checks={s: {n: tuple(c) for n, c in m.items()} for s, m in checks.items()},
        required={s: frozenset(r) for s, r in required.items()},
        doc_rules=tuple(doc_rules),
    )


_EMPTY = _compile(())
_COMPILED: dict[str, _Compiled] = {t.code: _compile(RULES.get(t.code, ())) for t in MESSAGE_TYPES}
assert set(RULES) <= set(BY_CODE), "RULES names a message code the registry does not know"


def _control_character(value: str, free_text: bool) -> str | None:
    """The first forbidden control character (C0, DEL, C1) of ``value`` — or, unless ``free_text``, an invisible
    formatting character (Unicode's Cf: zero-width space and joiners, direction marks, BOM) — or None."""
    for ch in value:
        o = ord(ch)
        if (o < 0x20 or 0x7F <= o <= 0x9F) and not (free_text and ch in "\t\n\r"):
            return ch
        if o > 0x9F and not free_text and unicodedata.category(ch) == "Cf":
            return ch
    return None


_NO_CHECKS: tuple[Check, ...] = ()


def _fields(
    fields: dict[str, str],
    checks: dict[str, tuple[Check, ...]],
    required: frozenset[str],
    path: Callable[[str], str],
    ctx: RuleContext,
    out: list[Issue],
) -> None:
    """The per-value rules of one head, line or BaseTransfer, in one pass over its present elements."""
    for name, raw in fields.items():
        # Fast path: printable strings have no control character. isprintable is also False for some
        # harmless characters (U+3000 in Chinese addresses), hence the exact scan behind it.
        if not raw.isprintable():
            bad = _control_character(raw, name in FREE_TEXT)
            if bad is not None:
                invisible = ord(bad) > 0x9F
                what = f"invisible character ({unicodedata.name(bad, '?')})" if invisible else "control character"
                message = f"{name} contains {what} U+{ord(bad):04X}"
                out.append(_issue("rule.control_character", path(name), message))
        value = raw.strip()
        if not value:
            if name in required:
                message = f"{name} is required but {'blank' if raw else 'empty'}"
                out.append(_issue("rule.required_empty", path(name), message))
            elif raw:
                out.append(_issue("rule.untrimmed", path(name), f"{name} holds only whitespace ({raw!r})"))
            continue
        if value != raw and name not in FREE_TEXT:
            out.append(_issue("rule.untrimmed", path(name), f"{name} has leading or trailing whitespace: {raw!r}"))
        for check in checks.get(name, _NO_CHECKS):
            problem = check(value, ctx)
            if problem is not None:
                out.append(_issue(problem[0], path(name), f"{name} {problem[1]}"))


class Findings(NamedTuple):
    """What the rules found in one message, each in document order: ``errors`` refuse it, ``warnings`` (the codes
    of :data:`WARNINGS`) do not."""

    errors: list[Issue]
    warnings: tuple[Issue, ...]


def check(msg: ParsedMessage, *, today: datetime.date | None = None) -> list[Issue]:
    """The business-rule errors of one message (``Layer.RULE``), in document order; [] when it passes. Its
    warnings are not among them: :func:`findings` gives both."""
    return findings(msg, today=today).errors


def findings(msg: ParsedMessage, *, today: datetime.date | None = None) -> Findings:
    """All business-rule issues of one message (``Layer.RULE``) in one pass, split into errors and warnings.

    ``today`` anchors the date plausibility window (defaults to the local date): dates before 2010 or
    after ``today`` + 1 day are rejected. Element presence, lengths and decimal precision are the XSD's
    job; this function never raises on a message the XSD would reject, it just checks what is there.
    """
    day = today or datetime.date.today()
    ctx = RuleContext(today=day, latest=day + datetime.timedelta(days=1))
    compiled = _COMPILED.get(msg.type.code, _EMPTY)
    out: list[Issue] = []
    for rule in MESSAGE_RULES:
        out.extend(rule(msg, ctx))
    head_checks, head_required = compiled.checks[H], compiled.required[H]
    line_checks, line_required = compiled.checks[L], compiled.required[L]
    for doc in msg.documents:
        _fields(doc.head, head_checks, head_required, doc.field_path, ctx, out)
        for i, line in enumerate(doc.lines):
            _fields(line, line_checks, line_required, partial(doc.line_path, i), ctx, out)
        for doc_rule in compiled.doc_rules:
            out.extend(doc_rule(doc, ctx))
    if msg.base_transfer is not None:  # BaseTransfer follows the documents in the XML
        prefix = f"{msg.path}/BaseTransfer/"
        _fields(msg.base_transfer, compiled.checks[T], compiled.required[T], prefix.__add__, ctx, out)
    for i, subscribe in enumerate(msg.base_subscribes, 1):  # and the BaseSubscribe elements follow it
        prefix = f"{msg.path}/BaseSubscribe[{i}]/"
        _fields(subscribe, compiled.checks[S], compiled.required[S], prefix.__add__, ctx, out)
    if not out:  # the common case: nothing found, nothing to split
        return Findings(out, ())
    return Findings([i for i in out if i.code not in WARNINGS], tuple(i for i in out if i.code in WARNINGS))


#: What of a customs receipt (not a tax bill or summary result: check takes those whole) is checked before it is
#: applied: its status and its time, which its document's customs state follows. The rest of customs' word is taken
#: as written: a code list of ours lagging behind customs' must not refuse customs' own receipt.
RECEIPT_FORM = ("returnStatus", "returnTime")


def check_receipt_form(msg: ParsedMessage, *, today: datetime.date | None = None) -> list[Issue]:
    """The issues of a receipt's :data:`RECEIPT_FORM` fields, in document order (as :func:`check` finds them)."""
    day = today or datetime.date.today()
    ctx = RuleContext(today=day, latest=day + datetime.timedelta(days=1))
    compiled = _COMPILED.get(msg.type.code, _EMPTY)
    out: list[Issue] = []
    for doc in msg.documents:
        form = {name: doc.head[name] for name in RECEIPT_FORM if name in doc.head}
        _fields(form, compiled.checks[H], compiled.required[H], doc.field_path, ctx, out)
    return out


__all__ = [
    "CODES",
    "EXPORT_TRADE_MODES",
    "FREE_TEXT",
    "IMPORT_TRADE_MODES",
    "MESSAGE_RULES",
    "RULES",
    "WARNINGS",
    "Field",
    "Findings",
    "Required",
    "RuleContext",
    "Scope",
    "check",
    "check_receipt_form",
    "findings",
    "parse_decimal",
    "q2",
]
