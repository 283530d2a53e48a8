"""Retail-import tax pre-check: hand-computed examples, limits, the single-item exception, rate tables."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.documents import Document
from gateway.messages import BY_CODE
from gateway.tax import (
    ANNUAL_LIMIT,
    CODES,
    DEFAULT_RATES,
    SINGLE_LIMIT,
    TaxAssessment,
    TaxRates,
    after_return,
    assess,
    returned_value,
)

INV = "/CEB621Message/Inventory[1]"
MILK = "1901101000"  # infant formula: VAT only
CREAM = "3304990099"  # skin care: VAT + 15 % consumption tax
WINE = "2204210000"  # bottled wine: VAT + 10 % consumption tax
ZERO = Decimal("0")


def inventory(
    *lines: tuple[str, str], freight: str = "0", insured_fee: str = "0", index: int = 1, **head: str
) -> Document:
    """A CEB621 with lines given as (gcode, totalPrice)."""
    return Document(
        type=BY_CODE["CEB621"],
        index=index,
        path=f"/CEB621Message/Inventory[{index}]",
        head={
            "guid": "1F3E5D7C-9A2B-4C6D-8E0F-7A9B3C5D0621",
            "orderNo": "HT202611200001",
            "buyerIdNumber": "11010519491231002X",
            "buyerName": "张小明",
            "tradeMode": "9610",
            "freight": freight,
            "insuredFee": insured_fee,
            "currency": "142",
            **head,
        },
        lines=[
            {"gnum": str(i), "gcode": gcode, "gname": "商品", "qty": "1", "price": total, "totalPrice": total}
            for i, (gcode, total) in enumerate(lines, start=1)
        ],
    )


def order(tax_total: str) -> Document:
    return Document(
        type=BY_CODE["CEB311"],
        index=1,
        path="/CEB311Message/Order[1]",
        head={"guid": "4CDE1E4A-7A3C-4B21-9D4F-2C6A1B7E0311", "orderNo": "HT202611200001", "taxTotal": tax_total},
    )


def codes(result: TaxAssessment) -> list[str]:
    return [f.code for f in result.findings]


# --- worked examples (figures computed by hand, see the comments) --------------------------------


def test_vat_only_goods_at_9_1_percent() -> None:
    # P = 300 + 10 = 310; VAT = 0.7 × 310 × 13 % = 28.21; no consumption tax, no tariff: 9.1 % of 310
    result = assess(inventory((MILK, "300.00"), freight="10.00"), annual_used=ZERO)
    assert result.dutiable_value == Decimal("310.00")
    assert (result.customs_tax, result.consumption_tax, result.value_added_tax) == (
        Decimal("0.00"),
        Decimal("0.00"),
        Decimal("28.21"),
    )
    assert result.total == Decimal("28.21") == (Decimal("310") * Decimal("0.091")).quantize(Decimal("0.01"))
    assert result.full_rate is False and result.findings == ()
    assert result.counts_toward_annual == Decimal("310.00")


def test_cosmetics_at_23_06_percent() -> None:
    # statutory consumption = 310 / 0.85 × 0.15 = 54.7059 -> payable 0.7 × = 38.29
    # VAT = 0.7 × (310 + 54.7059) × 0.13 = 33.19; together 71.48 = 23.06 % of 310
    result = assess(inventory((CREAM, "300.00"), freight="10.00"), annual_used=ZERO)
    assert result.consumption_tax == Decimal("38.29")
    assert result.value_added_tax == Decimal("33.19")
    assert result.customs_tax == Decimal("0.00")
    assert result.total == Decimal("71.48")
    assert (result.total / result.dutiable_value).quantize(Decimal("0.0001")) == Decimal("0.2306")


def test_insurance_is_part_of_the_dutiable_value() -> None:
    # P = 280 + 15 + 5 = 300; VAT = 0.7 × 300 × 0.13 = 27.30
    result = assess(inventory((MILK, "280.00"), freight="15.00", insured_fee="5.00"), annual_used=ZERO)
    assert result.dutiable_value == Decimal("300.00") and result.total == Decimal("27.30")


def test_freight_is_allocated_pro_rata_with_the_remainder_on_the_last_line() -> None:
    # freight 10 over 179 + 121: line 1 gets 10 × 179/300 = 5.9667 -> P1 = 184.97, line 2 the rest: 125.03
    # line 1 (cream): consumption 0.7 × 184.97/0.85 × 0.15 = 22.85, VAT 0.7 × 217.6118 × 0.13 = 19.80
    # line 2 (milk):  VAT 0.7 × 125.03 × 0.13 = 11.38
    result = assess(inventory((CREAM, "179.00"), (MILK, "121.00"), freight="10.00"), annual_used=ZERO)
    first, second = result.lines
    assert (first.gnum, first.gcode, first.dutiable_value) == ("1", CREAM, Decimal("184.97"))
    assert (first.consumption_tax, first.value_added_tax) == (Decimal("22.85"), Decimal("19.80"))
    assert (second.dutiable_value, second.consumption_tax, second.value_added_tax) == (
        Decimal("125.03"),
        Decimal("0.00"),
        Decimal("11.38"),
    )
    assert result.consumption_tax == Decimal("22.85") and result.value_added_tax == Decimal("31.18")
    assert result.total == Decimal("54.03")


def test_the_three_way_split_of_a_cent_stays_exact() -> None:
    # 1 yuan of freight over three equal lines: the left-over cent goes to the first of the tied lines
    result = assess(inventory((MILK, "10.00"), (MILK, "10.00"), (MILK, "10.00"), freight="1.00"), annual_used=ZERO)
    assert [t.dutiable_value for t in result.lines] == [Decimal("10.34"), Decimal("10.33"), Decimal("10.33")]
    assert result.dutiable_value == Decimal("31.00")


def test_a_small_last_line_never_gets_a_negative_share() -> None:
    # found by hypothesis: rounding each share half-up and giving the last line the rest made it -0.01
    result = assess(inventory((MILK, "0.01"), (MILK, "0.01"), (MILK, "0.00"), insured_fee="0.01"), annual_used=ZERO)
    assert [t.dutiable_value for t in result.lines] == [Decimal("0.02"), Decimal("0.01"), Decimal("0.00")]


def test_gifts_only_split_the_freight_evenly() -> None:
    result = assess(inventory((MILK, "0"), (MILK, "0"), freight="10.00"), annual_used=ZERO)
    assert [t.dutiable_value for t in result.lines] == [Decimal("5.00"), Decimal("5.00")]


# --- single limit --------------------------------------------------------------------------------


def test_exactly_at_the_single_limit_is_within() -> None:
    # 4990 + 10 = 5000.00: still the reduced rate. VAT 0.7 × 5000 × 0.13 = 455.00
    result = assess(inventory((MILK, "2990.00"), (MILK, "2000.00"), freight="10.00"), annual_used=ZERO)
    assert result.dutiable_value == SINGLE_LIMIT
    assert result.findings == () and result.full_rate is False
    assert result.total == Decimal("455.00")
    assert result.counts_toward_annual == Decimal("5000.00")


def test_one_cent_over_the_single_limit_with_two_lines_is_refused() -> None:
    result = assess(inventory((MILK, "2990.01"), (MILK, "2000.00"), freight="10.00"), annual_used=ZERO)
    assert codes(result) == ["tax.single_limit_exceeded"]
    finding = result.findings[0]
    assert finding.blocking and result.blocking
    assert finding.left is not None
    assert (finding.left.doc, finding.left.path, finding.left.value) == ("CEB621", INV, "5000.01")
    assert "5000.01" in finding.message and "5000" in finding.message and "-621005" in finding.message
    assert result.full_rate is True and result.counts_toward_annual == Decimal("0.00")


def test_single_item_over_the_single_limit_passes_at_full_rate() -> None:
    # P = 6000, cosmetics, no tariff configured: consumption 6000/0.85 × 0.15 = 1058.82,
    # VAT (6000 + 1058.8235) × 0.13 = 917.65, no 70 % reduction
    result = assess(inventory((CREAM, "5990.00"), freight="10.00"), annual_used=ZERO)
    assert codes(result) == ["tax.full_rate_single_item"]
    assert result.findings[0].blocking is False and not result.blocking
    assert result.full_rate is True
    assert (result.customs_tax, result.consumption_tax, result.value_added_tax) == (
        Decimal("0.00"),
        Decimal("1058.82"),
        Decimal("917.65"),
    )
    assert result.total == Decimal("1976.47")
    assert result.counts_toward_annual == Decimal("6000.00")


def test_single_item_at_full_rate_pays_the_configured_tariff() -> None:
    # tariff 5 %: 300.00; consumption (6000 + 300)/0.85 × 0.15 = 1111.76; VAT (6300 + 1111.7647) × 0.13 = 963.53
    rates = TaxRates.from_mapping({"tariff": {"3304": "0.05"}})
    result = assess(inventory((CREAM, "6000.00")), annual_used=ZERO, rates=rates)
    assert (result.customs_tax, result.consumption_tax, result.value_added_tax) == (
        Decimal("300.00"),
        Decimal("1111.76"),
        Decimal("963.53"),
    )
    assert result.total == Decimal("2375.29")
    # within the limits the same tariff is not charged
    assert assess(inventory((CREAM, "100.00")), annual_used=ZERO, rates=rates).customs_tax == Decimal("0.00")


def test_a_single_item_goes_at_full_rate_only_below_the_annual_limit() -> None:
    """财关税〔2018〕49号: over the single limit "but below" (低于) the annual one: ¥25,999.99 goes at full rate,
    exactly ¥26,000 does not (the spec's notice page; its derived notes say ≤)."""
    below = assess(inventory((MILK, "25999.99")), annual_used=ZERO)
    assert codes(below) == ["tax.full_rate_single_item"] and not below.blocking
    at = assess(inventory((MILK, "26000.00")), annual_used=ZERO)
    assert codes(at) == ["tax.single_limit_exceeded"] and at.blocking
    assert "a single item at or above the annual limit 26000" in at.findings[0].message
    assert at.counts_toward_annual == Decimal("0.00")


def test_the_single_item_warning_gives_way_to_the_annual_limit_and_names_a_line_of_several_pieces() -> None:
    """One item over the single limit whose value the buyer's year cannot take: only the annual refusal (the full-rate
    warning beside it said the opposite). One line of qty 3: the warning says customs may count three pieces."""
    late = assess(inventory((MILK, "5000.01")), annual_used=Decimal("21000"))
    assert codes(late) == ["tax.annual_limit_exceeded"] and late.blocking
    doc = inventory((WINE, "6000.00"))
    doc.lines[0].update(qty="3", price="2000.00")
    [warning] = assess(doc, annual_used=ZERO).findings
    assert warning.code == "tax.full_rate_single_item" and "one line of qty 3" in warning.message
    assert "qty" not in assess(inventory((WINE, "6000.00")), annual_used=ZERO).findings[0].message


def test_single_item_above_the_annual_limit_is_refused() -> None:
    result = assess(inventory((MILK, "26000.01")), annual_used=ZERO)
    assert codes(result) == ["tax.single_limit_exceeded", "tax.annual_limit_exceeded"]
    assert result.counts_toward_annual == Decimal("0.00")


# --- annual limit --------------------------------------------------------------------------------


def test_exactly_reaching_the_annual_limit_is_allowed() -> None:
    result = assess(inventory((MILK, "300.00"), freight="10.00"), annual_used=Decimal("25690.00"))
    assert result.findings == () and result.counts_toward_annual == Decimal("310.00")


def test_one_cent_over_the_annual_limit_is_refused_with_both_figures() -> None:
    result = assess(inventory((MILK, "300.00"), freight="10.00"), annual_used=Decimal("25690.01"))
    assert codes(result) == ["tax.annual_limit_exceeded"]
    finding = result.findings[0]
    assert finding.blocking
    assert "25690.01" in finding.message and "310.00" in finding.message and "26000" in finding.message
    # the ledger keeps five decimals; the message shows money in cents
    result = assess(inventory((MILK, "300.00"), freight="10.00"), annual_used=Decimal("25690.01000"))
    assert "used 25690.01 +" in result.findings[0].message and "= 26000.01 " in result.findings[0].message
    assert "-621018" in finding.message
    assert result.full_rate is True and result.counts_toward_annual == Decimal("0.00")


def test_single_item_exception_still_respects_the_annual_quota() -> None:
    result = assess(inventory((MILK, "6000.00")), annual_used=Decimal("20000.01"))
    assert codes(result) == ["tax.annual_limit_exceeded"]  # the full-rate warning would say it goes: it does not
    assert result.blocking


def test_limits_can_be_passed_in() -> None:
    doc = inventory((MILK, "1500.00"), (MILK, "600.00"))
    assert codes(assess(doc, annual_used=ZERO, single_limit=Decimal("2000"))) == ["tax.single_limit_exceeded"]
    assert codes(assess(doc, annual_used=ZERO, annual_limit=Decimal("2000"))) == ["tax.annual_limit_exceeded"]


def test_negative_annual_used_is_refused() -> None:
    with pytest.raises(ValueError, match="annual_used"):
        assess(inventory((MILK, "1.00")), annual_used=Decimal("-1"))


# --- rates table ---------------------------------------------------------------------------------


def test_default_rates() -> None:
    assert DEFAULT_RATES.vat == Decimal("0.13") and DEFAULT_RATES.reduction == Decimal("0.7")
    assert DEFAULT_RATES.consumption_rate(CREAM) == Decimal("0.15")
    assert DEFAULT_RATES.consumption_rate("3303000010") == Decimal("0.15")
    assert DEFAULT_RATES.consumption_rate(WINE) == Decimal("0.10")
    assert DEFAULT_RATES.consumption_rate(MILK) == Decimal("0")
    assert DEFAULT_RATES.tariff_rate(CREAM) == Decimal("0")
    limits = (SINGLE_LIMIT, ANNUAL_LIMIT)
    assert limits == (Decimal("5000"), Decimal("26000"))


def test_wine_at_ten_percent_consumption_tax() -> None:
    # 0.7 × 900/0.9 × 0.1 = 70.00; VAT 0.7 × (900 + 100) × 0.13 = 91.00
    result = assess(inventory((WINE, "900.00")), annual_used=ZERO)
    assert (result.consumption_tax, result.value_added_tax) == (Decimal("70.00"), Decimal("91.00"))


def test_longest_prefix_wins() -> None:
    rates = TaxRates.from_mapping({"consumption": {"33": 0.1, "3304": "0.2", "330499": 0}})
    assert rates.consumption_rate("3303000010") == Decimal("0.1")
    assert rates.consumption_rate("3304100000") == Decimal("0.2")
    assert rates.consumption_rate("3304990099") == Decimal("0")
    assert rates.consumption_rate("9999") == Decimal("0")


def test_rate_table_override_changes_the_estimate() -> None:
    # 9 % VAT: 0.7 × 310 × 0.09 = 19.53
    rates = TaxRates.from_mapping({"vat": "0.09"})
    assert assess(inventory((MILK, "300.00"), freight="10.00"), annual_used=ZERO, rates=rates).total == Decimal("19.53")
    # a given table replaces the default one: cosmetics without consumption tax -> VAT only, 28.21
    rates = TaxRates.from_mapping({"consumption": {}})
    assert assess(inventory((CREAM, "300.00"), freight="10.00"), annual_used=ZERO, rates=rates).total == Decimal(
        "28.21"
    )
    # VAT per HS prefix, and a different reduction
    rates = TaxRates.from_mapping({"vat_overrides": {"1901": 0.09}, "reduction": 1})
    result = assess(inventory((MILK, "100.00"), (CREAM, "100.00")), annual_used=ZERO, rates=rates)
    # milk 100 × 0.09 = 9.00; cream 100/0.85 × 0.15 = 17.65 and (100 + 17.6471) × 0.13 = 15.29
    assert [(t.value_added_tax, t.consumption_tax) for t in result.lines] == [
        (Decimal("9.00"), Decimal("0.00")),
        (Decimal("15.29"), Decimal("17.65")),
    ]


def test_from_mapping_keeps_defaults_for_absent_keys_and_is_immutable() -> None:
    rates = TaxRates.from_mapping({"vat": 0.13})
    assert rates == DEFAULT_RATES
    source = {"3304": Decimal("0.15")}
    rates = TaxRates(consumption=source)
    source["3304"] = Decimal("0.5")
    assert rates.consumption_rate(CREAM) == Decimal("0.15")
    with pytest.raises(TypeError):
        rates.consumption["3304"] = Decimal("0.5")  # type: ignore[index]


@pytest.mark.parametrize(
    "data",
    [
        {"vta": "0.13"},
        {"vat": "abc"},
        {"vat": True},
        {"vat": "-0.01"},
        {"vat": 1.5},
        {"consumption": {"3304": 1}},
        {"consumption": {"33a4": "0.1"}},
        {"consumption": ["3304"]},
        {"tariff": {"3304": "-0.05"}},
        {"reduction": "NaN"},
    ],
)
def test_bad_rate_tables_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TaxRates.from_mapping(data)


def test_tariff_may_exceed_one_hundred_percent() -> None:
    assert TaxRates.from_mapping({"tariff": {"2402": "1.5"}}).tariff_rate("2402100000") == Decimal("1.5")


# --- order taxTotal and unreadable values ----------------------------------------------------------


def test_order_tax_total_is_compared_for_information() -> None:
    doc = inventory((MILK, "300.00"), freight="10.00")
    for within_rounding in ("28.21", "28.20", "28.22"):  # a cent per goods line: the rounding the spec leaves open
        assert assess(doc, annual_used=ZERO, order=order(within_rounding)).findings == (), within_rounding
    result = assess(doc, annual_used=ZERO, order=order("28.19"))
    assert codes(result) == ["tax.tax_total_differs"]
    finding = result.findings[0]
    assert not finding.blocking and result.counts_toward_annual == Decimal("310.00")
    assert finding.left is not None and finding.right is not None
    assert (finding.left.path, finding.left.value) == ("/CEB311Message/Order[1]/OrderHead/taxTotal", "28.19")
    assert (finding.right.path, finding.right.value) == (INV, "28.21")
    assert "28.19" in finding.message and "28.21" in finding.message
    three_lines = inventory((MILK, "100.00"), (MILK, "100.00"), (MILK, "100.00"), freight="10.00")  # 28.20
    assert assess(three_lines, annual_used=ZERO, order=order("28.23")).findings == ()
    assert codes(assess(three_lines, annual_used=ZERO, order=order("28.24"))) == ["tax.tax_total_differs"]


def test_unreadable_amount_is_reported_at_its_path() -> None:
    result = assess(inventory((MILK, "300.00"), (MILK, "abc"), freight="1O.00"), annual_used=ZERO)
    assert codes(result) == ["tax.amount_unreadable", "tax.amount_unreadable"]
    paths = [f.left.path for f in result.findings if f.left is not None]
    assert paths == [f"{INV}/InventoryList[2]/totalPrice", f"{INV}/InventoryHead/freight"]
    assert result.dutiable_value == Decimal("300.00") and result.blocking


def test_every_code_is_documented() -> None:
    assert all(code.startswith("tax.") and text for code, text in CODES.items())


# --- properties ------------------------------------------------------------------------------------

money = st.integers(min_value=0, max_value=300_000).map(lambda n: Decimal(n).scaleb(-2))


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.tuples(st.sampled_from([MILK, CREAM, WINE]), money), min_size=1, max_size=6),
    freight=money,
    insured_fee=st.integers(0, 5_000).map(lambda n: Decimal(n).scaleb(-2)),
    annual_used=st.integers(0, 2_600_000).map(lambda n: Decimal(n).scaleb(-2)),
)
def test_totals_are_sums_of_lines_and_limits_are_consistent(
    lines: list[tuple[str, Decimal]], freight: Decimal, insured_fee: Decimal, annual_used: Decimal
) -> None:
    doc = inventory(*((g, str(p)) for g, p in lines), freight=str(freight), insured_fee=str(insured_fee))
    result = assess(doc, annual_used=annual_used)
    expected_value = sum((p for _, p in lines), Decimal(0)) + freight + insured_fee
    assert result.dutiable_value == expected_value
    assert sum(t.dutiable_value for t in result.lines) == expected_value
    assert all(t.dutiable_value >= 0 for t in result.lines)
    assert result.customs_tax == sum(t.customs_tax for t in result.lines)
    assert result.value_added_tax == sum(t.value_added_tax for t in result.lines)
    assert result.consumption_tax == sum(t.consumption_tax for t in result.lines)
    assert result.total == result.customs_tax + result.value_added_tax + result.consumption_tax
    over_single = expected_value > SINGLE_LIMIT
    over_annual = annual_used + expected_value > ANNUAL_LIMIT
    assert ("tax.annual_limit_exceeded" in codes(result)) is over_annual
    assert result.full_rate is (over_single or over_annual)
    assert result.blocking is (over_annual or (over_single and len(lines) > 1) or expected_value > ANNUAL_LIMIT)
    assert result.counts_toward_annual == (Decimal("0.00") if result.blocking else expected_value)
    if not result.full_rate and all(g == MILK for g, _ in lines):
        # VAT-only goods within the limits: 9.1 %, off by at most half a cent per line
        assert abs(result.total - expected_value * Decimal("0.091")) <= Decimal("0.005") * len(lines)


