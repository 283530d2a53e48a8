"""gateway.receipts: the status ladder, classification, monotonic application, reading receipts off the wire."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import dxp
from gateway import receipts as rc
from gateway import summary
from gateway.errors import MessageRejected
from gateway.receipts import CustomsState, Outcome, ReceiptRecord, Verdict
from gateway.sandbox.receipts import build_receipt
from gateway.schema import SchemaSet

DATA = Path(__file__).resolve().parent / "data"


def rec(status: str, time: str = "20260101120000000", code: str = "CEB622", **keys: str) -> ReceiptRecord:
    return ReceiptRecord(
        message_type=code,
        root_guid="R",
        index=1,
        guid="G",
        keys=keys or {"copNo": "C1", "preNo": "B20260101000000001"},
        return_status=status,
        return_time=time,
        return_info=f"info {status}",
        path=f"/{code}Message/X[1]",
    )


def order_receipt() -> bytes:
    values = {"guid": "D" * 36, "ebpCode": "E1", "ebcCode": "C1", "orderNo": "O-1", "returnStatus": "2",
              "returnTime": "20260101120000001", "returnInfo": "ok"}  # fmt: skip
    return build_receipt("CEB312", values)


def waybill_receipt() -> bytes:
    values = {"guid": "A" * 36, "logisticsCode": "L1", "logisticsNo": "N1", "returnStatus": "120",
              "returnTime": "20260101120000001", "returnInfo": "ok"}  # fmt: skip
    return build_receipt("CEB512", values)


# --- ladder and classification ------------------------------------------------------------------------


def test_the_ladder_is_the_briefs_order() -> None:
    # inspection (500) comes before the conclusion (399), spec §5.2: 120 → (300 / 500) → 399 → 800
    ladder = ["1", "2", "3", "120", "400", "300", "600", "500", "399", "501", "100", "700", "800", "899"]
    ranks = [rc.rank(s) for s in ladder]
    assert all(r is not None for r in ranks)
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert rc.rank("501") == rc.rank("599") == rc.rank("502")  # one rung for the detentions


@pytest.mark.parametrize(
    ("status", "verdict", "rank"),
    [
        ("2", Verdict.PROGRESS, rc.RANKS["2"]),
        ("0800", Verdict.PROGRESS, rc.RANKS["800"]),
        ("100", Verdict.REJECTED, rc.RANK_REJECTED),
        ("4", Verdict.TRANSIENT, None),
        ("-621017", Verdict.TRANSIENT, None),
        ("-3001", Verdict.TRANSIENT, None),
        ("-301010", Verdict.DUPLICATE, rc.RANK_ACCEPTED),
        ("-621004", Verdict.DUPLICATE, rc.RANK_ACCEPTED),
        ("-621041", Verdict.UNKNOWN, None),  # two meanings in public code, none official: neither way
        ("-301014", Verdict.OLDER_IGNORED, rc.RANK_REJECTED),
        ("-621018", Verdict.DATA_ERROR, rc.RANK_REJECTED),
        # a site delivery's (CEB712): the spec names the range's meanings, not which code is a duplicate; −800005 older
        ("-800001", Verdict.DATA_ERROR, rc.RANK_REJECTED),
        ("-800005", Verdict.OLDER_IGNORED, rc.RANK_REJECTED),
        ("-1", Verdict.DATA_ERROR, rc.RANK_REJECTED),
        ("18", Verdict.UNKNOWN, None),
        ("400", Verdict.PROGRESS, rc.RANKS["400"]),  # spec §5.2: [C] "accepted, waiting for the goods"
        ("600", Verdict.PROGRESS, rc.RANKS["600"]),  # spec §5.2: 挂起, CEB214
        ("abc", Verdict.UNKNOWN, None),
    ],
)
def test_classification(status: str, verdict: Verdict, rank: int | None) -> None:
    assert rc.classify(status) is verdict
    assert rc.rank(status) == rank
    assert rc.status_name(status)


def test_status_names_follow_the_spec_table() -> None:
    """505 is a retail export return's 移交 (handed over, CEB214), not a detention as the 5xx around it; 600 挂起."""
    assert [rc.status_name(s) for s in ("501", "505", "550", "600")] == [
        "detained: transferred to clearance", "handed over", "detained", "suspended"]


