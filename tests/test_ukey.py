"""A 179 platform's UKey as its signer (gateway.ukey), against the client control's stand-in (gateway.sandbox.ukey) on
127.0.0.1: what the card signs verifies with its certificate, what it refuses says why, a control out of reach is
a failure to try again, and the whole way from customs' question to the upload customs verifies."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pickle
import random
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from aiohttp import web
from lxml import etree

from gateway import config, samples, server, signing, workers
from gateway.db import create_pool
from gateway.pipeline import Pipeline
from gateway.render import render
from gateway.sandbox.ukey import start_ukey
from gateway.schema import SchemaSet
from gateway.signing import (
    RsaSha1Key,
    SignatureBackend,
    SigningUnavailable,
    Sm2Sm3Key,
    certificate_serial,
    generate_test_key,
    key_name_for,
    verify_bytes,
)
from gateway.ukey import CERTIFICATE, SIGN, SIGN_NO_HASH, UKeyBridge, UKeyRefused, UKeySigner, UKeyUnreachable
from tests.apiutil import EBP_CODE, PLATFORM_A
from tests.forwardutil import running_stack, wait_for
from tests.test_realtime import parcel, platforms

CARD = RsaSha1Key.from_pem(*generate_test_key("rsa", "平台 UKey"))
SM2_CARD = Sm2Sm3Key.from_pem(*generate_test_key("sm2", "平台 SM2 UKey"), signature_format="raw")
SIGNED = b'"sessionID":"S-1"||"payExchangeInfoHead":"{}"||"payExchangeInfoLists":"[]"||"serviceTime":"1"'


async def test_the_card_signs_what_it_is_sent_and_names_its_certificate() -> None:
    for key in (CARD, SM2_CARD):
        card = await start_ukey(key)
        bridge = UKeyBridge(card.url, "88888888")
        try:
            signature, cert_no = await bridge.sign(SIGNED)
            assert verify_bytes(key.certificate_der, SIGNED, signature)
            assert cert_no == key.key_name == key_name_for(certificate_serial(await bridge.certificate()))
            assert await bridge.certificate() == key.certificate_der
            assert not verify_bytes(key.certificate_der, SIGNED + b" ", signature)
            assert card.calls == [SIGN, "cus-sec_SpcGetSignCertAsPEM"]  # the certificate read once, kept
        finally:
            await bridge.close()
            await card.stop()


async def test_what_the_card_refuses_says_why_and_a_control_out_of_reach_is_tried_again() -> None:
    card = await start_ukey(CARD, pin="12345678")
    port = int(card.url.rsplit(":", 1)[1])
    bridge = UKeyBridge(card.url, "88888888", timeout_s=2)
    try:
        with pytest.raises(UKeyRefused, match="口令错误"):
            await bridge.sign(SIGNED)
        bridge.password = "12345678"
        bridge.ask_again()  # as a reload does: a card that refused is asked nothing more until then
        card.present = False
        with pytest.raises(UKeyRefused, match="未找到卡片"):
            await bridge.sign(SIGNED)
        with pytest.raises(UKeyRefused, match="at most"):
            await bridge.sign(b"x" * (121 * 1024))
        card.present = True
        bridge.ask_again()
        assert verify_bytes(CARD.certificate_der, SIGNED, (await bridge.sign(SIGNED))[0])
        await card.stop()
        with pytest.raises(UKeyUnreachable):
            await bridge.sign(SIGNED)
        card = await start_ukey(CARD, pin="12345678", port=port)  # the PC back: the next call connects again
        assert verify_bytes(CARD.certificate_der, SIGNED, (await bridge.sign(SIGNED))[0])
        await card.stop()  # the control restarted between two calls: the kept connection is dead, found so at once
        card = await start_ukey(CARD, pin="12345678", port=port)
        assert verify_bytes(CARD.certificate_der, SIGNED, (await bridge.sign(SIGNED))[0])
    finally:
        await bridge.close()
        await card.stop()


@pytest.mark.db
async def test_signatures_waiting_for_a_card_that_refuses_send_it_nothing(db_pool: asyncpg.Pool) -> None:
    """A platform's card with a wrong PIN, four uploads signing at once (the realtime endpoint's concurrency): the
    first sends the PIN and is refused (a dead letter), the three waiting behind it send the card nothing (deferred
    until a reload) — each checked the refusal before the card had answered, so all four sent the wrong PIN, and a
    few such rounds lock the card. What is refused before anything reaches the card (a string too long to send) or
    without a signature asked of it stops nothing. Another process's bridge to the card (the refusal shared through
    the database) sends the card nothing either, until a reload of that process asks it again."""
    from cbec_queue import Deferred

    from adapters.base import PermanentError

    card = await start_ukey(CARD, pin="12345678")
    card.signing_s = 0.05
    bridge = UKeyBridge(card.url, "00000000")
    other = UKeyBridge(card.url, "12345678")  # another process's, its configuration not the same
    for b in (bridge, other):
        b.share(db_pool)
        await b.refusal.settle()
    try:
        with pytest.raises(PermanentError, match="at most"):  # that upload's own fault, a dead letter
            await workers._platform_signature(bridge, b"x" * (121 * 1024))
        assert bridge.refused is None and card.calls == []
        outcomes = await asyncio.gather(*(workers._platform_signature(bridge, SIGNED) for _ in range(4)),
                                        return_exceptions=True)  # fmt: skip
        assert card.calls == [SIGN], card.calls
        assert [type(o) for o in outcomes] == [PermanentError, Deferred, Deferred, Deferred], outcomes
        assert all("口令错误" in str(o) and "asked nothing more until a reload" in str(o) for o in outcomes[1:])
        assert bridge.refused is not None and "口令错误" in bridge.refused
        row = await db_pool.fetchrow("SELECT refused, refusals, asked_again, reason FROM ukey_refusals")
        assert row["refused"] and row["refusals"] == 1 and row["asked_again"] == [] and "口令错误" in row["reason"]
        with pytest.raises(UKeyRefused, match=r"refused a signature in [^:]+:\d+ at .*口令错误"):
            await other.sign(SIGNED)
        assert card.calls == [SIGN] and other.refused is not None
        bridge.ask_again()  # a reload of that process: the card is asked again by it, not by the other
        await bridge.refusal.settle()
        with pytest.raises(UKeyRefused, match="nothing more is sent"):
            await other.sign(SIGNED)
        assert card.calls == [SIGN]
        other.ask_again()
        assert verify_bytes(CARD.certificate_der, SIGNED, (await other.sign(SIGNED))[0])
        assert card.wrong_pins == 1
    finally:
        await bridge.close()
        await other.close()
        await card.stop()


@pytest.mark.db
async def test_a_process_hung_in_a_signature_holds_the_card_no_longer_than_a_signature_takes(
    db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each signature holds the card's row in the database while the card answers (so that processes signing at once
    do not each send a wrong PIN). A process that hangs in that moment — stopped, its event loop stuck — would hold
    it as long as its session lasts, and every other process on every host answer ukey_unreachable meanwhile. The
    server ends a session idle in that transaction longer than a signature may take: the others sign again."""
    card = await start_ukey(CARD)
    hung, other = UKeyBridge(card.url, "88888888", timeout_s=0.3), UKeyBridge(card.url, "88888888", timeout_s=0.3)
    for bridge in (hung, other):
        bridge.share(db_pool)
        await bridge.refusal.settle()
    holding = asyncio.Event()

    async def hangs(method: str, args: dict[str, Any]) -> list[Any]:
        holding.set()
        await asyncio.Event().wait()  # neither answered nor timed out: the process is stuck
        raise AssertionError("unreachable")

    monkeypatch.setattr(hung, "_answered", hangs)
    stuck = asyncio.create_task(hung.sign(SIGNED))
    try:
        await asyncio.wait_for(holding.wait(), 10)
        signature, _ = await asyncio.wait_for(other.sign(SIGNED), 30)
        assert verify_bytes(CARD.certificate_der, SIGNED, signature)
    finally:
        stuck.cancel()
        with contextlib.suppress(BaseException):
            await stuck
        await hung.close()
        await other.close()
        await card.stop()


