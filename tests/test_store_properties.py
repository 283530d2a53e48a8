"""Property: appType / appTime handling against a reference model, on the real store.

For any sequence of declarations, changes and withdrawals of one business key, the store answers
exactly what the spec's rules (§6.2, the −301014 "older message ignored" behaviour) predict, and the
stored current appTime never moves backwards.
"""

from __future__ import annotations

import functools
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


# --- the shipments do not depend on how the keys' histories interleave -------------------------------------


@dataclass(frozen=True)
class Version:
    code: str
    head: dict[str, str]


#: Two shipments' legs, with changes and withdrawals that move waybills and inventories between them; and another
#: platform's shipment of the first orderNo (spec §6.2: orderNo is unique within a platform only), with an order and
#: perhaps an inventory naming a waybill of its own.
SHAPES = st.fixed_dictionaries({
    "order": st.sampled_from(["none", "declared", "withdrawn"]),
    "payment": st.booleans(),
    "w1_order": st.sampled_from(["o1", "o2", "x9"]),
    "w2": st.booleans(),
    "inventory": st.sampled_from(["none", "kept", "moved", "withdrawn"]),
    "order2": st.booleans(),
    "platform2": st.sampled_from(["none", "order", "inventory"]),
    # an export shipment (spec §4.4) of its own orderNo: 收款单 or not, its inventory kept, moved to a second waybill
    # or withdrawn; its waybills name no orderNo
    "export": st.sampled_from(["none", "kept", "moved", "withdrawn", "no_receipt"]),
}).filter(lambda shape: shape["order"] != "withdrawn" or shape["inventory"] == "none")  # fmt: skip
# (An order is withdrawn only before its inventory is declared — after, customs answers -301011 and the gateway
# state.inventory_declared — so whether its withdrawal is taken depends on the arrival order, as at customs.)


def _histories(suffix: str, shape: dict[str, object]) -> list[list[Version]]:
    """Each key's versions in appTime order; the keys (orderNos, logisticsNos) carry ``suffix``."""
    from tests.test_store import T0, _later, inventory_head, order_head, payment_head, waybill_head

    names = {"o1": f"A{suffix}", "o2": f"B{suffix}", "x9": f"X{suffix}"}
    buyer = f"ID{suffix}"  # a buyer of each run's own: the annual ledger is not shared between runs
    order_head, payment_head, inventory_head = (  # the helpers, with this buyer
        functools.partial(order_head, buyerIdNumber=buyer), functools.partial(payment_head, payerIdNumber=buyer),
        functools.partial(inventory_head, buyerIdNumber=buyer))  # fmt: skip
    o1, o2 = names["o1"], names["o2"]
    w1, w2 = f"W1{suffix}", f"W2{suffix}"
    histories: list[list[Version]] = []
    if shape["order"] != "none":
        histories.append([Version("CEB311", order_head(o1))])
        if shape["order"] == "withdrawn":
            histories[-1].append(Version("CEB311", order_head(o1, appType="3", appTime=_later(T0, 9))))
    if shape["payment"]:
        histories.append([Version("CEB411", payment_head(o1))])
    histories.append([Version("CEB511", waybill_head(names[str(shape["w1_order"])], logisticsNo=w1))])
    if shape["w2"]:
        histories.append([Version("CEB511", waybill_head(o2, logisticsNo=w2))])
    if shape["inventory"] != "none":
        histories.append([Version("CEB621", inventory_head(o1, logisticsNo=w1))])
        if shape["inventory"] == "moved":
            histories[-1].append(Version("CEB621", inventory_head(o1, logisticsNo=w2, appType="2",
                                                                  appTime=_later(T0, 7))))  # fmt: skip
        elif shape["inventory"] == "withdrawn":
            histories[-1].append(Version("CEB621", inventory_head(o1, appType="3", appTime=_later(T0, 7))))
    if shape["order2"]:
        histories.append([Version("CEB311", order_head(o2, payTransactionId=f"TX2{suffix}"))])
    if shape["platform2"] != "none":
        ebp, ebc, w3 = "46012609ZZ", "4601260E99", f"W3{suffix}"
        histories.append([Version("CEB311", order_head(o1, ebpCode=ebp, guid=f"ORD2-{suffix}",
                                                       payTransactionId=f"TX3{suffix}"))])  # fmt: skip
        if shape["platform2"] == "inventory":
            histories.append([Version("CEB511", waybill_head(o1, logisticsNo=w3, guid=f"WB3-{suffix}"))])
            histories.append([Version("CEB621", inventory_head(o1, ebpCode=ebp, ebcCode=ebc, assureCode=ebc,
                                                               logisticsNo=w3, guid=f"INV2-{suffix}"))])  # fmt: skip
    if shape["export"] != "none":
        histories += _export_histories(suffix, str(shape["export"]))
    return histories