# --- a return gives back the goods returned ------------------------------------------------------


def test_a_return_of_every_item_gives_back_the_whole_dutiable_value() -> None:
    inv = inventory((CREAM, "100.00"), (MILK, "200.00"), freight="10.00", insured_fee="1.00")
    full = [{"gnum": "1", "qty": "1"}, {"gnum": "02", "qty": "1"}]  # "02" is item 2
    assert returned_value(inv, full) == assess(inv, annual_used=ZERO).dutiable_value == Decimal("311.00")


def test_a_return_of_one_item_gives_back_its_share_freight_included() -> None:
    inv = inventory((CREAM, "100.00"), (MILK, "200.00"), freight="30.00")
    # item 2: 200 + 2/3 of the freight
    assert returned_value(inv, [{"gnum": "2", "qty": "1"}]) == Decimal("220.00")


def test_part_of_an_items_qty_gives_back_that_part_rounded_down() -> None:
    inv = inventory((CREAM, "100.00"))
    inv.lines[0]["qty"] = "3"
    assert returned_value(inv, [{"gnum": "1", "qty": "1"}]) == Decimal("33.33")
    # the item named twice counts once, its qty added up, never more than the item
    assert returned_value(inv, [{"gnum": "1", "qty": "2"}, {"gnum": "1", "qty": "2"}]) == Decimal("100.00")