def test_rejections_and_usable_states() -> None:
    assert rc.is_rejection("100") and rc.is_rejection("-621018") and rc.is_rejection("-301014")
    assert not rc.is_rejection("-301010") and not rc.is_rejection("800")
    assert not CustomsState().usable
    assert not CustomsState("1", rc.rank("1"), "t").usable  # temporary save is not a declaration
    assert CustomsState("2", rc.rank("2"), "t").usable
    assert CustomsState("-301010", rc.rank("-301010"), "t").usable
    assert not CustomsState("100", rc.rank("100"), "t").usable
    assert CustomsState("100", rc.rank("100"), "t").forward_state == "rejected"
    assert CustomsState("120", rc.rank("120"), "t").forward_state == "receipted"
    assert CustomsState().forward_state is None


# --- apply ------------------------------------------------------------------------------------------


def test_apply_moves_forward_only() -> None:
    s = rc.apply(None, rec("2", "20260101120000001"))
    assert s.outcome is Outcome.APPLIED and s.state.status == "2"
    s = rc.apply(s.state, rec("800", "20260101120000004"))
    assert s.outcome is Outcome.APPLIED and s.state.status == "800"
    late = rc.apply(s.state, rec("120", "20260101120000002"))
    assert late.outcome is Outcome.STALE and late.state.status == "800"
    again = rc.apply(s.state, rec("800", "20260101120000004"))
    assert again.outcome is Outcome.STALE


def test_equal_rank_later_time_wins() -> None:
    first = rc.apply(None, rec("501", "20260101120000001")).state
    later = rc.apply(first, rec("502", "20260101120000009"))
    assert later.outcome is Outcome.APPLIED and later.state.status == "502"
    earlier = rc.apply(later.state, rec("503", "20260101120000005"))
    assert earlier.outcome is Outcome.STALE


def test_transient_resends_only_before_customs_confirmed() -> None:
    d = rc.apply(None, rec("4"))
    assert d.outcome is Outcome.TRANSIENT and d.resend and d.state == CustomsState()
    after = rc.apply(CustomsState("120", rc.rank("120"), "t"), rec("4"))
    assert not after.resend and after.state.status == "120"


@pytest.mark.parametrize("status", ["-301014", "-401012", "-621055", "-301010"])
def test_older_ignored_or_duplicate_answering_a_resend_is_already_on_file(status: str) -> None:
    """Customs refusing the very version sent again as older than (or the same as) the one stored has it: accepted."""
    d = rc.apply(None, rec(status, "20260101120000002", code="CEB312"), resent=True)
    assert d.outcome is Outcome.APPLIED and d.verdict is Verdict.DUPLICATE
    assert (d.state.status, d.state.rank, d.state.forward_state) == (status, rc.RANK_ACCEPTED, "receipted")
    assert d.state.usable and not d.state.rejected
    first = rc.apply(None, rec(status, "20260101120000002", code="CEB312"))  # never sent again: as before
    assert first.state.forward_state == ("receipted" if status == "-301010" else "rejected")


def test_unknown_status_never_moves_and_preno_is_learned() -> None:
    d = rc.apply(CustomsState("2", rc.rank("2"), "t"), rec("18", invtNo="29912024I000000001", copNo="C"))
    assert d.outcome is Outcome.UNKNOWN and d.state.status == "2"
    assert d.learned == {"invtNo": "29912024I000000001"}


STATUSES = ["1", "2", "3", "4", "100", "120", "300", "399", "400", "500", "501", "599", "600", "700", "800", "899",
            "-301010", "-301014", "-621018", "-621017", "18", "23"]  # fmt: skip


@st.composite
def receipt_sequences(draw: st.DrawFn) -> list[ReceiptRecord]:
    n = draw(st.integers(1, 8))
    out = []
    for _ in range(n):
        status = draw(st.sampled_from(STATUSES))
        millis = draw(st.integers(0, 5))  # few distinct times: ties on purpose
        out.append(rec(status, f"20260101120000{millis:03d}"))
    return out


