"""Outbound adapters: failure classification against the real sandbox over HTTP, signing before wrapping,
the outbox/inbox folder convention, seller webhook signatures, inspection and warehouse payloads."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import threading
import time
import traceback
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import cbec_queue
import pytest
import pytest_asyncio
from aiohttp import web
from lxml import etree
from structlog.testing import capture_logs

from adapters import customs as customs_module
from adapters import dxp, warehouse
from adapters.base import (
    Adapter,
    AdapterTimeouts,
    HttpReply,
    PermanentError,
    TransientError,
    classify_dxp_code,
    classify_status,
    parse_retry_after,
    queue_handler,
    response_code,
)
from adapters.customs import CustomsAdapter, CustomsConfig, atomic_write, poll_inbox, prepare
from adapters.inspection import InspectionAdapter, InspectionConfig
from adapters.warehouse import WarehouseAdapter, WarehouseConfig, parse_callback
from adapters.webhook import (
    PublicResolver,
    SellerUnreachable,
    WebhookAdapter,
    WebhookEndpoint,
    allowed_networks,
    refused_address,
    sign_body,
    verify_signature,
)
from gateway.messages import CEB_NS, DS_NS
from gateway.sandbox import RunningSandbox
from gateway.sandbox.recorder import Recorder, start_recorder

pytest_plugins = ["gateway.sandbox.pytest_plugin"]

signing = pytest.importorskip("gateway.signing", reason="gateway.signing is needed to sign CEB621 samples")
samples = pytest.importorskip("gateway.samples", reason="gateway.samples provides the shipments")

SENDER = "DXPENT0000458763"
NOW = datetime(2026, 11, 20, 10, 0, 0)
C = f"{{{CEB_NS}}}"


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    key_pem, cert_pem = signing.generate_test_key("rsa", "adapter test")
    return signing.RsaSha1Key.from_pem(key_pem, cert_pem)


def legs(key: Any | None, *, order_no: str | None = None, seed: int = 1, **kw: Any) -> dict[str, bytes]:
    s = samples.shipment(random.Random(seed), order_no=order_no, now=NOW, **kw)
    signer = (lambda root: signing.sign(root, key)) if key is not None else None
    return samples.render_shipment(s, signer=signer)


def job(xml: bytes, key: str = "job-1", **extra: Any) -> dict[str, Any]:
    return {"message": xml.decode("utf-8"), "dedupe_key": key, **extra}


def customs(url: str, **kw: Any) -> CustomsAdapter:
    kw.setdefault("timeouts", AdapterTimeouts(total=2.0, connect=1.0, sock_read=2.0))
    return CustomsAdapter(CustomsConfig(sender_id=SENDER, url=url, **kw))


@pytest_asyncio.fixture
async def adapter(customs_sandbox: str) -> AsyncIterator[CustomsAdapter]:
    a = customs(customs_sandbox + "/dxp")
    async with a:
        yield a


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- classification, pure ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, None), (201, None), (204, None), (500, TransientError), (502, TransientError), (503, TransientError),
     (504, TransientError), (429, TransientError), (408, TransientError), (400, PermanentError),
     (401, PermanentError), (403, PermanentError), (404, PermanentError), (409, PermanentError),
     (410, PermanentError), (422, PermanentError), (301, PermanentError), (302, PermanentError)],
)  # fmt: skip
def test_classify_status(status: int, expected: type[Exception] | None) -> None:
    if expected is None:
        classify_status(status, what="x")
    else:
        with pytest.raises(expected):
            classify_status(status, what="x", body=b"reason")


def test_retry_after_is_passed_to_the_queue() -> None:
    with pytest.raises(TransientError) as exc:
        classify_status(429, what="x", retry_after="7")
    assert exc.value.retry_after_s == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("code", "verdict"),
    [("0000", None), ("0", None), ("", None), ("0001", "permanent"), ("0002", "permanent"), ("1001", "permanent"),
     ("1004", "permanent"), ("2001", "permanent"), ("3001", "transient"), ("3003", "transient"),
     ("3999", "transient"), ("4001", "permanent")],
)  # fmt: skip
def test_classify_dxp_code(code: str, verdict: str | None) -> None:
    assert classify_dxp_code(code) == verdict


def test_response_code_reads_json_and_dxprep() -> None:
    assert response_code(HttpReply(200, {}, b'{"code": "0002", "reason": "schema"}')) == ("0002", "schema")
    rep = (
        b'<?xml version="1.0" encoding="UTF-8"?><dxp:DxpRep xmlns:dxp="http://www.chinaport.gov.cn/dxp" ver="1.0">'
        b"<dxp:RecevierId>DXPENT0000458763</dxp:RecevierId><dxp:Response><dxp:ResponseCode>1001</dxp:ResponseCode>"
        b"<dxp:ResponseInfo>bad signature</dxp:ResponseInfo></dxp:Response></dxp:DxpRep>"
    )
    assert response_code(HttpReply(200, {}, rep)) == ("1001", "bad signature")
    assert response_code(HttpReply(200, {}, b"ok")) is None


def test_errors_are_the_queues() -> None:
    from cbec_queue.errors import QueueError

    assert issubclass(TransientError, QueueError) and issubclass(PermanentError, QueueError)


def test_adapters_implement_the_protocol() -> None:
    assert isinstance(customs("http://127.0.0.1:1/dxp"), Adapter)
    assert isinstance(WebhookAdapter({}), Adapter)
    assert isinstance(InspectionAdapter(InspectionConfig(url="http://127.0.0.1:1/")), Adapter)
    assert isinstance(WarehouseAdapter(WarehouseConfig(url="http://127.0.0.1:1/", warehouse_code="W")), Adapter)


# --- customs adapter against the sandbox -----------------------------------------------------------------


async def test_delivery_reports_the_stable_cop_msg_id(
    adapter: CustomsAdapter, customs_sandbox_local: RunningSandbox, rsa_key: Any
) -> None:
    xml = legs(rsa_key)["CEB311"]
    result = await adapter.send(job(xml, "order-1"))
    assert result.reference == dxp.cop_msg_id_for("order-1")
    assert result.status == 200 and result.detail["ack"]["code"] == "0000"
    assert customs_sandbox_local.stats()["by_cop_msg_id"] == {result.reference: 1}


async def test_fail5xx_is_transient(adapter: CustomsAdapter, rsa_key: Any) -> None:
    with pytest.raises(TransientError, match="503"):
        await adapter.send(job(legs(rsa_key, order_no="FAIL5XX-1")["CEB311"]))


async def test_poison_is_permanent(adapter: CustomsAdapter, rsa_key: Any) -> None:
    with pytest.raises(PermanentError, match="400"):
        await adapter.send(job(legs(rsa_key, order_no="POISON-1")["CEB311"]))


async def test_timeout_is_transient(customs_sandbox: str, rsa_key: Any) -> None:
    a = customs(customs_sandbox + "/dxp", timeouts=AdapterTimeouts(total=0.3, connect=0.3, sock_read=0.3))
    started = time.monotonic()
    async with a:
        with pytest.raises(TransientError, match="timed out"):
            await a.send(job(legs(rsa_key, order_no="TIMEOUT-1")["CEB311"]))
    assert time.monotonic() - started < 2


async def test_connection_refused_is_transient(rsa_key: Any) -> None:
    async with customs(f"http://127.0.0.1:{free_port()}/dxp") as a:
        with pytest.raises(TransientError):
            await a.send(job(legs(rsa_key)["CEB311"]))


async def test_invalid_url_and_unknown_receiver_are_permanent(customs_sandbox: str, rsa_key: Any) -> None:
    xml = legs(rsa_key)["CEB311"]
    async with customs("not a url") as a:
        with pytest.raises(PermanentError):
            await a.send(job(xml))
    async with customs(customs_sandbox + "/dxp", import_receiver_id="DXPENT9999999999") as a:
        with pytest.raises(PermanentError, match="2001"):
            await a.send(job(xml))
    # a relay's credentials in a URL with a mistyped scheme: permanent, and quoted nowhere (logs, jobs, the API)
    async with customs("htps://relayuser:RelayPassw0rd@127.0.0.1:9/dxp") as a:
        with pytest.raises(PermanentError) as refused:
            await a.send(job(xml))
    shown = "".join(traceback.format_exception(refused.value))
    assert "RelayPassw0rd" not in shown and "relayuser" not in shown
    async with customs(f"http://relayuser:RelayPassw0rd@127.0.0.1:{free_port()}/dxp") as a:
        with pytest.raises(TransientError) as refused_conn:
            await a.send(job(xml))
    assert "RelayPassw0rd" not in "".join(traceback.format_exception(refused_conn.value))


async def test_flaky_retries_deliver_exactly_once(
    adapter: CustomsAdapter, customs_sandbox_local: RunningSandbox, rsa_key: Any
) -> None:
    payload = job(legs(rsa_key, order_no="FLAKY-1")["CEB311"], "flaky-order")
    outcomes: list[str] = []
    for _ in range(5):  # what the queue does: retry on TransientError, stop on success
        try:
            result = await adapter.send(payload)
        except TransientError:
            outcomes.append("transient")
            continue
        outcomes.append("ok")
        break
    assert outcomes == ["transient", "transient", "ok"]
    cop = dxp.cop_msg_id_for("flaky-order")
    stats = customs_sandbox_local.stats()
    assert stats["attempts_by_cop_msg_id"] == {cop: 3}  # every retry carried the same CopMsgId
    assert stats["by_cop_msg_id"] == {cop: 1} and stats["duplicates"] == {}
    assert result.reference == cop


@pytest_asyncio.fixture
async def odd_server() -> AsyncIterator[str]:
    """Answers the customs adapter the ways the sandbox does not: 429, redirects, DXP codes in a 200."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        kind = request.match_info["kind"]
        if kind == "r429":
            return web.Response(status=429, headers={"Retry-After": "7"})
        if kind == "r302":
            raise web.HTTPFound("/elsewhere")
        if kind == "dxprep":
            body = (
                '<?xml version="1.0"?><dxp:DxpRep xmlns:dxp="http://www.chinaport.gov.cn/dxp" ver="1.0">'
                "<dxp:RecevierId>X</dxp:RecevierId><dxp:Response><dxp:ResponseCode>0002</dxp:ResponseCode>"
                "</dxp:Response></dxp:DxpRep>"
            )
            return web.Response(text=body, content_type="application/xml")
        return web.json_response({"code": kind, "reason": "as asked"})

    app = web.Application()
    app.router.add_post("/{kind}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("kind", "expected", "match"),
    [("r429", TransientError, "429"), ("r302", PermanentError, "302"), ("dxprep", PermanentError, "0002"),
     ("1001", PermanentError, "1001"), ("3001", TransientError, "3001")],
)  # fmt: skip
async def test_other_answers(
    odd_server: str, rsa_key: Any, kind: str, expected: type[Exception], match: str
) -> None:
    async with customs(f"{odd_server}/{kind}") as a:
        with pytest.raises(expected, match=match) as exc:
            await a.send(job(legs(rsa_key)["CEB311"]))
    if kind == "r429":
        assert exc.value.retry_after_s == 7.0  # type: ignore[attr-defined]