def test_a_return_naming_no_item_or_no_qty_gives_back_nothing() -> None:
    inv = inventory((CREAM, "100.00"))
    assert returned_value(inv, [{"gnum": "9", "qty": "1"}, {"gnum": "1", "qty": "x"}]) == ZERO
    assert returned_value(inv, []) == ZERO


def test_the_tax_after_a_return_is_that_of_the_goods_kept() -> None:
    """after_return: per line, its dutiable share less what the return gave back of it, at the inventory's rate; a
    line returned in full is left out, one not returned stays as assessed."""
    inv = inventory((CREAM, "100.00"), (MILK, "200.00"), freight="30.00")
    inv.lines[1]["qty"] = "4"
    whole = assess(inv, annual_used=ZERO)
    assert after_return(inv, []) == whole.lines
    [kept] = after_return(inv, [{"gnum": "1", "qty": "1"}])  # the cream back in full: the milk's tax alone
    assert kept == whole.lines[1]
    cream, milk = after_return(inv, [{"gnum": "2", "qty": "1"}])  # one of four tins: ¥55.00 of ¥220.00 back
    assert cream == whole.lines[0] and milk.dutiable_value == Decimal("165.00")
    assert milk.value_added_tax == Decimal("15.02")  # 165.00 × 13 % × 0.7 = 15.015, rounded half-up
    assert after_return(inv, [{"gnum": "1", "qty": "1"}, {"gnum": "2", "qty": "4"}]) == ()