async def test_an_answer_without_a_signature_stops_nothing() -> None:
    """The control answering a signature without one is refused, but the card refused no PIN: the next is sent."""
    card = await start_ukey(CARD)
    answer = card.answer
    card.answer = lambda request: {**answer(request), "_args": {"Result": True, "Data": ["不是签名"]}}  # type: ignore[method-assign]
    bridge = UKeyBridge(card.url, "88888888")
    try:
        with pytest.raises(UKeyRefused, match="holds no signature"):
            await bridge.sign(SIGNED)
        assert bridge.refused is None
        card.answer = answer  # type: ignore[method-assign]
        assert verify_bytes(CARD.certificate_der, SIGNED, (await bridge.sign(SIGNED))[0])
    finally:
        await bridge.close()
        await card.stop()


async def test_a_control_that_never_answers_is_out_of_reach_after_the_timeout() -> None:
    async def silent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"_id": 0, "_method": "open"}))
        async for _frame in ws:
            pass  # hears, never answers
        return ws

    app = web.Application()
    app.router.add_get("/", silent)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    bridge = UKeyBridge(f"ws://127.0.0.1:{port}", timeout_s=0.5)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UKeyUnreachable, match="TimeoutError"):
            await bridge.sign(SIGNED)
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await bridge.close()
        await runner.cleanup()


async def test_an_older_rsa_card_signs_the_sha1_digest_made_here() -> None:
    """cus-sec_SpcSignDataNoHashAsPEM (an RSA card issued before 2022-07, as the public signers use it): the card is
    sent the SHA-1 digest of the text, in hex, and its signature is the RSA-SHA1 signature of the text itself. An SM2
    card does not sign a SHA-1 digest: its refusal is said."""
    async with _on_a_card(CARD, lambda url: UKeyBridge(url, "88888888", method=SIGN_NO_HASH)) as (card, bridge):
        signature, cert_no = await bridge.sign(SIGNED)
        assert verify_bytes(CARD.certificate_der, SIGNED, signature) and cert_no == CARD.key_name
        assert not verify_bytes(CARD.certificate_der, SIGNED + b" ", signature)
        assert card.calls == [SIGN_NO_HASH]
        big = b"x" * (121 * 1024)  # only its digest goes to the card: more than one frame of text is signed
        assert verify_bytes(CARD.certificate_der, big, (await bridge.sign(big))[0])
    async with _on_a_card(SM2_CARD, lambda url: UKeyBridge(url, "88888888", method=SIGN_NO_HASH)) as (_, bridge):
        with pytest.raises(UKeyRefused, match="not RSA"):
            await bridge.sign(SIGNED)
    with pytest.raises(ValueError, match="found 'SpcSignData'"):
        UKeyBridge("ws://127.0.0.1:9", method="SpcSignData")


@contextlib.asynccontextmanager
async def _on_a_card(key: SignatureBackend, reach: Any) -> AsyncIterator[tuple[Any, Any]]:
    """A card stand-in holding ``key`` and what ``reach`` makes of its URL (a bridge, a signer), both closed after."""
    card = await start_ukey(key)
    user = reach(card.url)
    try:
        yield card, user
    finally:
        await user.close()
        await card.stop()


def test_a_platform_is_configured_with_its_key_files_or_its_ukey(tmp_path: Path) -> None:
    def platform(lines: str) -> config.RealtimePlatform:
        cfg = tmp_path / "cbec.toml"
        cfg.write_text(f'[realtime.platforms.46012609BQ]\ntoken = "{"t" * 24}"\n{lines}', encoding="utf-8")
        [found] = config.load(cfg, env={}).realtime.platforms
        return found

    found = platform('ukey_url = "ws://10.0.0.5:61232"\nukey_password = "12345678"\n')
    assert (found.ukey_url, found.ukey_password, found.key_file) == ("ws://10.0.0.5:61232", "12345678", None)
    assert "12345678" not in repr(found) and found.ukey_method == SIGN
    older = platform(f'ukey_url = "ws://10.0.0.5:61232"\nukey_method = "{SIGN_NO_HASH}"\n')
    [bridge] = workers.platform_keys(config.RealtimeSettings((older,))).values()
    assert isinstance(bridge, UKeyBridge) and bridge.method == SIGN_NO_HASH
    for wrong in ('ukey_url = "http://10.0.0.5:61232"\n', 'ukey_url = "ws://h:61232"\nkey_file = "k.pem"\n',
                  'ukey_password = "1"\nkey_file = "k.pem"\ncert_file = "c.pem"\n', "",
                  f'ukey_method = "{SIGN}"\nkey_file = "k.pem"\ncert_file = "c.pem"\n'):  # fmt: skip
        with pytest.raises(ValueError, match="ukey_url"):
            platform(wrong)
    with pytest.raises(ValueError, match=f"ukey_method: one of {SIGN}, {SIGN_NO_HASH}; found 'NoHash'"):
        platform('ukey_url = "ws://h:61232"\nukey_method = "NoHash"\n')


