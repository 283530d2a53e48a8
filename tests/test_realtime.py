"""The 179 real-time payment data, pure (gateway/realtime.py): what a platform hands over, customs' question, the
upload's text and signature."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway import realtime, samples
from gateway.api import create_app
from gateway.config import RealtimePlatform, RealtimeSettings
from gateway.signing import RsaSha1Key, SignatureBackend, Sm2Sm3Key, generate_test_key, verify_bytes
from tests.apiutil import EBP_CODE, OPERATOR, PLATFORM_A, STRANGER, Client, serving, sign_as_agent
from tests.apiutil import test_settings as settings_with
from tests.forwardutil import running_stack, wait_for

RSA = RsaSha1Key.from_pem(*generate_test_key("rsa", "平台 179 test"))
SM2 = Sm2Sm3Key.from_pem(*generate_test_key("sm2", "平台 179 test"))


def sample() -> dict[str, Any]:
    return {
        "payExchangeInfoHead": {
            "initalRequest": "https://pay.example/gateway?out_trade_no=ZG2026112001&total_fee=199.00&body=婴儿奶粉",
            "initalResponse": "ok",
            "ebpCode": "46012609BQ",
            "payCode": "312226T001",
            "payTransactionId": "2026112022001400001",
            "totalAmount": "199.00",
            "currency": "142",
            "verDept": "3",
            "payType": "1",
            "tradingTime": "20261120101500",
        },
        "payExchangeInfoLists": [
            {"orderNo": "ZG2026112001", "goodsInfo": [{"gname": "婴儿配方奶粉 800g", "itemLink": "https://shop.example/i/1"}],
             "recpAccount": "6222020200112233", "recpName": "海南某某跨境电商有限公司"},
        ],
    }


def upload(session_id: str, data: realtime.PaymentData, key: SignatureBackend, **kw: Any) -> realtime.Upload:
    """The upload signed at once with a key file's key (the worker's two steps in one)."""
    unsigned = realtime.unsigned_upload(session_id, data, **kw)
    return unsigned.with_signature(key.sign_bytes(unsigned.signed.encode("utf-8")), key.key_name)


def codes(payload: Any) -> list[tuple[str, str]]:
    data, issues = realtime.payment_data(payload)
    assert (data is None) == bool(issues)
    return [(i.code, i.path) for i in issues]


def test_the_platforms_payment_data_is_taken_as_given() -> None:
    data, issues = realtime.payment_data(sample())
    assert issues == [] and data is not None
    assert (data.ebp_code, data.pay_transaction_id, data.order_nos) == ("46012609BQ", "2026112022001400001",
                                                                      ["ZG2026112001"])  # fmt: skip
    assert data.head["totalAmount"] == "199.00" and "payType" in data.head and "note" not in data.head
    # numbers as JSON numbers are read as their text (json parsed with Decimal, as the API does)
    p = sample()
    p["payExchangeInfoHead"]["totalAmount"] = Decimal("199.00")
    p["payExchangeInfoHead"]["currency"] = 142
    data, _ = realtime.payment_data(p)
    assert data is not None and (data.head["totalAmount"], data.head["currency"]) == ("199.00", "142")
    p["payExchangeInfoHead"]["totalAmount"] = "0199.50"  # leading zeros: no JSON number, written without them
    data, _ = realtime.payment_data(p)
    assert data is not None and data.head["totalAmount"] == "199.50"
    up = upload("s", data, RSA, service_time=1)
    assert json.loads(up.body, parse_float=Decimal)["payExchangeInfoHead"]["totalAmount"] == Decimal("199.50")


@pytest.mark.parametrize(("change", "expected"), [
    (lambda p: p["payExchangeInfoHead"].pop("payTransactionId"),
     ("realtime.missing_field", "/payExchangeInfoHead/payTransactionId")),
    (lambda p: p["payExchangeInfoHead"].update(payCode="X" * 19),
     ("realtime.too_long", "/payExchangeInfoHead/payCode")),
    (lambda p: p["payExchangeInfoHead"].update(totalAmount="1.234567"),
     ("realtime.invalid_amount", "/payExchangeInfoHead/totalAmount")),
    (lambda p: p["payExchangeInfoHead"].update(totalAmount="0"),
     ("realtime.invalid_amount", "/payExchangeInfoHead/totalAmount")),
    (lambda p: p["payExchangeInfoHead"].update(verDept="4"), ("realtime.invalid_code", "/payExchangeInfoHead/verDept")),
    (lambda p: p["payExchangeInfoHead"].update(payType="9"), ("realtime.invalid_code", "/payExchangeInfoHead/payType")),
    (lambda p: p["payExchangeInfoHead"].update(tradingTime="2026-11-20"),
     ("realtime.invalid_time", "/payExchangeInfoHead/tradingTime")),
    (lambda p: p["payExchangeInfoHead"].update(guid="ABC"), ("realtime.unknown_field", "/payExchangeInfoHead/guid")),
    (lambda p: p["payExchangeInfoHead"].update(amount="1"), ("realtime.unknown_field", "/payExchangeInfoHead/amount")),
    (lambda p: p["payExchangeInfoHead"].update(verDept=True),
     ("realtime.invalid_type", "/payExchangeInfoHead/verDept")),
    (lambda p: p.update(extra=1), ("realtime.unknown_field", "/extra")),
    (lambda p: p.update(payExchangeInfoLists=[]), ("realtime.missing_field", "/payExchangeInfoLists")),
    (lambda p: p["payExchangeInfoLists"].append(copy.deepcopy(p["payExchangeInfoLists"][0])),
     ("realtime.duplicate_order", "/payExchangeInfoLists/1/orderNo")),
    (lambda p: p["payExchangeInfoLists"][0].pop("goodsInfo"),
     ("realtime.missing_field", "/payExchangeInfoLists/0/goodsInfo")),
    (lambda p: p["payExchangeInfoLists"][0]["goodsInfo"][0].pop("itemLink"),
     ("realtime.missing_field", "/payExchangeInfoLists/0/goodsInfo/0/itemLink")),
    (lambda p: p["payExchangeInfoLists"][0].update(recpName=""),
     ("realtime.missing_field", "/payExchangeInfoLists/0/recpName")),
])  # fmt: skip
def test_what_the_field_table_refuses_is_named_where_it_is(change: Any, expected: tuple[str, str]) -> None:
    p = sample()
    change(p)
    assert expected in codes(p)
    assert codes(sample()) == []  # the change, not the sample


def test_customs_question_is_read_or_said_what_is_wrong() -> None:
    q = realtime.open_request(json.dumps({"orderNo": "ZG2026112001", "sessionID": "abc-123",
                                          "serviceTime": 1763600000000}))  # fmt: skip
    assert q == realtime.OpenRequest("ZG2026112001", "abc-123", 1763600000000)
    assert realtime.open_request('{"orderNo":"O1","sessionID":"s","serviceTime":"1763600000000"}') == \
        realtime.OpenRequest("O1", "s", 1763600000000)  # fmt: skip
    for raw in (None, "", "{", "[]", '{"sessionID":"s","serviceTime":1}', '{"orderNo":"O","serviceTime":1}',
                '{"orderNo":"O","sessionID":"a b","serviceTime":1}', '{"orderNo":"O","sessionID":"s"}',
                '{"orderNo":"O","sessionID":"s","serviceTime":true}', '{"orderNo":"' + "9" * 61 + '","sessionID":"s",'
                '"serviceTime":1}'):  # fmt: skip
        assert isinstance(realtime.open_request(raw), str), raw


def test_the_upload_is_the_json_it_signs_and_verifies_with_the_platforms_certificate() -> None:
    data, _ = realtime.payment_data(sample())
    assert data is not None
    up = upload("s-1", data, RSA, service_time=1763600000123, guid="0f1e2d3c-0000-4000-8000-00000000abcd")
    doc = json.loads(up.body, parse_float=Decimal)
    assert list(doc) == ["sessionID", "payExchangeInfoHead", "payExchangeInfoLists", "serviceTime", "certNo",
                         "signValue"]  # fmt: skip
    assert doc["payExchangeInfoHead"]["guid"] == up.guid == "0F1E2D3C-0000-4000-8000-00000000ABCD"
    assert doc["payExchangeInfoHead"]["totalAmount"] == Decimal("199.00") and doc["serviceTime"] == "1763600000123"
    assert "婴儿配方奶粉" in up.body  # Chinese as it is, not \\u-escaped: the text signed is the text sent
    head = up.body[up.body.index('"payExchangeInfoHead":') + 22:up.body.index(',"payExchangeInfoLists"')]
    lists = up.body[up.body.index('"payExchangeInfoLists":') + 23:up.body.index(',"serviceTime"')]
    assert up.signed == (f'"sessionID":"s-1"||"payExchangeInfoHead":"{head}"||"payExchangeInfoLists":"{lists}"'
                         '||"serviceTime":"1763600000123"')  # fmt: skip
    read = realtime.read_upload(up.body)
    assert isinstance(read, realtime.ReadUpload)
    assert (read.session_id, read.guid, read.cert_no, read.signed) == ("s-1", up.guid, RSA.key_name, up.signed)
    assert read.data == data
    assert verify_bytes(RSA.certificate_der, read.signed.encode(), read.signature)
    # changed after signing: the rebuilt string no longer verifies
    tampered = realtime.read_upload(up.body.replace("199.00", "19.90"))
    assert isinstance(tampered, realtime.ReadUpload)
    assert not verify_bytes(RSA.certificate_der, tampered.signed.encode(), tampered.signature)
    assert not verify_bytes(SM2.certificate_der, read.signed.encode(), read.signature)  # another key


def test_the_spec_variant_signs_the_json_bare_and_sm2_keys_sign_too() -> None:
    data, _ = realtime.payment_data(sample())
    assert data is not None
    up = upload("s-2", data, SM2, service_time=5, variant="spec")
    assert up.signed.startswith('"sessionID":"s-2"||"payExchangeInfoHead":{"guid":')
    assert '||"payExchangeInfoList":[{"orderNo":"ZG2026112001",' in up.signed
    assert up.signed.endswith('||"serviceTime":5')
    assert json.loads(up.body)["serviceTime"] == 5
    read = realtime.read_upload(up.body, "spec")
    assert isinstance(read, realtime.ReadUpload)
    assert verify_bytes(SM2.certificate_der, read.signed.encode(), read.signature)
    quoted = realtime.read_upload(up.body)  # read as the other variant: another string
    assert isinstance(quoted, realtime.ReadUpload) and quoted.signed != up.signed


def test_an_upload_customs_cannot_read_says_why() -> None:
    data, _ = realtime.payment_data(sample())
    assert data is not None
    good = json.loads(upload("s", data, RSA, service_time=1).body)
    for change, why in ((lambda d: d.pop("certNo"), "certNo"), (lambda d: d.update(signValue="%%"), "base64"),
                        (lambda d: d["payExchangeInfoHead"].update(guid="abc"), "upper case"),
                        (lambda d: d["payExchangeInfoHead"].pop("ebpCode"), "ebpCode")):  # fmt: skip
        bad = copy.deepcopy(good)
        change(bad)
        found = realtime.read_upload(json.dumps(bad, ensure_ascii=False))
        assert isinstance(found, str) and why in found, found
    assert isinstance(realtime.read_upload("{"), str)


def test_the_sandbox_takes_an_upload_only_of_the_platform_it_asked() -> None:
    """customs asked one platform about its order: an upload of another platform's payment data for that session was
    taken (10000) as long as it listed the order."""
    from gateway.sandbox import create_sandbox_app
    from gateway.sandbox.app import SANDBOX_KEY

    sb = create_sandbox_app()[SANDBOX_KEY]
    data, _ = realtime.payment_data(sample())
    assert data is not None
    sb.realtime_sessions["S-1"] = {"ebpCode": "4601269999", "orderNo": data.order_nos[0]}  # the sessions it opened
    answer = sb.take_upload(upload("S-1", data, RSA, service_time=1).body)
    assert answer["code"] == "20000" and "customs asked 4601269999" in answer["message"], answer
    sb.realtime_sessions["S-2"] = {"ebpCode": data.ebp_code, "orderNo": data.order_nos[0]}
    assert sb.take_upload(upload("S-2", data, RSA, service_time=1).body)["code"] == "10000"


def test_customs_answer_is_its_code_and_message() -> None:
    assert realtime.customs_answer('{"code":"10000","message":"上传成功","total":0}'.encode()) == ("10000", "上传成功")
    assert realtime.customs_answer(b'{"code":20000}') == ("20000", "")
    assert realtime.customs_answer(b"<html>") is None and realtime.customs_answer(b"[1]") is None


# --- the configuration -------------------------------------------------------------------------------------------


def _platform_files(tmp_path: Path, key: tuple[bytes, bytes]) -> tuple[Path, Path]:
    (tmp_path / "platform-key.pem").write_bytes(key[0])
    (tmp_path / "platform-cert.pem").write_bytes(key[1])
    return tmp_path / "platform-key.pem", tmp_path / "platform-cert.pem"


def test_platforms_are_configured_with_a_token_and_a_key_and_need_somewhere_to_upload(tmp_path: Path) -> None:
    from gateway import config
    from gateway.configcheck import check
    from gateway.workers import effective_endpoints, platform_keys, routing_router

    key_file, cert_file = _platform_files(tmp_path, generate_test_key("rsa", "platform"))
    cfg = tmp_path / "cbec.toml"
    table = (f'[realtime.platforms.46012609BQ]\ntoken = "{"t" * 24}"\nkey_file = "{key_file}"\n'
             f'cert_file = "{cert_file}"\n')  # fmt: skip
    cfg.write_text(table, encoding="utf-8")
    s = config.load(cfg, env={})
    [p] = s.realtime.platforms
    assert (p.ebp_code, p.token, p.algorithm, s.realtime.signing_variant) == ("46012609BQ", "t" * 24, "rsa-sha1",
                                                                            "quoted")  # fmt: skip
    assert list(platform_keys(s.realtime)) == ["46012609BQ"] and p.tokens == ("t" * 24,)
    cfg.write_text(table + f'previous_token = "{"p" * 24}"\n', encoding="utf-8")
    changeover = config.load(cfg, env={})
    assert changeover.realtime.platforms[0].tokens == ("t" * 24, "p" * 24)
    assert "warn 179 questions of 46012609BQ are still taken at its previous URL (previous_token): remove it once " \
        "customs asks at the new one" in [f"{line.level} {line.text}" for line in check(changeover)]  # fmt: skip
    # the built-in sandbox takes the uploads; without platforms it plays no such endpoint
    kinds = [{e.kind for e in effective_endpoints(s.forwarding, sandbox_url="http://x", **kw)}
             for kw in ({"realtime": s.realtime}, {})]  # fmt: skip
    assert "realtime" in kinds[0] and "realtime" not in kinds[1]
    refused = {  # what the refusal says, for each
        "token must be at least 16": table.replace("t" * 24, "short"),
        "need forwarding": table + "[forwarding]\nenabled = false\n",
        "need an endpoint of kind realtime": table + '[forwarding.endpoints.customs]\nurl = "http://c/dxp"\n',
        "unknown setting": table + "colour = 1\n",
        "signing_variant must be": '[realtime]\nsigning_variant = "x"\n' + table,
        "previous_token is the token": table + f'previous_token = "{"t" * 24}"\n',
        "previous_token must be at least 16": table + 'previous_token = "old"\n',
        "share a token": table + f'previous_token = "{"p" * 24}"\n[realtime.platforms.4601269999]\n'
                                 f'token = "{"p" * 24}"\nkey_file = "{key_file}"\ncert_file = "{cert_file}"\n',
    }
    for says, text in refused.items():
        cfg.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=says):
            config.load(cfg, env={})
    cfg.write_text(table + '[forwarding.endpoints.customs]\nurl = "http://c/dxp"\n[forwarding.endpoints.realtime]\n'
                   'url = "https://customs.example/ceb2grab/grab/realTimeDataUpload"\n', encoding="utf-8")  # fmt: skip
    configured = config.load(cfg, env={})
    assert configured.forwarding.endpoints[1].kind == "realtime"
    # cbec config check says where the uploads go and with which certificate
    said = [f"{line.level} {line.text}" for line in check(s)]
    assert any(x.startswith("ok 179 payment data of 46012609BQ: signed with certificate ") for x in said), said
    assert "warn 179 uploads go to the built-in sandbox, not to customs" in said
    assert "ok forwarding: customs (customs), inspection (inspection), warehouse (warehouse), realtime (realtime), " \
           "webhook (webhook)" in said  # fmt: skip
    # the API's router knows the endpoint: the queue figures list it, idle or not
    router = routing_router(s.forwarding, s.realtime)
    assert router is not None and router.endpoint_kinds.get("realtime") == "realtime"
    assert "ok 179 uploads go to https://customs.example/ceb2grab/grab/realTimeDataUpload (quoted signing)" in [
        f"{line.level} {line.text}" for line in check(configured)]
    cert_file.write_bytes(generate_test_key("rsa", "another")[1])  # not the key's certificate
    with pytest.raises(ValueError, match="46012609BQ"):
        platform_keys(s.realtime)
    assert [line.level for line in check(s) if "179" in line.text] == ["error"]


# --- the API and the whole way, on 127.0.0.1 --------------------------------------------------------------------

TOKEN = "platform-179-token-0123456789"
PLATFORM_KEY = RsaSha1Key.from_pem(*generate_test_key("rsa", "海南跨境电商平台 179"))


def platforms(ebp_code: str = EBP_CODE) -> RealtimeSettings:
    return RealtimeSettings((RealtimePlatform(ebp_code, TOKEN, Path("unread-key.pem"), Path("unread-cert.pem")),))


def parcel(seed: int) -> samples.ShipmentSample:
    return samples.shipment(random.Random(seed))


async def ask(client: Client, order_no: str, session_id: str, token: str = TOKEN) -> tuple[int, Any]:
    open_req = json.dumps({"orderNo": order_no, "sessionID": session_id, "serviceTime": 1763600000000})
    async with client.session.post(f"{client.base}/ceb/platDataOpen/{token}", data={"openReq": open_req}) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.mark.db
async def test_a_platform_hands_its_payment_data_over_and_reads_it_back(db_pool: asyncpg.Pool) -> None:
    """Committed before the 201, replaced when handed over again (200), refused with the field table's issues (422),
    for a platform not configured (422), by a key not holding the ebpCode (403), or when an order is paid by another
    stored payment (409, nothing of it stored); read back by the platform and operators, not by strangers."""
    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    async with serving(app) as api:
        s = parcel(71)
        data = samples.payment_data(s)
        order_no = s.order_doc["orderNo"]
        r = await api.request("POST", "/v1/payment-data", json_body=data, key=PLATFORM_A)
        assert r.status == 201, r.body
        assert r.body == {"ebpCode": EBP_CODE, "payTransactionId": s.payment_doc["payTransactionId"],
                          "orderNos": [order_no], "outcome": "created"}  # fmt: skip
        data["payExchangeInfoHead"]["note"] = "补充说明"
        assert (await api.request("POST", "/v1/payment-data", json_body=data, key=PLATFORM_A)).body["outcome"] == \
            "replaced"  # fmt: skip
        stored = (await api.get(f"/v1/payment-data/{EBP_CODE}/{order_no}", key=PLATFORM_A)).body
        assert stored["payment"]["payExchangeInfoHead"]["note"] == "补充说明" and stored["questions"] == []
        assert stored["payment"]["payExchangeInfoLists"] == data["payExchangeInfoLists"]
        assert (await api.get(f"/v1/payment-data/{EBP_CODE}/{order_no}", key=OPERATOR)).body == stored
        assert (await api.get(f"/v1/payment-data/{EBP_CODE}/{order_no}", key=STRANGER)).status == 404
        assert (await api.get(f"/v1/payment-data/{EBP_CODE}/NO-SUCH-ORDER")).status == 404

        bad = copy.deepcopy(data)
        bad["payExchangeInfoHead"]["verDept"] = "9"
        r = await api.request("POST", "/v1/payment-data", json_body=bad, key=PLATFORM_A)
        assert r.status == 422 and [i["code"] for i in r.body["error"]["issues"]] == ["realtime.invalid_code"]
        assert (await api.request("POST", "/v1/payment-data", json_body=data, key=STRANGER)).status == 403
        other = samples.payment_data(parcel(72))
        other["payExchangeInfoHead"]["ebpCode"] = "4601269999"
        r = await api.request("POST", "/v1/payment-data", json_body=other)
        assert r.status == 422 and r.body["error"]["issues"][0]["code"] == "realtime.not_configured", r.body
        # a second payment naming the order: refused whole, the first keeps it
        second = samples.payment_data(parcel(73))
        second["payExchangeInfoLists"].append(copy.deepcopy(data["payExchangeInfoLists"][0]))
        r = await api.request("POST", "/v1/payment-data", json_body=second, key=PLATFORM_A)
        assert r.status == 409 and r.body["error"]["issues"][0]["code"] == "realtime.payment_of_another_order"
        assert order_no in r.body["error"]["issues"][0]["message"]
        lone = second["payExchangeInfoLists"][0]["orderNo"]
        assert (await api.get(f"/v1/payment-data/{EBP_CODE}/{lone}")).status == 404
        # the first payment lets go of the order: the second may take it
        data["payExchangeInfoLists"][0]["orderNo"] = "ZG-ANOTHER-ORDER"
        assert (await api.request("POST", "/v1/payment-data", json_body=data, key=PLATFORM_A)).status == 200
        assert (await api.request("POST", "/v1/payment-data", json_body=second, key=PLATFORM_A)).status == 201
        r = await api.request("POST", "/v1/payment-data", data=b"{", content_type="application/json")
        assert r.status == 400 and r.body["error"]["issues"][0]["code"] == "parse.invalid_json"
        r = await api.request("POST", "/v1/payment-data", data=b"<x/>", content_type="application/xml")
        assert r.status == 415
        r = await api.request("POST", "/v1/payment-data", data=b" " * (300 * 1024), content_type="application/json")
        assert r.status == 413 and r.body["error"]["issues"][0]["code"] == "parse.too_large", r.body


@pytest.mark.db
async def test_a_payment_handed_over_in_error_is_withdrawn_and_its_order_paid_by_another(db_pool: asyncpg.Pool) -> None:
    """A payment under a wrong payTransactionId (or an order paid again under another one) held its order for good:
    the right payment was a 409 saying to hand the first over again without the order, which a payment of one order
    cannot be (it lists one at least). DELETE /v1/payment-data/{ebpCode}/{orderNo} withdraws it whole; customs'
    questions stay, and the right payment takes the order."""
    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    async with serving(app) as api:
        s = parcel(77)
        order_no, right = s.order_doc["orderNo"], samples.payment_data(s)
        wrong = copy.deepcopy(right)
        wrong["payExchangeInfoHead"]["payTransactionId"] = "TYPO" + s.payment_doc["payTransactionId"][:50]
        assert (await api.request("POST", "/v1/payment-data", json_body=wrong, key=PLATFORM_A)).status == 201
        assert (await ask(api, order_no, "session-w"))[1]["code"] == "10000"
        r = await api.request("POST", "/v1/payment-data", json_body=right, key=PLATFORM_A)
        assert r.status == 409 and f"DELETE /v1/payment-data/{EBP_CODE}/{order_no}" in \
            r.body["error"]["issues"][0]["message"], r.body  # fmt: skip
        path = f"/v1/payment-data/{EBP_CODE}/{order_no}"
        assert (await api.request("DELETE", path, key=STRANGER)).status == 404
        assert (await api.request("DELETE", path, key=OPERATOR)).status == 403  # reads every payment, withdraws none
        assert (await api.request("DELETE", f"/v1/payment-data/{EBP_CODE}/NO-SUCH-ORDER")).status == 404
        r = await api.request("DELETE", path, key=PLATFORM_A)
        assert (r.status, r.body) == (200, {"ebpCode": EBP_CODE, "orderNos": [order_no], "outcome": "withdrawn",
                                            "payTransactionId": wrong["payExchangeInfoHead"]["payTransactionId"]})
        view = (await api.get(path, key=PLATFORM_A)).body
        assert view["payment"] is None and [q["sessionID"] for q in view["questions"]] == ["session-w"]
        assert (await api.request("DELETE", path, key=PLATFORM_A)).status == 404
        assert (await api.request("POST", "/v1/payment-data", json_body=right, key=PLATFORM_A)).status == 201
        view = (await api.get(path, key=PLATFORM_A)).body
        assert view["payment"]["payExchangeInfoHead"]["payTransactionId"] == s.payment_doc["payTransactionId"]


@pytest.mark.db
async def test_customs_question_is_stored_with_its_upload_before_it_is_answered(db_pool: asyncpg.Pool) -> None:
    """platDataOpen: answered 10000 once the question and its upload's job are committed; the same session asked
    again is the same question (one job), asked again about another order 20000 (it was 10000, and nothing was ever
    uploaded for that order); a question customs cannot have sent is answered 20000; an unknown token is no
    platform's URL (404)."""
    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    async with serving(app) as api:
        status, answer = await ask(api, "ZG2026112001", "session-1")
        assert status == 200 and answer["code"] == "10000" and isinstance(answer["serviceTime"], int), answer
        assert (await ask(api, "ZG2026112001", "session-1"))[1]["code"] == "10000"
        status, answer = await ask(api, "ZG2026112002", "session-1")
        assert status == 200 and answer["code"] == "20000" and "session session-1" in answer["message"], answer
        async with db_pool.acquire() as conn:
            jobs = await conn.fetch("SELECT endpoint, payload FROM jobs WHERE kind = 'realtime_upload'")
            questions = await conn.fetch("SELECT order_no, session_id, state FROM realtime_requests")
        assert [j["endpoint"] for j in jobs] == ["realtime"]
        assert [tuple(q) for q in questions] == [("ZG2026112001", "session-1", "asked")]
        status, answer = await ask(api, "ZG2026112001", "has spaces")
        assert status == 200 and answer["code"] == "20000" and "sessionID" in answer["message"], answer
        assert (await ask(api, "ZG2026112001", "session-2", token="no-such-token-0000000000"))[0] == 404
        view = (await api.get(f"/v1/payment-data/{EBP_CODE}/ZG2026112001")).body
        assert view["payment"] is None and [q["state"] for q in view["questions"]] == ["asked"]


