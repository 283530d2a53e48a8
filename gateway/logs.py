"""structlog set-up: JSON lines in production, readable output on a terminal.

Request handlers bind ``request_id`` (and, once known, the message guid and shipment key) with
structlog's contextvars so that every line of one request carries them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError


def _json_line(value: Any, **kw: Any) -> bytes:
    try:
        return orjson.dumps(value, **kw)
    except TypeError:  # a lone surrogate from a hostile request, which UTF-8 cannot carry: escaped, the line kept
        return json.dumps(value, default=repr, ensure_ascii=True).encode("ascii")


def _json_text(value: Any, **kw: Any) -> str:
    return _json_line(value, **kw).decode("utf-8")


def configure(fmt: str = "auto", level: str = "info") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor
    factory: Callable[..., Any]
    if fmt == "console":
        renderer, factory = structlog.dev.ConsoleRenderer(), structlog.PrintLoggerFactory(file=sys.stderr)
    else:
        # orjson writes UTF-8 bytes (Chinese names stay readable) at ~2/3 of the json module's cost per line;
        # one line is written for every request.
        renderer = structlog.processors.JSONRenderer(serializer=_json_line, option=orjson.OPT_NON_STR_KEYS)
        binary = getattr(sys.stderr, "buffer", None)
        if binary is not None:
            factory = structlog.BytesLoggerFactory(file=binary)
        else:  # a text-only stderr (some embedding hosts): the same lines, decoded
            renderer = structlog.processors.JSONRenderer(serializer=_json_text, option=orjson.OPT_NON_STR_KEYS)
            factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    _route_stdlib(fmt, level)


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record comes, not as it was when logging was set up (a test harness or
    an embedding host may replace it, and close the old one)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _ClientFaults(logging.Filter):
    """aiohttp logs a request it cannot even parse (a URL or header line beyond its limits, a malformed request line)
    as an error with a traceback, and answers it 400: the client's fault, which a scanner on the port makes daily.
    Such a record becomes one warning line naming the sender and the reason, so that an error in the log stays
    something for the operators to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = (exc.message or "").splitlines()[0][:200] if exc.message else type(exc).__name__
            record.msg, record.args = "bad_http_request", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
            record.reason = f"{exc.code} {type(exc).__name__}: {reason}"
        return True


def _route_stdlib(fmt: str, level: str) -> None:
    """The standard library's records (asyncpg, the embedded PostgreSQL's package, warnings) in the same form and at
    the same level: one JSON object per line in production, not free text and bare tracebacks among them."""
    text_renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_json_text, option=orjson.OPT_NON_STR_KEYS)
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, text_renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                # _ClientFaults' reason; gateway.db's fields (a migration wait's: who holds the lock)
                structlog.stdlib.ExtraAdder(allow=(
                    "reason", "migration", "rows", "data_dir", "returncode", "stderr", "note", "holder_pid",
                    "holder_client", "holder_application", "holder_state", "holder_since")),
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
            ],
        )
    )
    handler.set_name("cbec")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "cbec"]:  # configured again: replaced, not doubled
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])
    server = logging.getLogger("aiohttp.server")
    for stale in [f for f in server.filters if isinstance(f, _ClientFaults)]:
        server.removeFilter(stale)
    server.addFilter(_ClientFaults())
    logging.captureWarnings(True)
