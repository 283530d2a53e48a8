"""Tax pre-check for retail import (跨境电商综合税), spec §7 — pure, no I/O.

An *estimate* made before the inventory (CEB621) goes out; customs computes the real figures and
answers in CEB816. Policy (财关税〔2018〕49号): within the ¥5,000 single-transaction and ¥26,000
annual limits the tariff is 0 and VAT and consumption tax are due at 70 % of the statutory amount.
Above the single limit an order with one item still passes, at full tariff, VAT and consumption tax,
and counts toward the annual quota; anything else above a limit is general trade (customs answers
−621005 / −621018).

Computation (§7.2; the spec marks rounding and allocation uncertain [U], these are our choices):

* dutiable value D = Σ line totalPrice + head freight + head insuredFee, at 0.01 (ROUND_HALF_UP).
* per line, P_i = totalPrice_i + its pro-rata share (by totalPrice) of freight + insuredFee, in whole
  cents by the largest-remainder method, so that Σ P_i = D exactly and no P_i is negative.
* per line, with r_c = consumption rate, r_v = VAT rate, r_t = MFN tariff (longest HS prefix of gcode):
  within limits  customs 0, consumption = k · P/(1 − r_c) · r_c, VAT = k · (P + P/(1 − r_c) · r_c) · r_v
  with k = ``reduction`` (0.7); full rate  tariff = P · r_t, consumption = (P + tariff)/(1 − r_c) · r_c,
  VAT = (P + tariff + consumption) · r_v. Intermediate statutory amounts stay unrounded; each payable tax
  is rounded half-up to 0.01 per line, and the totals are the sums of the rounded lines (as in CEB816).
* the single-item exception counts InventoryList lines: one line (whatever its qty) is one item. The
  policy's "仅一件商品" could also be read as qty 1; we follow the line reading, and the warning of a line of
  another qty says that customs may read it the other way. "Below the annual limit" (低于) is strict: a single
  item of exactly ¥26,000 is refused as over the single limit.
* "full_rate" is True whenever the preferential treatment does not apply — the single-item exception or
  a breached limit; the figures are then the full-rate (general-trade) estimate. ``counts_toward_annual``
  is D when the inventory can pass, else 0 — less what customs' concluded return of its goods gave back
  (``returned``, see :func:`returned_value`), which the annual limit does not count either.

Default rates (:data:`DEFAULT_RATES`, all configurable through :meth:`TaxRates.from_mapping`): VAT 13 %
(the general rate since 2019-04 [U]; add 9 % goods under ``vat_overrides``); consumption tax 15 % on
perfume and cosmetics (HS 3303, 3304 — strictly only "high-end" cosmetics are taxed, so this errs
high for cheap ones), 10 % on wine, vermouth and other fermented beverages (2204, 2205, 2206) and 20 %
on spirits (2208; the specific 0.5 yuan / 500 ml part is not modelled); MFN tariffs empty (0 %),
because they matter only under full taxation and depend on the exact tariff line — configure the
ones you sell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from gateway.documents import Document
from gateway.reconcile import Finding, Side, gnum_key

CODES: dict[str, str] = {
    "tax.single_limit_exceeded": (
        "dutiable value over the single-transaction limit (¥5,000) and not a single-item order within the "
        "annual limit; customs would answer -621005"
    ),
    "tax.annual_limit_exceeded": (
        "the buyer's used annual amount plus this dutiable value exceeds the annual limit (¥26,000); "
        "customs would answer -621018"
    ),
    "tax.full_rate_single_item": (
        "warning: single-item order over the single limit passes, but with full tariff, VAT and consumption tax"
    ),
    "tax.amount_unreadable": "a line totalPrice or the head freight/insuredFee is not a number; estimated as 0",
    "tax.tax_total_differs": "warning: order taxTotal differs from the estimated tax by more than a cent per goods "
    "line (the rounding the spec leaves open)",
}

SINGLE_LIMIT = Decimal("5000")
ANNUAL_LIMIT = Decimal("26000")

_CENT = Decimal("0.01")
_ZERO = Decimal("0.00")

_DEFAULT_CONSUMPTION: dict[str, Decimal] = {
    "3303": Decimal("0.15"),  # perfumes and toilet waters
    "3304": Decimal("0.15"),  # beauty / make-up / skin-care preparations
    "2204": Decimal("0.10"),  # wine of fresh grapes
    "2205": Decimal("0.10"),  # vermouth
    "2206": Decimal("0.10"),  # other fermented beverages (cider, sake ...)
    "2208": Decimal("0.20"),  # spirits: ad-valorem part only
}


def _frozen(table: Mapping[str, Decimal]) -> Mapping[str, Decimal]:
    return MappingProxyType(dict(table))


def _check_rate(name: str, rate: Any, *, below_one: bool, capped: bool = True) -> None:
    if not isinstance(rate, Decimal) or not rate.is_finite():
        raise ValueError(f"{name}: rate must be a finite Decimal, got {rate!r}")
    if rate < 0 or (below_one and rate >= 1) or (capped and rate > 1):
        raise ValueError(f"{name}: rate {rate} out of range")


def _to_decimal(name: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, float, str)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    try:
        return Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


def _longest_prefix(table: Mapping[str, Decimal], gcode: str, default: Decimal) -> Decimal:
    if not table:  # the default tariff and VAT-override tables: every line asks
        return default
    for n in range(len(gcode), 0, -1):
        rate = table.get(gcode[:n])
        if rate is not None:
            return rate
    return default


@dataclass(frozen=True)
class TaxRates:
    vat: Decimal = Decimal("0.13")
    #: HS-code prefix -> consumption-tax rate (ad valorem); the longest matching prefix wins.
    consumption: Mapping[str, Decimal] = field(default_factory=lambda: _frozen(_DEFAULT_CONSUMPTION))
    #: HS-code prefix -> MFN tariff rate, used only under full taxation; unlisted codes are 0.
    tariff: Mapping[str, Decimal] = field(default_factory=lambda: _frozen({}))
    reduction: Decimal = Decimal("0.7")
    #: HS-code prefix -> VAT rate where it differs from ``vat`` (e.g. 0.09).
    vat_overrides: Mapping[str, Decimal] = field(default_factory=lambda: _frozen({}))

    def __post_init__(self) -> None:
        _check_rate("vat", self.vat, below_one=False)
        _check_rate("reduction", self.reduction, below_one=False)
        for name in ("consumption", "tariff", "vat_overrides"):
            table: Mapping[str, Decimal] = getattr(self, name)
            for prefix, rate in table.items():
                if not (isinstance(prefix, str) and prefix.isascii() and prefix.isdigit()):
                    raise ValueError(f"{name}: HS-code prefix must be digits, got {prefix!r}")
                # consumption tax divides by (1 - rate); a tariff may exceed 100 %
                _check_rate(f"{name}[{prefix}]", rate, below_one=name == "consumption", capped=name != "tariff")
            object.__setattr__(self, name, _frozen(table))  # callers' dicts may not change us later

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TaxRates:
        """Build rates from a config table (JSON/TOML), e.g. ``{"vat": "0.13", "consumption": {"3304": 0.15}}``.

        Keys: vat, reduction (numbers), consumption, tariff, vat_overrides (prefix -> number tables).
        A table that is given replaces the default table entirely (so an entry can be removed);
        absent keys keep the defaults. Numbers may be strings, ints or floats (floats via their
        shortest repr, so 0.15 is exactly 0.15). Unknown keys are an error (typos must not pass).
        """
        known = {"vat", "reduction", "consumption", "tariff", "vat_overrides"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown tax-rate keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        kwargs: dict[str, Any] = {}
        for name in ("vat", "reduction"):
            if name in data:
                kwargs[name] = _to_decimal(name, data[name])
        for name in ("consumption", "tariff", "vat_overrides"):
            if name in data:
                table = data[name]
                if not isinstance(table, Mapping):
                    raise ValueError(f"{name} must be a table of HS-code prefix -> rate")
                kwargs[name] = {str(k): _to_decimal(f"{name}[{k}]", v) for k, v in table.items()}
        return cls(**kwargs)

    def consumption_rate(self, gcode: str) -> Decimal:
        return _longest_prefix(self.consumption, gcode, Decimal(0))

    def tariff_rate(self, gcode: str) -> Decimal:
        return _longest_prefix(self.tariff, gcode, Decimal(0))

    def vat_rate(self, gcode: str) -> Decimal:
        return _longest_prefix(self.vat_overrides, gcode, self.vat)


DEFAULT_RATES = TaxRates()


@dataclass(frozen=True)
class LineTax:
    """One inventory line's share of the estimate (compare with CEB816 TaxListRd)."""

    gnum: str
    gcode: str
    dutiable_value: Decimal
    customs_tax: Decimal
    value_added_tax: Decimal
    consumption_tax: Decimal


