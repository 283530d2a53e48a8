"""The ingest link: the other API processes of ``cbec serve --processes N`` hand their checked messages to the first
process's store, so that every message joins one batcher.

Why: the API's work per message is half HTTP and checking, half the store's batch. One process does both on one
event loop, and that loop is the bound while a third of the machine sits idle. Several processes each with its
own store split the batches as well: smaller batches cost PostgreSQL more per message (measured, see
docs/performance.md). Over the link the HTTP and the checks spread over the processes while the batches stay
as large as one process makes them.

A front (:class:`IngestClient`) sends a ``Submission`` — what ``Store.enqueue`` takes — and awaits the
answer; the first process (:class:`IngestServer`) hands it to its store at once (no task per message: the
store's own future answers). Frames on a Unix socket: request id and
length (8 bytes), then a pickle. Pickle, because both ends are this program, on this host, as this user: the
socket lives in a folder only its user may enter (0700), made by the first process for its lifetime.

Failures keep the store's meaning: a Conflict comes back as a Conflict; the database away, or the link itself
down, comes back as :class:`IngestUnavailable` (a 503 the client retries: a message is acknowledged only once
committed, and a message committed whose answer was lost answers its retry as a replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pickle
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from gateway import db
from gateway.keystate import Conflict
from gateway.store import IngestResult, Store, Submission

__all__ = ["IngestClient", "IngestServer", "IngestUnavailable", "link_folder"]

log = structlog.get_logger("gateway.ingestlink")

_HEADER = struct.Struct("!II")  # request id, payload length
_MAX_FRAME = 1 << 30  # a message is at most a few MB (max_body_bytes); anything larger is a broken peer
_PROTOCOL = pickle.HIGHEST_PROTOCOL

# What an answer carries: a result, or one of these with its payload.
_OK, _CONFLICT, _UNAVAILABLE, _FAILED = range(4)


class IngestUnavailable(ConnectionError):
    """The first process's store cannot take the message now (the database, or the link, is away): nothing was
    stored by this attempt that the client's retry would not find (HTTP 503)."""


@contextlib.contextmanager
def link_folder() -> Iterator[Path]:
    """A fresh folder for the link's socket, only its user may enter; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="cbec-ingest-"))  # mkdtemp makes it 0700
    try:
        yield folder / "ingest.sock"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Frames:
    """Splits a byte stream into (request id, payload) frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        start = 0
        size = len(buffer)
        while size - start >= _HEADER.size:
            rid, length = _HEADER.unpack_from(buffer, start)
            if length > _MAX_FRAME:
                raise ValueError(f"an ingest link frame of {length} bytes")
            end = start + _HEADER.size + length
            if end > size:
                break
            yield rid, bytes(buffer[start + _HEADER.size : end])
            start = end
        del buffer[:start]


def _frame(rid: int, payload: bytes) -> bytes:
    return _HEADER.pack(rid, len(payload)) + payload


# --- the first process ------------------------------------------------------------------------


class _ServerSide(asyncio.Protocol):
    def __init__(self, store: Store) -> None:
        self._store = store
        self._frames = _Frames()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None  # answers still to come have nowhere to go: the front answered 503 already

    def data_received(self, data: bytes) -> None:
        try:
            frames = list(self._frames.feed(data))
        except ValueError:
            log.error("ingest_link_broken_frame")
            if self._transport is not None:
                self._transport.close()
            return
        for rid, payload in frames:
            try:
                future = self._store.enqueue(pickle.loads(payload))
            except Exception as exc:
                self._answer(rid, _FAILED, f"{exc.__class__.__name__}: {exc}")
                continue
            future.add_done_callback(functools.partial(self._settled, rid))

    def _settled(self, rid: int, future: asyncio.Future[IngestResult]) -> None:
        if future.cancelled():
            self._answer(rid, _UNAVAILABLE, "the gateway is stopping")
            return
        exc = future.exception()
        if exc is None:
            self._answer(rid, _OK, future.result())
        elif isinstance(exc, Conflict):
            self._answer(rid, _CONFLICT, exc.issues)
        elif db.database_away(exc):
            self._answer(rid, _UNAVAILABLE, f"{exc.__class__.__name__}: {exc}")
        else:
            log.error("ingest_failed", error=f"{exc.__class__.__name__}: {exc}", exc_info=exc)
            self._answer(rid, _FAILED, f"{exc.__class__.__name__}: {exc}")

    def _answer(self, rid: int, kind: int, value: Any) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_frame(rid, pickle.dumps((kind, value), _PROTOCOL)))


class IngestServer:
    """The first process's end: every front's messages go to ``store`` (its batcher)."""

    def __init__(self, store: Store, path: Path) -> None:
        self.store = store
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _ServerSide(self.store), str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        """Stop taking messages (the fronts stop first; what they handed over is answered by the store's close)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


# --- the other processes ----------------------------------------------------------------------


class _ClientSide(asyncio.Protocol):
    def __init__(self, owner: IngestClient) -> None:
        self._owner = owner
        self._frames = _Frames()

    def data_received(self, data: bytes) -> None:
        pending = self._owner._pending
        for rid, payload in self._frames.feed(data):
            future = pending.pop(rid, None)
            if future is not None and not future.done():
                future.set_result(pickle.loads(payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost()


class IngestClient:
    """A front's end: :meth:`ingest` as ``Store.ingest``, done by the first process's store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self._next_id = 0
        self._connecting = asyncio.Lock()

    async def connect(self) -> None:
        async with self._connecting:
            if self._transport is not None:
                return
            loop = asyncio.get_running_loop()
            try:
                transport, _ = await loop.create_unix_connection(lambda: _ClientSide(self), str(self.path))
            except OSError as exc:
                raise IngestUnavailable(f"the ingest link is down: {exc.strerror or exc}") from None
            assert isinstance(transport, asyncio.Transport)
            self._transport = transport
            log.info("ingest_link_connected", pid=os.getpid())

    def _lost(self) -> None:
        self._transport = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(IngestUnavailable("the ingest link closed before the answer came"))

    async def ingest(self, sub: Submission) -> IngestResult:
        """Store ``sub`` through the first process's store (as its ``Store.enqueue``)."""
        if self._transport is None:
            await self.connect()
        assert self._transport is not None
        self._next_id = rid = (self._next_id + 1) & 0xFFFFFFFF
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self._transport.write(_frame(rid, pickle.dumps(sub, _PROTOCOL)))
        kind, value = await future
        if kind == _OK:
            result: IngestResult = value
            return result
        if kind == _CONFLICT:
            raise Conflict(value)
        if kind == _UNAVAILABLE:
            raise IngestUnavailable(value)
        raise RuntimeError(f"the ingest failed in the first process: {value}")

    async def aclose(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