async def test_ok_code_in_reply_is_success(odd_server: str, rsa_key: Any) -> None:
    async with customs(f"{odd_server}/0000") as a:
        assert (await a.send(job(legs(rsa_key)["CEB311"]))).status == 200


# --- payloads and signing --------------------------------------------------------------------------------


def test_each_flow_goes_to_its_own_receiver_and_an_override_is_one_flows() -> None:
    export = samples.render_export_shipment(samples.export_shipment(random.Random(3), mode="9610"))["CEB303"]
    imported = legs(None)["CEB311"]

    def receiver(xml: bytes, **kw: str) -> tuple[str, ...]:
        return dxp.unwrap(prepare(job(xml), CustomsConfig(sender_id=SENDER, **kw)).envelope).receiver_ids

    assert receiver(imported) == (dxp.IMPORT_RECEIVER,) and receiver(export) == (dxp.EXPORT_RECEIVER,)
    # a relay's id for the import system leaves the export messages to the export system, and the reverse
    assert receiver(imported, import_receiver_id="DXPENT0000000009") == ("DXPENT0000000009",)
    assert receiver(export, import_receiver_id="DXPENT0000000009") == (dxp.EXPORT_RECEIVER,)
    assert receiver(export, export_receiver_id="DXPENT0000000008") == ("DXPENT0000000008",)
    assert receiver(imported, export_receiver_id="DXPENT0000000008") == (dxp.IMPORT_RECEIVER,)


def test_prepare_signs_unsigned_messages_before_wrapping(rsa_key: Any) -> None:
    unsigned = legs(None)["CEB311"]
    prep = prepare(job(unsigned), CustomsConfig(sender_id=SENDER, signer=rsa_key))
    assert prep.signed_here
    env = dxp.unwrap(prep.envelope)
    assert env.data == prep.ceb != unsigned
    assert etree.fromstring(env.data).find(f"{{{DS_NS}}}Signature") is not None
    assert signing.verify(env.data).ok
    assert env.receiver_ids == (dxp.IMPORT_RECEIVER,) and env.msg_type == "CEB311Message"
    # the guid is untouched and a second attempt carries the same identity
    again = prepare(job(unsigned), CustomsConfig(sender_id=SENDER, signer=rsa_key))
    assert (again.cop_msg_id, again.guid) == (prep.cop_msg_id, prep.guid)
    assert prep.guid == etree.fromstring(unsigned).get("guid")


def test_prepare_leaves_signed_messages_alone(rsa_key: Any) -> None:
    signed = legs(rsa_key)["CEB621"]
    prep = prepare(job(signed), CustomsConfig(sender_id=SENDER, signer=rsa_key))
    assert not prep.signed_here and prep.ceb == signed
    plain = legs(None)["CEB311"]
    assert prepare(job(plain), CustomsConfig(sender_id=SENDER)).ceb == plain  # no signer: as is


def test_prepare_takes_the_stored_type_and_guid_when_nothing_is_signed(rsa_key: Any) -> None:
    xml = legs(None)["CEB311"]
    guid = etree.fromstring(xml).get("guid")
    at = datetime(2026, 12, 5, 12, 0, tzinfo=dxp.CHINA_TZ)
    parsed = prepare(job(xml), CustomsConfig(sender_id=SENDER), created=at)
    told = prepare({**job(xml), "message_type": "CEB311", "guid": guid}, CustomsConfig(sender_id=SENDER), created=at)
    assert told == parsed  # the same envelope, type and guid as when the message is parsed again
    # Named, it is not parsed again: even a message that is no CEB goes as the store says.
    plain = CustomsConfig(sender_id=SENDER)
    assert prepare({**job(b"stored"), "message_type": "CEB311", "guid": "G"}, plain).guid == "G"
    # A type the registry does not know, or no guid: parsed as before.
    with pytest.raises(PermanentError, match="not a CEB message"):
        prepare({**job(b"<x/>"), "message_type": "CEB999", "guid": "G"}, plain)
    with pytest.raises(PermanentError, match="not a CEB message"):
        prepare({**job(b"<x/>"), "message_type": "CEB311"}, plain)
    # With a signer the message is parsed (and signed) whatever the payload names.
    signer = CustomsConfig(sender_id=SENDER, signer=rsa_key)
    signed = prepare({**job(xml), "message_type": "CEB311", "guid": guid}, signer)
    assert signed.signed_here and signing.verify(signed.ceb).ok