@pytest.mark.db
async def test_customs_question_is_answered_with_an_upload_the_platforms_ukey_signed(db_dsn: str) -> None:
    """The whole way with the platform's key on its UKey: customs (the sandbox) asks, the worker has the card sign the
    upload through the client control, customs verifies it with the card's certificate. The card pulled out: the
    upload is a dead letter saying why (not retried: a card refusing is a person's to mend); put back, a reload
    (SIGHUP, the configuration unchanged) has the card asked again, and the replay uploads it."""
    from gateway import server
    from gateway.config import RealtimePlatform, RealtimeSettings

    card = await start_ukey(CARD)
    settings = RealtimeSettings((RealtimePlatform(EBP_CODE, "t" * 24, None, None, ukey_url=card.url,
                                                  ukey_password="88888888"),))  # fmt: skip
    bridge = workers.platform_keys(settings)[EBP_CODE]
    assert isinstance(bridge, UKeyBridge)
    try:
        async with running_stack(db_dsn, realtime=platforms(), platform_keys={EBP_CODE: bridge}) as stack:
            # the sandbox read the card's certificate through its control (gateway.server.sandbox_realtime)
            assert stack.sandbox.config.realtime_certs == [CARD.certificate_der]
            first, second = parcel(95), parcel(96)
            for s in (first, second):
                r = await stack.client.request("POST", "/v1/payment-data", json_body=samples.payment_data(s),
                                               key=PLATFORM_A)  # fmt: skip
                assert r.status == 201, r.body
            await stack.sandbox.sandbox.ask_payment_data(EBP_CODE, first.order_doc["orderNo"])

            async def states() -> list[str]:
                page = (await stack.client.get("/v1/payment-data/questions?state=any")).body
                return [q["state"] for q in page["items"]]

            async def uploaded(n: int) -> bool:
                return (await states()).count("uploaded") == n

            await wait_for(lambda: uploaded(1), what="the upload the card signed")
            [upload] = stack.sandbox.sandbox.realtime_uploads
            assert upload["verified"] and upload["code"] == "10000", upload

            card.present = False
            await stack.sandbox.sandbox.ask_payment_data(EBP_CODE, second.order_doc["orderNo"])

            async def dead() -> bool:
                return bool(await stack.fetch("SELECT 1 FROM jobs WHERE kind = 'realtime_upload' AND state = 'dead'"))

            await wait_for(dead, what="the upload a dead letter")
            [job] = await stack.fetch("SELECT id, attempts, last_error FROM jobs WHERE state = 'dead'")
            assert job["attempts"] == 1 and "未找到卡片" in job["last_error"], dict(job)
            card.present = True
            assert bridge.refused is not None and "未找到卡片" in bridge.refused
            assert server.RealtimeReload(settings, {EBP_CODE: bridge}, lambda *_: None).again(settings) is False
            assert bridge.refused is None
            assert (await stack.client.request("POST", "/v1/queue/replay", json_body={"job_ids": [job["id"]]})).status \
                == 200  # fmt: skip
            await wait_for(lambda: uploaded(2), what="the replayed upload")
    finally:
        await bridge.close()
        await card.stop()