@settings(max_examples=300, deadline=None)
@given(receipt_sequences(), st.randoms(use_true_random=False), st.lists(st.integers(0, 7), max_size=6))
def test_any_permutation_or_duplication_ends_in_the_same_state(
    seq: list[ReceiptRecord], rnd: object, dup_positions: list[int]
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    reference = rc.fold(seq)
    shuffled = list(seq)
    rnd.shuffle(shuffled)
    for p in dup_positions:  # duplicated deliveries, anywhere
        shuffled.insert(rnd.randrange(len(shuffled) + 1), seq[p % len(seq)])
    assert rc.fold(shuffled) == reference
    # and the state is the maximum of what can move it: no receipt outranks the one in force
    movers = [r for r in seq if r.rank is not None]
    if movers:
        best = max(movers, key=lambda r: (r.rank, r.return_time, r.return_status))
        assert reference.status == best.return_status
    else:
        assert reference == CustomsState()


@settings(max_examples=200, deadline=None)
@given(receipt_sequences())
def test_the_state_never_moves_back(seq: list[ReceiptRecord]) -> None:
    state = CustomsState()
    for r in seq:
        after = rc.apply(state, r).state
        assert after.order_key >= state.order_key
        state = after


# --- records, dedupe, correlation ----------------------------------------------------------------------


def test_records_of_the_official_shape() -> None:
    body = (DATA / "schema" / "CEB622Message.xml").read_bytes()
    intake = rc.read(body, SchemaSet())
    assert intake.message_type == "CEB622" and intake.cop_msg_id is None
    first, second = intake.records
    assert first.return_status == "800" and first.keys["invtNo"] == "29912024I000012345"
    assert "returnInfo" not in first.keys and "guid" not in first.keys
    assert second.verdict is Verdict.DATA_ERROR and second.index == 2
    c = first.correlation()
    assert c.declared_type == "CEB621" and c.cop_no == "INV202403010001" and c.keys is None
    assert c.pre_no == "B20240301000000123" and ("ebcCode", "3301960AB8") in c.parties


def test_order_receipt_correlates_by_the_declared_key() -> None:
    xml = order_receipt()
    (r,) = rc.read(xml, SchemaSet()).records
    c = r.correlation()
    assert c.declared_type == "CEB311" and c.keys == ("E1", "O-1") and c.guid == "D" * 36


@pytest.mark.parametrize(("code", "declared", "keys"), [
    ("CEB508", "CEB507", ("4601980S08", "YD2026112100017")),
    ("CEB510", "CEB509", ("1101980B33", "LJ2026112100009")),
    ("CEB608", "CEB607", ("4601980H12", "ZF2026112100004")),
])  # fmt: skip
def test_transport_receipts_correlate_by_the_declared_key(code: str, declared: str, keys: tuple[str, str]) -> None:
    """CEB508/510/608 carry the sender's code, copNo and msgSeqNo (spec §5.1), the key of the arrival, departure or
    清单总分单 part they answer (stored as key1 and copNo + msgSeqNo); their preNo is learned."""
    records = rc.read((DATA / "schema" / f"{code}Message.xml").read_bytes(), SchemaSet()).records
    for r in records:
        c = r.correlation()
        assert (c.declared_type, c.keys, c.cop_no) == (declared, (keys[0], keys[1] + "\x1f1"), keys[1])
        assert r.keys["msgSeqNo"] == "1" and len(c.pre_no or "") == 18
        assert rc.apply(None, r).learned == {"preNo": r.keys["preNo"]}
    assert [r.return_status for r in records][-1] in ("399", "120")
    assert rc.fold(records).status == records[-1].return_status


@pytest.mark.parametrize(("code", "declared", "keys", "last"), [
    ("CEB214", "CEB213", ("4601980H12", "TH2026112100000031"), "800"),
    ("CEB216", "CEB215", ("4601980S08", "LH20261121000017"), "399"),
])  # fmt: skip
def test_return_receipts_correlate_by_the_declared_key(
    code: str, declared: str, keys: tuple[str, str], last: str
) -> None:
    """CEB214 carries the agent's code and coElNo of the retail export return it answers, CEB216 the site operator's
    and the tally's coElNo (spec §5.1, A.33, A.35): their declared keys; the preNo is learned. A CEB214's invtNo is
    the returned inventory's number, shared by every return of it: it finds no return and is not learned."""
    records = rc.read((DATA / "schema" / f"{code}Message.xml").read_bytes(), SchemaSet()).records
    for r in records:
        c = r.correlation()
        assert (c.declared_type, c.keys, c.invt_no) == (declared, keys, None)
        assert rc.apply(None, r).learned == {"preNo": r.keys["preNo"]}
    assert rc.fold(records).status == records[-1].return_status == last


def test_the_guid_return_info_names_in_brackets_is_a_correlation_hint() -> None:
    """E-Port writes the declared document's guid into returnInfo (spec §5.1: "新增申报成功[<guid>]")."""
    declared = "4CDE1F7A-0000-4000-8000-00000000000A"
    r = replace(rec("100"), guid="E" * 36, return_info=f"新增申报成功[{declared}]")
    assert r.info_guid == declared and r.correlation().info_guid == declared
    assert replace(r, guid=declared).info_guid is None  # the same as its own: nothing more
    assert replace(r, return_info="[too short] and no guid").info_guid is None


def test_dedupe_key_ignores_guid_and_info_but_not_status_or_time() -> None:
    a = rec("120", "20260101120000001")
    same = ReceiptRecord(**{**a.__dict__, "guid": "other", "return_info": "other text", "root_guid": "X"})
    assert a.dedupe_key() == same.dedupe_key()
    assert a.dedupe_key() != rec("399", "20260101120000001").dedupe_key()
    assert a.dedupe_key() != rec("120", "20260101120000002").dedupe_key()


def test_format_receipt_correlates_by_ori_cop_msg_id() -> None:
    (r,) = rc.read((DATA / "schema" / "CEB900Message.xml").read_bytes(), SchemaSet()).records
    c = r.correlation()
    assert c.ori_cop_msg_id == "0b7c1f7e-5a55-4c1b-9b7f-2f1d3e5a7c90" and c.declared_type is None
    assert "oriBizMessage" not in r.keys
    assert r.verdict is Verdict.DATA_ERROR


def test_read_unwraps_a_dxp_envelope() -> None:
    xml = waybill_receipt()
    env = dxp.wrap(xml, msg_type="CEB512Message", sender_id=dxp.IMPORT_RECEIVER, receiver_ids=["DXPENT0000000001"],
                   cop_msg_id="COP-1", created=datetime(2026, 1, 1, 12))  # fmt: skip
    intake = rc.read(env, SchemaSet())
    assert intake.cop_msg_id == "COP-1" and intake.records[0].keys == {"logisticsCode": "L1", "logisticsNo": "N1"}
    assert intake.raw_xml.encode() == xml
    # a long comment before the root (a relay's banner) still leaves it an envelope, not an unknown message
    declaration, rest = env.split(b"?>", 1)
    commented = declaration + b"?><!--" + b" relay " * 100 + b"-->" + rest
    assert rc.read(commented, SchemaSet()).cop_msg_id == "COP-1"
    assert not dxp.is_dxp(b"<?xml version='1.0'?><!-- DxpMsg http://www.chinaport.gov.cn/dxp --><CEB312Message/>")


def test_read_refuses_declarations_and_mismatched_envelopes() -> None:
    with pytest.raises(MessageRejected) as err:
        rc.read((DATA / "samples" / "CEB311-9610.xml").read_bytes(), SchemaSet())
    assert err.value.issues[0].code == "rule.not_a_receipt"
    xml = waybill_receipt()
    env = dxp.wrap(xml, msg_type="CEB312Message", sender_id=dxp.IMPORT_RECEIVER, receiver_ids=["DXPENT0000000001"],
                   cop_msg_id="COP-1", created=datetime(2026, 1, 1, 12))  # fmt: skip
    with pytest.raises(MessageRejected) as err:
        rc.read(env, SchemaSet())
    assert err.value.issues[0].code == "rule.receipt_envelope_type"


def test_read_validates_against_the_schema() -> None:
    xml = order_receipt()
    broken = xml.replace(b"<orderNo>O-1</orderNo>", b"")
    with pytest.raises(MessageRejected) as err:
        rc.read(broken, SchemaSet())
    assert err.value.issues[0].code.startswith("schema.")
    with pytest.raises(MessageRejected) as err:
        rc.read(b"<not-xml", SchemaSet())
    assert err.value.issues[0].code.startswith("parse.")


def test_a_receipt_whose_status_or_time_is_none_is_refused_and_the_rest_of_customs_word_taken() -> None:
    """A receipt's status and time order its document's customs state: a returnStatus that is no number, or a
    returnTime that is no time (it would outrank every genuine receipt after it), is refused as /v1/messages refuses
    it. What else customs writes is taken as written: a status in no table, a customs code not of the form we know."""
    good = order_receipt()
    for broken, code, where in (
        (good.replace(b"<returnStatus>2<", b"<returnStatus>abc<"), "rule.return_status_format", "returnStatus"),
        (good.replace(b"<returnStatus>2<", b"<returnStatus>+120<"), "rule.return_status_format", "returnStatus"),
        (good.replace(b"20260101120000001", b"99999999999999999"), "rule.date_format", "returnTime"),
        (good.replace(b"<returnStatus>2<", b"<returnStatus> 2<"), "rule.untrimmed", "returnStatus"),
    ):
        with pytest.raises(MessageRejected) as err:
            rc.read(broken, SchemaSet())
        assert [(i.code, i.path) for i in err.value.issues] == [(code, f"/CEB312Message/OrderReturn[1]/{where}")]
    assert rc.read(good.replace(b"<returnStatus>2<", b"<returnStatus>130<"), SchemaSet()).records[0].return_status \
        == "130"  # fmt: skip
    values = {"guid": "E" * 36, "customsCode": "51A4", "ebpCode": "E1", "ebcCode": "C1", "agentCode": "A1",
              "copNo": "C1", "preNo": "B20260101000000001", "returnStatus": "-621001",
              "returnTime": "20260101120000001", "returnInfo": "refused"}  # fmt: skip
    [taken] = rc.read(build_receipt("CEB622", values), SchemaSet()).records
    assert (taken.return_status, taken.keys["customsCode"]) == ("-621001", "51A4")  # rules.check: rule.customs_code


# --- the summary declaration's receipt (CEB702) and customs' summary result (CEB792) -------------------------------

SCHEMA_DATA = Path(__file__).parent / "data" / "schema"


def test_a_summary_result_is_read_as_records_of_its_declaration() -> None:
    intake = rc.read((SCHEMA_DATA / "CEB792Message.xml").read_bytes(), None)
    [rec] = intake.records
    assert (rec.return_status, rec.return_time, rec.return_info) == ("10", "20261121103000250", "汇总生成报关单")
    assert rec.keys["sumNo"] == "51412026S000000311" and rec.keys["entryId"] == "514120261000312345"
    assert [(i["invtNo"], i["gseqno"], i["gnum"]) for i in rec.keys["items"]] == [
        ("51412026E00000471101", "1", "1"), ("51412026E00000471101", "2", "2"), ("51412026E00000471102", "1", "1")]
    c = summary.correlation(rec)
    assert (c.declared_type, c.invt_no, dict(c.parties)) == (
        "CEB701", "51412026S000000311",
        {"agentCode": "4601980H12", "ebcCode": "4601260E35", "declAgentCode": "4601980H12"})
    # the CEB702 that concluded the application taught its sumNo, kept where an inventory's invtNo is
    r702 = rc.read((SCHEMA_DATA / "CEB702Message.xml").read_bytes(), None).records
    assert rc.apply(None, r702[1]).learned == {"preNo": "S20261121000000311", "invtNo": "51412026S000000311"}
    assert rc.apply(None, r702[0]).learned == {"preNo": "S20261121000000311"}


def test_a_summary_result_breaking_a_rule_is_refused_at_intake() -> None:
    good = (SCHEMA_DATA / "CEB792Message.xml").read_bytes()
    bad = good.replace(b"<gcode>4202220000</gcode>", b"<gcode>42022200XX</gcode>")
    with pytest.raises(MessageRejected) as exc:
        rc.read(bad, None)
    assert [i.code for i in exc.value.issues] == ["rule.gcode"]
