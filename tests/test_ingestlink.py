"""The ingest link (gateway.ingestlink): an API process storing through another process's store, over a real Unix
socket, against a real PostgreSQL — as the API processes of `cbec serve --processes N` do."""

from __future__ import annotations

import asyncio
import pickle
import random
from pathlib import Path

import asyncpg
import pytest
import structlog

from gateway import ingestlink, samples
from gateway.config import ForwardingSettings
from gateway.documents import extract
from gateway.ingestlink import IngestClient, IngestUnavailable
from gateway.messages import BY_CODE
from gateway.render import render
from gateway.server import serve
from gateway.store import Submission
from gateway.xmlsafe import parse_message
from tests import apiutil
from tests.apiutil import linked_apps

SAMPLES = Path(__file__).parent / "data" / "samples"
LEGS = ("CEB311", "CEB411", "CEB511", "CEB621")


def sample(code: str) -> bytes:
    return (SAMPLES / f"{code}-9610.xml").read_bytes()


def test_frames_split_anywhere_come_out_whole() -> None:
    """The stream cuts frames where it likes: fed byte by byte or several at once, each comes out once, whole."""
    payloads = [b"", b"x", bytes(range(256)) * 40, b"last"]
    stream = b"".join(ingestlink._frame(rid, p) for rid, p in enumerate(payloads, start=7))
    for chunk in (1, 3, 8, 9, 1000, len(stream)):
        frames = ingestlink._Frames()
        got = [f for i in range(0, len(stream), chunk) for f in frames.feed(stream[i : i + chunk])]
        assert got == list(enumerate(payloads, start=7)), chunk


def test_a_frame_longer_than_any_message_breaks_the_link() -> None:
    with pytest.raises(ValueError, match="frame"):
        list(ingestlink._Frames().feed(ingestlink._HEADER.pack(1, 1 << 31)))


def test_a_message_type_travels_as_the_registry_s_own() -> None:
    """A message's type is pickled by its code: the other side gets its registry's instance, not a copy."""
    for mtype in BY_CODE.values():
        assert pickle.loads(pickle.dumps(mtype)) is mtype


@pytest.mark.db
async def test_messages_sent_to_the_other_process_are_stored_by_the_first_s_store(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Legs sent to either process make one shipment, matched; every message went through the first's store (its
    batcher), none through the other's; answers as one process gives them, replays included."""
    async with linked_apps(db_pool, tmp_path) as (first, other, stores):
        answers = []
        for i, code in enumerate(LEGS):
            answers.append(await (other if i % 2 == 0 else first).post_xml(sample(code)))
        assert [a.status for a in answers] == [202] * 4, [a.body for a in answers]
        assert answers[-1].body["shipments"][0]["state"] == "matched"
        assert stores.first._arrivals == 4 and stores.other._arrivals == 0
        again = await other.post_xml(sample("CEB311"))
        assert again.headers.get("Idempotent-Replay") == "true"
        assert again.body["id"] == answers[0].body["id"]
        shipment = await other.get("/v1/shipments/46012609BQ/ZG20261120394833411340")
        assert shipment.status == 200 and shipment.body["state"] == "matched"