async def test_a_platforms_card_that_refused_is_asked_nothing_more_until_a_reload(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 179 platform's UKey with a wrong PIN configured: the first upload is a dead letter, as before, but every
    other question's upload (and each replay, the payment handed over again among them) sent the wrong PIN to the card
    again — a few questions locked it. Now the card is asked once: the other uploads wait (deferred, saying why) until
    a reload (SIGHUP) asks it again, and then go by themselves."""
    from gateway import server
    from gateway.config import RealtimePlatform, RealtimeSettings

    monkeypatch.setattr(workers, "UKEY_REFUSED_RETRY_S", 0.2)
    card = await start_ukey(CARD)
    platform = RealtimePlatform(EBP_CODE, "t" * 24, None, None, ukey_url=card.url, ukey_password="00000000")
    settings = RealtimeSettings((platform,))
    bridge = workers.platform_keys(settings)[EBP_CODE]
    try:
        async with running_stack(db_dsn, realtime=platforms(), platform_keys={EBP_CODE: bridge}) as stack:
            parcels = [parcel(97), parcel(98), parcel(99)]
            for s in parcels:
                r = await stack.client.request("POST", "/v1/payment-data", json_body=samples.payment_data(s),
                                               key=PLATFORM_A)  # fmt: skip
                assert r.status == 201, r.body
            await stack.sandbox.sandbox.ask_payment_data(EBP_CODE, parcels[0].order_doc["orderNo"])

            async def jobs(state: str) -> int:
                return len(await stack.fetch("SELECT 1 FROM jobs WHERE kind = 'realtime_upload' AND state = $1",
                                             state))  # fmt: skip

            await wait_for(lambda: _true_when(jobs("dead"), 1), what="the refused upload a dead letter")
            for s in parcels[1:]:
                await stack.sandbox.sandbox.ask_payment_data(EBP_CODE, s.order_doc["orderNo"])
            # handed over again: the dead upload of its order is replayed
            again = samples.payment_data(parcels[0])
            again["payExchangeInfoHead"]["note"] = "again"
            assert (await stack.client.request("POST", "/v1/payment-data", json_body=again)).status == 200

            async def deferred() -> bool:
                rows = await stack.fetch("SELECT state, last_error FROM jobs WHERE kind = 'realtime_upload'")
                return len(rows) == 3 and all(r["state"] == "queued" and "asked nothing more until a reload" in
                                              (r["last_error"] or "") for r in rows)  # fmt: skip

            await wait_for(deferred, what="the other uploads waiting for a reload")
            await asyncio.sleep(0.5)  # deferred again and again meanwhile, the card not asked
            assert card.calls.count(SIGN) == 1, card.calls
            # the PIN mended in the configuration, then SIGHUP: a new key, and the uploads go
            mended = RealtimeSettings((dataclasses.replace(platform, ukey_password="88888888"),))
            assert server.RealtimeReload(settings, {EBP_CODE: bridge}, stack.forwarding.renew_realtime  # type: ignore[union-attr]
                                         ).again(mended) is True
            await wait_for(lambda: _true_when(jobs("done"), 3), what="the uploads signed after the reload")
    finally:
        await bridge.close()
        await card.stop()


async def _true_when(count: Any, n: int) -> bool:
    return bool(await count == n)


@pytest.mark.db
async def test_separately_started_workers_share_a_platforms_card_refusal_through_the_database(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `cbec worker`s started separately (as on two hosts) for a 179 platform whose UKey's PIN is configured wrong.
    The API processes of one `cbec serve` shared the card's refusal, but each separate worker sent the wrong PIN once
    more of its own before it stopped — a few workers locked the card. Now the refusal is in the database: a worker
    started after it sends the card nothing; one reloaded with the PIN mended (SIGHUP) uploads, while the other, not
    reloaded (its host's configuration not mended yet), still sends nothing — until it is reloaded too."""
    from gateway.config import ForwardingSettings, RealtimePlatform, RealtimeSettings
    from tests.apiutil import test_settings as settings_with
    from tests.test_realtime import TOKEN

    monkeypatch.setattr(workers, "UKEY_REFUSED_RETRY_S", 0.1)
    monkeypatch.setattr(server.logs, "configure", lambda *_args, **_kw: None)
    hangups: list[Any] = []  # each worker's SIGHUP, in the order they started (one process here: no real signal)

    @contextlib.contextmanager
    def on_hangup(callback: Any) -> Any:
        hangups.append(callback)
        yield

    monkeypatch.setattr(server, "on_hangup", on_hangup)
    # each worker settles its own heap for the process it would have alone; here they overlap in one
    monkeypatch.setattr(server, "settled_heap", contextlib.nullcontext)
    card = await start_ukey(CARD)
    wrong = RealtimePlatform(EBP_CODE, TOKEN, None, None, ukey_url=card.url, ukey_password="00000000")
    mended = dataclasses.replace(wrong, ukey_password="88888888")

    def settings(platform: RealtimePlatform) -> config.Settings:
        return settings_with(database_url=db_dsn, data_dir=tmp_path, forwarding=ForwardingSettings(worker_poll_s=0.05),
                             realtime=RealtimeSettings((platform,)))  # fmt: skip

    reader = UKeyBridge(card.url)  # the sandbox verifies the uploads with the card's certificate
    started: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    try:
        async with running_stack(db_dsn, worker=False, realtime=platforms(),
                                 platform_keys={EBP_CODE: reader}) as stack:  # fmt: skip

            async def worker(name: str) -> int:
                configured = [settings(wrong)]
                ready, stop = asyncio.Event(), asyncio.Event()
                task = asyncio.create_task(server.run_worker(
                    configured[0], sandbox_url=stack.sandbox.url, worker_id=name, watchdog=False, ready=ready,
                    stop=stop, reload=lambda: configured[-1]))  # fmt: skip
                await asyncio.wait_for(ready.wait(), 60)
                started.append((stop, task))
                mending.append(lambda: configured.append(settings(mended)))
                return len(started) - 1

            mending: list[Any] = []

            async def stopped(n: int) -> None:
                stop, task = started[n]
                stop.set()
                await asyncio.wait_for(task, 60)

            async def question(seed: int) -> None:
                s = parcel(seed)
                r = await stack.client.request("POST", "/v1/payment-data", json_body=samples.payment_data(s),
                                               key=PLATFORM_A)  # fmt: skip
                assert r.status == 201, r.body
                await stack.sandbox.sandbox.ask_payment_data(EBP_CODE, s.order_doc["orderNo"])

            async def upload(n: int) -> str | None:
                """The state of the n-th upload: "waiting" when deferred until a reload."""
                rows = await stack.fetch("SELECT state, last_error FROM jobs WHERE kind = 'realtime_upload' "
                                         "ORDER BY id")  # fmt: skip
                if len(rows) <= n:
                    return None
                waiting = rows[n]["state"] == "queued" and "asked nothing more until a reload" in (
                    rows[n]["last_error"] or "")
                return "waiting" if waiting else str(rows[n]["state"])

            async def upload_is(n: int, *states: str) -> bool:
                return await upload(n) in states

            host_a = await worker("host-a")
            await question(111)
            await wait_for(lambda: upload_is(0, "dead"), what="the upload the card refused a dead letter")
            assert card.wrong_pins == 1
            await stopped(host_a)

            host_b = await worker("host-b")  # started separately, after the refusal: sends the card nothing
            await question(112)
            await wait_for(lambda: upload_is(1, "waiting", "dead"), what="host b's upload tried")
            assert card.wrong_pins == 1 and await upload(1) == "waiting", card.calls

            host_a = await worker("host-a")  # started again, its PIN still the wrong one
            mending[host_b]()  # host b's configuration mended, and host b alone reloaded
            hangups[host_b]()
            await wait_for(lambda: upload_is(1, "done"), what="host b's upload signed after its reload")
            await stopped(host_b)
            await question(113)  # host a alone: asks the card nothing, though host b's reload put the card right
            await wait_for(lambda: upload_is(2, "waiting", "dead"), what="host a's upload tried")
            assert await upload(2) == "waiting"
            await asyncio.sleep(0.3)  # deferred again and again meanwhile
            assert card.wrong_pins == 1, card.calls
            mending[host_a]()
            hangups[host_a]()
            await wait_for(lambda: upload_is(2, "done"), what="host a's upload signed after its reload")
            assert card.wrong_pins == 1
            assert [u["verified"] for u in stack.sandbox.sandbox.realtime_uploads] == [True, True]
    finally:
        for stop, task in started:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 60)
        await reader.close()
        await card.stop()


