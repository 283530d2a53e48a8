"""gateway.keystate without a database: the appType rules over any sequence of submissions of one key, and what
one message must read and lock."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import reconcile as recon
from gateway import samples, tax
from gateway.documents import Document, ParsedMessage, extract
from gateway.keystate import (
    LOCK_BUYER,
    LOCK_ORDER,
    Conflict,
    Defer,
    Live,
    New,
    Refs,
    Row,
    State,
    WaybillBuyers,
    Write,
    buyer_of,
    decide,
    judge,
    new_documents,
    reopen,
    up_front_locks,
)
from gateway.messages import BY_CODE, Kind
from gateway.render import render
from gateway.xmlsafe import parse_message

ORDER = BY_CODE["CEB311"]


def _message(app_type: str, app_time: str, order_no: str = "O1") -> ParsedMessage:
    head = {"guid": "G", "appType": app_type, "appTime": app_time, "ebpCode": "EBP", "orderNo": order_no}
    doc = Document(ORDER, 1, "/CEB311Message/Order[1]", head, [])
    return ParsedMessage(ORDER, "M", "1.0", [doc], None, False)


submissions = st.lists(st.tuples(st.sampled_from("123"), st.integers(0, 6)), max_size=25)


@given(submissions)
def test_the_current_document_only_moves_forward(steps: list[tuple[str, int]]) -> None:
    current: Row | None = None
    for app_type, t in steps:
        app_time = f"2025030110000{t}"
        news = new_documents(_message(app_type, app_time))
        before = current
        issues = decide(news, {news[0].row.key: current} if current is not None else {})
        new = news[0]
        live = current is not None and not current.withdrawn
        if issues:
            codes = [i.code for i in issues]
            if app_type == "1":
                assert codes == ["state.duplicate"] and live
            else:
                assert codes == ["state.not_found"] and not live
                assert current is None or app_time > current.app_time
            continue
        if current is not None and app_time <= current.app_time:
            assert new.outcome == "ignored_older" and new.code == "state.ignored_older"
            assert not new.stored and new.replaces is None
            continue
        # applied: the new row becomes the current one and replaces the old
        assert new.stored and new.replaces is before
        assert new.outcome == {"1": "accepted", "2": "replaced", "3": "withdrawn"}[app_type]
        assert new.row.withdrawn == (app_type == "3")
        assert app_type == "1" or live  # a change or a withdrawal needs a live document
        current = new.row


@pytest.mark.parametrize("app_type", ["1", "2", "3"])
def test_a_stored_key_belongs_to_its_parties(app_type: str) -> None:
    stored = dataclasses.replace(new_documents(_message("1", "20250301100000"))[0].row, id=1, is_new=False, doc=None,
                                 message_guid="OWNER-MESSAGE")  # fmt: skip
    current = {stored.key: stored}
    news = new_documents(_message(app_type, "20250301100009"))
    refused = decide(news, current, frozenset({"STRANGER"}))
    assert [i.code for i in refused] == ["auth.not_your_document"]
    assert "OWNER-MESSAGE" not in refused[0].message and "20250301100000" not in refused[0].message
    # a key holding one of the stored document's codes, and one that may touch everything, get the usual rules
    for scope in (frozenset({"EBP"}), None):
        issues = decide(new_documents(_message(app_type, "20250301100009")), current, scope)
        assert [i.code for i in issues] == (["state.duplicate"] if app_type == "1" else [])


def test_the_same_key_twice_in_a_message_is_a_duplicate() -> None:
    msg = _message("1", "20250301100000")
    twice = ParsedMessage(ORDER, "M", "1.0", [msg.documents[0], msg.documents[0]], None, False)
    issues = decide(new_documents(twice), {})
    assert [i.code for i in issues] == ["state.duplicate"]


def test_locks_name_the_key_the_order_and_the_guid() -> None:
    locks = up_front_locks(_message("1", "20250301100000", order_no=" O9 "))
    assert ("order", "O9") in locks and ("guid", "M") in locks
    assert any(ns == "key" and "O9" in key for ns, key in locks)
    assert Conflict([]).issues == []


def test_a_split_messages_part_is_locked_and_stored_by_its_number() -> None:
    """msgSeqNo (xs:int) written "01" is part 1: its key is stored, and locked, as the number (a receipt naming
    part 1 finds it; a concurrent "1" waits for it)."""
    rng = random.Random(5)
    s = samples.export_shipment(rng, mode="9610", now=datetime(2026, 11, 20, 10, 0, 0))
    payload = samples.export_transport([s], rng)["CEB509"]
    parts = []
    for seq in ("01", "1"):
        payload["documents"][0]["msgSeqNo"] = seq
        parts.append(extract(*parse_message(render(payload))))
    (one,), (two,) = (new_documents(p) for p in parts)
    assert (one.row.key1, one.row.key2) == (two.row.key1, two.row.key2) and one.key_names()["msgSeqNo"] == "1"
    assert {lk for lk in up_front_locks(parts[0]) if lk[0] == "key"} == {
        lk for lk in up_front_locks(parts[1]) if lk[0] == "key"}


# --- a leg arriving after its inventory: the buyer's ledger is read with everything else -----------------------


def _legs(defect: str | None = None, seed: int = 7) -> dict[str, ParsedMessage]:
    shipment = samples.shipment(random.Random(seed), now=datetime(2026, 11, 20, 10, 0, 0))
    if defect is not None:
        shipment = samples.broken(shipment, defect)
    return {code: extract(*parse_message(xml)) for code, xml in samples.render_shipment(shipment).items()}


def _stored(msg: ParsedMessage) -> Row:
    return dataclasses.replace(new_documents(msg)[0].row, id=1, is_new=False, doc=None)


def _judge_after_inventory(leg: ParsedMessage, inventory: Row) -> Write | Defer:
    state = State(current={inventory.key: inventory}, rows={inventory.id: inventory}, ledger={})
    news = new_documents(leg)
    return judge(leg, news, Refs.of(news), up_front_locks(leg), state, rates=tax.DEFAULT_RATES, tolerance=Decimal(0))


@pytest.mark.parametrize("code", ["CEB311", "CEB411"])
def test_an_order_or_payment_after_its_inventory_reassesses_the_tax_without_a_second_read(code: str) -> None:
    legs = _legs()
    inventory = _stored(legs["CEB621"])
    verdict = _judge_after_inventory(legs[code], inventory)
    assert isinstance(verdict, Write)
    buyer = inventory.head["buyerIdNumber"]
    assert [(p["buyer_id_number"], p["order_no"]) for p in verdict.ledger_put] == [(buyer, inventory.order_no)]


def test_a_waybill_after_its_inventory_still_asks_for_the_buyers_ledger() -> None:
    legs = _legs()
    inventory = _stored(legs["CEB621"])
    verdict = _judge_after_inventory(legs["CEB511"], inventory)  # a waybill names no buyer
    assert isinstance(verdict, Defer)
    assert verdict.locks == {(LOCK_BUYER, inventory.head["buyerIdNumber"])}


def test_a_payer_who_is_not_the_buyer_costs_a_second_read_not_a_wrong_answer() -> None:
    legs = _legs("payer_not_buyer")
    inventory = _stored(legs["CEB621"])
    verdict = _judge_after_inventory(legs["CEB411"], inventory)
    assert isinstance(verdict, Defer) and verdict.refs.buyers == {buyer_of(inventory.head)}


def test_a_leg_without_a_buyer_number_takes_no_shared_buyer_lock() -> None:
    order = _legs()["CEB311"]
    order.documents[0].head["buyerIdNumber"] = " "
    assert not [lock for lock in up_front_locks(order) if lock[0] == LOCK_BUYER]
    assert Refs.of(new_documents(order)).buyers == set()


# --- a waybill after its inventory: the buyer guessed from the inventories this process accepted -----------------


def test_a_waybill_after_an_inventory_seen_here_takes_its_buyer_up_front() -> None:
    legs = _legs()
    inventory = _stored(legs["CEB621"])
    hints = WaybillBuyers()
    hints.learn(new_documents(legs["CEB621"]))
    waybill = new_documents(legs["CEB511"])
    guessed = hints.guess(waybill)
    assert guessed == {buyer_of(inventory.head)}
    refs, locks = Refs.of(waybill), up_front_locks(legs["CEB511"])
    refs.buyers |= guessed
    locks |= {(LOCK_BUYER, b) for b, _ in guessed}
    state = State(current={inventory.key: inventory}, rows={inventory.id: inventory}, ledger={})
    verdict = judge(legs["CEB511"], waybill, refs, locks, state, rates=tax.DEFAULT_RATES, tolerance=Decimal(0))
    assert isinstance(verdict, Write)
    assert [p["buyer_id_number"] for p in verdict.ledger_put] == [inventory.head["buyerIdNumber"]]


def test_the_waybill_hints_forget_the_oldest_and_guess_nothing_for_other_legs() -> None:
    hints = WaybillBuyers(size=2)
    shipments = [_legs(seed=seed) for seed in (1, 2, 3)]
    for legs in shipments:
        hints.learn(new_documents(legs["CEB621"]))
    assert len(hints) == 2
    assert hints.guess(new_documents(shipments[0]["CEB511"])) == set()  # forgotten: the oldest
    assert hints.guess(new_documents(shipments[2]["CEB511"])) == {buyer_of(shipments[2]["CEB621"].documents[0].head)}
    # an order names its own buyer: nothing is guessed for it, nor learnt from it
    assert hints.guess(new_documents(shipments[2]["CEB311"])) == set()
    hints.learn(new_documents(shipments[0]["CEB311"]))
    assert hints.guess(new_documents(shipments[0]["CEB511"])) == set()
    with pytest.raises(ValueError):
        WaybillBuyers(size=0)


def test_a_withdrawn_inventory_teaches_no_buyer() -> None:
    legs = _legs()
    news = new_documents(legs["CEB621"])
    news[0].outcome, news[0].row.withdrawn = "withdrawn", True
    hints = WaybillBuyers()
    hints.learn(news)
    assert hints.guess(new_documents(legs["CEB511"])) == set()


# --- the live documents of a wave, indexed once and changed for each message ---------------------------------------


def _answers(live: Live, shipment_keys: list[tuple[str, str]], waybills: list[Row]) -> list[object]:
    """What judging asks of a Live: each shipment's legs, each waybill's shipments, each waybill-only shipment."""
    out: list[object] = []
    for key in shipment_keys:
        s = live.shipment(key)
        out.append([id(d) if d is not None else None for d in (s.order, s.payment, s.waybill, s.inventory)])
    for w in waybills:
        out.append(live.shipments_of_waybill(w))
        lone = live.lone_waybill(w.order_no or "")
        out.append(id(lone) if lone is not None else None)
    return out


@given(st.data())
def test_a_changed_live_answers_as_one_built_with_the_change_and_goes_back_after(data: st.DataObject) -> None:
    rows: list[Row] = []
    for seed in (1, 2, 3):  # three shipments' legs, stored
        for msg in _legs(seed=seed).values():
            row = _stored(msg)
            row.id = len(rows) + 1
            row.document  # noqa: B018 - built once, so that both ways answer with the same Document objects
            rows.append(row)
    stored = data.draw(st.lists(st.sampled_from(rows), unique_by=id))
    gone = data.draw(st.lists(st.sampled_from(stored), unique_by=id)) if stored else []
    new = [r for r in data.draw(st.lists(st.sampled_from(rows), unique_by=id)) if r not in stored]
    keys = sorted({r.shipment_key for r in rows})
    waybills = [r for r in rows if r.message_type == "CEB511"]

    live = Live(stored)
    before = _answers(live, keys, waybills)
    expected = _answers(Live([r for r in stored if r not in gone] + new), keys, waybills)
    with live.changed(gone, new) as changed:
        assert _answers(changed, keys, waybills) == expected
    assert _answers(live, keys, waybills) == before
    # an index entry emptied by the change is gone, as in a Live built without its rows
    with live.changed(stored, []) as empty:
        assert empty.legs == {} and empty.waybills_by_key == {} and empty.inventories_by_waybill == {}


def test_messages_judged_against_one_state_are_judged_as_each_against_its_own() -> None:
    first, second = _legs(seed=11), _legs(seed=12)
    stored = [_stored(first["CEB621"]), _stored(second["CEB311"]), _stored(second["CEB621"])]
    for i, row in enumerate(stored, start=1):
        row.id = i
    change = first["CEB621"]  # the first shipment's inventory again, changed (appType 2, newer appTime)
    change.documents[0].head.update(appType="2", appTime="20991231235959")

    def state() -> State:
        return State(current={r.key: r for r in stored}, rows={r.id: r for r in stored}, ledger={})

    def verdict(msg: ParsedMessage, st: State) -> Write | Defer:
        news = new_documents(msg)
        refs, locks = Refs.of(news), up_front_locks(msg)
        refs.buyers |= {buyer_of(r.head) for r in stored if r.message_type == "CEB621"}
        locks |= {(LOCK_BUYER, b) for b, _ in refs.buyers}
        return judge(msg, news, refs, locks, st, rates=tax.DEFAULT_RATES, tolerance=Decimal(0))

    messages = [change, first["CEB311"], second["CEB511"], second["CEB411"]]
    shared = state()
    together = [verdict(msg, shared) for msg in messages]
    alone = [verdict(msg, state()) for msg in messages]
    assert all(isinstance(v, Write) for v in together)
    assert together == alone
    assert len(shared.live().legs) == 2  # the change of the first message did not stay in the wave's index


def test_a_cancellation_of_another_tenants_inventory_is_refused() -> None:
    cancel_type, inventory_type = BY_CODE["CEB623"], BY_CODE["CEB621"]
    head = {"guid": "C", "appType": "1", "appTime": "20250301100000", "ebcCode": "EBC", "orderNo": "O1",
            "agentCode": "STRANGER"}  # fmt: skip
    cancel = ParsedMessage(cancel_type, "M", "1.0", [Document(cancel_type, 1, "/x", head, [])], None, False)
    inv_msg = ParsedMessage(inventory_type, "I", "1.0",
                            [Document(inventory_type, 1, "/y", {"ebcCode": "EBC", "orderNo": "O1"}, [])], None, False)
    inventory = dataclasses.replace(new_documents(inv_msg)[0].row, id=1, is_new=False, doc=None)
    news = new_documents(cancel)
    assert ("CEB621", "EBC", "O1") in Refs.of(news).keys  # the inventory is read with the cancellation
    current = {inventory.key: inventory}
    assert [i.code for i in decide(news, current, frozenset({"STRANGER"}))] == ["auth.not_your_document"]
    assert decide(new_documents(cancel), current, frozenset({"EBC"})) == []
    assert [i.code for i in decide(new_documents(cancel), {}, None)] == ["state.no_inventory"]
    # withdrawn or not, another tenant's inventory tells an outsider nothing more than that it is taken
    gone = {inventory.key: dataclasses.replace(inventory, withdrawn=True)}
    assert [i.code for i in decide(new_documents(cancel), gone, frozenset({"STRANGER"}))] == ["auth.not_your_document"]
    assert [i.code for i in decide(new_documents(cancel), gone, frozenset({"EBC"}))] == ["state.no_inventory"]
    # held by the gateway (not declared yet): a cancellation would reach customs before the inventory itself
    held = {inventory.key: dataclasses.replace(inventory, held=True)}
    assert [i.code for i in decide(new_documents(cancel), held, frozenset({"EBC"}))] == ["state.inventory_held"]


def test_a_document_customs_rejected_may_be_declared_anew_with_a_newer_app_time() -> None:
    stored = dataclasses.replace(new_documents(_message("1", "20250301100000"))[0].row, id=1, is_new=False, doc=None,
                                 rejected=True)  # fmt: skip
    current = {stored.key: stored}
    anew = new_documents(_message("1", "20250301100009"))
    assert decide(anew, current) == [] and anew[0].outcome == "replaced" and anew[0].replaces is stored
    same = new_documents(_message("1", "20250301100000"))
    assert decide(same, current) == [] and same[0].outcome == "ignored_older"
    kept = dataclasses.replace(stored, rejected=False)
    assert [i.code for i in decide(new_documents(_message("1", "20250301100009")), {kept.key: kept})] == [
        "state.duplicate"
    ]
    # a rejected change is not: customs still holds the version before it
    change = dataclasses.replace(stored, head={**stored.head, "appType": "2"})
    assert [i.code for i in decide(new_documents(_message("1", "20250301100009")), {change.key: change})] == [
        "state.duplicate"
    ]


# --- a waybill of an orderNo two platforms use (spec §6.2: orderNo is unique within a platform only) -------------

T = "20250301100000"


def _row(code: str, row_id: int, **head: str) -> Row:
    mtype = BY_CODE[code]
    doc = Document(mtype, 1, f"/{mtype.root}/{mtype.document}[1]", {"appType": "1", "appTime": T, **head}, [])
    msg = ParsedMessage(mtype, f"M{row_id}", "1.0", [doc], None, False)
    return dataclasses.replace(new_documents(msg)[0].row, id=row_id, is_new=False, doc=None, message_guid=f"M{row_id}")


def _waybill(row_id: int = 3, order_no: str = "O1", logistics_no: str = "W1") -> Row:
    return _row("CEB511", row_id, logisticsCode="L", logisticsNo=logistics_no, orderNo=order_no)


def test_a_waybill_of_an_order_number_two_platforms_use_is_neither_ones_until_an_inventory_names_it() -> None:
    a, b = _row("CEB311", 1, ebpCode="A", orderNo="O1"), _row("CEB311", 2, ebpCode="B", orderNo="O1")
    w = _waybill()
    alone = Live([a, w])
    assert alone.holders(w) == [("A", "O1")] and alone.shipment(("A", "O1")).waybill is w.document

    live = Live([a, b, w])
    assert live.holders(w) == [] and live.lone_waybill("O1") is w
    for key in (("A", "O1"), ("B", "O1")):
        s = live.shipment(key)
        assert s.waybill is None and s.ambiguous == (w.document,) and s.platforms == ("A", "B")
        outcome = recon.reconcile(s)
        assert outcome.state == "incomplete" and Kind.WAYBILL in outcome.missing
        [finding] = outcome.findings
        assert finding.code == "recon.waybill_ambiguous" and not finding.blocking
        assert finding.left is not None and finding.left.doc == "CEB311" and finding.right is not None
        assert finding.right.doc == "CEB511" and finding.right.value == "O1"
    blank = live.lone_shipment("O1")
    assert blank is not None and blank.waybill is w.document and blank.ambiguous == (w.document,)

    # an inventory of the orderNo naming it decides: its shipment's only
    inv = _row("CEB621", 4, ebpCode="A", ebcCode="E", orderNo="O1", logisticsCode="L", logisticsNo="W1")
    named = Live([a, b, w, inv])
    assert named.holders(w) == [("A", "O1")] and named.lone_waybill("O1") is None
    assert named.shipment(("A", "O1")).waybill is w.document
    other = named.shipment(("B", "O1"))
    assert other.waybill is None and other.ambiguous == ()


def _verdict(msg: ParsedMessage, stored: list[Row]) -> Write:
    """judge, with the reads and locks it asks for (Defer) added, as the store does."""
    state = State(current={r.key: r for r in stored}, rows={r.id: r for r in stored}, ledger={})
    news = new_documents(msg)
    refs, locks = Refs.of(news), up_front_locks(msg)
    for _ in range(3):
        verdict = judge(msg, news, refs, locks, state, rates=tax.DEFAULT_RATES, tolerance=Decimal(0))
        if isinstance(verdict, Write):
            return verdict
        refs.merge(verdict.refs)
        locks |= verdict.locks
    raise AssertionError("judge kept asking for more")


def test_a_second_platforms_leg_takes_the_waybill_from_the_first_and_its_withdrawal_gives_it_back() -> None:
    """Whatever came first: a waybill the first platform's shipment held becomes ambiguous when a second platform's
    order of the orderNo arrives (the first is reconciled again, the waybill gets a shipment of its own)."""
    a, w = _row("CEB311", 1, ebpCode="A", orderNo="O1"), _waybill()
    b = _row("CEB311", 2, ebpCode="B", orderNo="O1").document
    order_b = ParsedMessage(ORDER, "MB", "1.0", [b], None, False)
    verdict = _verdict(order_b, [a, w])
    written = {(s["ebp_code"], s["order_no"]): s for s in verdict.shipments}
    assert sorted(written) == [("", "O1"), ("A", "O1"), ("B", "O1")]
    assert [f["code"] for f in written[("A", "O1")]["findings"]] == ["recon.waybill_ambiguous"]
    assert "waybill" in written[("A", "O1")]["missing"] and verdict.blanks == []
    [waybill_outcome] = _verdict(ParsedMessage(BY_CODE["CEB511"], "MW", "1.0", [w.document], None, False),
                                 [a]).body["documents"]  # fmt: skip
    assert waybill_outcome["shipment"]["ebpCode"] == "A"  # one platform: its waybill

    # the second platform's order withdrawn: the waybill is the first one's again, the blank shipment goes
    stored_b = _row("CEB311", 2, ebpCode="B", orderNo="O1")
    head = {**stored_b.head, "appType": "3", "appTime": "20250301100009"}
    withdrawal = dataclasses.replace(stored_b.document, head=head)
    verdict = _verdict(ParsedMessage(ORDER, "MB3", "1.0", [withdrawal], None, False), [a, w, stored_b])
    written = {(s["ebp_code"], s["order_no"]): s for s in verdict.shipments}
    assert written[("A", "O1")]["findings"] == [] and "waybill" not in written[("A", "O1")]["missing"]
    assert verdict.blanks == ["O1"]


def test_an_inventory_whose_cancellation_customs_concluded_is_void() -> None:
    """Its key may be declared anew, another key's inventory of the order is no second one, and a leg reassessing
    it does not count its quota again (the outbox gave it back with the receipt)."""
    legs = _legs()
    inventory = _stored(legs["CEB621"])
    cancelled = dataclasses.replace(inventory, cancelled=True)
    anew = legs["CEB621"]
    anew.documents[0].head["appTime"] = "20991231235959"
    assert [i.code for i in decide(new_documents(anew), {inventory.key: inventory})] == ["state.duplicate"]
    news = new_documents(anew)
    assert decide(news, {cancelled.key: cancelled}) == [] and news[0].outcome == "replaced"

    other = _legs()["CEB621"]
    head = other.documents[0].head
    head.update(ebcCode="OTHEREBC01", assureCode="OTHEREBC01", guid="O" * 36)
    with pytest.raises(Conflict) as refused:
        _verdict(other, [inventory])
    assert [i.code for i in refused.value.issues] == ["state.second_inventory"]
    verdict = _verdict(other, [cancelled])
    assert {(p["ebc_code"], Decimal(p["amount"]) > 0) for p in verdict.ledger_put} == {("OTHEREBC01", True)}

    # the cancelled one alone: an order arriving reassesses it, at nothing
    verdict = _verdict(legs["CEB311"], [cancelled])
    assert [Decimal(p["amount"]) for p in verdict.ledger_put] == [Decimal(0)]
    assert [Decimal(p["amount"]) > 0 for p in _verdict(legs["CEB311"], [inventory]).ledger_put] == [True]


# --- quota given back reopens the buyer's blocked shipments ---------------------------------------------------


def _inventory_row(order_no: str, total: str, row_id: int, **head: str) -> Row:
    from tests.test_store import inventory_head, inventory_lines, message

    msg = message("CEB621", inventory_head(order_no, **head), lines=inventory_lines(total))
    return dataclasses.replace(new_documents(msg)[0].row, id=row_id, is_new=False, doc=None)


def _quota_state(used: str, *blocked: Row, stored: tuple[Row, ...] = ()) -> State:
    """The buyer of the test inventories with ``used`` taken by another inventory, ``blocked`` blocked in that
    order (each counting 0), ``stored`` counting their dutiable value."""
    bk = buyer_of(blocked[0].head)
    book = {("OTHER", "FILL"): Decimal(used)}
    book |= {(r.ebc_code or "", r.order_no or ""): Decimal(0) for r in blocked}
    book |= {(r.ebc_code or "", r.order_no or ""): Decimal(r.lines[0]["totalPrice"]) + 10 for r in stored}
    rows = {r.id: r for r in (*blocked, *stored)}
    return State(current={r.key: r for r in stored}, rows=rows, ledger={bk: book},
                 blocked={bk: [(r.ebc_code or "", r.order_no or "", r.ebp_code or "") for r in blocked]})  # fmt: skip


def _reopened(state: State) -> tuple[list[str], list[tuple[str, str]]]:
    bk = next(iter(state.ledger))
    results, puts = reopen([bk], state, state.live(), rates=tax.DEFAULT_RATES, tolerance=Decimal(0))
    for r in results.values():
        assert "tax.annual_limit_exceeded" not in {f["code"] for f in r.findings}
    return [key[1] for key in results], [(p["order_no"], p["amount"]) for p in puts if not p["blocked"]]


def test_quota_given_back_goes_to_the_blocked_shipments_in_the_order_they_were_blocked() -> None:
    # ¥3,000 free; each needs ¥2,010 (2,000 + freight 10): the first blocked gets it, the second stays blocked
    b1, b2 = _inventory_row("B1", "2000", 1), _inventory_row("B2", "2000", 2)
    assert _reopened(_quota_state("23000", b1, b2)) == (["B1"], [("B1", "2010.00")])
    assert _reopened(_quota_state("23000", b2, b1)) == (["B2"], [("B2", "2010.00")])


def test_a_later_blocked_shipment_that_fits_passes_an_earlier_one_that_does_not() -> None:
    big, small = _inventory_row("B1", "4000", 1), _inventory_row("B2", "1000", 2)
    assert _reopened(_quota_state("23000", big, small)) == (["B2"], [("B2", "1010.00")])
    assert _reopened(_quota_state("23000", small, big)) == (["B2"], [("B2", "1010.00")])  # then ¥1,990 left


def test_an_inventory_customs_refused_or_now_of_another_buyer_is_not_reopened() -> None:
    refused = _inventory_row("B1", "1000", 1)
    refused.rejected = True
    moved = _inventory_row("B2", "1000", 2)
    state = _quota_state("0", refused, moved)
    moved.head = {**moved.head, "buyerIdNumber": "220101199001015678"}
    assert _reopened(state) == ([], [])


def test_a_withdrawal_that_gives_quota_back_reads_and_reopens_the_buyers_blocked_shipment() -> None:
    """In the withdrawal's own transaction: the blocked shipment's legs are read and its orderNo locked (Defer),
    then it is assessed again and written — not answered: it may be another party's."""
    from tests.test_store import inventory_head, message

    withdrawn = _inventory_row("W", "3000", 1)
    blocked = _inventory_row("B1", "2000", 2)
    msg = message("CEB621", inventory_head("W", appType="3", appTime="20250301100001"))
    news = new_documents(msg)
    refs, locks = Refs.of(news), up_front_locks(msg)

    def state() -> State:
        return _quota_state("23000", blocked, stored=(withdrawn,))

    first = judge(msg, news, refs, locks, state(), rates=tax.DEFAULT_RATES, tolerance=Decimal(0))
    assert isinstance(first, Defer)
    assert first.locks == {(LOCK_ORDER, "B1")} and (blocked.ebp_code, "B1") in first.refs.keyed
    refs.merge(first.refs)
    verdict = judge(msg, new_documents(msg), refs, locks | first.locks, state(), rates=tax.DEFAULT_RATES,
                    tolerance=Decimal(0))  # fmt: skip
    assert isinstance(verdict, Write)
    assert [(p["order_no"], p["amount"], p["blocked"]) for p in verdict.ledger_put] == [("B1", "2010.00", False)]
    assert [s["order_no"] for s in verdict.shipments] == ["W", "B1"]
    assert [s["orderNo"] for s in verdict.body["shipments"]] == ["W"]
    assert verdict.reopened == []  # B1 has no order, payment or waybill: incomplete, nothing to release yet