@dataclass(frozen=True)
class TaxAssessment:
    dutiable_value: Decimal
    customs_tax: Decimal
    value_added_tax: Decimal
    consumption_tax: Decimal
    total: Decimal
    full_rate: bool
    counts_toward_annual: Decimal
    findings: tuple[Finding, ...]
    lines: tuple[LineTax, ...] = ()
    #: the part of the dutiable value a concluded return gave back (0 unless the inventory can pass):
    #: ``counts_toward_annual + returned`` is what it would count without the return
    returned: Decimal = _ZERO

    @property
    def blocking(self) -> bool:
        return any(f.blocking for f in self.findings)


def assess(
    inventory: Document,
    *,
    annual_used: Decimal,
    rates: TaxRates = DEFAULT_RATES,
    single_limit: Decimal = SINGLE_LIMIT,
    annual_limit: Decimal = ANNUAL_LIMIT,
    order: Document | None = None,
    returned: Sequence[Mapping[str, str]] = (),
) -> TaxAssessment:
    """Estimate the retail-import tax of ``inventory`` and pre-check the buyer's limits.

    ``annual_used`` is what the buyer (inventory buyerIdNumber) has already used this year, as the
    caller's store knows it; ``order`` (the CEB311 of the shipment), when given, lets the estimate be
    compared with the order's taxTotal. ``returned``: the lines (gnum, qty) of the return customs concluded
    for the inventory, if any: the value they give back (:func:`returned_value`) counts toward the year no
    more. The tax estimated and the single limit stay the whole inventory's (the return came after them).
    """
    if annual_used < 0:
        raise ValueError(f"annual_used must not be negative, got {annual_used}")
    findings: list[Finding] = []
    prices = [_amount(inventory, findings, line_index=i) for i in range(len(inventory.lines))]
    freight = _amount(inventory, findings, name="freight")
    insured_fee = _amount(inventory, findings, name="insuredFee")
    goods = sum(prices, Decimal(0))
    dutiable = _cents(goods + freight + insured_fee)
    shares = _allocate(dutiable, prices)
    given_back = _given_back(inventory, shares, returned)
    counts = dutiable - given_back

    full_rate = False
    over_the_year = annual_used + counts > annual_limit
    if dutiable > single_limit:
        full_rate = True
        # 财关税〔2018〕49号: over the single limit "but below" (低于) the annual one, one item goes at full rate
        if len(inventory.lines) == 1 and dutiable < annual_limit:
            qty = _quantity(inventory.lines[0].get("qty"))
            pieces = "" if qty is None or qty == 1 else (
                f" (one line of qty {qty}: customs may read 一件 as one piece and refuse it, -621005)")
            if not over_the_year:  # else the annual limit's refusal below says what happens to it
                findings.append(
                    _finding(
                        "tax.full_rate_single_item",
                        inventory,
                        dutiable,
                        f"dutiable value {dutiable} exceeds the single limit {single_limit}, but the order has one "
                        f"item below the annual limit {annual_limit}{pieces}: full tariff, VAT and consumption tax "
                        "apply",
                        blocking=False,
                    )
                )
        else:
            why = (
                f"a single item at or above the annual limit {annual_limit}"
                if len(inventory.lines) == 1
                else f"{len(inventory.lines)} lines, so the single-item exception does not apply"
            )
            findings.append(
                _finding(
                    "tax.single_limit_exceeded",
                    inventory,
                    dutiable,
                    f"dutiable value {dutiable} (goods {_cents(goods)} + freight {_cents(freight)} + insuredFee "
                    f"{_cents(insured_fee)}) exceeds the single limit {single_limit} with {why}; customs: -621005",
                )
            )
    if over_the_year:
        full_rate = True
        this = f"this dutiable value {dutiable}" + (f" less {given_back} returned" if given_back else "")
        findings.append(
            _finding(
                "tax.annual_limit_exceeded",
                inventory,
                dutiable,
                f"annual amount used {_cents(annual_used)} + {this} = {_cents(annual_used + counts)} "
                f"exceeds the annual limit {annual_limit}; customs: -621018",
            )
        )

    lines = tuple(
        _line_tax(line.get("gnum") or "", (line.get("gcode") or "").strip(), value, rates, full_rate)
        for line, value in zip(inventory.lines, shares, strict=True)
    )
    customs_tax = sum((t.customs_tax for t in lines), _ZERO)
    vat = sum((t.value_added_tax for t in lines), _ZERO)
    consumption = sum((t.consumption_tax for t in lines), _ZERO)
    total = customs_tax + vat + consumption
    if order is not None:
        _compare_tax_total(order, inventory, total, findings)
    passes = not any(f.blocking for f in findings)
    return TaxAssessment(
        dutiable_value=dutiable,
        customs_tax=customs_tax,
        value_added_tax=vat,
        consumption_tax=consumption,
        total=total,
        full_rate=full_rate,
        counts_toward_annual=counts if passes else _ZERO,
        findings=tuple(findings),
        lines=lines,
        returned=given_back if passes else _ZERO,
    )