def test_prepare_refuses_bad_payloads() -> None:
    cfg = CustomsConfig(sender_id=SENDER)
    xml = legs(None)["CEB311"]
    with pytest.raises(PermanentError, match="dedupe_key"):
        prepare({"message": xml.decode()}, cfg)
    with pytest.raises(PermanentError, match="no CEB message"):
        prepare({"dedupe_key": "k"}, cfg)
    with pytest.raises(PermanentError, match="not a CEB message"):
        prepare({"message": "<x/>", "dedupe_key": "k"}, cfg)
    import base64

    prep = prepare({"message_b64": base64.b64encode(xml).decode(), "cop_msg_id": "EXPLICIT"}, cfg)
    assert prep.cop_msg_id == "EXPLICIT" and prep.ceb == xml


async def test_signer_makes_an_unsigned_inventory_acceptable(
    customs_sandbox_local: RunningSandbox, rsa_key: Any
) -> None:
    pytest.importorskip("gateway.schema")
    xmls = legs(None, seed=3)
    async with customs(customs_sandbox_local.url + "/dxp", signer=rsa_key) as a:
        for code in ("CEB311", "CEB411", "CEB511", "CEB621"):
            await a.send(job(xmls[code], code))
    await customs_sandbox_local.wait_idle()
    generated = customs_sandbox_local.sandbox.receipts
    assert [r["status"] for r in generated if r["code"] == "CEB622"] == ["2", "120", "399", "800"]
    assert not [r for r in generated if r["code"] == "CEB900"]