# --- what a concluded return gave back stays given back --------------------------------------------------------


def _after_return(msg: ParsedMessage, stored: Row) -> Write:
    """What ``msg`` writes over ``stored`` (an inventory of two items, one of them returned and the return concluded:
    Row.returned as the store reads it), its buyer's year holding nothing else."""
    stored.returned = [{"gnum": "1", "qty": "1"}]
    bk = buyer_of(stored.head)
    refs, locks = Refs.of(new_documents(msg)), up_front_locks(msg)
    for _ in range(3):  # the rounds a Defer asks for
        state = State(current={stored.key: stored}, rows={stored.id: stored},
                      ledger={bk: {(stored.ebc_code or "", stored.order_no or ""): Decimal("505.00")}})  # fmt: skip
        verdict = judge(msg, new_documents(msg), refs, locks, state, rates=tax.DEFAULT_RATES, tolerance=Decimal(0))
        if isinstance(verdict, Write):
            return verdict
        refs.merge(verdict.refs)
        locks |= verdict.locks
    raise AssertionError("still deferred")


def _two_of(row: Row) -> Row:
    row.lines = [{**row.lines[0], "qty": "2", "qty1": "2"}]  # one line of two items: ¥1,010 with freight
    return row


def test_a_later_leg_reassesses_the_inventory_less_what_its_concluded_return_gave_back() -> None:
    from tests.test_store import message, order_head

    verdict = _after_return(message("CEB311", order_head("RT")), _two_of(_inventory_row("RT", "1000", 1)))
    assert [(p["order_no"], p["amount"], p["returned"]) for p in verdict.ledger_put] == [("RT", "505.00", "505.00")]