async def test_a_reload_reaches_the_ukeys_anew_and_closes_the_connections_it_had() -> None:
    """SIGHUP with a 179 platform's token rotated: the UKeys are reached through new connections and the old ones are
    closed (a card answers for itself at each signature). `cbec config check` names where each UKey signs."""
    from gateway import server
    from gateway.config import RealtimePlatform, RealtimeSettings
    from gateway.configcheck import check
    from gateway.workers import PlatformKey, platform_keys
    from tests.apiutil import test_settings as settings_with

    one = RealtimePlatform("46012609BQ", "a" * 20, None, None, ukey_url="ws://127.0.0.1:9/one")
    two = RealtimePlatform("46012609ZZ", "b" * 20, None, None, ukey_url="ws://127.0.0.1:9/two")
    running = RealtimeSettings((one, two))
    closed: list[str] = []

    def watched(keys: dict[str, PlatformKey]) -> dict[str, PlatformKey]:
        for key in keys.values():
            assert isinstance(key, UKeyBridge)

            async def close(url: str = key.url) -> None:
                closed.append(url)

            key.close = close  # type: ignore[method-assign]
        return keys

    keys = watched(platform_keys(running))
    put: list[dict[str, PlatformKey]] = []
    reload = server.RealtimeReload(running, keys, lambda _r, k: put.append(watched(dict(k))))
    rotated = RealtimeSettings((one, RealtimePlatform("46012609ZZ", "c" * 20, None, None, ukey_url=two.ukey_url)))
    assert reload.again(rotated) is True
    await asyncio.sleep(0)  # closed in the background
    [now] = put
    assert now.keys() == keys.keys() and not {id(k) for k in now.values()} & {id(k) for k in keys.values()}
    assert sorted(closed) == [one.ukey_url, two.ukey_url]
    assert reload.again(rotated) is False and len(put) == 1
    said = [line.text for line in check(settings_with(realtime=running))]
    assert "179 payment data of 46012609BQ: signed by its UKey through the E-Port client control at " \
           "ws://127.0.0.1:9/one" in said  # fmt: skip