async def test_only_signing_sends_are_prepared_off_the_event_loop(
    customs_sandbox_local: RunningSandbox, rsa_key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_off: list[str] = []
    real_to_thread = asyncio.to_thread

    async def recording_to_thread(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__module__", None) == customs_module.__name__:  # asyncio is shared with the sandbox
            handed_off.append(fn.__name__)
        return await real_to_thread(fn, *args, **kwargs)

    monkeypatch.setattr(customs_module.asyncio, "to_thread", recording_to_thread)
    xmls = legs(None, seed=4)
    async with customs(customs_sandbox_local.url + "/dxp") as bare:
        await bare.send(job(xmls["CEB311"], "bare-order"))
    assert handed_off == []  # a thread hand-off would cost more than parsing and wrapping
    async with customs(customs_sandbox_local.url + "/dxp", signer=rsa_key) as signing:
        await signing.send(job(xmls["CEB621"], "signed-inventory"))
    assert handed_off == ["prepare"]


# --- folder transport ------------------------------------------------------------------------------------


async def test_folder_transport_writes_one_file_per_job(tmp_path: Path, rsa_key: Any) -> None:
    outbox = tmp_path / "out"
    a = CustomsAdapter(CustomsConfig(sender_id=SENDER, transport="folder", outbox=outbox))
    xml = legs(rsa_key)["CEB311"]
    first = await a.send(job(xml, "k1"))
    again = await a.send(job(xml, "k1"))  # a retry of the same job replaces, never duplicates
    files = [p for p in outbox.iterdir() if p.is_file()]
    assert [p.name for p in files] == [f"CEB311Message_{dxp.cop_msg_id_for('k1')}.xml"]
    assert first.detail["file"] == again.detail["file"] == str(files[0])
    assert dxp.unwrap(files[0].read_bytes()).data == xml
    assert list((outbox / ".tmp").iterdir()) == []
    bare = CustomsAdapter(CustomsConfig(sender_id=SENDER, transport="folder", outbox=tmp_path / "b",
                                        folder_format="ceb"))  # fmt: skip
    result = await bare.send(job(xml, "k2"))
    assert Path(result.detail["file"]).read_bytes() == xml


def test_folder_transport_needs_an_outbox() -> None:
    with pytest.raises(ValueError):
        CustomsAdapter(CustomsConfig(sender_id=SENDER, transport="folder"))


def test_atomic_write_never_shows_a_partial_file(tmp_path: Path) -> None:
    outbox = tmp_path / "out"
    outbox.mkdir()
    size = 2 * 1024 * 1024
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def reader() -> None:  # what a transfer client does: list the folder, read what is there
        while not stop.is_set():
            for entry in os.scandir(outbox):
                if entry.is_file():
                    data = Path(entry.path).read_bytes()
                    seen.append((entry.name, len(data)))
                    assert data.endswith(b"END"), "a partial file was visible"

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(15):
            atomic_write(outbox, f"m{i}.xml", bytes([65 + i % 26]) * (size - 3) + b"END")
    finally:
        stop.set()
        t.join()
    assert seen, "the reader saw nothing; the test would prove nothing"
    assert {n for _, n in seen} == {size}
    assert sorted(p.name for p in outbox.iterdir() if p.is_file()) == sorted(f"m{i}.xml" for i in range(15))


def test_atomic_write_renames_only_a_complete_synced_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append("replace")
        assert Path(src).parent == tmp_path / "out" / ".tmp"
        assert Path(src).read_bytes() == b"<x/>"  # complete before it becomes visible
        assert not Path(dst).exists()
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(tmp_path / "out", "a.xml", b"<x/>")
    assert calls[:2] == ["fsync", "replace"]
    assert (tmp_path / "out" / "a.xml").read_bytes() == b"<x/>"
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "out", "../evil.xml", b"x")


async def test_failed_write_leaves_nothing_and_is_transient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: Any
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    a = CustomsAdapter(CustomsConfig(sender_id=SENDER, transport="folder", outbox=tmp_path / "out"))
    with pytest.raises(TransientError, match="No space"):
        await a.send(job(legs(rsa_key)["CEB311"]))
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


async def test_poll_inbox_moves_files_by_outcome(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    for i, name in enumerate(["a.xml", "b.xml", "bad.xml", "c.xml"]):
        p = inbox / name
        p.write_bytes(name.encode())
        os.utime(p, (1_000_000 + i, 1_000_000 + i))  # oldest first
    (inbox / ".hidden.xml").write_bytes(b"in progress")
    (inbox / "d.xml.part").write_bytes(b"in progress")
    handled: list[bytes] = []

    async def handle(data: bytes, path: Path) -> None:
        if data == b"bad.xml":
            raise ValueError("not a receipt")
        handled.append(data)

    report = await poll_inbox(inbox, handle)
    assert handled == [b"a.xml", b"b.xml", b"c.xml"]
    assert sorted(p.name for p in report.done) == ["a.xml", "b.xml", "c.xml"]
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["a.xml", "b.xml", "c.xml"]
    assert sorted(p.name for p in (inbox / "error").iterdir()) == ["bad.xml", "bad.xml.error.txt"]
    assert "not a receipt" in (inbox / "error" / "bad.xml.error.txt").read_text()
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == [".hidden.xml", "d.xml.part"]
    # a second file of the same name does not overwrite the first in done/
    (inbox / "a.xml").write_bytes(b"again")
    await poll_inbox(inbox, lambda data, path: None)  # a plain function works too
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["a.xml", "a.xml.1", "b.xml", "c.xml"]


async def test_a_receipt_file_the_inbox_refuses_is_logged_and_a_young_one_waits(tmp_path: Path) -> None:
    """A file that does not parse went to error/ with no line in the log; and a client writing in place had its file
    read half-written, as the endpoint could not set the inbox's minimum age (inbox_min_age_s)."""
    from gateway.config import EndpointSettings, ForwardingSettings
    from gateway.workers import run_inbox

    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "torn.xml").write_bytes(b"<CEB312Message")
    os.utime(inbox / "torn.xml", (1_000_000, 1_000_000))
    ep = EndpointSettings("customs", "customs", transport="folder", outbox=tmp_path / "out", inbox=inbox,
                          inbox_min_age_s=3600)  # fmt: skip
    (inbox / "writing.xml").write_bytes(b"<CEB312Message")  # just written: too young to read
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    with capture_logs() as logs:
        await run_inbox(None, None, ep, ForwardingSettings(inbox_poll_s=0.05), stop)  # type: ignore[arg-type]
    assert sorted(p.name for p in (inbox / "error").iterdir()) == ["torn.xml", "torn.xml.error.txt"]
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["writing.xml"]
    [refused] = [e for e in logs if e["event"] == "inbox_file_refused"]
    assert refused["log_level"] == "warning" and refused["file"] == "torn.xml" and "MessageRejected" in refused["error"]
    # what /metrics counts of it: the young file waits, the torn one is refused (its reason beside it not counted)
    (inbox / "arriving.xml.part").write_bytes(b"<CEB")  # a transfer in progress: not waiting yet
    assert customs_module.inbox_files(inbox) == customs_module.InboxFiles(waiting=1, refused=1)
    (inbox / "error" / "torn.xml").unlink()  # an operator dealt with it
    assert customs_module.inbox_files(inbox).refused == 0
    assert customs_module.inbox_files(tmp_path / "none") == customs_module.InboxFiles(0, 0)


async def test_poll_inbox_keeps_files_on_transient_failure(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    for i, name in enumerate(["1.xml", "2.xml"]):
        (inbox / name).write_bytes(b"r")
        os.utime(inbox / name, (1_000_000 + i, 1_000_000 + i))
    calls: list[str] = []

    def handle(data: bytes, path: Path) -> None:
        calls.append(path.name)
        raise TransientError("database down")

    report = await poll_inbox(inbox, handle)
    assert calls == ["1.xml"] and [p.name for p in report.deferred] == ["1.xml"]  # stops at the first
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["1.xml", "2.xml"]
    for p in inbox.glob("*.xml"):
        os.utime(p, None)  # just written
    fresh = await poll_inbox(inbox, lambda d, p: None, min_age=3600)  # too young: left alone
    assert fresh.done == [] and fresh.deferred == []
    assert len((await poll_inbox(inbox, lambda d, p: None)).done) == 2


async def test_pollers_of_one_inbox_take_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cbec serve and each cbec worker poll the inbox: each file is claimed (renamed into processing/) by one of them
    before it is read — two pollers handled some files twice and failed their passes on files the other had moved.
    A file a stopped poller left in processing/ goes back to the inbox once its claim is stale."""
    from adapters import customs as customs_module

    inbox = tmp_path / "in"
    inbox.mkdir()
    names = [f"{i:03d}.xml" for i in range(60)]
    for i, name in enumerate(names):
        (inbox / name).write_bytes(name.encode())
        os.utime(inbox / name, (1_000_000 + i, 1_000_000 + i))
    handled: list[bytes] = []

    async def handle(data: bytes, path: Path) -> None:
        handled.append(data)
        await asyncio.sleep(0)  # the other poller's turn

    reports = await asyncio.gather(*(poll_inbox(inbox, handle) for _ in range(3)))
    assert sorted(handled) == sorted(n.encode() for n in names)  # each once
    assert sorted(p.name for r in reports for p in r.done) == names
    assert sorted(p.name for p in (inbox / "done").iterdir()) == names
    assert list((inbox / "processing").iterdir()) == [] and not (inbox / "error").exists()
    # a poller killed mid-file: its claim is taken back once stale, then handled
    (inbox / "processing" / "left.xml").write_bytes(b"left")
    assert (await poll_inbox(inbox, handle)).done == []  # fresh: its poller may still be at it
    monkeypatch.setattr(customs_module, "STALE_CLAIM_S", 0.0)
    assert [p.name for p in (await poll_inbox(inbox, handle)).done] == ["left.xml"]


async def test_receipts_from_the_sandbox_through_a_folder(tmp_path: Path, http_recorder: Recorder) -> None:
    """The folder convention end to end: receipts land in the inbox and poll_inbox unwraps them."""
    inbox = tmp_path / "inbox"
    for i, r in enumerate(await _sandbox_receipts(http_recorder)):
        atomic_write(inbox, f"r{i}.xml", r)
    got: list[str] = []
    await poll_inbox(inbox, lambda data, path: got.append(dxp.unwrap(data).msg_type))
    assert got and set(got) <= {"CEB312Message"}


async def _sandbox_receipts(rec: Recorder) -> list[bytes]:
    from gateway.sandbox import start_sandbox

    sb = await start_sandbox(receipt_url=rec.url + "/r", receipt_delay=0.001)
    try:
        async with customs(sb.url + "/dxp") as a:
            await a.send(job(legs(None, seed=9)["CEB311"]))
        await sb.wait_idle()
    finally:
        await sb.stop()
    return [r.body for r in rec.requests]


# --- webhooks --------------------------------------------------------------------------------------------


async def test_webhook_signature_verifies_and_tampering_fails(http_recorder: Recorder) -> None:
    secret = "s3cr3t"
    clock = [1_790_000_000.0]
    hook = WebhookAdapter({"S001": WebhookEndpoint(http_recorder.url + "/hook", secret)}, clock=lambda: clock[0])
    payload = {"seller": "S001", "event": "shipment.status_changed", "dedupe_key": "ev-1",
               "data": {"orderNo": "ZG1", "state": "released", "amount": "12.30"}}  # fmt: skip
    async with hook:
        result = await hook.send(payload)
    [req] = http_recorder.requests
    body, sig, ts = req.body, req.headers["X-CBEC-Signature"], req.headers["X-CBEC-Timestamp"]
    assert sig.startswith("sha256=") and ts == "1790000000"
    assert req.headers["X-CBEC-Delivery"] == result.reference and req.headers["X-CBEC-Event"] == payload["event"]
    doc = json.loads(body)
    assert doc == {"id": result.reference, "event": payload["event"], "timestamp": 1790000000, "data": payload["data"]}
    assert verify_signature(secret, body, sig, timestamp=ts, now=clock[0] + 10)
    assert not verify_signature(secret, body.replace(b"12.30", b"99.99"), sig, timestamp=ts, now=clock[0])
    assert not verify_signature("other", body, sig, timestamp=ts, now=clock[0])
    assert not verify_signature(secret, body, sig, timestamp=ts, now=clock[0] + 3600)  # replayed later
    assert not verify_signature(secret, body, sig, timestamp="1790000001", now=clock[0])  # header not the body's
    # without the header the body's own time still decides: a replay an hour later fails, a fresh one passes
    assert not verify_signature(secret, body, sig, now=clock[0] + 3600)
    assert verify_signature(secret, body, sig, now=clock[0] + 10)
    unstamped = json.dumps({"id": "x", "data": {}}).encode()
    assert not verify_signature(secret, unstamped, sign_body(secret, unstamped), now=clock[0])
    assert verify_signature(secret, unstamped, sign_body(secret, unstamped), tolerance=None)  # HMAC only, on request
    assert not verify_signature(secret, body, None) and not verify_signature(secret, body, "md5=abc")
    assert sign_body(secret, body) == sig


def test_a_webhook_goes_to_public_addresses_only() -> None:
    """Loopback, private, link-local (the cloud's metadata service), shared, unspecified and multicast addresses are
    refused, IPv4 written as IPv6 too; public ones and those of an allowed network pass; a name is no address."""
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                    "224.0.0.1", "::1", "[::1]", "fe80::1%eth0", "fd00:ec2::254", "::ffff:127.0.0.1"):  # fmt: skip
        assert refused_address(address) is not None, address
    assert refused_address("169.254.169.254") == "169.254.169.254 is a link-local address"
    for address in ("8.8.8.8", "2001:4860:4860::8888", "seller.example"):
        assert refused_address(address) is None, address
    # IPv6 carrying an IPv4 address is judged by the address it reaches: Python 3.11 calls NAT64's and 6to4's global
    assert refused_address("64:ff9b::a9fe:a9fe") == \
        "64:ff9b::a9fe:a9fe (NAT64, to 169.254.169.254) is a link-local address"  # fmt: skip
    assert refused_address("2002:a9fe:a9fe::1") == \
        "2002:a9fe:a9fe::1 (6to4, to 169.254.169.254) is a link-local address"  # fmt: skip
    for address in ("64:ff9b::a00:5", "64:ff9b::7f00:1", "2002:c0a8:101::1", "::ffff:10.0.0.5", "64:ff9b:1::808:808",
                    "::a9fe:a9fe"):  # fmt: skip
        assert refused_address(address) is not None, address
    for address in ("64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"):
        assert refused_address(address) is None, address
    assert refused_address("64:ff9b::a14:304", allowed_networks(["10.20.0.0/16"])) is None
    inside = allowed_networks(["10.20.0.0/16", "127.0.0.1"])
    assert refused_address("10.20.3.4", inside) is None and refused_address("127.0.0.1", inside) is None
    assert refused_address("10.21.0.1", inside) is not None and refused_address("127.0.0.2", inside) is not None
    with pytest.raises(ValueError, match="no network"):
        allowed_networks(["10.20.0.0/33"])


async def test_a_webhook_to_an_internal_address_is_never_sent(http_recorder: Recorder) -> None:
    """A seller's URL at an internal address — written as one or a name resolving to one only — is not connected to,
    and the job is a dead letter at once saying which address was refused (retried, a name's events waited for good:
    a paused seller's failed probes are put back untried); the receiver on 127.0.0.1 hears nothing until the gateway
    allows its network."""
    port = int(http_recorder.url.rsplit(":", 1)[1])
    sellers = {"S1": WebhookEndpoint(http_recorder.url + "/hook", "k"),
               "S2": WebhookEndpoint(f"http://localhost:{port}/hook", "k")}  # fmt: skip
    payload = {"event": "e", "dedupe_key": "ev-9", "data": {}}
    async with WebhookAdapter(sellers, allowed=()) as hook:
        with pytest.raises(PermanentError, match=r"127\.0\.0\.1 is a loopback address"):
            await hook.send({**payload, "seller": "S1"})
        with pytest.raises(PermanentError, match=r"localhost resolves to no public address \(127\.0\.0\.1 is a "
                                                 "loopback address"):  # fmt: skip
            await hook.send({**payload, "seller": "S2"})
    assert http_recorder.requests == []
    async with WebhookAdapter(sellers, allowed=allowed_networks(["127.0.0.0/8", "::1"])) as hook:
        await hook.send({**payload, "seller": "S1"})
        await hook.send({**payload, "seller": "S2"})
    assert len(http_recorder.requests) == 2


async def test_the_resolver_connects_only_to_the_public_addresses_a_name_has() -> None:
    """A name resolving to a public and an internal address is connected to through the public one only (what was
    checked is what is connected to: no rebinding in between)."""

    class Fixed(PublicResolver):
        def __init__(self, hosts: list[str]) -> None:
            self.hosts = hosts

        async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
            return [{"hostname": host, "host": h, "port": port, "family": family, "proto": 0, "flags": 0}
                    for h in self.hosts]  # fmt: skip

        async def close(self) -> None:
            return None

    both = PublicResolver(inner=Fixed(["169.254.169.254", "93.184.216.34"]))
    assert [r["host"] for r in await both.resolve("seller.example", 443)] == ["93.184.216.34"]
    with pytest.raises(OSError, match=r"169\.254\.169\.254 is a link-local address"):
        await PublicResolver(inner=Fixed(["169.254.169.254"])).resolve("seller.example", 443)


async def test_webhook_failures_and_stable_delivery_id(http_recorder: Recorder) -> None:
    hook = WebhookAdapter(lambda seller: WebhookEndpoint(http_recorder.url, "k") if seller == "S1" else None)
    payload = {"seller": "S1", "event": "e", "dedupe_key": "ev-2", "data": {}}
    async with hook:
        http_recorder.status = 500
        with pytest.raises(TransientError):
            await hook.send(payload)
        http_recorder.status = 410
        with pytest.raises(PermanentError):
            await hook.send(payload)
        with pytest.raises(PermanentError, match="no webhook endpoint"):
            await hook.send({**payload, "seller": "S2"})
        with pytest.raises(PermanentError):
            await hook.send({"seller": "S1", "event": "e", "data": {}})  # no stable id
    ids = {r.headers["X-CBEC-Delivery"] for r in http_recorder.requests}
    assert len(http_recorder.requests) == 2 and len(ids) == 1


def _event(seller: str, n: int) -> dict[str, Any]:
    return {"seller": seller, "event": "shipment.customs_status_changed", "dedupe_key": f"{seller}-{n}", "data": {}}


async def test_a_sellers_failing_url_pauses_its_own_webhooks_not_the_others(http_recorder: Recorder) -> None:
    """Each seller's URL has a breaker of its own: its failures are the job's (NotReady: not counted by the webhook
    endpoint's breaker, which every seller shares); once open, its events are put back untried (Deferred) until the
    cool-down ends, while the other sellers' go on; one probe then tells whether it answers again."""
    now = [1000.0]
    bad = await start_recorder()
    try:
        bad.status = 503
        sellers = {"GOOD": WebhookEndpoint(http_recorder.url + "/good", "k"), "BAD": WebhookEndpoint(bad.url, "k")}
        hook = WebhookAdapter(sellers, breaker=cbec_queue.BreakerSettings(failure_threshold=2, cooldown_s=30),
                              monotonic=lambda: now[0])  # fmt: skip
        with capture_logs() as logs:
            async with hook:
                for n in range(2):
                    with pytest.raises(SellerUnreachable, match=r"seller BAD: webhook POST .*503") as failed:
                        await hook.send(_event("BAD", n))
                    assert isinstance(failed.value, cbec_queue.NotReady)
                with pytest.raises(cbec_queue.Deferred, match="seller BAD's webhook URL is paused") as paused:
                    await hook.send(_event("BAD", 2))
                assert 30 <= paused.value.delay_s <= 33 and len(bad.requests) == 2  # not sent
                assert hook.seller_circuits() == {"BAD": cbec_queue.CircuitState.OPEN}
                await hook.send(_event("GOOD", 0))  # the other seller's events go on
                now[0] += 20
                with pytest.raises(cbec_queue.Deferred) as paused:
                    await hook.send(_event("BAD", 2))
                assert 10 <= paused.value.delay_s <= 13  # until the cool-down's end
                now[0] += 11
                # the probe: still failing, paused again — and the event put back untried, no attempt counted: the
                # seller's URL away is no fault of the event
                with pytest.raises(cbec_queue.Deferred, match=r"sent as the probe, which failed .*503") as probe:
                    await hook.send(_event("BAD", 2))
                assert 30 <= probe.value.delay_s <= 33
                with pytest.raises(cbec_queue.Deferred):
                    await hook.send(_event("BAD", 3))
                assert len(bad.requests) == 3
                now[0] += 31
                bad.status = 200
                await hook.send(_event("BAD", 3))  # the probe answers: resumed
                await hook.send(_event("BAD", 4))
                assert hook.seller_circuits() == {} and len(bad.requests) == 5
                # a 4xx is the seller's to mend, not a reason to pause: the URL answered
                bad.status = 410
                for n in range(3):
                    with pytest.raises(PermanentError):
                        await hook.send(_event("BAD", 10 + n))
                assert hook.seller_circuits() == {}
                # paused again, then the seller's URL changed on a reload: the new URL starts closed
                bad.status = 500
                for n in range(2):
                    with pytest.raises(SellerUnreachable):
                        await hook.send(_event("BAD", 20 + n))
                hook.use({**sellers, "BAD": WebhookEndpoint(http_recorder.url + "/bad-moved", "k")})
                await hook.send(_event("BAD", 22))
                assert [r.path for r in http_recorder.requests] == ["/good", "/bad-moved"]
        events = [(e["event"], e.get("seller")) for e in logs]
        # a failed probe leaves it paused: said once
        assert events == [("webhook_seller_paused", "BAD"), ("webhook_seller_resumed", "BAD"),
                          ("webhook_seller_paused", "BAD")]  # fmt: skip
    finally:
        await bad.stop()


@pytest.mark.db
async def test_a_worker_delivers_the_other_sellers_webhooks_while_one_url_is_down(
    http_recorder: Recorder, db_dsn: str
) -> None:
    """Through the queue's worker: one seller's URL refusing every connection opens its own circuit only; the other
    seller's events are all delivered, the webhook endpoint's circuit stays closed, and the paused seller's events
    wait queued, untried (the attempts of their history are the tries that reached its URL, no more)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"  # nothing listens there once closed
    sellers = {"GOOD": WebhookEndpoint(http_recorder.url + "/good", "k"), "DEAD": WebhookEndpoint(dead, "k")}
    settings = cbec_queue.BreakerSettings(failure_threshold=2, cooldown_s=60)
    hook = WebhookAdapter(sellers, breaker=settings, timeouts=2.0)
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    policy = cbec_queue.RetryPolicy(base_s=0.01, factor=1, cap_s=0.01, max_attempts=50, jitter="none")
    worker = cbec_queue.Worker(pool, {"webhook": queue_handler(hook)}, breaker=settings, default_concurrency=1,
                               default_policy=policy, lease_s=5.0, poll_interval_s=0.2,
                               shutdown_grace_s=1.0)  # fmt: skip
    stop = asyncio.Event()
    try:
        async with hook:
            async with pool.acquire() as conn, conn.transaction():
                for n in range(6):  # the dead seller's first, so they come up first
                    await cbec_queue.enqueue(conn, endpoint="webhook", kind="webhook", payload=_event("DEAD", n))
                for n in range(6):
                    await cbec_queue.enqueue(conn, endpoint="webhook", kind="webhook", payload=_event("GOOD", n))
            task = asyncio.create_task(worker.run(stop))
            await http_recorder.wait_for(6, timeout=20)
            for _ in range(200):  # and their outcomes written
                async with pool.acquire() as conn:
                    if await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'") == 6:
                        break
                await asyncio.sleep(0.05)
            assert cbec_queue.circuits.states()["webhook"] is cbec_queue.CircuitState.CLOSED
            assert hook.seller_circuits() == {"DEAD": cbec_queue.CircuitState.OPEN}
            async with pool.acquire() as conn:
                rows = await conn.fetch("SELECT payload->>'seller' AS seller, state, attempts, last_error FROM jobs")
                tried = await conn.fetchval("SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id"
                                            " WHERE j.payload->>'seller' = 'DEAD'")  # fmt: skip
            assert {r["state"] for r in rows if r["seller"] == "GOOD"} == {"done"}
            dead_rows = [r for r in rows if r["seller"] == "DEAD"]
            assert {r["state"] for r in dead_rows} <= {"queued", "running"}
            assert sum(r["attempts"] for r in dead_rows) == tried == 2  # the two that opened its circuit
            assert any("paused" in (r["last_error"] or "") for r in dead_rows)
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        stop.set()
        await pool.close()


@pytest.mark.db
async def test_a_sellers_events_wait_for_its_url_however_many_probes_fail(db_dsn: str) -> None:
    """A seller's URL away for longer than its events' attempts would last: every probe fails, yet no event becomes a
    dead letter (a probe's failure counts no attempt, as the others' waiting does not); back, it gets them all."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    hook = WebhookAdapter({"AWAY": WebhookEndpoint(f"http://127.0.0.1:{port}/hook", "k")}, timeouts=2.0,
                          breaker=cbec_queue.BreakerSettings(failure_threshold=2, cooldown_s=0.05))  # fmt: skip
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    policy = cbec_queue.RetryPolicy(base_s=0.01, factor=1, cap_s=0.01, max_attempts=3, jitter="none")
    worker = cbec_queue.Worker(pool, {"webhook": queue_handler(hook)}, default_concurrency=1, default_policy=policy,
                               lease_s=5.0, poll_interval_s=0.02, shutdown_grace_s=1.0)  # fmt: skip
    stop = asyncio.Event()
    back: Recorder | None = None
    try:
        async with hook:
            async with pool.acquire() as conn, conn.transaction():
                for n in range(3):
                    await cbec_queue.enqueue(conn, endpoint="webhook", kind="webhook", payload=_event("AWAY", n))
            task = asyncio.create_task(worker.run(stop))
            await asyncio.sleep(1.5)  # a probe every cool-down (0.05 s): far more than the attempts (3) allowed
            async with pool.acquire() as conn:
                rows = await conn.fetch("SELECT state, attempts, last_error FROM jobs ORDER BY id")
            assert [r["state"] for r in rows] == ["queued"] * 3, rows
            assert sum(r["attempts"] for r in rows) == 2  # the two failures that paused it; no probe's
            assert any("sent as the probe, which failed" in (r["last_error"] or "") for r in rows), rows
            back = await start_recorder(port=port)
            await back.wait_for(3, timeout=10)
            stop.set()
            await asyncio.wait_for(task, 10)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'") == 3
    finally:
        stop.set()
        if back is not None:
            await back.stop()
        await pool.close()


# --- inspection and warehouse ----------------------------------------------------------------------------


async def test_inspection_sends_bonded_inventories_only(
    customs_sandbox_local: RunningSandbox, rsa_key: Any
) -> None:
    url = customs_sandbox_local.url + "/inspection"
    bonded = legs(rsa_key, seed=4, mode="1210")["CEB621"]
    direct = legs(rsa_key, seed=5, mode="9610")["CEB621"]
    async with InspectionAdapter(InspectionConfig(url=url)) as a:
        skipped = await a.send(job(direct, "inv-9610"))
        first = await a.send(job(bonded, "inv-1210"))
        again = await a.send(job(bonded, "inv-1210"))
        with pytest.raises(TransientError):
            await a.send(job(legs(rsa_key, seed=6, mode="1210", order_no="FAIL5XX-2")["CEB621"], "inv-x"))
        assert (await a.send(job(legs(rsa_key)["CEB311"], "order"))).reference is None  # not configured
        # 1239 (保税电商A) is held to the 1210 rules, and inspected as well
        bonded_a = legs(rsa_key, seed=7, mode="1210")["CEB621"].replace(b">1210<", b">1239<")
        assert (await a.send(job(bonded_a, "inv-1239"))).reference is not None
    assert skipped.reference is None and "skipped" in skipped.detail
    assert first.reference == again.reference and again.detail["ack"]["duplicate"] is True
    [body, _, body_1239] = customs_sandbox_local.sandbox.inspection
    assert [d["tradeMode"] for d in body_1239["declarations"]] == ["1239"]
    head = etree.fromstring(bonded).find(f"{C}Inventory/{C}InventoryHead")
    [decl] = body["declarations"]
    assert body["schema"] == "cbec.inspection.v1" and body["messageType"] == "CEB621"
    assert decl["orderNo"] == head.findtext(f"{C}orderNo") and decl["tradeMode"] == "1210"
    assert decl["emsNo"] == head.findtext(f"{C}emsNo")
    assert "buyerIdNumber" not in decl and "buyerName" not in decl
    lines = etree.fromstring(bonded).findall(f"{C}Inventory/{C}InventoryList")
    assert [i["gcode"] for i in decl["items"]] == [li.findtext(f"{C}gcode") for li in lines]
    assert [i["totalPrice"] for i in decl["items"]] == [li.findtext(f"{C}totalPrice") for li in lines]


def test_a_warehouse_orders_status_is_its_furthest_whatever_order_the_callbacks_came_in() -> None:
    from datetime import UTC

    from gateway.outbox import warehouse_orders

    def events(*statuses: str) -> list[dict[str, str]]:
        return [{"status": s} for s in statuses]

    assert warehouse.furthest(events("accepted", "shipped", "picked"))["status"] == "shipped"  # type: ignore[index]
    assert warehouse.furthest(events("delivered", "rejected"))["status"] == "rejected"  # type: ignore[index]
    assert warehouse.furthest(events("cancelled", "rejected"))["status"] == "rejected"  # type: ignore[index]
    assert warehouse.furthest([]) is None
    at = datetime(2026, 12, 6, tzinfo=UTC)
    rows = [{"doc_guid": g, "message_type": "CEB621", "order_id": o, "warehouse_order_no": f"WH-{o}",
             "direction": "outbound", "status": st, "reason": r, "occurred_at": "t", "received_at": at}
            for g, o, st, r in (("G1", "O1", "shipped", None), ("G1", "O1", "accepted", None),
                                ("G2", "O2", "rejected", "no stock"), ("G1", "O3", "accepted", None))]  # fmt: skip
    orders = warehouse_orders(rows)
    assert {k: [(o["order_id"], o["status"]) for o in v] for k, v in orders.items()} == {
        ("CEB621", "G1"): [("O1", "shipped"), ("O3", "accepted")], ("CEB621", "G2"): [("O2", "rejected")]}
    [o2] = orders[("CEB621", "G2")]
    assert o2["reason"] == "no stock" and o2["warehouse_order_no"] == "WH-O2"
    assert [e["status"] for e in orders[("CEB621", "G1")][0]["events"]] == ["shipped", "accepted"]  # as they came


async def test_warehouse_outbound_order_and_callbacks(
    customs_sandbox_local: RunningSandbox, http_recorder: Recorder, rsa_key: Any
) -> None:
    customs_sandbox_local.config.warehouse_callback_secret = "wh"
    cfg = WarehouseConfig(url=customs_sandbox_local.url + "/warehouse/orders", warehouse_code="WH-HK-01",
                          callback_url=http_recorder.url + "/v1/warehouse/callbacks")  # fmt: skip
    inv = legs(rsa_key, seed=7, mode="1210")["CEB621"]
    async with WarehouseAdapter(cfg) as a:
        result = await a.send(job(inv, "wh-1"))
        retry = await a.send(job(inv, "wh-1"))
    [order] = result.detail["orders"]
    assert order["status"] == 201 and order["warehouseOrderNo"].startswith("WH")
    assert retry.detail["orders"][0] == {**order, "status": 200}  # same orderId, same warehouse order
    sent = customs_sandbox_local.sandbox.warehouse[0]
    head = etree.fromstring(inv).find(f"{C}Inventory/{C}InventoryHead")
    assert sent["direction"] == "outbound" and sent["warehouseCode"] == "WH-HK-01"
    assert sent["reference"]["orderNo"] == head.findtext(f"{C}orderNo")
    assert sent["consignee"]["address"] == head.findtext(f"{C}consigneeAddress")
    assert [i["qty"] for i in sent["items"]] == [q.text for q in etree.fromstring(inv).iter(f"{C}qty")]
    await customs_sandbox_local.wait_idle()
    calls = await http_recorder.wait_for(2)
    got = [parse_callback(c.body, secret="wh", signature=c.headers.get("X-CBEC-Signature"),
                          timestamp=c.headers.get("X-CBEC-Timestamp")) for c in calls]  # fmt: skip
    assert [(g.order_id, g.status) for g in got] == [(order["orderId"], "accepted"), (order["orderId"], "shipped")]
    with pytest.raises(ValueError, match="signature"):
        parse_callback(calls[0].body.replace(b"shipped", b"rejected").replace(b"accepted", b"rejected"),
                       secret="wh", signature=calls[0].headers["X-CBEC-Signature"])  # fmt: skip


def test_a_warehouse_order_ships_to_the_consignee_it_is_given() -> None:
    """The gateway gives the outbound order the 收货人 of the shipment's waybill or order: an inventory names only the
    buyer, whom the order names when it is given none."""
    cfg = WarehouseConfig(url="http://127.0.0.1:9/warehouse/orders", warehouse_code="WH1")
    inv = legs(None, seed=6, mode="1210")["CEB621"]
    head = etree.fromstring(inv).find(f"{C}Inventory/{C}InventoryHead")
    to = {"name": "吴九", "telephone": "13111111111", "address": "北京市东城区1号"}
    [order] = warehouse.build_orders(job(inv, "wh-1", doc_index=1, consignee=to), cfg)
    assert order["consignee"] == to
    [fallback] = warehouse.build_orders(job(inv, "wh-1"), cfg)
    assert fallback["orderId"] == order["orderId"]
    assert fallback["consignee"] == {"name": head.findtext(f"{C}buyerName"),
                                     "telephone": head.findtext(f"{C}buyerTelephone"),
                                     "address": head.findtext(f"{C}consigneeAddress")}  # fmt: skip
    with pytest.raises(PermanentError, match="no document 2"):
        warehouse.build_orders(job(inv, "wh-1", doc_index=2), cfg)


def test_a_warehouse_order_names_its_inventory_by_the_numbers_customs_gave_it() -> None:
    cfg = WarehouseConfig(url="http://127.0.0.1:9/warehouse/orders", warehouse_code="WH1")
    inv = legs(None, seed=6, mode="1210")["CEB621"]
    assert etree.fromstring(inv).findtext(f"{C}Inventory/{C}InventoryHead/{C}invtNo") in (None, "")
    [order] = warehouse.build_orders(job(inv, "wh-1", invtNo="46012026I000000006", preNo="B20260101000000006"), cfg)
    assert (order["reference"]["invtNo"], order["reference"]["preNo"]) == ("46012026I000000006", "B20260101000000006")


async def test_a_warehouse_order_is_cancelled_under_its_orderid(
    customs_sandbox_local: RunningSandbox, http_recorder: Recorder
) -> None:
    """The cancel of an order (its inventory's cancellation concluded) goes to <url>/<orderId>/cancel with the order's
    reference; the warehouse calls back cancelled; a cancel of an order it never took is a 404, a dead letter."""
    cfg = WarehouseConfig(url=customs_sandbox_local.url + "/warehouse/orders", warehouse_code="WH1",
                          callback_url=http_recorder.url + "/v1/warehouse/callbacks")  # fmt: skip
    inv = legs(None, seed=6, mode="1210")["CEB621"]
    cancel = warehouse.build_cancel(job(inv, "wh-1", doc_index=1, reason="CEB623 concluded by customs"), cfg)
    assert cancel["schema"] == "cbec.warehouse-cancel.v1" and cancel["reason"] == "CEB623 concluded by customs"
    async with WarehouseAdapter(cfg) as a:
        [order] = (await a.send(job(inv, "wh-1"))).detail["orders"]
        assert cancel["orderId"] == order["orderId"]
        data = json.dumps(cancel).encode()
        for _ in range(2):  # a repeat is answered alike, and calls back nothing more
            reply = await a.post_checked(warehouse.cancel_url(cfg, cancel["orderId"]), data=data,
                                         content_type="application/json")  # fmt: skip
            assert reply.status == 200 and reply.json()["warehouseOrderNo"] == order["warehouseOrderNo"]
        with pytest.raises(PermanentError, match="404"):
            await a.post_checked(warehouse.cancel_url(cfg, "not-an-order"), content_type="application/json",
                                 data=json.dumps({**cancel, "orderId": "not-an-order"}).encode())  # fmt: skip
    await customs_sandbox_local.wait_idle()
    calls = await http_recorder.wait_for(3)
    got = [parse_callback(c.body) for c in calls]
    assert {g.order_id for g in got} == {order["orderId"]}  # the cancel's callback may overtake the order's
    assert sorted(g.status for g in got) == ["accepted", "cancelled", "shipped"]
    [cancelled] = [g for g in got if g.status == "cancelled"]
    assert cancelled.reason == "CEB623 concluded by customs"
    assert cancelled.reference["orderNo"] == cancel["reference"]["orderNo"]
    assert [c["orderId"] for c in customs_sandbox_local.sandbox.warehouse_cancels] == [order["orderId"]] * 2


CEB711 = f"""<?xml version="1.0" encoding="UTF-8"?>
<ceb:CEB711Message xmlns:ceb="{CEB_NS}" guid="0B3C3A4E-2B8F-4A0C-9C57-3C8B5E7F1A21" version="1.0">
<ceb:Delivery><ceb:DeliveryHead><ceb:guid>0B3C3A4E-2B8F-4A0C-9C57-3C8B5E7F1A22</ceb:guid><ceb:appType>1</ceb:appType>
<ceb:appTime>20261120100000</ceb:appTime><ceb:appStatus>2</ceb:appStatus><ceb:customsCode>4601</ceb:customsCode>
<ceb:operatorCode>4601980H12</ceb:operatorCode><ceb:operatorName>示例</ceb:operatorName><ceb:ieFlag>I</ceb:ieFlag>
<ceb:trafMode>5</ceb:trafMode><ceb:trafNo>HU7961</ceb:trafNo><ceb:voyageNo>HU7961</ceb:voyageNo>
<ceb:billNo>880-12345675</ceb:billNo><ceb:logisticsCode>4601980A27</ceb:logisticsCode>
<ceb:logisticsName>示例快递</ceb:logisticsName></ceb:DeliveryHead>
<ceb:DeliveryList><ceb:gnum>1</ceb:gnum><ceb:logisticsNo>HK001</ceb:logisticsNo></ceb:DeliveryList>
<ceb:DeliveryList><ceb:gnum>2</ceb:gnum><ceb:logisticsNo>HK002</ceb:logisticsNo></ceb:DeliveryList>
</ceb:Delivery></ceb:CEB711Message>""".encode()


async def test_warehouse_inbound_from_a_delivery(customs_sandbox_local: RunningSandbox) -> None:
    cfg = WarehouseConfig(url=customs_sandbox_local.url + "/warehouse/orders", warehouse_code="WH1")
    async with WarehouseAdapter(cfg) as a:
        await a.send(job(CEB711, "delivery-1"))
        with pytest.raises(PermanentError, match="inbound or outbound"):
            await a.send(job(CEB711, "delivery-2", direction="sideways"))
        with pytest.raises(PermanentError, match="CEB411"):
            await a.send(job(legs(None)["CEB411"], "pay"))
    [sent] = customs_sandbox_local.sandbox.warehouse
    assert sent["direction"] == "inbound" and sent["reference"]["billNo"] == "880-12345675"
    assert sent["parcels"] == [{"lineNo": "1", "logisticsNo": "HK001"}, {"lineNo": "2", "logisticsNo": "HK002"}]
    assert "callbackUrl" not in sent and "consignee" not in sent


def test_parse_callback_checks_the_shape() -> None:
    good = {"schema": "cbec.warehouse-callback.v1", "orderId": "O", "warehouseOrderNo": "W", "direction": "inbound",
            "status": "received", "occurredAt": "2026-11-20T10:00:00+08:00"}  # fmt: skip
    assert parse_callback(json.dumps(good).encode()).status == "received"
    for change in ({"status": "lost"}, {"direction": "up"}, {"orderId": ""}, {"schema": "x"}):
        with pytest.raises(ValueError):
            parse_callback(json.dumps({**good, **change}).encode())
    with pytest.raises(ValueError):
        parse_callback(b"{not json")
    with pytest.raises(ValueError, match="signature"):
        parse_callback(json.dumps(good).encode(), secret="k", signature=None)


async def test_session_is_owned_and_closed(customs_sandbox: str) -> None:
    a = customs(customs_sandbox + "/dxp")
    await a.start()
    session = a._session
    assert session is not None and not session.closed
    await a.close()
    assert session.closed
    await asyncio.sleep(0)


async def test_queue_handler_feeds_a_stable_dedupe_key() -> None:
    from types import SimpleNamespace

    from adapters.base import SendResult, queue_handler

    seen: list[dict[str, Any]] = []

    class Fake:
        name = "fake"

        async def send(self, job_payload: Any) -> SendResult:
            seen.append(dict(job_payload))
            return SendResult(self.name)

    handle = queue_handler(Fake())
    await handle(SimpleNamespace(id=7, dedupe_key="CEB311:X", payload={"message": "m"}))
    await handle(SimpleNamespace(id=7, dedupe_key=None, payload={"message": "m"}))
    await handle(SimpleNamespace(id=7, dedupe_key="k", payload={"message": "m", "dedupe_key": "own"}))
    assert [p["dedupe_key"] for p in seen] == ["CEB311:X", "job:7", "own"]


def test_envelope_values_the_schema_refuses_are_permanent() -> None:
    xml = legs(None)["CEB311"]
    with pytest.raises(PermanentError, match="SenderId"):
        prepare(job(xml), CustomsConfig(sender_id="DXPENT-MUCH-TOO-LONG-ID"))
    with pytest.raises(PermanentError, match="CopMsgId"):
        prepare({"message": xml.decode(), "cop_msg_id": "x" * 256}, CustomsConfig(sender_id=SENDER))
