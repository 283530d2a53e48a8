"""gateway.keystate without a database: the appType rules over any sequence of submissions of one key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.documents import Document, ParsedMessage
from gateway.keystate import Conflict, Row, decide, new_documents, up_front_locks
from gateway.messages import BY_CODE

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