async def test_cbec_config_check_asks_each_ukey_for_its_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cbec config check` asks each UKey (the gateway's signing key's, each platform's) for its certificate through
    its control: its serial and end; a control that does not answer, or a card that refuses, is a warning (the
    uploads wait), and no PIN is printed. An SM2 card asked to sign a SHA-1 digest is an error (nothing it signed that
    way would be taken)."""
    from gateway.cli import main

    card, sm2_card = await start_ukey(CARD), await start_ukey(SM2_CARD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]  # nothing listens there once the socket is closed
    cfg = tmp_path / "cbec.toml"
    cfg.write_text(f'signing_ukey_url = "{card.url}"\nsigning_ukey_password = "88888888"\n'
                   f'signing_ukey_method = "{SIGN_NO_HASH}"\n'
                   f'[realtime.platforms.46012609BQ]\ntoken = "{"a" * 24}"\nukey_url = "{card.url}"\n'
                   'ukey_password = "88888888"\n'
                   f'[realtime.platforms.46012609ZZ]\ntoken = "{"b" * 24}"\nukey_url = "ws://127.0.0.1:{nobody}"\n'
                   f'[realtime.platforms.46012609YY]\ntoken = "{"c" * 24}"\nukey_url = "{sm2_card.url}"\n'
                   f'ukey_method = "{SIGN_NO_HASH}"\n',
                   encoding="utf-8")  # fmt: skip
    try:
        status = await asyncio.to_thread(main, ["config", "check", "--config", str(cfg)])
    finally:
        await card.stop()
        await sm2_card.stop()
    out = capsys.readouterr().out
    assert status == 2, out
    assert f"error  179 payment data of 46012609YY: its UKey holds an SM2 key, and {SIGN_NO_HASH} signs a SHA-1 " \
        f"digest for RSA cards only: sign through {SIGN}" in out  # fmt: skip
    assert "46012609BQ: its UKey holds an SM2" not in out and "signing key: its UKey holds an SM2" not in out
    assert f"ok     signing key: on a UKey, through the E-Port client control at {card.url}" in out
    assert f"ok     signing key: its UKey holds certificate {CARD.key_name}, valid until " in out
    assert f"ok     179 payment data of 46012609BQ: its UKey holds certificate {CARD.key_name}, valid until " in out
    assert f"warn   179 payment data of 46012609ZZ: the UKey's client control at ws://127.0.0.1:{nobody}" in out
    assert "88888888" not in out


# --- the gateway's own signing key on a UKey (UKeySigner) ------------------------------------------------------


def _inventory(seed: int) -> dict[str, Any]:
    """A JSON CEB621, which the gateway signs."""
    return cast(dict[str, Any], json.loads(json.dumps(samples.shipment(random.Random(seed)).inventory, default=str)))


async def test_the_gateways_key_on_a_ukey_signs_its_json_declarations() -> None:
    """A JSON inventory rendered, its SignedInfo signed by the card (RSA, and SM2 answering raw r‖s as cards do),
    checked as XML is: the signature verifies with the card's certificate alone, which the card gave once."""
    for key in (CARD, SM2_CARD):
        card = await start_ukey(key)
        pipeline = Pipeline(SchemaSet(), signer=UKeySigner(card.url, "88888888"))
        try:
            rendered = pipeline.render_json(_inventory(1))
            assert rendered.to_sign
            await pipeline.sign(rendered)
            checked = pipeline.check_rendered(rendered)
            assert checked.message.signed
            assert signing.verify(checked.raw, trusted_certs=[key.certificate_der]).ok
            assert f"<ds:KeyName>{key.key_name}</ds:KeyName>".encode() in checked.raw
            await pipeline.sign(again := pipeline.render_json(_inventory(2)))
            assert signing.verify(pipeline.check_rendered(again).raw, trusted_certs=[key.certificate_der]).ok
            assert card.calls == [CERTIFICATE, SIGN, SIGN]
            with pytest.raises(RuntimeError, match="awaited"):  # cbec validate's way: a key in the process only
                pipeline.check_json(_inventory(3))
        finally:
            assert isinstance(pipeline.signer, UKeySigner)
            await pipeline.signer.close()
            await card.stop()


async def test_the_gateways_key_on_an_older_rsa_card_signs_through_the_digest_made_here() -> None:
    """signing_ukey_method = cus-sec_SpcSignDataNoHashAsPEM: the declaration's SignedInfo made here, its SHA-1 digest
    signed by the card, the signature verified with the card's certificate, and the declaration verifies as RSA-SHA1.
    On an SM2 card that method cannot give a signature customs takes: refused before anything is sent to sign."""
    async with _on_a_card(CARD, lambda url: UKeySigner(url, "88888888", method=SIGN_NO_HASH)) as (card, signer):
        root = etree.fromstring(render(_inventory(7)))
        await signer.sign(root)
        assert signing.verify(root, trusted_certs=[CARD.certificate_der]).ok and signer.up
        assert card.calls == [CERTIFICATE, SIGN_NO_HASH]
    async with _on_a_card(SM2_CARD, lambda url: UKeySigner(url, "88888888", method=SIGN_NO_HASH)) as (card, signer):
        with pytest.raises(SigningUnavailable) as caught:
            await signer.sign(etree.fromstring(render(_inventory(8))))
        assert caught.value.code == "signing.ukey_bad_signature" and "SM2" in caught.value.message
        assert card.calls == [CERTIFICATE]  # no PIN sent for a signature that could not be used


async def test_a_card_renewed_in_the_reader_is_read_again_and_a_card_signing_wrongly_is_caught() -> None:
    """Another card put in (the agent's renewed certificate): its first signature names another certificate, so the
    signer reads the new one and signs the declaration again for it. A card whose signature does not verify with the
    certificate it gives is refused here (signing.ukey_bad_signature), before customs would (-621028)."""
    renewed = RsaSha1Key.from_pem(*generate_test_key("rsa", "平台 UKey renewed"))
    card = await start_ukey(CARD)
    signer = UKeySigner(card.url, "88888888")
    try:
        root = etree.fromstring(render(_inventory(4)))
        await signer.sign(root)
        assert signing.verify(root, trusted_certs=[CARD.certificate_der]).ok
        card.key = renewed
        await signer.sign(root)
        assert signing.verify(root, trusted_certs=[renewed.certificate_der]).ok
        assert card.calls == [CERTIFICATE, SIGN, SIGN, CERTIFICATE, SIGN]
        assert signer.valid_until == signing.certificate_validity(renewed.certificate_der)[1]

        card.key = cast(SignatureBackend, _Mismatched(signs=CARD, gives=renewed))
        with pytest.raises(SigningUnavailable) as caught:
            await signer.sign(root)
        assert caught.value.code == "signing.ukey_bad_signature"
        assert "does not verify with its certificate" in caught.value.message
        card.key = renewed
        await signer.sign(root)  # not a refusal: the next declaration goes to the card again
        assert signer.up
    finally:
        await signer.close()
        await card.stop()


class _Mismatched:
    """A card that signs with one key and gives another's certificate."""

    def __init__(self, *, signs: SignatureBackend, gives: SignatureBackend) -> None:
        self.sign_bytes = signs.sign_bytes
        self.certificate_der = gives.certificate_der


async def test_a_card_that_refused_is_not_asked_again_until_a_reload() -> None:
    """A wrong PIN: signing.ukey_refused, and the next declarations are refused without a word to the card (each would
    count towards locking it); the standing says why. The same settings read again by a reload are not "the same" as
    a refusing UKey in force: SIGHUP is how the operators say the card is put right. Handed to another API process, a
    UKey signer takes the certificate known with it."""
    card = await start_ukey(CARD, pin="12345678")
    wrong = server.Signatures.on_ukey((card.url, "00000000", SIGN, None), None, False, None)
    try:
        await wrong.start()
        ukey = wrong.signer
        assert isinstance(ukey, UKeySigner) and ukey.up
        for _ in range(3):
            with pytest.raises(SigningUnavailable) as caught:
                await ukey.sign(etree.fromstring(render(_inventory(5))))
            assert caught.value.code == "signing.ukey_refused" and "口令错误" in caught.value.message
        assert card.calls == [CERTIFICATE, SIGN] and not ukey.up
        standing = ukey.standing(datetime.now(UTC))
        assert standing["state"] == "ukey_refused" and "口令错误" in standing["reason"]
        assert standing["ukey"] == card.url and standing["key_name"] == CARD.key_name
        again = server.Signatures.on_ukey((card.url, "00000000", SIGN, None), None, False, None)
        assert again.same_as(wrong)  # a reload keeps the signer in force, and asks the card again
        wrong.ask_again()
        assert ukey.refused is None and ukey.up
        with pytest.raises(SigningUnavailable, match="口令错误"):
            await ukey.sign(etree.fromstring(render(_inventory(5))))
        assert card.calls == [CERTIFICATE, SIGN, SIGN]
        right = server.Signatures.on_ukey((card.url, "12345678", SIGN, None), None, False, None)
        assert right.same_as(server.Signatures.on_ukey((card.url, "12345678", SIGN, None), None, False, None))
        assert not right.same_as(server.Signatures.on_ukey((card.url, "12345678", SIGN_NO_HASH, None), None, False,
                                                            None))  # fmt: skip
        assert not right.same_as(server.Signatures.from_pem(("rsa-sha1", *KEY_FILES), None, False, None))
        handed = pickle.loads(pickle.dumps(wrong))
        assert isinstance(handed.signer, UKeySigner) and handed.signer.valid_until == ukey.valid_until
        assert handed.signer.bridge.password == "00000000" and handed.signer.bridge.method == SIGN
        assert handed.signer.configuration == ukey.configuration  # the card's refusal known by the same name
    finally:
        await wrong.close()
        await card.stop()


def _refusal_seen(signatures: server.Signatures, dsn: str, out: Any) -> None:
    """In a spawned process (an API process of `cbec serve --processes N`): what its UKey signer says of the card,
    once it reads the card's refusal in the database, as an API process does at its start."""

    async def seen() -> tuple[str | None, str]:
        ukey = signatures.signer
        assert isinstance(ukey, UKeySigner)
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            ukey.share(pool)
            await ukey.settle()
        finally:
            await pool.close()
        refused = ukey.refused
        return refused.code if refused is not None else None, ukey.standing(datetime.now(UTC))["state"]

    out.put(asyncio.run(seen()))


@pytest.mark.db
async def test_the_api_processes_share_the_cards_refusal(db_dsn: str) -> None:
    """`cbec serve --processes N`: a wrong PIN refused in one API process stops the others too (they were handed the
    first process's configuration with the signer, and read the card's refusal in the database): tried once, not once
    in each process, towards locking the card. A reload of the first process asks the card again for them all."""
    import multiprocessing

    card = await start_ukey(CARD, pin="12345678")
    settings = config.Settings(signing_ukey_url=card.url, signing_ukey_password="00000000", processes=2)
    first = server.Signatures.from_settings(settings)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    pool = await create_pool(db_dsn, min_size=1, max_size=4)
    try:
        ukey = first.signer
        assert isinstance(ukey, UKeySigner)
        ukey.share(pool)
        await first.start()
        child = context.Process(target=_refusal_seen, args=(first, db_dsn, out))  # as ApiProcesses hands them over
        child.start()
        assert await asyncio.to_thread(out.get, timeout=60) == (None, "valid")
        await asyncio.to_thread(child.join, 60)
        with pytest.raises(SigningUnavailable) as caught:
            await ukey.sign(etree.fromstring(render(_inventory(6))))
        assert caught.value.code == "signing.ukey_refused"
        assert card.calls == [CERTIFICATE, SIGN]
        child = context.Process(target=_refusal_seen, args=(first, db_dsn, out))
        child.start()
        assert await asyncio.to_thread(out.get, timeout=60) == ("signing.ukey_refused", "ukey_refused")
        await asyncio.to_thread(child.join, 60)
        # in this process too, a signer handed the first one's configuration (another API process's) sends the card
        # nothing
        other = pickle.loads(pickle.dumps(first))
        assert isinstance(other.signer, UKeySigner)
        other.signer.share(pool)
        with pytest.raises(SigningUnavailable) as caught:
            await other.signer.sign(etree.fromstring(render(_inventory(7))))
        assert caught.value.code == "signing.ukey_refused" and "refused a signature in" in caught.value.message
        assert card.calls == [CERTIFICATE, SIGN]
        # the card's PIN put right, then SIGHUP: the first process asks the card again, and so do the API processes
        card.pin = "00000000"
        first.ask_again()
        await ukey.settle()
        root = etree.fromstring(render(_inventory(7)))
        await other.signer.sign(root)
        assert signing.verify(root, trusted_certs=[CARD.certificate_der]).ok
        assert card.wrong_pins == 1
    finally:
        await first.close()
        await pool.close()
        await card.stop()


KEY_FILES = generate_test_key("rsa", "agent in files")


async def test_no_card_to_read_the_certificate_from_stops_nothing() -> None:
    """No card in the reader when the certificate is read (at start): said, but not a refusal that stops the calls —
    no PIN was sent. The card put in, the next declaration is signed without a reload."""
    card = await start_ukey(CARD)
    card.present = False
    ukey = UKeySigner(card.url, "88888888")
    try:
        with pytest.raises(SigningUnavailable) as caught:
            await ukey.sign(etree.fromstring(render(_inventory(6))))
        assert caught.value.code == "signing.ukey_refused" and "未找到卡片" in caught.value.message
        assert ukey.refused is None and not ukey.up
        assert ukey.standing(datetime.now(UTC))["state"] == "ukey_unreachable"
        card.present = True
        root = etree.fromstring(render(_inventory(6)))
        await ukey.sign(root)
        assert signing.verify(root, trusted_certs=[CARD.certificate_der]).ok and ukey.up
        assert ukey.standing(datetime.now(UTC))["state"] == "valid"
    finally:
        await ukey.close()
        await card.stop()


def test_the_gateways_key_is_in_files_or_on_a_ukey(tmp_path: Path) -> None:
    cfg = tmp_path / "cbec.toml"
    cfg.write_text('signing_ukey_url = "ws://10.0.0.7:61232"\nsigning_ukey_password = "12345678"\n', encoding="utf-8")
    loaded = config.load(cfg, env={})
    assert (loaded.signing_ukey_url, loaded.signing_ukey_password) == ("ws://10.0.0.7:61232", "12345678")
    assert "12345678" not in repr(loaded)
    env = {"CBEC_SIGNING_UKEY_URL": "ws://10.0.0.8:61232"}
    assert config.load(None, env=env).signing_ukey_url == "ws://10.0.0.8:61232"
    for wrong, said in (({"CBEC_SIGNING_UKEY_URL": "http://10.0.0.8:61232"}, "ws://<host>:61232"),
                        ({**env, "CBEC_SIGNING_KEY_FILE": "k.pem"}, "not both"),
                        ({"CBEC_SIGNING_UKEY_PASSWORD": "1"}, "is not set"),
                        ({"CBEC_SIGNING_UKEY_METHOD": SIGN_NO_HASH}, "is not set"),
                        ({**env, "CBEC_SIGNING_UKEY_METHOD": "SpcSignDataNoHashAsPEM"}, SIGN_NO_HASH)):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(said)):
            config.load(None, env=wrong)
    assert config.load(None, env=env).signing_ukey_method == SIGN
    assert config.load(None, env={**env, "CBEC_SIGNING_UKEY_METHOD": SIGN_NO_HASH}).signing_ukey_method == SIGN_NO_HASH


@pytest.mark.db
async def test_cbec_serve_signs_with_the_agents_ukey_and_a_reload_puts_a_refusing_card_right(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cbec serve` with the agent's key on a UKey (a wrong PIN configured): it starts, the card's certificate read; a
    JSON inventory is a 503 (signing.ukey_refused, nothing stored) and the next is refused without asking the card;
    /metrics says the UKey does not sign. The PIN corrected and SIGHUP: the next is signed by the card and stored,
    verifiable with its certificate. The control gone (the PC off): 503 signing.ukey_unreachable with Retry-After,
    and signed again once it is back — no restart."""
    from gateway.config import ForwardingSettings
    from tests import apiutil
    from tests.test_processes import _said, serving_reloaded

    card = await start_ukey(SM2_CARD, pin="12345678")
    port = int(card.url.rsplit(":", 1)[1])
    settings = apiutil.test_settings(database_url=db_dsn, port=0, data_dir=tmp_path, log_format="json",
                                     forwarding=ForwardingSettings(enabled=False), signing_ukey_url=card.url,
                                     signing_ukey_password="00000000")  # fmt: skip
    configured = [settings]
    try:
        async with serving_reloaded(settings, configured, monkeypatch) as (info, logged, session):

            async def inventory(seed: int) -> tuple[int, Any, str | None]:
                async with session.post(info["url"] + "/v1/messages", json=_inventory(seed)) as resp:
                    return resp.status, await resp.json(), resp.headers.get("Retry-After")

            async def ukey_up() -> float:
                async with session.get(info["url"] + "/metrics") as resp:
                    text = await resp.text()
                [line] = [x for x in text.splitlines() if x.startswith("cbec_signing_ukey_up ")]
                return float(line.split()[1])

            assert await ukey_up() == 1
            for seed in (1, 2):
                status, body, _ = await inventory(seed)
                assert status == 503 and body["error"]["issues"][0]["code"] == "signing.ukey_refused", body
            assert card.calls.count(SIGN) == 1 and await ukey_up() == 0

            configured.append(dataclasses.replace(settings, signing_ukey_password="12345678"))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(_said(logged, "signatures_reloaded"), what="the corrected PIN in force")
            status, body, _ = await inventory(3)
            assert status == 202, body
            async with session.get(info["url"] + f"/v1/messages/{body['guid']}") as resp:
                stored = (await resp.json())["raw_xml"].encode()
            assert signing.verify(stored, trusted_certs=[SM2_CARD.certificate_der]).ok
            assert await ukey_up() == 1

            await card.stop()
            status, body, retry = await inventory(4)
            assert status == 503 and body["error"]["issues"][0]["code"] == "signing.ukey_unreachable", body
            assert retry == "30" and await ukey_up() == 0
            card = await start_ukey(SM2_CARD, pin="12345678", port=port)
            assert (await inventory(4))[0] == 202
    finally:
        await card.stop()
    assert any(r["event"] == "signing_ukey_ready" and r["signing_key"] == SM2_CARD.key_name for r in logged)
    assert "12345678" not in repr(logged) and "00000000" not in repr(logged)


async def test_the_sandbox_verifies_179_uploads_with_the_cards_certificates_when_they_give_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The built-in sandbox plays customs, who hold each platform's certificate: a UKey's is read from its card. A
    card that does not give it leaves the sandbox taking any certificate (logged), never failing the start."""
    import structlog
    from structlog.testing import capture_logs

    from gateway.config import RealtimePlatform, RealtimeSettings

    # a logger not cached before capture_logs (an earlier test in this process may have configured logging)
    monkeypatch.setattr(server, "log", structlog.get_logger("gateway.server"))

    card = await start_ukey(SM2_CARD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]
    files = RsaSha1Key.from_pem(*generate_test_key("rsa", "platform in files"))
    ukey, away = UKeyBridge(card.url), UKeyBridge(f"ws://127.0.0.1:{nobody}")
    realtime = RealtimeSettings((RealtimePlatform("46012609BQ", "a" * 20, None, None, ukey_url=card.url),))
    try:
        asks, certs = await server.sandbox_realtime("http://gw", realtime, {"46012609BQ": ukey, "4601ZZ": files})
        assert asks == {"46012609BQ": f"http://gw/ceb/platDataOpen/{'a' * 20}"}
        assert certs == [SM2_CARD.certificate_der, files.certificate_der]
        with capture_logs() as logged:
            _, certs = await server.sandbox_realtime("http://gw", realtime, {"46012609BQ": ukey, "4601ZZ": away})
        assert certs == []
        [said] = [r for r in logged if r["event"] == "sandbox_takes_any_179_certificate"]
        assert said["ebp_code"] == "4601ZZ" and f"127.0.0.1:{nobody}" in said["reason"]
    finally:
        await ukey.close()
        await away.close()
        await card.stop()


