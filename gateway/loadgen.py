"""The benchmark's load: HTTP/1.1 POSTs over kept-alive connections, with as little client work as possible.

Why not aiohttp's client: ``cbec bench`` runs its load on the same two cores as the gateway and PostgreSQL, so
every microsecond the client spends is one the measured processes do not get. aiohttp's client cost ~150 µs of
CPU per request (a session, a connector, a request and a response object, header multidicts, a stream reader);
a real platform's sellers send from their own machines. This client writes requests prepared in advance and reads
only what the benchmark looks at — the status and the body — so its CPU per message is a small share of the
run. It speaks just enough HTTP/1.1 for the gateway: ``Content-Length`` bodies, ``Connection: close`` honoured;
anything else (a chunked answer, a malformed head) is an error of that request, not a guess.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

__all__ = ["HttpError", "LoadConnection", "post_request"]

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024


class HttpError(Exception):
    """The answer could not be read as HTTP/1.1 (or the connection ended before it was complete)."""


def post_request(host: str, path: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """The bytes of one ``POST path`` with ``body`` (kept alive: no ``Connection`` header)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self._status = 0
        self._body_at = -1  # where the body starts in the buffer, once the head is read
        self._length = 0
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"the connection closed before the answer was complete: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            self._answer()
        except HttpError as exc:
            self.waiter.set_exception(exc)
            assert self.transport is not None
            self.transport.close()

    def _answer(self) -> None:
        assert self.waiter is not None
        buffer = self.buffer
        if self._body_at < 0:
            end = buffer.find(_HEAD_END)
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    raise HttpError("the answer's head is larger than 64 KiB")
                return
            self._read_head(bytes(buffer[:end]))
            self._body_at = end + len(_HEAD_END)
        stop = self._body_at + self._length
        if len(buffer) < stop:
            return
        body = bytes(buffer[self._body_at : stop])
        del buffer[:stop]
        self._body_at = -1
        if self._close_after:
            assert self.transport is not None
            self.transport.close()
            self.closed = True
        self.waiter.set_result((self._status, body))

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP/1.1 status line: {lines[0][:100]!r}")
        self._status = int(parts[1])
        self._length = -1
        self._close_after = parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise HttpError(f"a header line without a colon: {line[:100]!r}")
            name = name.strip().lower()
            if name == b"content-length":
                if not value.strip().isdigit():
                    raise HttpError(f"Content-Length is not a number: {value[:40]!r}")
                self._length = int(value)
            elif name == b"transfer-encoding" and value.strip().lower() != b"identity":
                raise HttpError(f"Transfer-Encoding {value.strip().decode('latin-1')} is not read by this client")
            elif name == b"connection":
                self._close_after = value.strip().lower() == b"close"
        if self._length < 0:
            raise HttpError("the answer has no Content-Length")


class LoadConnection:
    """One kept-alive connection: one request at a time; reconnects after the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._protocol: _Protocol | None = None

    async def post(self, request: bytes, timeout: float = 60.0) -> tuple[int, bytes]:
        """Send ``request`` (see :func:`post_request`); the answer's status and body."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            loop = asyncio.get_running_loop()
            _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
            self._protocol = protocol
        assert protocol.transport is not None
        if protocol.buffer:
            protocol.transport.close()
            self._protocol = None
            raise HttpError("the server sent bytes nobody asked for")
        protocol.waiter = asyncio.get_running_loop().create_future()
        protocol.transport.write(request)
        try:
            return await asyncio.wait_for(protocol.waiter, timeout)
        except BaseException:
            protocol.transport.close()
            self._protocol = None
            raise

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