def test_a_concluded_return_counts_toward_the_year_no_more_nor_against_the_annual_limit() -> None:
    inv = inventory((CREAM, "100.00"), (MILK, "200.00"), freight="30.00")
    back = [{"gnum": "2", "qty": "1"}]  # ¥220.00 of ¥330.00
    result = assess(inv, annual_used=ZERO, returned=back)
    assert (result.counts_toward_annual, result.returned) == (Decimal("110.00"), Decimal("220.00"))
    assert result.total == assess(inv, annual_used=ZERO).total  # the tax estimated is the whole inventory's
    # the limit counts what the inventory counts: ¥110 fits where ¥330 does not
    used = ANNUAL_LIMIT - Decimal("200")
    assert "tax.annual_limit_exceeded" in codes(assess(inv, annual_used=used))
    assert "tax.annual_limit_exceeded" not in codes(assess(inv, annual_used=used, returned=back))
    blocked = assess(inv, annual_used=ANNUAL_LIMIT, returned=back)
    assert "tax.annual_limit_exceeded" in codes(blocked) and "less 220.00 returned" in blocked.findings[0].message
    assert (blocked.counts_toward_annual, blocked.returned) == (ZERO, ZERO)  # counts nothing, gives nothing back
    everything = assess(inv, annual_used=ZERO, returned=[{"gnum": "1", "qty": "1"}, {"gnum": "2", "qty": "1"}])
    assert (everything.counts_toward_annual, everything.returned) == (ZERO, Decimal("330.00"))
