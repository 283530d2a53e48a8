"""Log set-up (gateway.logs): one JSON object per line in production."""

from __future__ import annotations

import io
import json
import logging
import sys
from decimal import Decimal

import pytest
import structlog

from gateway import logs


@pytest.mark.parametrize("binary", [True, False])
def test_json_lines_keep_chinese_text_and_survive_odd_values(monkeypatch: pytest.MonkeyPatch, binary: bool) -> None:
    raw = io.BytesIO()
    stderr: io.TextIOBase = io.TextIOWrapper(raw, encoding="utf-8", write_through=True) if binary else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    before = structlog.get_config()
    try:
        logs.configure("json", "info")
        log = structlog.get_logger("test")
        log.info("request", consignee="张三", amount=Decimal("12.50"), by_rank={2: "sent"})
        log.debug("hidden")
        log.info("hostile", path="/documents/0/\ud800x")  # a lone surrogate: escaped, the line kept
        logging.getLogger("asyncpg.pool").warning("the standard library's %s", "record")  # the same form
        logging.getLogger("asyncpg.pool").debug("below the level")
    finally:
        structlog.configure(**before)
    text = raw.getvalue().decode("utf-8") if binary else stderr.getvalue()  # type: ignore[attr-defined]
    lines = text.splitlines()
    assert len(lines) == 3  # the debug line is below the level
    assert json.loads(lines[1])["path"] == "/documents/0/\ud800x"
    stdlib = json.loads(lines[2])
    assert stdlib["event"] == "the standard library's record" and stdlib["level"] == "warning"
    assert stdlib["logger"] == "asyncpg.pool" and stdlib["timestamp"].endswith("Z")
    line = json.loads(lines[0])
    assert "张三" in lines[0]  # not \\u escapes
    assert line["event"] == "request" and line["level"] == "info" and line["consignee"] == "张三"
    assert line["amount"] == "Decimal('12.50')" and line["by_rank"] == {"2": "sent"}
    assert line["timestamp"].endswith("Z")


async def test_a_request_aiohttp_cannot_parse_is_one_warning_line_not_an_error_with_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scanner's junk on the port (here a request line beyond aiohttp's 8,190 bytes) is answered 400 by aiohttp,
    which logged it as an error with a traceback; it is the client's fault: one warning line with the reason."""
    import asyncio

    from aiohttp import web

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    before = structlog.get_config()
    runner = web.AppRunner(web.Application(), access_log=None)
    try:
        logs.configure("json", "info")
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), 5)
        writer.close()
        logging.getLogger("aiohttp.server").error("a real error", exc_info=ValueError("kept as it is"))
    finally:
        await runner.cleanup()
        structlog.configure(**before)
    assert answer.split(b" ")[1] == b"400"
    lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [(r["event"], r["level"]) for r in lines] == [("bad_http_request", "warning"), ("a real error", "error")]
    assert lines[0]["reason"].startswith("400 LineTooLong: Got more than 8190 bytes") and "exception" not in lines[0]
    assert "ValueError: kept as it is" in lines[1]["exception"]