def returned_value(inventory: Document, returned: Sequence[Mapping[str, str]]) -> Decimal:
    """The part of ``inventory``'s dutiable value that a return (CEB625 lines ``returned``: gnum, qty) gives back to
    the buyer's annual quota (海关总署公告2018年第194号: for a return the tax is not levied and the annual total is
    adjusted).

    Per returned item (by gnum), its share of the dutiable value as :func:`assess` allocates it (freight and
    insuredFee included) times the returned qty over the item's qty, at most the whole item; rounded down to the
    cent, so that the quota given back is never more than the goods returned. A return of every item in full gives
    back the whole dutiable value. An item the return names twice counts once with the qty added up; an item or a
    qty that cannot be read gives back nothing (the store refuses such a return: spec R12).
    """
    findings: list[Finding] = []
    prices = [_amount(inventory, findings, line_index=i) for i in range(len(inventory.lines))]
    dutiable = _cents(sum(prices, Decimal(0)) + _amount(inventory, findings, name="freight")
                      + _amount(inventory, findings, name="insuredFee"))  # fmt: skip
    return _given_back(inventory, _allocate(dutiable, prices), returned)


def after_return(
    inventory: Document, returned: Sequence[Mapping[str, str]], *, rates: TaxRates = DEFAULT_RATES
) -> tuple[LineTax, ...]:
    """The tax of the goods a return (CEB625 lines ``returned``: gnum, qty) leaves with the buyer, line by line: each
    line's share of the dutiable value less what the return gives back of it (as :func:`returned_value` counts it),
    taxed as the whole inventory was assessed (its rate, preferential or full, stays: the limits were met at the
    release; the returned goods' tax is not levied, 海关总署公告2018年第194号). A line returned in full is left out:
    a return of every item in full leaves none."""
    whole = assess(inventory, annual_used=_ZERO, rates=rates)
    back = _given_back_by_gnum(inventory, [t.dutiable_value for t in whole.lines], returned)
    kept = ((t, t.dutiable_value - back.get(gnum_key(t.gnum), _ZERO)) for t in whole.lines)
    return tuple(_line_tax(t.gnum, t.gcode, value, rates, whole.full_rate) for t, value in kept
                 if value > 0 or gnum_key(t.gnum) not in back)  # fmt: skip