async def test_declarations_beyond_what_the_card_signs_in_a_few_seconds_are_answered_at_once() -> None:
    """A card signs one thing at a time (here 20 ms each): up to MAX_WAITING declarations wait their turn and are
    signed; one more is answered at once with signing.ukey_busy, to be sent again, rather than wait longer than its
    sender would. Not a refusal: the card is asked again at the next declaration."""
    from gateway.ukey import MAX_WAITING

    card = await start_ukey(CARD)
    card.signing_s = 0.02
    ukey = UKeySigner(card.url, "88888888", certificate=CARD.certificate_der)
    roots = [etree.fromstring(render(_inventory(10 + i))) for i in range(MAX_WAITING + 3)]
    try:
        outcomes = await asyncio.gather(*(ukey.sign(root) for root in roots), return_exceptions=True)
        busy = [o for o in outcomes if isinstance(o, SigningUnavailable)]
        assert len(busy) == 3 and {o.code for o in busy} == {"signing.ukey_busy"}, outcomes
        assert outcomes[:MAX_WAITING] == [None] * MAX_WAITING
        assert all(signing.verify(root, trusted_certs=[CARD.certificate_der]).ok for root in roots[:MAX_WAITING])
        assert card.calls.count(SIGN) == MAX_WAITING and ukey.waiting == 0 and ukey.up
        await ukey.sign(roots[-1])
        assert signing.verify(roots[-1], trusted_certs=[CARD.certificate_der]).ok
    finally:
        await ukey.close()
        await card.stop()


