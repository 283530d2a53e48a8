"""gateway.loadgen against real HTTP servers on 127.0.0.1: aiohttp's, and a raw one that answers what a test says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway import loadgen


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[int, list[int]]]:
    """aiohttp answering POST /echo with the body, and 400 with a JSON error when it says "bad"; the ports of the
    connections it saw."""
    peers: list[int] = []

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        body = await request.read()
        if body == b"bad":
            return web.json_response({"error": "bad"}, status=400)
        close = request.headers.get("X-Close") == "yes"
        return web.Response(body=body, status=202, headers={"Connection": "close"} if close else None)

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, peers
    finally:
        await runner.cleanup()


async def test_answers_are_read_in_turn_over_one_kept_alive_connection(echo_server: tuple[int, list[int]]) -> None:
    port, peers = echo_server
    connection = loadgen.LoadConnection("127.0.0.1", port)
    try:
        bodies = [b"x" * n for n in (0, 1, 70_000)] + ["收货人".encode()]
        for body in bodies:
            request = loadgen.post_request(f"127.0.0.1:{port}", "/echo", {"Content-Type": "text/plain"}, body)
            assert await connection.post(request) == (202, body)
        bad = loadgen.post_request(f"127.0.0.1:{port}", "/echo", {}, b"bad")
        status, text = await connection.post(bad)
        assert status == 400 and b'"error"' in text
    finally:
        connection.close()
    assert len(peers) == 5 and len(set(peers)) == 1  # one connection for all


async def test_a_connection_the_server_closes_is_opened_again(echo_server: tuple[int, list[int]]) -> None:
    port, peers = echo_server
    connection = loadgen.LoadConnection("127.0.0.1", port)
    closing = loadgen.post_request(f"127.0.0.1:{port}", "/echo", {"X-Close": "yes"}, b"a")
    plain = loadgen.post_request(f"127.0.0.1:{port}", "/echo", {}, b"b")
    try:
        assert await connection.post(closing) == (202, b"a")
        assert await connection.post(plain) == (202, b"b")
    finally:
        connection.close()
    assert len(set(peers)) == 2


async def _raw_server(answer: bytes | None) -> tuple[asyncio.Server, int]:
    """A server that reads one request's head and answers ``answer`` as it is (None: closes at once)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "Transfer-Encoding chunked"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc", "no Content-Length"),
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.1 status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "closed before the answer was complete"),
        (None, "closed before the answer was complete"),
    ],
)
async def test_an_answer_it_cannot_read_is_an_error_of_that_request(answer: bytes | None, error: str) -> None:
    server, port = await _raw_server(answer)
    connection = loadgen.LoadConnection("127.0.0.1", port)
    try:
        with pytest.raises(loadgen.HttpError, match=error):
            await connection.post(loadgen.post_request(f"127.0.0.1:{port}", "/", {}, b"{}"), timeout=5)
    finally:
        connection.close()
        server.close()
        await server.wait_closed()