@pytest.mark.db
async def test_a_summary_application_sent_to_the_other_process_is_judged_in_the_first(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A CEB701 carries what the other process read of its inventories (named): stored by the first process's store,
    its warnings (inventories the gateway does not hold) as one process gives them."""
    async with linked_apps(db_pool, tmp_path) as (_, other, stores):
        body = (SAMPLES / "CEB701-1210.xml").read_bytes()
        answer = await other.post_xml(body)
        assert answer.status == 202, answer.body
        assert {w["code"] for w in answer.body["warnings"]} == {"summary.inventory_unknown"}
        assert stores.first._arrivals == 1 and stores.other._arrivals == 0


@pytest.mark.db
async def test_a_message_s_rule_warnings_travel_with_it_to_the_first_process(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The rules' warnings, found where the message was checked (the other process), are in the answer the first
    process's store gives and keeps: a 1210 inventory naming a B/L (direct purchase only)."""
    inventory = samples.shipment(random.Random(71), mode="1210").inventory
    inventory["documents"][0]["billNo"] = "999-57063064"
    async with linked_apps(db_pool, tmp_path) as (first, other, stores):
        answer = await other.post_xml(render(inventory, signer=apiutil.sign_as_agent))
        assert answer.status == 202, answer.body
        assert [(w["code"], w["path"]) for w in answer.body["warnings"]] == [
            ("rule.mode_field_unexpected", "/CEB621Message/Inventory[1]/InventoryHead/billNo")]
        assert stores.first._arrivals == 1 and stores.other._arrivals == 0
        stored = await first.get(f"/v1/messages/{answer.body['guid']}")
        assert stored.body["response"]["warnings"] == answer.body["warnings"]


@pytest.mark.db
async def test_a_conflict_in_the_first_process_answers_as_one(db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    """A second appType 1 for a stored key, sent to the other process: 409 with the store's issue, recorded."""
    async with linked_apps(db_pool, tmp_path) as (first, other, _):
        assert (await first.post_xml(sample("CEB411"))).status == 202
        guid = b"E1CD7BE8-A7D8-4351-A65C-28EA0879D955"  # the message's, not its payment's
        twin = sample("CEB411").replace(guid, guid[:-1] + b"6")
        answer = await other.post_xml(twin)
        assert answer.status == 409, answer.body
        assert [i["code"] for i in answer.body["error"]["issues"]] == ["state.duplicate"]
        rejected = await db_pool.fetchval("SELECT count(*) FROM rejected_messages WHERE http_status = 409")
        assert rejected == 1


@pytest.mark.db
async def test_the_link_down_answers_503_and_stores_nothing(db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    """The first process gone (its socket closed): the other answers 503 with Retry-After — the client sends it
    again later — and nothing of the message is stored."""
    async with linked_apps(db_pool, tmp_path) as (_, other, stores):
        assert (await other.post_xml(sample("CEB311"))).status == 202  # the link is up
        await stores.server.stop()
        await stores.link.aclose()  # as the first process's exit closes it
        answer = await other.post_xml(sample("CEB411"))
        assert answer.status == 503, answer.body
        assert answer.headers["Retry-After"] == "5"
        spec = await other.get("/openapi.json", key=None)
        assert "503" in spec.body["paths"]["/v1/messages"]["post"]["responses"]  # documented as it answers
        assert await db_pool.fetchval("SELECT count(*) FROM messages") == 1


async def test_answers_in_flight_when_the_link_closes_are_unavailable(tmp_path: Path) -> None:
    """A peer that takes the message and closes without answering: the waiting ingest fails as unavailable (503),
    never hangs."""
    async def take_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(ingestlink._HEADER.size)
        writer.close()

    path = tmp_path / "peer.sock"
    peer = await asyncio.start_unix_server(take_and_close, str(path))
    link = IngestClient(path)
    try:
        root, mtype = parse_message(sample("CEB311"), 1 << 20)
        with pytest.raises(IngestUnavailable):
            await asyncio.wait_for(link.ingest(Submission(extract(root, mtype), sample("CEB311"), "t")), 10)
    finally:
        await link.aclose()
        peer.close()
        await peer.wait_closed()


@pytest.mark.db
async def test_a_request_the_first_process_cannot_read_is_answered_failed_not_dropped(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A frame that is no Submission (a broken front): the first process answers it as failed (the front then
    answers 500) and the link stays up for the next; a frame longer than any message closes the link."""
    async with linked_apps(db_pool, tmp_path) as (_, other, stores):
        reader, writer = await asyncio.open_unix_connection(str(stores.server.path))
        writer.write(ingestlink._frame(41, b"not a pickle"))
        head = await asyncio.wait_for(reader.readexactly(ingestlink._HEADER.size), 10)
        rid, length = ingestlink._HEADER.unpack(head)
        kind, text = pickle.loads(await reader.readexactly(length))
        assert (rid, kind) == (41, ingestlink._FAILED) and "UnpicklingError" in text
        writer.write(ingestlink._HEADER.pack(42, 1 << 31))
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed
        writer.close()
        assert (await other.post_xml(sample("CEB311"))).status == 202  # the other process's own link is unharmed


@pytest.mark.db
async def test_an_api_process_whose_first_process_is_gone_exits_with_the_reason(db_dsn: str, tmp_path: Path) -> None:
    """An API process of `cbec serve --processes N` started with no first process listening on its link (it died
    meanwhile): it exits at once, saying why, rather than accept messages it could not store."""
    settings = apiutil.test_settings(
        database_url=db_dsn, port=0, data_dir=tmp_path, log_format="json",
        forwarding=ForwardingSettings(enabled=False),
    )  # fmt: skip
    before = structlog.get_config()  # serve configures the logging: the other tests keep theirs
    try:
        with pytest.raises(SystemExit, match="cannot reach the first one's store: the ingest link is down"):
            await serve(settings, api_only=True, ingest_path=tmp_path / "gone.sock")  # in this task: it reaches us
    finally:
        structlog.configure(**before)