async def test_cbec_ukey_sandbox_plays_a_card_from_the_command_line(tmp_path: Path) -> None:
    """`cbec ukey-sandbox` listens as the client control does, with a TEST card (SM2 by default) whose certificate it
    writes out: what it signs verifies with that certificate; SIGTERM stops it. Its key files go together."""
    cert_out = tmp_path / "card.pem"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "ukey-sandbox", "--port", "0", "--pin", "12345678",
        "--cert-out", str(cert_out), stdout=asyncio.subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = re.search(r"on (ws://\S+):", line)
        assert url is not None and "PIN 12345678" in line and "(sm2-sm3)" in line, line
        certificate = signing.certificate_to_der(cert_out.read_bytes())
        bridge = UKeyBridge(url.group(1), "12345678")
        try:
            signature, cert_no = await bridge.sign(SIGNED)
        finally:
            await bridge.close()
        assert verify_bytes(certificate, SIGNED, signature) and len(signature) == 64  # SM2, raw r‖s as a card's
        assert cert_no == key_name_for(certificate_serial(certificate)) and cert_no in line
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    alone = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "ukey-sandbox", "--key-file", str(cert_out),
        stderr=asyncio.subprocess.PIPE)  # fmt: skip
    _, err = await alone.communicate()
    assert alone.returncode == 2 and b"go together" in err
