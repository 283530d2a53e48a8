"""Customs adapter: sign (if needed), wrap in ``DxpMsg`` and deliver a CEB declaration.

Two transports (spec §8.3):

* ``http`` — POST the DxpMsg (``Content-Type: application/xml``) to a configured URL: the local sandbox by
  default, a relay or an HTTP-capable transfer node in production.
* ``folder`` — the transfer-client convention: the file is written atomically into an *outbox* folder that
  the installed DXP client picks up (temp file in ``<outbox>/.tmp``, fsync, rename, fsync of the folder —
  the client never sees a partial file). Receipts come back as files in an *inbox* folder;
  :func:`poll_inbox` hands each one to a callback and moves it to ``done/`` or ``error/``.

The job payload (a JSON object stored with the queue job)::

    {"message": "<CEB XML text>",          # required (or "message_b64": base64 of the exact bytes)
     "dedupe_key": "CEB311:...",           # required unless "cop_msg_id" is given: CopMsgId = uuid5(dedupe_key)
     "cop_msg_id": "...",                  # optional explicit CopMsgId
     "file_name": "order-1.xml",           # optional AddInfo/FileName
     "message_type": "CEB311", "guid": ...} # optional, as stored: with both and no signer, no second parse

The CEB ``guid`` is never touched, and the CopMsgId is derived from the job, so every retry of a job carries
the same identity (see :func:`adapters.dxp.cop_msg_id_for`). An unsigned message is signed with the
configured backend (``gateway.signing.sign_xml``) *before* base64 — the signature lives inside the CEB XML (§9).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import structlog
from lxml import etree

from adapters import dxp
from adapters.base import AdapterTimeouts, HttpAdapter, PermanentError, SendResult, TransientError
from gateway.errors import MessageRejected
from gateway.messages import DS_NS, MessageType, lookup
from gateway.xmlsafe import parse_message

log = structlog.get_logger("adapters.customs")

#: Where the sandbox listens when started with ``python -m gateway.sandbox`` without options.
SANDBOX_DEFAULT_URL = "http://127.0.0.1:8790/dxp"

_SIGNATURE = f"{{{DS_NS}}}Signature"


@dataclass(frozen=True)
class CustomsConfig:
    sender_id: str  # our DXP id (DXPENT…), the SenderId of every envelope
    transport: Literal["http", "folder"] = "http"
    url: str = SANDBOX_DEFAULT_URL
    outbox: Path | None = None  # folder transport
    folder_format: Literal["dxp", "ceb"] = "dxp"  # "ceb": bare business-node files for the official client
    file_pattern: str = "{msg_type}_{cop_msg_id}.xml"
    # The ReceiverId of import / export messages; None: customs' own, DXPEDCCEB0000002 / DXPEDCCEB0000003.
    import_receiver_id: str | None = None
    export_receiver_id: str | None = None
    signer: Any = None  # a gateway.signing backend; None: send as is
    timeouts: AdapterTimeouts = field(default_factory=AdapterTimeouts)
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. a relay's auth token


@dataclass(frozen=True)
class Prepared:
    """A job turned into what goes on the wire."""

    cop_msg_id: str
    msg_type: MessageType
    guid: str
    ceb: bytes  # signed CEB bytes (what Data carries)
    envelope: bytes  # the DxpMsg
    signed_here: bool


def payload_message(job_payload: Mapping[str, Any]) -> bytes:
    """The CEB bytes of a job payload (``message`` text/bytes or ``message_b64``)."""
    raw = job_payload.get("message")
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    if isinstance(raw, str) and raw:
        return raw.encode("utf-8")
    b64 = job_payload.get("message_b64")
    if isinstance(b64, str) and b64:
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PermanentError(f"job payload message_b64 is not base64: {exc}") from exc
    raise PermanentError("job payload has no CEB message (\"message\" or \"message_b64\")")


def payload_cop_msg_id(job_payload: Mapping[str, Any]) -> str:
    explicit = job_payload.get("cop_msg_id")
    if isinstance(explicit, str) and explicit:
        return explicit
    key = job_payload.get("dedupe_key")
    if isinstance(key, str) and key:
        return dxp.cop_msg_id_for(key)
    raise PermanentError("job payload has neither dedupe_key nor cop_msg_id: the CopMsgId would not be stable")


def is_signed(root: etree._Element) -> bool:
    return any(child.tag == _SIGNATURE for child in root)


def sign_message(ceb: bytes, backend: Any) -> bytes:
    """Sign with ``gateway.signing.sign_xml``: parsed safely, signed in place, layout otherwise untouched."""
    from gateway.signing import sign_xml  # local: only needed when a signer is configured

    return sign_xml(ceb, backend)


def _stored_identity(job_payload: Mapping[str, Any]) -> tuple[MessageType, str] | None:
    """The message type and guid a payload names (the store's, for a message checked when it was accepted)."""
    mtype = lookup(str(job_payload.get("message_type") or ""))
    guid = job_payload.get("guid")
    return (mtype, guid) if mtype is not None and isinstance(guid, str) and guid else None


def _receiver(config: CustomsConfig, msg_type: str) -> str:
    """The ReceiverId of a message: customs' system of its flow, or the id configured for that flow."""
    default = dxp.receiver_for(msg_type)
    configured = config.export_receiver_id if default == dxp.EXPORT_RECEIVER else config.import_receiver_id
    return configured or default


def prepare(job_payload: Mapping[str, Any], config: CustomsConfig, *, created: datetime | None = None) -> Prepared:
    """Pure part of a send: parse, sign if needed, wrap. Raises PermanentError on a bad payload."""
    ceb = payload_message(job_payload)
    cop_msg_id = payload_cop_msg_id(job_payload)
    known = _stored_identity(job_payload) if config.signer is None else None
    signed_here = False
    if known is not None:
        # Parsed, validated and stored by the gateway, sent as is: a second parse (~7 % of a worker's CPU per
        # delivery) would only learn the type and guid again.
        mtype, guid = known
    else:
        try:
            root, mtype = parse_message(ceb)
        except MessageRejected as exc:
            raise PermanentError(f"job payload is not a CEB message: {exc}") from exc
        guid = root.get("guid", "")
        if config.signer is not None and not is_signed(root):
            try:
                ceb = sign_message(ceb, config.signer)
            except MessageRejected as exc:
                raise PermanentError(f"signing failed: {exc}") from exc
            signed_here = True
    file_name = job_payload.get("file_name")
    try:
        envelope = dxp.wrap(
            ceb,
            msg_type=mtype.root,
            sender_id=config.sender_id,
            receiver_ids=[_receiver(config, mtype.root)],
            cop_msg_id=cop_msg_id,
            created=created or datetime.now(dxp.CHINA_TZ),
            file_name=file_name if isinstance(file_name, str) and file_name else None,
        )
    except ValueError as exc:  # an id or file name the DXP schema would refuse: retrying cannot fix it
        raise PermanentError(f"cannot build the DxpMsg: {exc}") from exc
    return Prepared(cop_msg_id, mtype, guid, ceb, envelope, signed_here)


class CustomsAdapter(HttpAdapter):
    """Delivers CEB declarations to customs over HTTP or through a transfer-client outbox folder."""

    name = "customs"

    def __init__(self, config: CustomsConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(timeouts=config.timeouts, headers=config.headers, session=session)
        self.config = config
        if config.transport == "folder" and config.outbox is None:
            raise ValueError("the folder transport needs an outbox folder")

    async def send(self, job_payload: Mapping[str, Any]) -> SendResult:
        cfg = self.config
        if cfg.signer is None:
            # Parsing and wrapping one message takes tens of µs: a thread hand-off per send would cost more (two
            # wake-ups and a context switch each way; measured on a drain: ~0.2 ms of the worker's CPU per message).
            prep = prepare(job_payload, cfg)
        else:
            # Signing can be slow (a remote crypto device, SM2): keep it off the event loop.
            prep = await asyncio.to_thread(prepare, job_payload, cfg)
        detail: dict[str, Any] = {"msg_type": prep.msg_type.root, "guid": prep.guid, "signed_here": prep.signed_here}
        if cfg.transport == "folder":
            assert cfg.outbox is not None
            name = cfg.file_pattern.format(msg_type=prep.msg_type.root, cop_msg_id=prep.cop_msg_id, guid=prep.guid)
            data = prep.envelope if cfg.folder_format == "dxp" else prep.ceb
            try:
                path = await asyncio.to_thread(atomic_write, Path(cfg.outbox), name, data)
            except OSError as exc:  # disk full, NFS hiccup, permissions being fixed: retry later
                raise TransientError(f"customs outbox write failed: {exc}") from exc
            return SendResult(self.name, prep.cop_msg_id, None, {**detail, "file": str(path)})
        reply = await self.post_checked(
            cfg.url,
            data=prep.envelope,
            content_type="application/xml; charset=utf-8",
            headers={"X-CopMsgId": prep.cop_msg_id},
        )
        ack = reply.json()
        if isinstance(ack, Mapping):
            detail["ack"] = dict(ack)
        return SendResult(self.name, prep.cop_msg_id, reply.status, detail)


# --- folder transport ------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(folder: Path, name: str, data: bytes, *, tmp_dir: Path | None = None) -> Path:
    """Write ``folder/name`` so that no reader ever sees a partial file.

    The bytes go to a temp file in ``tmp_dir`` (default ``folder/.tmp``, same file system, a folder the
    transfer client does not scan), are fsynced, and the file is renamed into place (atomic on POSIX and
    NTFS); an existing file of the same name — a retry of the same job — is replaced.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"unsafe outbox file name {name!r}")
    folder.mkdir(parents=True, exist_ok=True)
    staging = tmp_dir or folder / ".tmp"
    staging.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=staging)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        target = folder / name
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
    return target


@dataclass
class InboxReport:
    done: list[Path] = field(default_factory=list)  # handled, moved to done/
    failed: list[Path] = field(default_factory=list)  # handler raised, moved to error/ (with a .error.txt)
    deferred: list[Path] = field(default_factory=list)  # handler raised TransientError: left for next round


InboxHandler = Callable[[bytes, Path], Awaitable[Any] | Any]


def _unique_target(folder: Path, name: str) -> Path:
    target = folder / name
    n = 1
    while target.exists():
        target = folder / f"{name}.{n}"
        n += 1
    return target


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = _unique_target(folder, path.name)
    os.replace(path, target)
    return target


#: A file claimed into processing/ longer ago than this was abandoned by a poller that stopped mid-file.
STALE_CLAIM_S = 600.0


def _claim(path: Path, processing: Path) -> Path | None:
    """Take ``path`` for this poller: renamed into ``processing`` (atomic on one file system); None when another
    poller renamed it first. Its mtime is kept (the inbox's order), so its claim time is the ctime."""
    processing.mkdir(parents=True, exist_ok=True)
    target = processing / path.name
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    return target


def _reclaim(processing: Path, inbox: Path) -> None:
    """Files claimed long ago by a poller that stopped (killed) mid-file go back to the inbox."""
    if not processing.is_dir():
        return
    now = time.time()
    for entry in os.scandir(processing):
        try:
            if entry.is_file() and now - entry.stat().st_ctime > STALE_CLAIM_S:
                os.rename(entry.path, inbox / entry.name)
        except FileNotFoundError:  # another poller reclaimed it
            continue


def _in_transfer(entry: os.DirEntry[str]) -> bool:
    """Hidden and .part/.tmp files are transfers in progress; sub-folders are done/, error/ and processing/."""
    return entry.name.startswith(".") or entry.name.endswith((".part", ".tmp")) or not entry.is_file()


def _pending(folder: Path, min_age: float) -> list[Path]:
    if not folder.is_dir():
        return []
    now = time.time()
    out: list[tuple[float, str, Path]] = []
    for entry in os.scandir(folder):
        if _in_transfer(entry):
            continue
        try:
            mtime = entry.stat().st_mtime
        except FileNotFoundError:  # taken by another poller meanwhile
            continue
        if min_age and now - mtime < min_age:
            continue  # may still be being written by a client that does not rename
        out.append((mtime, entry.name, Path(entry.path)))
    out.sort()
    return [p for _, _, p in out]


#: What a refused receipt file's reason is written to, beside it in error/.
REASON_SUFFIX = ".error.txt"


@dataclass(frozen=True)
class InboxFiles:
    """What lies in an inbox now: files waiting to be read (transfers in progress not counted), and files refused
    into ``error/`` that no one has cleared (each beside its reason)."""

    waiting: int
    refused: int


def inbox_files(folder: str | os.PathLike[str]) -> InboxFiles:
    """Count the files of the inbox ``folder`` (file system I/O: run it in a thread from async code)."""
    inbox = Path(folder)
    waiting = sum(1 for e in os.scandir(inbox) if not _in_transfer(e)) if inbox.is_dir() else 0
    error = inbox / "error"
    refused = sum(1 for e in os.scandir(error) if e.is_file() and not e.name.endswith(REASON_SUFFIX)) \
        if error.is_dir() else 0  # fmt: skip
    return InboxFiles(waiting, refused)


async def poll_inbox(
    folder: str | os.PathLike[str],
    handle: InboxHandler,
    *,
    done_dir: str | os.PathLike[str] | None = None,
    error_dir: str | os.PathLike[str] | None = None,
    min_age: float = 0.0,
    limit: int | None = None,
) -> InboxReport:
    """One pass over the inbox: oldest file first, ``handle(data, path)`` (sync or async) for each.

    Each file is first claimed by renaming it into ``processing/``: of several pollers of one inbox (``cbec serve``
    and each ``cbec worker`` poll it) one takes it, the others find it gone and go on.

    * success -> the file moves to ``done/`` (default ``<folder>/done``);
    * :class:`TransientError` (e.g. the database is down) -> the file goes back and the pass stops, so the next
      pass retries it in order;
    * any other exception -> the file moves to ``error/`` with ``<name>.error.txt`` holding the reason.

    Files younger than ``min_age`` seconds are skipped (for clients that write in place). A file left in
    ``processing/`` for ``STALE_CLAIM_S`` (its poller stopped mid-file) goes back to the inbox: handling a receipt
    again is answered as a duplicate.
    """
    inbox = Path(folder)
    done = Path(done_dir) if done_dir else inbox / "done"
    error = Path(error_dir) if error_dir else inbox / "error"
    processing = inbox / "processing"
    report = InboxReport()
    await asyncio.to_thread(_reclaim, processing, inbox)
    for found in await asyncio.to_thread(_pending, inbox, min_age):
        if limit is not None and len(report.done) + len(report.failed) >= limit:
            break
        path = await asyncio.to_thread(_claim, found, processing)
        if path is None:  # another poller took it
            continue
        try:
            data = await asyncio.to_thread(path.read_bytes)
            result = handle(data, found)
            if inspect.isawaitable(result):
                await result
        except TransientError:
            await asyncio.to_thread(os.replace, path, found)  # back in place, mtime kept: first again next pass
            report.deferred.append(found)
            break
        except Exception as exc:
            moved = await asyncio.to_thread(_move, path, error)
            reason = f"{exc.__class__.__name__}: {exc}"
            await asyncio.to_thread(moved.with_name(moved.name + REASON_SUFFIX).write_text, reason + "\n", "utf-8")
            # a receipt refused here is customs' word lost unless someone looks: say which file and why
            log.warning("inbox_file_refused", file=path.name, moved_to=str(moved), error=reason[:2000])
            report.failed.append(moved)
            continue
        report.done.append(await asyncio.to_thread(_move, path, done))
    return report


async def run_inbox_poller(
    folder: str | os.PathLike[str],
    handle: InboxHandler,
    *,
    interval: float = 2.0,
    stop: asyncio.Event,
    min_age: float = 0.0,
) -> None:
    """Poll until ``stop`` is set; a failing pass is logged by the caller's handler, never fatal here."""
    while not stop.is_set():
        report = await poll_inbox(folder, handle, min_age=min_age)
        if report.done or report.failed:
            continue  # more may be waiting; go again at once
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