def test_a_changed_inventory_keeps_its_return_valued_anew_and_one_declared_anew_does_not() -> None:
    from tests.test_store import inventory_head, inventory_lines, message

    lines = [{**inventory_lines("2000")[0], "qty": "2", "qty1": "2"}]  # ¥2,010: the item returned is now ¥1,005
    change = message("CEB621", inventory_head("RT", appType="2", appTime="20250301100001"), lines=lines)
    verdict = _after_return(change, _two_of(_inventory_row("RT", "1000", 1)))
    assert [(p["amount"], p["returned"]) for p in verdict.ledger_put] == [("1005.00", "1005.00")]
    # customs refused the first declaration: one declared anew is other goods, no return of the one before counts
    refused = _two_of(_inventory_row("RT", "1000", 1))
    refused.rejected = True
    anew = message("CEB621", inventory_head("RT", appTime="20250301100001"), lines=lines)
    verdict = _after_return(anew, refused)
    assert [(p["amount"], p["returned"]) for p in verdict.ledger_put] == [("2010.00", "0.00")]


# --- a released inventory: no change, no withdrawal (customs -621043); a cancellation is the way back ---------------


def _resubmitted(msg: ParsedMessage, **head: str) -> ParsedMessage:
    docs = [dataclasses.replace(d, head={**d.head, **head}) for d in msg.documents]
    return dataclasses.replace(msg, documents=docs)