@pytest.mark.db
async def test_a_rotated_token_keeps_the_url_before_it_answering_until_it_is_dropped(
    db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Customs approves a platform's new URL some time after it is registered: a token rotated (it leaked) made its
    questions at the old URL 404s meanwhile, lost. With previous_token both URLs answer, the log says which one
    customs used, and the previous one answers 404 once a reload drops it."""
    import structlog
    from structlog.testing import capture_logs

    from gateway import api as api_module
    from gateway.api import REALTIME

    # a logger not cached before the capture (an earlier test of the run may have had the module's log bound)
    monkeypatch.setattr(api_module, "log", structlog.get_logger("gateway.api"))

    [platform] = platforms().platforms
    rotated = RealtimeSettings((dataclasses.replace(platform, token="rotated-token-" + "9" * 16,
                                                    previous_token=TOKEN),))  # fmt: skip
    app = create_app(settings_with(realtime=rotated), db_pool, signer=sign_as_agent)
    async with serving(app) as api:
        with capture_logs() as logs:
            assert (await ask(api, "ZG2026112001", "session-old", token=TOKEN))[1]["code"] == "10000"
            assert (await ask(api, "ZG2026112001", "session-new", token="rotated-token-" + "9" * 16))[1]["code"] == \
                "10000"  # fmt: skip
        taken = [e["via"] for e in logs if e["event"] == "payment_question_taken"]
        assert taken == ["previous_token", "token"], logs
        app[REALTIME].renew(RealtimeSettings((dataclasses.replace(platform, token="rotated-token-" + "9" * 16),)))
        assert (await ask(api, "ZG2026112001", "session-late", token=TOKEN))[0] == 404
        view = (await api.get(f"/v1/payment-data/{EBP_CODE}/ZG2026112001")).body
        assert [q["sessionID"] for q in view["questions"]] == ["session-new", "session-old"]


@pytest.mark.db
async def test_customs_asks_about_an_order_and_gets_its_payment_data_signed(db_dsn: str) -> None:
    """The whole way: the platform's payment data handed over, its order declared; the sandbox (customs) asks at the
    platform's URL, the gateway answers 10000 and uploads the payment signed with the platform's key; customs
    verifies it with the certificate and answers 10000, which the question records."""
    async with running_stack(db_dsn, realtime=platforms(), platform_keys={EBP_CODE: PLATFORM_KEY}) as stack:
        s = parcel(74)
        order_no = s.order_doc["orderNo"]
        r = await stack.client.request("POST", "/v1/payment-data", json_body=samples.payment_data(s), key=PLATFORM_A)
        assert r.status == 201, r.body
        assert (await stack.submit(s.order)).status == 202

        async def uploaded() -> bool:
            view = (await stack.client.get(f"/v1/payment-data/{EBP_CODE}/{order_no}")).body
            return [q["state"] for q in view.get("questions", [])] == ["uploaded"]

        await wait_for(uploaded, what="the payment data uploaded")
        [q] = (await stack.client.get(f"/v1/payment-data/{EBP_CODE}/{order_no}")).body["questions"]
        assert q["answer"] == {"code": "10000", "message": "上传成功"} and q["upload_guid"] == q["upload_guid"].upper()
        [asked] = stack.sandbox.sandbox.realtime_questions
        assert (asked["orderNo"], asked["answer"]["code"], asked["sessionID"]) == (order_no, "10000", q["sessionID"])
        [upload] = stack.sandbox.sandbox.realtime_uploads
        assert upload["code"] == "10000" and upload["verified"] and upload["orderNos"] == [order_no]
        # the shipment's view says it, to the platform's key (not to a party that is not the platform)
        view = (await stack.client.get(f"/v1/shipments/{EBP_CODE}/{order_no}", key=PLATFORM_A)).body
        assert view["payment_data"]["payTransactionId"] == s.payment_doc["payTransactionId"]
        assert [x["state"] for x in view["payment_data"]["questions"]] == ["uploaded"]


@pytest.mark.db
async def test_a_question_before_the_payment_data_waits_for_it(db_dsn: str) -> None:
    """Customs asks before the platform handed the payment over: the upload waits in the queue (retried) and goes
    once the data comes."""
    async with running_stack(db_dsn, realtime=platforms(), platform_keys={EBP_CODE: PLATFORM_KEY}) as stack:
        s = parcel(75)
        order_no = s.order_doc["orderNo"]
        asked = await stack.sandbox.sandbox.ask_payment_data(EBP_CODE, order_no)
        assert asked["answer"]["code"] == "10000", asked

        async def attempted() -> bool:
            rows = await stack.fetch("SELECT attempts, last_error FROM jobs WHERE kind = 'realtime_upload'")
            return bool(rows) and rows[0]["attempts"] >= 2 and "no payment data" in (rows[0]["last_error"] or "")

        await wait_for(attempted, what="the upload waiting for its data")
        assert stack.sandbox.sandbox.realtime_uploads == []
        r = await stack.client.request("POST", "/v1/payment-data", json_body=samples.payment_data(s), key=PLATFORM_A)
        assert r.status == 201

        async def uploaded() -> bool:
            view = (await stack.client.get(f"/v1/payment-data/{EBP_CODE}/{order_no}")).body
            return [q["state"] for q in view.get("questions", [])] == ["uploaded"]

        await wait_for(uploaded, what="the payment data uploaded")


@pytest.mark.db
async def test_an_upload_customs_refuses_is_a_dead_letter_that_says_why(db_dsn: str) -> None:
    """Signed with a key customs does not hold for the platform: customs answers 20000; the question is refused
    with customs' reason and its job a dead letter (replayable once the key is mended), not retried."""
    wrong = RsaSha1Key.from_pem(*generate_test_key("rsa", "not the platform's key"))
    async with running_stack(db_dsn, realtime=platforms(), platform_keys={EBP_CODE: wrong}) as stack:
        stack.sandbox.config.realtime_certs = [PLATFORM_KEY.certificate_der]
        s = parcel(76)
        order_no = s.order_doc["orderNo"]
        assert (await stack.client.request("POST", "/v1/payment-data", json_body=samples.payment_data(s))).status == 201
        await stack.sandbox.sandbox.ask_payment_data(EBP_CODE, order_no)

        async def dead() -> bool:
            rows = await stack.fetch("SELECT state, attempts, last_error FROM jobs WHERE kind = 'realtime_upload'")
            return bool(rows) and rows[0]["state"] == "dead"

        await wait_for(dead, what="the refused upload a dead letter")
        [job] = await stack.fetch("SELECT attempts, last_error FROM jobs WHERE kind = 'realtime_upload'")
        assert job["attempts"] == 1 and "20000" in job["last_error"] and "certNo" in job["last_error"], dict(job)
        [q] = (await stack.client.get(f"/v1/payment-data/{EBP_CODE}/{order_no}")).body["questions"]
        assert q["state"] == "refused" and q["answer"]["code"] == "20000" and "certNo" in q["answer"]["message"]


@pytest.mark.db
async def test_operators_see_customs_questions_and_what_became_of_each_upload(db_pool: asyncpg.Pool) -> None:
    """GET /v1/payment-data/questions: the questions not uploaded by default (asked, refused), newest first, each
    with whether its payment was handed over and its upload's job; by state, page by page; a platform's key its own
    platforms' only. /metrics counts them: waiting (with the longest wait), given up, refused."""
    from gateway.store import record_payment_upload
    from tests.test_metrics import scrape, value

    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    async with serving(app) as api:
        orders = {}
        for name, seed in (("waiting", 91), ("refused", 92), ("uploaded", 93)):
            s = parcel(seed)
            orders[name] = s.order_doc["orderNo"]
            if name != "waiting":
                assert (await api.request("POST", "/v1/payment-data", json_body=samples.payment_data(s))).status == 201
            assert (await ask(api, orders[name], f"session-{name}"))[1]["code"] == "10000"
        async with db_pool.acquire() as conn:
            ids = dict(await conn.fetch("SELECT order_no, id FROM realtime_requests"))
        await record_payment_upload(db_pool, ids[orders["refused"]], state="refused", guid="G-1",
                                    answer={"code": "20000", "message": "certNo 不存在"})  # fmt: skip
        await record_payment_upload(db_pool, ids[orders["uploaded"]], state="uploaded", guid="G-2",
                                    answer={"code": "10000", "message": "上传成功"})  # fmt: skip

        page = (await api.get("/v1/payment-data/questions", key=OPERATOR)).body
        assert [(q["orderNo"], q["state"]) for q in page["items"]] == [
            (orders["refused"], "refused"), (orders["waiting"], "asked")]  # fmt: skip
        refused, waiting = page["items"]
        assert refused["answer"] == {"code": "20000", "message": "certNo 不存在"} and refused["handed_over"]
        assert refused["answered_at"] is not None and refused["uploaded_at"] is None
        assert not waiting["handed_over"] and waiting["sessionID"] == "session-waiting"
        assert waiting["job"]["state"] == "queued" and waiting["ebpCode"] == EBP_CODE and page["next_cursor"] is None
        every = (await api.get("/v1/payment-data/questions?state=any")).body["items"]
        assert [q["state"] for q in every] == ["uploaded", "refused", "asked"]
        assert every[0]["uploaded_at"] is not None and every[0]["upload_guid"] == "G-2"
        for state in ("asked", "refused", "uploaded"):
            only = (await api.get(f"/v1/payment-data/questions?state={state}")).body["items"]
            assert [q["orderNo"] for q in only] == [orders[{"asked": "waiting"}.get(state, state)]], state
        first = (await api.get("/v1/payment-data/questions?state=any&limit=2")).body
        rest = (await api.get(f"/v1/payment-data/questions?state=any&limit=2&cursor={first['next_cursor']}")).body
        assert [q["id"] for q in first["items"] + rest["items"]] == [q["id"] for q in every]
        assert rest["next_cursor"] is None
        # a platform's key sees its platforms' questions; a stranger's none; an operator may name one platform
        assert (await api.get("/v1/payment-data/questions?state=any", key=PLATFORM_A)).body["items"] == every
        assert (await api.get("/v1/payment-data/questions?state=any", key=STRANGER)).body["items"] == []
        assert (await api.get(f"/v1/payment-data/questions?state=any&ebpCode={EBP_CODE}", key=STRANGER)).body[
            "items"] == []  # fmt: skip
        assert (await api.get("/v1/payment-data/questions?ebpCode=4601269999")).body["items"] == []
        for bad in ("state=lost", "cursor=x", "limit=many"):
            r = await api.get(f"/v1/payment-data/questions?{bad}")
            assert r.status == 400 and "bad query parameter" in r.body["error"]["title"], (bad, r.body)
        assert (await api.get("/v1/payment-data/questions", key=None)).status == 401

        figures, _ = await scrape(api.base, {"X-API-Key": OPERATOR})
        assert [value(figures, "cbec_payment_data_questions", state=s) for s in ("waiting", "given_up", "refused")] \
            == [1, 0, 1]  # fmt: skip
        assert value(figures, "cbec_payment_data_question_oldest_wait_seconds") > 0
        # the waiting one's upload gave up (a dead letter): no longer waiting, and the list says why
        async with db_pool.acquire() as conn:
            await conn.execute("UPDATE jobs SET state = 'dead', dead_reason = 'max_attempts', finished_at = now(),"
                               " last_error = 'no payment data of order yet' WHERE id = $1", waiting["job"]["id"])
        figures, _ = await scrape(api.base, {"X-API-Key": OPERATOR})
        assert [value(figures, "cbec_payment_data_questions", state=s) for s in ("waiting", "given_up", "refused")] \
            == [0, 1, 1]  # fmt: skip
        assert value(figures, "cbec_payment_data_question_oldest_wait_seconds") == 0
        [gave_up] = (await api.get("/v1/payment-data/questions?state=asked")).body["items"]
        assert gave_up["job"]["state"] == "dead" and "no payment data" in gave_up["job"]["last_error"]


@pytest.mark.db
async def test_an_operator_closes_a_question_that_can_never_be_answered(
    db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /v1/payment-data/questions/{id}/close, with a short reason: the question leaves the open list and
    cbec_payment_data_questions (the alerts' figures), is listed as closed with who closed it, when and why, and its
    upload's job is made to run once more now — a queued one hastened, a dead letter replayed (its history saying who
    closed it and why) — to end uploading nothing. Refused for a question uploaded, closed already, or whose upload a
    worker is sending now; for an unknown one; for a bad reason; for a platform's key."""
    import structlog
    from structlog.testing import capture_logs

    from gateway import store
    from gateway.store import record_payment_upload
    from tests import apiutil
    from tests.test_metrics import scrape, value

    monkeypatch.setattr(store, "log", structlog.get_logger("gateway.store"))
    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    async with serving(app) as api:
        orders = {}
        for name, seed in (("waiting", 101), ("refused", 102), ("uploaded", 103), ("sending", 104)):
            s = parcel(seed)
            orders[name] = s.order_doc["orderNo"]
            if name in ("refused", "uploaded"):
                assert (await api.request("POST", "/v1/payment-data", json_body=samples.payment_data(s))).status == 201
            assert (await ask(api, orders[name], f"session-{name}"))[1]["code"] == "10000"
        async with db_pool.acquire() as conn:
            ids = dict(await conn.fetch("SELECT order_no, id FROM realtime_requests"))
            jobs = dict(await conn.fetch("SELECT id, job_id FROM realtime_requests"))
            await conn.execute("UPDATE jobs SET attempts = 3, run_after = now() + interval '5 minutes',"
                               " last_error = 'no payment data yet' WHERE id = $1",
                               jobs[ids[orders["waiting"]]])  # fmt: skip
            await conn.execute("UPDATE jobs SET state = 'dead', dead_reason = 'permanent', finished_at = now(),"
                               " last_error = 'RealtimeRefused: 20000' WHERE id = $1",
                               jobs[ids[orders["refused"]]])  # fmt: skip
            await conn.execute("UPDATE jobs SET state = 'running', locked_by = 'w-1', attempts = 1,"
                               " lease_until = now() + interval '1 minute' WHERE id = $1",
                               jobs[ids[orders["sending"]]])  # fmt: skip
        await record_payment_upload(db_pool, ids[orders["refused"]], state="refused", guid="G-1",
                                    answer={"code": "20000", "message": "订单不存在"})  # fmt: skip
        await record_payment_upload(db_pool, ids[orders["uploaded"]], state="uploaded", guid="G-2",
                                    answer={"code": "10000", "message": "上传成功"})  # fmt: skip

        async def close(name: str, reason: Any = "customs asked about an order of another platform",
                        key: str = OPERATOR) -> Any:  # fmt: skip
            question = ids[orders[name]] if name in orders else name
            return await api.request("POST", f"/v1/payment-data/questions/{question}/close", key=key,
                                     json_body=reason if isinstance(reason, dict) else {"reason": reason})

        async def listed(state: str) -> list[str]:
            reply = await api.get(f"/v1/payment-data/questions?state={state}", key=OPERATOR)
            assert reply.status == 200, reply.body
            apiutil.openapi_check(reply.body, "PaymentQuestionPage")
            return [q["orderNo"] for q in reply.body["items"]]

        async def figures() -> list[float]:
            found, _ = await scrape(api.base, {"X-API-Key": OPERATOR})
            return [value(found, "cbec_payment_data_questions", state=s) for s in ("waiting", "given_up", "refused")]

        assert await figures() == [2, 0, 1]  # waiting: the one waiting for its data, the one being sent
        for bad in ({"reason": ""}, {}, {"reason": "x" * 201}):
            assert (await close("waiting", bad)).status == 400
        assert (await close("waiting", key=PLATFORM_A)).status == 403  # the platform's own key closes nothing
        assert (await close("987654321")).status == 404 and (await close("x")).status == 404
        uploaded = await close("uploaded")
        assert uploaded.status == 409 and "was answered" in uploaded.body["error"]["title"], uploaded.body
        sending = await close("sending")
        assert sending.status == 409 and "being sent now" in sending.body["error"]["title"], sending.body
        assert await listed("closed") == [] and await figures() == [2, 0, 1]  # nothing above closed any

        with capture_logs() as logged:
            waiting = await close("waiting")
            refused = await close("refused", "  a test order customs' system made up  ", key="admin-key-000000000000")
        assert waiting.status == 200 and refused.status == 200, (waiting.body, refused.body)
        apiutil.openapi_check(waiting.body, "PaymentQuestion")
        assert (waiting.body["closed_by"], waiting.body["close_reason"], waiting.body["state"]) == (
            "operator", "customs asked about an order of another platform", "asked")
        assert (refused.body["closed_by"], refused.body["close_reason"], refused.body["state"]) == (
            "admin", "a test order customs' system made up", "refused")
        assert refused.body["answer"] == {"code": "20000", "message": "订单不存在"} and refused.body["closed_at"]
        assert [e["question_id"] for e in logged if e["event"] == "payment_question_closed"] == [
            ids[orders["waiting"]], ids[orders["refused"]]]
        again = await close("waiting", key="admin-key-000000000000")
        assert again.status == 409 and "by operator" in again.body["error"]["title"], again.body

        assert await listed("open") == [orders["sending"]]
        assert await listed("closed") == [orders["refused"], orders["waiting"]]
        assert await listed("asked") == [orders["sending"], orders["waiting"]]  # the upload's state, closed or not
        assert len(await listed("any")) == 4
        assert await figures() == [1, 0, 0]
        async with db_pool.acquire() as conn:
            now = {r["id"]: r for r in await conn.fetch(
                "SELECT id, state, attempts, run_after <= now() AS due FROM jobs")}  # fmt: skip
            marker = await conn.fetchval("SELECT error FROM job_attempts WHERE job_id = $1 AND outcome = 'replayed'",
                                         jobs[ids[orders["refused"]]])  # fmt: skip
        # each job runs once more now, to find its question closed (the worker's part: the next test)
        assert (now[jobs[ids[orders["waiting"]]]]["state"], now[jobs[ids[orders["waiting"]]]]["due"]) == (
            "queued", True)
        assert (now[jobs[ids[orders["refused"]]]]["state"], now[jobs[ids[orders["refused"]]]]["attempts"]) == (
            "queued", 0)
        assert marker == "question closed by admin: a test order customs' system made up"
        assert now[jobs[ids[orders["sending"]]]]["state"] == "running"


@pytest.mark.db
async def test_a_closed_questions_upload_ends_uploading_nothing(db_dsn: str) -> None:
    """Customs asks about an order whose payment the platform will never hand over; an operator closes the question.
    Its upload, waiting in the queue for the data, runs once more and ends done — nothing sent to customs — and the
    payment handed over afterwards sends nothing either: the question was closed."""
    async with running_stack(db_dsn, realtime=platforms(), platform_keys={EBP_CODE: PLATFORM_KEY}) as stack:
        s = parcel(77)
        order_no = s.order_doc["orderNo"]
        assert (await stack.sandbox.sandbox.ask_payment_data(EBP_CODE, order_no))["answer"]["code"] == "10000"

        async def attempted() -> bool:
            rows = await stack.fetch("SELECT attempts FROM jobs WHERE kind = 'realtime_upload'")
            return bool(rows) and rows[0]["attempts"] >= 1

        await wait_for(attempted, what="the upload waiting for its data")
        [question] = (await stack.client.get("/v1/payment-data/questions", key=OPERATOR)).body["items"]

        async def closed() -> bool:  # refused only while a retry is being sent: tried again then
            r = await stack.client.request("POST", f"/v1/payment-data/questions/{question['id']}/close",
                                           key=OPERATOR, json_body={"reason": "an order of a test shop, never paid"})
            assert r.status == 200 or "being sent now" in r.body["error"]["title"], r.body
            return r.status == 200

        await wait_for(closed, what="the question closed")

        async def done() -> bool:
            rows = await stack.fetch("SELECT state FROM jobs WHERE kind = 'realtime_upload'")
            return [r["state"] for r in rows] == ["done"]

        await wait_for(done, what="the closed question's upload ended")
        r = await stack.client.request("POST", "/v1/payment-data", json_body=samples.payment_data(s), key=PLATFORM_A)
        assert r.status == 201
        [job] = await stack.fetch("SELECT state FROM jobs WHERE kind = 'realtime_upload'")
        assert job["state"] == "done" and stack.sandbox.sandbox.realtime_uploads == []
        [q] = (await stack.client.get(f"/v1/payment-data/{EBP_CODE}/{order_no}")).body["questions"]
        assert q["state"] == "asked" and q["upload_guid"] is None


@pytest.mark.db
async def test_payment_data_that_comes_after_the_question_sends_its_upload_at_once(db_pool: asyncpg.Pool) -> None:
    """Customs asked about two orders before their payment came: one upload waits for its next try (minutes away), the
    other gave up waiting (a dead letter). The payment handed over, the first is due now and the second queued again
    (its history says why); a question already uploaded is left alone."""
    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    async with serving(app) as api:
        s = parcel(94)
        data = samples.payment_data(s)
        retrying, given_up = s.order_doc["orderNo"], "ZG-SECOND-ORDER-OF-THE-PAYMENT"
        data["payExchangeInfoLists"].append({**copy.deepcopy(data["payExchangeInfoLists"][0]), "orderNo": given_up})
        for order_no in (retrying, given_up):
            assert (await ask(api, order_no, f"session-{order_no}"))[1]["code"] == "10000"
        async with db_pool.acquire() as conn:
            jobs = dict(await conn.fetch("SELECT order_no, job_id FROM realtime_requests"))
            await conn.execute("UPDATE jobs SET attempts = 6, run_after = now() + interval '5 minutes' WHERE id = $1",
                               jobs[retrying])  # fmt: skip
            await conn.execute("UPDATE jobs SET state = 'dead', attempts = 10, dead_reason = 'max_attempts',"
                               " finished_at = now() WHERE id = $1", jobs[given_up])  # fmt: skip
        assert (await api.request("POST", "/v1/payment-data", json_body=data)).status == 201
        async with db_pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, state, attempts, run_after <= now() AS due FROM jobs")
            now = {r["id"]: r for r in rows}
            marker = await conn.fetchval("SELECT error FROM job_attempts WHERE job_id = $1 AND outcome = 'replayed'",
                                         jobs[given_up])  # fmt: skip
        assert (now[jobs[retrying]]["state"], now[jobs[retrying]]["attempts"], now[jobs[retrying]]["due"]) == \
            ("queued", 6, True)  # fmt: skip
        assert (now[jobs[given_up]]["state"], now[jobs[given_up]]["attempts"], now[jobs[given_up]]["due"]) == \
            ("queued", 0, True)  # fmt: skip
        assert marker == "the payment data came from admin"


@pytest.mark.db
async def test_questions_asked_before_their_jobs_were_noted_find_them(db_pool: asyncpg.Pool) -> None:
    """Migration 380 on questions stored before it: each finds its upload's job by the key it was enqueued under, and
    an answered one its answer's time."""
    from gateway import db
    from gateway.store import record_payment_upload

    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    async with serving(app) as api:
        for session in ("s-old-1", "s-old-2"):
            assert (await ask(api, f"ZG-{session}", session))[1]["code"] == "10000"
    async with db_pool.acquire() as conn:
        noted = dict(await conn.fetch("SELECT session_id, job_id FROM realtime_requests"))
        first = await conn.fetchval("SELECT id FROM realtime_requests WHERE session_id = 's-old-1'")
        await record_payment_upload(db_pool, first, state="refused", guid="G", answer={"code": "20000"})
        await conn.execute("UPDATE realtime_requests SET job_id = NULL, answered_at = NULL")
        await conn.execute(dict(db.migration_files())["380_realtime_questions_watched.sql"])
        again = {r["session_id"]: r for r in await conn.fetch("SELECT * FROM realtime_requests")}
    assert {k: r["job_id"] for k, r in again.items()} == noted and None not in noted.values()
    assert again["s-old-1"]["answered_at"] is not None and again["s-old-2"]["answered_at"] is None


@pytest.mark.db
async def test_the_payment_data_statements_probe_indexes(db_pool: asyncpg.Pool) -> None:
    """Customs asks about one order among millions: every statement of the 179 data reads by an index."""
    from gateway import db
    from tests.planutil import full_scans

    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    async with serving(app) as api:
        for seed in range(81, 86):
            r = await api.request("POST", "/v1/payment-data", json_body=samples.payment_data(parcel(seed)))
            assert r.status == 201, r.body
            await ask(api, parcel(seed).order_doc["orderNo"], f"session-{seed}")
    async with db_pool.acquire() as conn:
        for table in ("payment_data", "payment_orders", "realtime_requests"):
            await conn.execute(f"ANALYZE {table}")
        found = await full_scans(conn, begin=db.BEGIN_PLANNED, module=realtime,
                                 cases={"PAYMENT_OF_ORDER": f"'{EBP_CODE}', 'O1'", "QUESTIONS_OF_ORDER":
                                        f"'{EBP_CODE}', 'O1'", "UPLOAD_INPUT": "1", "ASKED": f"'{EBP_CODE}', 's'",
                                        "DROP_ORDERS": "1, ARRAY['O1']", "ANSWERED": "1, 'uploaded', 'G', '{}'",
                                        "WAITING_UPLOADS": f"'{EBP_CODE}', ARRAY['O1']",
                                        "QUESTION_JOB": "1, 1", "QUESTIONS": "100, 20, NULL, NULL",
                                        "OPEN_QUESTIONS": f"100, 20, 'refused', ARRAY['{EBP_CODE}']",
                                        "CLOSED_QUESTIONS": "100, 20, NULL, NULL", "QUESTION_TO_CLOSE": "1",
                                        "JOB_TO_CLOSE": "1", "CLOSE_QUESTION": "1, 'operator', 'why'"})
    assert found == {}


@pytest.mark.db
async def test_payment_data_and_questions_go_after_their_retention(db_pool: asyncpg.Pool) -> None:
    """realtime.payment_data_retention_days: a payment last handed over longer ago goes with its orders, a question
    asked longer ago goes; the newer stay, and so does an old payment customs asked about within the retention while
    the question is open (its upload needs it; closed by an operator, it does not). The retention's loop does it,
    and keeps everything with 0 days. Each statement reads by an index."""
    from gateway import db, store
    from gateway.workers import run_retention
    from tests.planutil import full_scans

    app = create_app(settings_with(realtime=platforms()), db_pool, signer=sign_as_agent)
    orders = [parcel(seed).order_doc["orderNo"] for seed in range(91, 95)]
    async with serving(app) as api:
        for seed in range(91, 95):
            r = await api.request("POST", "/v1/payment-data", json_body=samples.payment_data(parcel(seed)))
            assert r.status == 201, r.body
        for order_no, session in ((orders[0], "old"), (orders[1], "recent-open"), (orders[2], "recent-closed")):
            assert (await ask(api, order_no, session))[1]["code"] == "10000"
        closed = await db_pool.fetchval("SELECT id FROM realtime_requests WHERE session_id = 'recent-closed'")
        r = await api.request("POST", f"/v1/payment-data/questions/{closed}/close", key=OPERATOR,
                              json_body={"reason": "an order the platform never paid"})  # fmt: skip
        assert r.status == 200, r.body
    old = "now() - make_interval(days => 1200)"
    await db_pool.execute(f"UPDATE payment_data SET updated_at = {old}, received_at = {old} "
                          "WHERE id IN (SELECT payment_id FROM payment_orders WHERE order_no = ANY($1))",
                          orders[:3])  # fmt: skip
    await db_pool.execute(f"UPDATE realtime_requests SET received_at = {old} WHERE session_id = 'old'")
    settings = settings_with(realtime=platforms())
    stop = asyncio.Event()
    await run_retention(db_pool, dataclasses.replace(
        settings, rejection_retention_days=0,
        realtime=dataclasses.replace(settings.realtime, payment_data_retention_days=0)), stop)  # returns at once
    assert await db_pool.fetchval("SELECT count(*) FROM payment_data") == 4
    loop = asyncio.create_task(run_retention(db_pool, settings, stop, interval_s=0.05))
    for _ in range(100):
        if await db_pool.fetchval("SELECT count(*) FROM payment_data") == 2:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(loop, 5)
    kept = await db_pool.fetch("SELECT order_no FROM payment_orders ORDER BY order_no")
    assert sorted(r["order_no"] for r in kept) == sorted(orders[1:2] + orders[3:])  # asked about, and recent
    questions = await db_pool.fetch("SELECT session_id FROM realtime_requests ORDER BY id")
    assert [q["session_id"] for q in questions] == ["recent-open", "recent-closed"]  # closed: its payment goes
    assert await store.prune_payment_data(db_pool, older_than_s=1095 * 86400) == (0, 0)
    async with db_pool.acquire() as conn:
        for table in ("payment_data", "payment_orders", "realtime_requests"):
            await conn.execute(f"ANALYZE {table}")
        found = await full_scans(conn, begin=db.BEGIN_PLANNED, module=store, cases={
            "PRUNE_PAYMENT_DATA": "86400, 100", "PRUNE_PAYMENT_QUESTIONS": "86400, 100"})
    assert found == {}
