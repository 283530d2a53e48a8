"""Lists as CSV for a spreadsheet, the console's (operators) and the API's (sellers) alike.

UTF-8 with a byte order mark (Excel and WPS then read the Chinese names as UTF-8), CRLF line ends, one row per item,
written as the pages are read. A cell a spreadsheet would run as a formula is kept as text (CSV injection: a
seller's orderNo or name is text the gateway did not write). Should a page fail to be read once the answer began, the
download ends unfinished (no last chunk), never as a complete-looking short file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger("gateway.csvexport")

#: Items read per query while a download is written (keyset pages, newest first).
PAGE = 500
BOM = b"\xef\xbb\xbf"
#: What a spreadsheet takes for the start of a formula in a cell.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    """A value as a cell: times in ISO 8601, nothing for None; text a spreadsheet would run as a formula gets an
    apostrophe in front (OWASP's advice), so that it shows as the text it is."""
    text = "" if value is None else value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def shipment_row(item: dict[str, Any], columns: Sequence[str]) -> list[str]:
    """A listed shipment as the cells of ``columns``: its missing legs in one cell, its findings in one (each as
    "code: message", one after the other)."""
    findings = " | ".join(f"{f.get('code')}: {f.get('message')}" for f in item.get("findings") or ())
    values = {**item, "missing": " ".join(item.get("missing") or ()), "findings": findings}
    return [cell(values.get(column)) for column in columns]


async def stream(
    request: web.Request, filename: str, header: Sequence[str], pages: AsyncIterator[list[list[str]]]
) -> web.StreamResponse:
    """Answer ``request`` with the CSV of ``header`` then the rows of every page. The first page is read before the
    answer starts, so that a database away then is a plain error answer."""
    first = await anext(pages)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def lines(rows: Iterable[Sequence[str]]) -> bytes:
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(rows)
        return buffer.getvalue().encode("utf-8")

    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="{filename}"'})  # fmt: skip
    await response.prepare(request)
    await response.write(BOM + lines([header]))
    count, rows = 0, first
    try:
        while True:
            await response.write(lines(rows))
            count += len(rows)
            following = await anext(pages, None)
            if following is None:
                break
            rows = following
    except Exception:
        log.exception("csv_export_failed", path=request.path, rows=count)
        if request.transport is not None:
            request.transport.close()  # no terminating chunk: the client sees the download unfinished
        raise
    await response.write_eof()
    log.info("csv_exported", path=request.path, rows=count)
    return response
