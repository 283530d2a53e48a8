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
