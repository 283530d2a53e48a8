"""Property: appType / appTime handling against a reference model, on the real store.

For any sequence of declarations, changes and withdrawals of one business key, the store answers
exactly what the spec's rules (§6.2, the −301014 "older message ignored" behaviour) predict, and the
stored current appTime never moves backwards.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.documents import Document, ParsedMessage
from gateway.messages import BY_CODE
from gateway.store import Conflict, Store

pytestmark = pytest.mark.db

CEB311 = BY_CODE["CEB311"]
_orders = itertools.count(1)


@dataclass
class Model:
    """The reference: what is stored for one key."""

    app_time: int | None = None
    withdrawn: bool = False

    def apply(self, app_type: str, at: int) -> str:
        exists = self.app_time is not None
        if exists and not self.withdrawn and app_type == "1":
            return "state.duplicate"
        if exists and self.app_time is not None and at <= self.app_time:
            return "ignored_older"
        if app_type in ("2", "3") and (not exists or self.withdrawn):
            return "state.not_found"
        outcome = {"1": "accepted", "2": "replaced", "3": "withdrawn"}[app_type]
        self.app_time, self.withdrawn = at, app_type == "3"
        return outcome


def order_message(order_no: str, app_type: str, app_time: int) -> ParsedMessage:
    head = {
        "guid": str(uuid.uuid4()).upper(), "appType": app_type, "appTime": f"{app_time:014d}", "appStatus": "2",
        "orderType": "I", "orderNo": order_no, "ebpCode": "PROP000001", "ebpName": "平台", "ebcCode": "PROPEBC001",
        "ebcName": "电商", "goodsValue": "100", "freight": "0", "discount": "0", "taxTotal": "0",
        "acturalPaid": "100", "currency": "142", "buyerRegNo": "u1", "buyerName": "张三",
        "buyerTelephone": "13800000000",
        "buyerIdType": "1", "buyerIdNumber": "110101199003074514", "consignee": "张三",
        "consigneeTelephone": "13800000000", "consigneeAddress": "北京市东城区",
    }  # fmt: skip
    lines = [{"gnum": "1", "itemName": "奶粉", "gmodel": "900g", "unit": "122", "qty": "1", "price": "100",
              "totalPrice": "100", "currency": "142", "country": "601"}]  # fmt: skip
    doc = Document(CEB311, 1, "/CEB311Message/Order[1]", head, lines)
    return ParsedMessage(CEB311, str(uuid.uuid4()).upper(), "1.0", [doc], None, False)


OPS = st.lists(
    st.tuples(st.sampled_from(["1", "2", "3"]), st.integers(min_value=0, max_value=6)),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
async def test_app_type_handling_matches_the_model_and_is_monotonic(db_pool: asyncpg.Pool, ops: list) -> None:
    store = Store(db_pool)
    order_no = f"PROP{next(_orders):08d}{uuid.uuid4().hex[:8]}"
    model = Model()
    base = 20261101000000
    last_current: int | None = None
    for app_type, offset in ops:
        at = base + offset
        expected = model.apply(app_type, at)
        try:
            result = await store.ingest(order_message(order_no, app_type, at), b"<x/>", submitter="prop")
        except Conflict as exc:
            got = exc.issues[0].code
        else:
            got = result.body["documents"][0]["outcome"]
        assert got == expected, (ops, app_type, at)
        row = await db_pool.fetchrow(
            "SELECT app_time, withdrawn FROM documents WHERE order_no = $1 AND is_current", order_no
        )
        current = int(row["app_time"]) if row else None
        if model.app_time is None:
            assert row is None
        else:
            assert current == model.app_time and row["withdrawn"] == model.withdrawn
        if last_current is not None and current is not None:
            assert current >= last_current, "the current appTime moved backwards"
        last_current = current if current is not None else last_current