def _export_inventory() -> ParsedMessage:
    s = samples.export_shipment(random.Random(3), mode="9610", now=datetime(2026, 11, 20, 10, 0, 0))
    return extract(*parse_message(samples.render_export_shipment(s)["CEB603"]))


@pytest.mark.parametrize(("inventory", "cancellation"), [(lambda: _legs()["CEB621"], "CEB623"),
                                                          (_export_inventory, "CEB605")])  # fmt: skip
@pytest.mark.parametrize("app_type", ["2", "3"])
def test_a_released_inventory_is_neither_changed_nor_withdrawn(
    inventory: Callable[[], ParsedMessage], cancellation: str, app_type: str
) -> None:
    """Customs released it (800, keystate.Row.released): a change or withdrawal is refused at its appType, pointing
    at the cancellation of its type, the way back (customs would answer -621043)."""
    msg = inventory()
    stored = dataclasses.replace(_stored(msg), message_guid="RELEASED-MESSAGE")
    later = str(int(stored.app_time) + 1)

    def verdict(row: Row, app_time: str = later) -> tuple[list[str], New]:
        news = new_documents(_resubmitted(msg, appType=app_type, appTime=app_time))
        return [i.code for i in decide(news, {row.key: row})], news[0]

    for row in (stored, dataclasses.replace(stored, released=False)):  # not released yet: taken
        assert verdict(row)[0] == []
    released = dataclasses.replace(stored, released=True)
    news = new_documents(_resubmitted(msg, appType=app_type, appTime=later))
    [refused] = decide(news, {released.key: released})
    assert (refused.code, refused.path) == ("state.inventory_released", news[0].doc.field_path("appType"))
    assert "customs released" in refused.message and f"cancellation ({cancellation})" in refused.message
    assert "RELEASED-MESSAGE" in refused.message
    # an older appTime changes nothing, as ever; a cancellation customs concluded: no longer released at customs
    codes, new = verdict(released, stored.app_time)
    assert codes == [] and new.outcome == "ignored_older"
    assert verdict(dataclasses.replace(released, cancelled=True))[0] == []