def _export_histories(suffix: str, how: str) -> list[list[Version]]:
    from tests import exportutil as ex
    from tests.test_store import T0, _later

    e, w4, w5 = f"E{suffix}", f"W4{suffix}", f"W5{suffix}"
    out = [[Version("CEB303", ex.order_head(e))], [Version("CEB505", ex.waybill_head(e, logisticsNo=w4))],
           [Version("CEB505", ex.waybill_head(e, logisticsNo=w5, guid=f"EWB5-{suffix}"))]]  # fmt: skip
    if how != "no_receipt":
        out.append([Version("CEB403", ex.receipt_head(e))])
    inventory = [Version("CEB603", ex.inventory_head(e, logisticsNo=w4))]
    if how == "moved":
        inventory.append(Version("CEB603", ex.inventory_head(e, logisticsNo=w5, appType="2", appTime=_later(T0, 7))))
    elif how == "withdrawn":
        inventory.append(Version("CEB603", ex.inventory_head(e, appType="3", appTime=_later(T0, 7))))
    return [*out, inventory]


def _interleave(histories: list[list[Version]], picks: list[int]) -> list[Version]:
    """One arrival order: each key's versions in their own order, the keys mixed as ``picks`` says."""
    queues = [list(h) for h in histories]
    out: list[Version] = []
    for pick in picks:
        queues = [q for q in queues if q]
        if not queues:
            break
        out.append(queues[pick % len(queues)].pop(0))
    return out + [v for q in queues for v in q]


async def _outcome(pool: asyncpg.Pool, store: Store, order: list[Version], suffix: str) -> list[tuple[object, ...]]:
    from tests.exportutil import export_message
    from tests.test_store import ingest, message

    for v in order:
        make = export_message if v.code in ("CEB303", "CEB603") else message  # lines of their own flow
        await ingest(store, make(v.code, v.head))
    rows = await pool.fetch(
        "SELECT ebp_code, order_no, flow, state, missing, findings FROM shipments WHERE order_no LIKE '%' || $1 "
        "ORDER BY ebp_code, order_no", suffix)  # fmt: skip
    assert await pool.fetchval("SELECT count(*) FROM shipments WHERE order_no = ''") == 0  # no export waybill's
    return [(r["ebp_code"], r["order_no"].removesuffix(suffix), r["flow"], r["state"], list(r["missing"]),
             sorted(f["code"] for f in r["findings"])) for r in rows]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=SHAPES, picks=st.lists(st.integers(0, 11), min_size=12, max_size=12))
async def test_the_shipments_do_not_depend_on_how_the_histories_interleave(
    db_pool: asyncpg.Pool, shape: dict[str, object], picks: list[int]
) -> None:
    """Whatever the arrival order across keys (each key's versions in appTime order, as a sender sends them), the
    same documents end in the same shipments, with the same state, missing legs and findings."""
    run = next(_orders)
    first, second = f"-{run}a", f"-{run}b"
    store = Store(db_pool)
    canonical = [v for h in _histories(first, shape) for v in h]
    mixed = _interleave(_histories(second, shape), picks)
    arrival = [(v.code, v.head.get("appType"), v.head.get("logisticsNo")) for v in mixed]
    assert await _outcome(db_pool, store, canonical, first) == await _outcome(db_pool, store, mixed, second), arrival
    await store.aclose()