def _given_back(inventory: Document, shares: list[Decimal], returned: Sequence[Mapping[str, str]]) -> Decimal:
    """returned_value over the inventory lines' shares of the dutiable value (``shares``, from _allocate)."""
    return sum(_given_back_by_gnum(inventory, shares, returned).values(), _ZERO)


def _given_back_by_gnum(
    inventory: Document, shares: list[Decimal], returned: Sequence[Mapping[str, str]]
) -> dict[str, Decimal]:
    """What a return gives back of each item (by gnum_key): its share, times the qty returned over the item's, at most
    the whole share, rounded down to the cent."""
    if not returned:
        return {}
    by_gnum = dict(zip((gnum_key(line.get("gnum")) for line in inventory.lines), shares, strict=True))
    qtys = {gnum_key(line.get("gnum")): _quantity(line.get("qty")) for line in inventory.lines}
    wanted: dict[str, Decimal] = {}
    for line in returned:
        gnum, qty = gnum_key(line.get("gnum")), _quantity(line.get("qty"))
        if gnum in by_gnum and qty is not None:
            wanted[gnum] = wanted.get(gnum, Decimal(0)) + qty
    out: dict[str, Decimal] = {}
    for gnum, qty in wanted.items():
        whole = qtys[gnum]
        if whole is None or whole <= 0:
            continue
        share = by_gnum[gnum]
        out[gnum] = share if qty >= whole else (share * qty / whole).quantize(_CENT, rounding=ROUND_FLOOR)
    return out


def _quantity(raw: str | None) -> Decimal | None:
    try:
        value = Decimal((raw or "").strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() and value >= 0 else None


# --- helpers ---------------------------------------------------------------------------------


def _cents(d: Decimal) -> Decimal:
    return d.quantize(_CENT, rounding=ROUND_HALF_UP)


def _amount(
    inventory: Document, findings: list[Finding], *, name: str = "totalPrice", line_index: int | None = None
) -> Decimal:
    """A money value of the inventory; an absent one is 0, an unreadable one is 0 plus a finding."""
    holder = inventory.head if line_index is None else inventory.lines[line_index]
    raw = (holder.get(name) or "").strip()
    if not raw:
        return Decimal(0)
    try:
        value = Decimal(raw)
        if value.is_finite():
            _cents(value)  # too many digits raise here rather than later
            return value
    except InvalidOperation:
        pass
    path = inventory.field_path(name) if line_index is None else inventory.line_path(line_index, name)
    side = Side(inventory.type.code, inventory.head.get("guid", ""), path, holder.get(name))
    findings.append(Finding("tax.amount_unreadable", name, f"{name} {raw!r} is not a number; taken as 0", side))
    return Decimal(0)


def _allocate(dutiable: Decimal, prices: list[Decimal]) -> list[Decimal]:
    """Split the dutiable value over the lines pro rata by totalPrice, in whole cents.

    Largest-remainder method: each line gets its exact share rounded down to the cent, and the cents
    left over go one each to the lines with the largest dropped fractions (ties: the earlier line).
    The shares add up to the dutiable value exactly and are never negative — a "last line takes the
    remainder" rule can push a small last line below zero.
    """
    if not prices:
        return []
    goods = sum(prices, Decimal(0))
    extra = dutiable - goods
    # all-zero prices (gifts only): split evenly instead of dividing by zero
    exact = [price + (extra * price / goods if goods else extra / len(prices)) for price in prices]
    shares = [e.quantize(_CENT, rounding=ROUND_FLOOR) for e in exact]
    left = int((dutiable - sum(shares, Decimal(0))) / _CENT)
    by_fraction = sorted(range(len(prices)), key=lambda i: (shares[i] - exact[i], i))
    for i in by_fraction[: max(left, 0)]:
        shares[i] += _CENT
    return shares


def _line_tax(gnum: str, gcode: str, value: Decimal, rates: TaxRates, full_rate: bool) -> LineTax:
    rc, rv = rates.consumption_rate(gcode), rates.vat_rate(gcode)
    if full_rate:
        tariff = value * rates.tariff_rate(gcode)
        consumption = (value + tariff) / (1 - rc) * rc
        vat = (value + tariff + consumption) * rv
        factor = Decimal(1)
    else:
        tariff = Decimal(0)
        consumption = value / (1 - rc) * rc  # statutory amount, before the reduction
        vat = (value + consumption) * rv
        factor = rates.reduction
    return LineTax(
        gnum=gnum.strip(),
        gcode=gcode,
        dutiable_value=value,
        customs_tax=_cents(tariff),
        value_added_tax=_cents(factor * vat),
        consumption_tax=_cents(factor * consumption),
    )


def _finding(code: str, inventory: Document, dutiable: Decimal, message: str, *, blocking: bool = True) -> Finding:
    # the dutiable value is computed over the whole inventory, so it points at the document element
    side = Side(inventory.type.code, inventory.head.get("guid", ""), inventory.path, str(dutiable))
    return Finding(code, "dutiable_value", message, side, blocking=blocking)


def _compare_tax_total(order: Document, inventory: Document, estimate: Decimal, findings: list[Finding]) -> None:
    raw = (order.head.get("taxTotal") or "").strip()
    try:
        declared = _cents(Decimal(raw))
    except InvalidOperation:
        return  # absent or unreadable: the rules layer reports it
    # The spec leaves the rounding open (per line or on the sum, before or after the 70 %): a cent per goods line
    # is rounding, not a disagreement worth an operator's look.
    if abs(declared - estimate) > Decimal("0.01") * max(1, len(inventory.lines)):
        findings.append(
            Finding(
                "tax.tax_total_differs",
                "taxTotal",
                f"order taxTotal is {raw!r} but the estimated tax is {estimate}",
                Side(
                    order.type.code,
                    order.head.get("guid", ""),
                    order.field_path("taxTotal"),
                    order.head.get("taxTotal"),
                ),
                Side(inventory.type.code, inventory.head.get("guid", ""), inventory.path, str(estimate)),
                blocking=False,
            )
        )
