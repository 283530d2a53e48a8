"""A platform's UKey as a signer, through the E-Port card/key client control (中国电子口岸客户端控件).

A UKey's private key never leaves the card: the card sits in a Windows PC running the e-port's client control, which
listens there on a WebSocket (``ws://<that PC>:61232``) and signs what it is sent with the card's key (spec §9,
§10.3: how the public signers reach a ukey). Its protocol, as the e-port's own JavaScript client speaks it: a text
frame ``{"_method", "_id", "args"}`` and the answer ``{"_method", "_id", "_status", "_args": {"Result", "Data",
"Error"}}``; a connection is greeted with a message whose ``_method`` is ``open``. The methods used here:

* ``cus-sec_SpcSignDataAsPEM`` (``inData``: the text to sign, ``passwd``: the card's PIN): ``Data`` is the signature,
  base64, then the certificate's number;
* ``cus-sec_SpcSignDataNoHashAsPEM``, the same with ``inData`` the text's SHA-1 digest, hex, made here (the card hashes
  nothing): how the public signers sign with RSA cards issued before 2022-07 when no exported certificate file is at
  hand — chosen by the operators (``signing_ukey_method``, a platform's ``ukey_method``), never guessed;
* ``cus-sec_SpcGetSignCertAsPEM``: ``Data`` is the signing certificate, base64 (or PEM).

One call at a time on one connection (the control answers by method; a card signs one thing at a time anyway, about
250 a minute). The connection is opened on the first call and again after it broke.

:class:`UKeyBridge` is the control; :class:`UKeySigner` makes the gateway's own XML signatures with it (the JSON
declarations it signs, when the agent's key is on a card rather than in files). :class:`CardRefusal` is a card's refusal
of a signature as every process of the gateway shares it, through the database: a card locks after a few wrong PINs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import itertools
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import asyncpg
import structlog
from lxml import etree

from gateway import signing
from gateway.config import UKEY_SIGN_METHODS
from gateway.signing import SigningUnavailable, certificate_serial, certificate_to_der, key_name_for

SIGN_METHODS = UKEY_SIGN_METHODS  # the ways a card is asked to sign, by the control's method
SIGN, SIGN_NO_HASH = SIGN_METHODS
CERTIFICATE = "cus-sec_SpcGetSignCertAsPEM"
#: What the control takes in one frame; more it takes only in blocks (its BLOCKTXT frames), which nothing signed here
#: needs: a SignedInfo is a few hundred bytes, a 179 upload's signed string some kilobytes.
MAX_TEXT = 120 * 1024
DEFAULT_TIMEOUT_S = 30.0
#: Declarations that may wait for the gateway's card at once: about ten seconds of a card's signing. One more is
#: answered at once (503 signing.ukey_busy, Retry-After) rather than wait longer than its sender would.
MAX_WAITING = 32

log = structlog.get_logger("gateway.ukey")

T = TypeVar("T")


class UKeyUnreachable(Exception):
    """The client control could not be reached or did not answer in time (the PC is off, the control not running):
    try again later."""


class UKeyRefused(Exception):
    """The control answered, and the card refused (wrong PIN, no card, a reader error): ``errors`` as it said them.
    Not tried again by itself: a wrong PIN tried again and again locks the card."""

    def __init__(self, method: str, errors: list[str]) -> None:
        super().__init__(f"the UKey refused {method}: {'; '.join(errors) or 'no reason given'}")
        self.errors = errors


class UKeyRefusedBefore(UKeyRefused):
    """Nothing was sent to the card: it refused a signature earlier (``why``), in this process or another of the
    gateway (on any host), and this process sends it nothing more until a reload (:class:`CardRefusal`)."""

    def __init__(self, method: str, why: str) -> None:
        Exception.__init__(self, f"{why}; nothing more is sent to the card until a reload")
        self.errors = [why]
        self.why = why


#: The card's row locked for a signature (ukey_refusals, sql/480): $1 url, $2 this process's configuration.
_LOCK_CARD = """
SELECT refused, $2::text = ANY (asked_again) AS asked_again, reason, refused_at, refused_by
  FROM ukey_refusals WHERE url = $1 FOR UPDATE
"""
_NEW_CARD = "INSERT INTO ukey_refusals (url) VALUES ($1) ON CONFLICT DO NOTHING"
#: The card refused a signature: $1 url, $2 its words, $3 host:pid of the process it refused.
_CARD_REFUSED = """
UPDATE ukey_refusals SET refused = true, asked_again = '{}', refusals = refusals + 1, reason = $2, refused_at = now(),
       refused_by = $3
 WHERE url = $1
"""
#: A configuration that may ask the card again (a reload, or a start after one): $1 url, $2 the configuration.
_ASK_AGAIN = "UPDATE ukey_refusals SET asked_again = array_append(asked_again, $2) WHERE url = $1"
_READ_CARD = "SELECT refused, asked_again, reason, refused_at, refused_by FROM ukey_refusals WHERE url = $1 FOR UPDATE"


class CardRefusal:
    """Whether the card behind the client control at ``url`` refused a signature (a wrong PIN, no card), as every
    process of the gateway sees it, on every host: the card's row of ``ukey_refusals`` (sql/480), once :meth:`share`
    gave it the database — without one (``cbec config check``, which sends no PIN) it is this process's alone.

    Once the card refused, no process sends it a PIN again — a wrong PIN sent again and again locks the card — until
    that process is reloaded (SIGHUP; :meth:`ask_again`): its ``configuration`` is then written among those that may
    ask the card again (the row's ``asked_again``, emptied by each refusal). A process reloaded on one host does not
    clear the refusal for one on another host that was not, which may still hold the wrong PIN. A process that starts
    while the refusal stands asks nothing until it is reloaded too, unless a reload somewhere has asked the card again
    since the refusal (the card or the PIN put right): a process that crashes and is started again and again does not
    send a wrong PIN each time. The API processes of one ``cbec serve`` are handed the first one's configuration: its
    reload is theirs.

    Each signature is judged under the row's lock, held while the card answers (:meth:`judged`): of the processes
    signing at once, the one the card refuses stops the others before they send anything, here and elsewhere.
    ``why``: the refusal as this process last saw it (its own, or read at its last signature), for the sync readers
    (the console's banner, /metrics); None while it may sign."""

    def __init__(self, url: str, configuration: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        # handed over (an API process): the process that made it writes it, this one only reads where it stands; else
        # this process's own, written once the database is given (a start: asked again only after a reload elsewhere)
        self.configuration = configuration or secrets.token_hex(8)
        self._unwritten: str | None = "read" if configuration else "start"
        # a signature holds the card's row at most this long: the card's answer, waited for twice (a connection found
        # dead is opened again), and two seconds more (an event loop busy with other requests)
        self.hold_s = 2 * timeout_s + 2
        self.why: str | None = None
        self.pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._writing: set[asyncio.Task[None]] = set()  # writes in the background, kept until done

    def share(self, pool: asyncpg.Pool) -> None:
        """From now on through the database of ``pool`` (on its event loop): this process's configuration is written
        in the background (:meth:`settle` awaits it; a signature before that writes it first)."""
        self.pool = pool
        self._write_soon()

    def ask_again(self) -> None:
        """A reload: this process may send the card its PIN again (written in the database as soon as it is given)."""
        self.why = None
        self._unwritten = "reload"
        self._write_soon()

    async def settle(self) -> None:
        """This process's configuration written, when there is a database to write it in (the database away: logged,
        and the next signature writes it first)."""
        if self.pool is None:
            return
        try:
            async with self._lock:
                await self._write()
        except Exception as exc:
            log.warning("ukey_configuration_not_written", ukey=self.url, error=f"{type(exc).__name__}: {exc}")

    def _write_soon(self) -> None:
        if self.pool is None or self._unwritten is None:
            return
        with contextlib.suppress(RuntimeError):  # no event loop running: the next signature writes it
            task = asyncio.get_running_loop().create_task(self.settle())
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    async def _write(self) -> None:
        """Under ``_lock``: the configuration not written yet, written (its own transaction)."""
        how = self._unwritten
        if how is None or self.pool is None:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            card = await conn.fetchrow(_READ_CARD, self.url)
            refused = card is not None and card["refused"]
            # a start asks again only when a reload has since the refusal (the operators put the card or PIN right)
            asks = refused and self.configuration not in card["asked_again"] and (
                how == "reload" or (how == "start" and bool(card["asked_again"])))
            if asks:
                await conn.execute(_ASK_AGAIN, self.url, self.configuration)
        if self._unwritten == how:  # not a reload meanwhile: that one is written next
            self._unwritten = None
        if asks:
            log.info("ukey_asked_again", ukey=self.url, refused_by=card["refused_by"],
                     refused_at=card["refused_at"].isoformat(), by=how)  # fmt: skip
        elif refused and self.configuration not in card["asked_again"]:
            self.why = self._described(card)
            log.error("ukey_refused_before", ukey=self.url, refused_by=card["refused_by"],
                      refused_at=card["refused_at"].isoformat(), reason=card["reason"],
                      note="this process sends the card nothing until it is reloaded (SIGHUP), once the PIN or the "
                           "card is put right")  # fmt: skip

    def _described(self, card: asyncpg.Record) -> str:
        return (f"the UKey at {self.url} refused a signature in {card['refused_by']} at "
                f"{card['refused_at']:%Y-%m-%d %H:%M:%S%z}: {card['reason']}")  # fmt: skip

    async def judged(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call`` (a signature: the PIN sent, or asked for by the control), unless the card refused one before
        (UKeyRefusedBefore, nothing sent); a refusal it raises (UKeyRefused) recorded for every process. A card busy
        for another process longer than it takes to answer is UKeyUnreachable."""
        async with self._lock:
            if self.pool is None:
                if self.why is not None:
                    raise UKeyRefusedBefore(method, self.why)
                try:
                    return await call()
                except UKeyRefused as exc:
                    self.why = str(exc)
                    raise
            await self._write()
            refused: UKeyRefused | None = None
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    # waits while another process's signature holds the row (the card answers one at a time anyway),
                    # as long as that may take; a process that hangs holding it (this transaction idle for longer than
                    # a signature takes) has its session ended by the server, which frees the card for the others
                    hold_ms = int(self.hold_s * 1000)
                    await conn.execute(f"SET LOCAL lock_timeout = {2 * hold_ms}; "
                                       f"SET LOCAL idle_in_transaction_session_timeout = {hold_ms}")  # fmt: skip
                    card = await conn.fetchrow(_LOCK_CARD, self.url, self.configuration)
                    if card is None:
                        await conn.execute(_NEW_CARD, self.url)
                        card = await conn.fetchrow(_LOCK_CARD, self.url, self.configuration)
                    if card["refused"] and not card["asked_again"]:
                        self.why = self._described(card)
                    else:
                        self.why = None
                        try:
                            return await call()
                        except UKeyRefused as exc:  # committed with the transaction, the error raised below
                            await conn.execute(_CARD_REFUSED, self.url, str(exc),
                                               f"{socket.gethostname()}:{os.getpid()}")  # fmt: skip
                            self.why, refused = str(exc), exc
            except asyncpg.LockNotAvailableError as exc:
                raise UKeyUnreachable(f"the UKey at {self.url} is signing for another process of the gateway for "
                                      f"longer than {2 * self.hold_s:g} s") from exc  # fmt: skip
            if refused is not None:
                raise refused
            assert self.why is not None
            raise UKeyRefusedBefore(method, self.why)


class UKeyBridge:
    """The card behind the client control at ``url``, signing with ``password`` (its PIN; the control's own prompt when
    None) through ``method`` (SIGN_METHODS).

    A card that refused a signature (a wrong PIN, no card) is asked to sign nothing more until :meth:`ask_again` (a
    reload): a wrong PIN sent again and again locks the card. Judged in the lock its calls take one at a time, so the
    signatures waiting behind the refused one send nothing either; and only a refusal the card answered to a
    signature (the PIN sent with it, or asked for by the control) counts — not text refused before anything was sent,
    nor an answer without a signature. ``refusal``: the card's refusal as the processes of the gateway share it
    (:class:`CardRefusal`: through the database once :meth:`share` gives it; one of the card's own by default)."""

    def __init__(self, url: str, password: str | None = None, *, method: str = SIGN,
                 timeout_s: float = DEFAULT_TIMEOUT_S, certificate: bytes | None = None,
                 refusal: CardRefusal | None = None) -> None:  # fmt: skip
        if method not in SIGN_METHODS:
            raise ValueError(f"a UKey signs through {' or '.join(SIGN_METHODS)}; found {method!r}")
        self.url = url
        self.password = password
        self.method = method
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._certificate = certificate  # the card's, DER: read from it once, or known before
        self.refusal = refusal or CardRefusal(url, timeout_s=timeout_s)

    @property
    def refused(self) -> str | None:
        """Why the card is asked to sign nothing more until a reload: its refusal here, or in another process."""
        return self.refusal.why

    def share(self, pool: asyncpg.Pool) -> None:
        """The card's refusal shared with the other processes of the gateway through ``pool``'s database."""
        self.refusal.share(pool)

    def ask_again(self) -> None:
        """The card is asked again (a reload: the card or PIN mended meanwhile)."""
        self.refusal.ask_again()

    async def sign(self, data: bytes) -> tuple[bytes, str]:
        """The card's signature over ``data`` (UTF-8 text: the control takes text) and its certificate's number,
        lower-case hex as the gateway writes a KeyName. Raises UKeyUnreachable, UKeyRefused."""
        if self.method == SIGN_NO_HASH:
            text = hashlib.sha1(data).hexdigest()  # the card signs this digest as its own of the text (RSA-SHA1)
        elif len(data) > MAX_TEXT:
            raise UKeyRefused(SIGN, [f"{len(data)} bytes to sign; the control takes at most {MAX_TEXT} in one frame"])
        else:
            text = data.decode("utf-8")
        args: dict[str, Any] = {"inData": text}
        if self.password is not None:
            args["passwd"] = self.password
        found = await self.call(self.method, args)
        try:
            signature = base64.b64decode(str(found[0]), validate=True)
        except (IndexError, ValueError) as exc:  # binascii.Error, and a ValueError for text not ASCII
            raise UKeyRefused(self.method, [f"the control's answer holds no signature: {found!r:.200}"]) from exc
        if len(found) > 1 and str(found[1]).strip():
            return signature, str(found[1]).strip().lower()
        return signature, key_name_for(certificate_serial(await self.certificate()))

    async def certificate(self, *, again: bool = False) -> bytes:
        """The card's signing certificate, DER (read once per bridge, or ``again``: another card may be in)."""
        if self._certificate is None or again:
            found = await self.call(CERTIFICATE, {})
            try:
                text = str(found[0]).strip()
                self._certificate = certificate_to_der(text.encode("ascii")) if text.startswith("-----BEGIN") \
                    else base64.b64decode("".join(text.split()), validate=True)  # fmt: skip
            except (IndexError, binascii.Error, UnicodeEncodeError, ValueError) as exc:
                raise UKeyRefused(CERTIFICATE, [f"the control's answer holds no certificate: {found!r:.200}"]) from exc
        return self._certificate

    async def call(self, method: str, args: dict[str, Any]) -> list[Any]:
        """One call: the answer's ``Data``. Raises UKeyUnreachable (nothing answered: the connection is dropped, the
        next call opens another) or UKeyRefused (``Result`` false; UKeyRefusedBefore: a signature not sent, the card
        having refused one before)."""
        async with self._lock:
            if method in SIGN_METHODS:  # sends the PIN, or has the control ask for it: judged by the card's refusal
                return await self.refusal.judged(method, lambda: self._answered(method, args))
            return await self._answered(method, args)

    async def _answered(self, method: str, args: dict[str, Any]) -> list[Any]:
        # a connection kept since an earlier call may have died with the control (restarted, the PC asleep): found
        # so, it is opened again once before the call counts as failed
        for kept in (self._ws is not None and not self._ws.closed, False):
            try:
                return await asyncio.wait_for(self._call(method, args), self.timeout_s)
            except (aiohttp.ClientError, OSError, ConnectionError) as exc:
                await self._drop()
                if not kept:
                    raise UKeyUnreachable(f"the UKey's client control at {self.url}: {exc.__class__.__name__} "
                                          f"{exc}") from exc  # fmt: skip
            except TimeoutError as exc:
                await self._drop()
                raise UKeyUnreachable(f"the UKey's client control at {self.url} did not answer within "
                                      f"{self.timeout_s:g} s (TimeoutError)") from exc  # fmt: skip
        raise AssertionError("unreachable")  # the second round returns or raises

    async def _call(self, method: str, args: dict[str, Any]) -> list[Any]:
        ws = await self._connected()
        call_id = next(self._ids)
        await ws.send_str(json.dumps({"_method": method, "_id": call_id, "args": args}, ensure_ascii=False))
        while True:
            frame = await ws.receive()
            if frame.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"the control closed the connection ({frame.type.name})")
            try:
                answer = json.loads(frame.data)
            except ValueError:
                continue  # not an answer (the control writes nothing else, but a stray frame must not stop a call)
            if not isinstance(answer, dict) or answer.get("_method") != method:
                continue  # its greeting ("open"), or the late answer of a call that timed out
            if "_id" in answer and str(answer["_id"]) != str(call_id):
                continue
            nested = answer.get("_args")
            result: dict[str, Any] = nested if isinstance(nested, dict) else answer
            if result.get("Result") is not True:
                errors = result.get("Error")
                raise UKeyRefused(method, [str(e) for e in errors] if isinstance(errors, list) else [])
            data = result.get("Data")
            return list(data) if isinstance(data, list) else []

    async def _connected(self) -> aiohttp.ClientWebSocketResponse:
        if self._ws is not None and not self._ws.closed:
            return self._ws
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.url, autoping=True, heartbeat=None)
        return self._ws

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            await ws.close()

    async def close(self) -> None:
        await self._drop()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _on_the_card(signed_info: bytes) -> bytes:
    raise RuntimeError("a UKey signs through UKeySigner.sign (it awaits the card)")


class UKeySigner:
    """The gateway's own signing key on a UKey (``signing_ukey_url``): signs the JSON declarations the gateway signs
    (spec §9): the digest and the SignedInfo are made here, the card signs the canonical SignedInfo
    (``cus-sec_SpcSignDataAsPEM``: the card hashes it, SM3 or SHA-1 by its key; or, for an older RSA card, its SHA-1
    digest through ``cus-sec_SpcSignDataNoHashAsPEM``), and its signature is verified with its
    certificate before it goes into the message — a card that signs otherwise than the gateway expects is found at
    once, not in customs' receipts.

    Where it stands (:meth:`standing`, the console's banner and /metrics): the certificate's dates once read from the
    card; ``ukey_unreachable`` while the control does not answer (the declarations answered 503, to be sent again);
    ``ukey_refused`` once the card refused (a wrong PIN, no card): from then on nothing is sent to it until a reload
    (SIGHUP) — a wrong PIN tried at every declaration would lock the card (judged by its :class:`UKeyBridge`). The
    refusal is shared by every process of the gateway through the database (:class:`CardRefusal`, once
    :meth:`share` gives it one): the API processes of one ``cbec serve --processes N`` (handed the first one's
    ``configuration`` with the signer as they start, so that its reload is theirs) and those of other hosts, so a
    wrong PIN is tried once, not once in each."""

    def __init__(self, url: str, password: str | None = None, *, method: str = SIGN, certificate: bytes | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, configuration: str | None = None) -> None:  # fmt: skip
        refusal = CardRefusal(url, configuration, timeout_s=timeout_s)
        self.bridge = UKeyBridge(url, password, method=method, timeout_s=timeout_s, certificate=certificate,
                                 refusal=refusal)  # fmt: skip
        self.signer: signing.Signer | None = None  # the certificate's standing, once read from the card
        if certificate is not None:
            self._know(certificate)
        # why the last call to the card failed and is tried again at the next declaration: its control out of reach,
        # or no card to read the certificate from (None: it answered)
        self.unreachable: str | None = None
        self.waiting = 0  # declarations waiting for the card now (MAX_WAITING)

    @property
    def configuration(self) -> str:
        """What the card's refusal knows this process by (CardRefusal): handed to the other API processes."""
        return self.bridge.refusal.configuration

    def share(self, pool: asyncpg.Pool) -> None:
        """The card's refusal shared through ``pool``'s database (UKeyBridge.share)."""
        self.bridge.share(pool)

    def ask_again(self) -> None:
        """A reload: the card is asked again (UKeyBridge.ask_again)."""
        self.bridge.ask_again()

    async def settle(self) -> None:
        """This process's configuration written where the card's refusal is shared (CardRefusal.settle)."""
        await self.bridge.refusal.settle()

    @property
    def refused(self) -> SigningUnavailable | None:
        """Why the card is asked nothing more until a reload: its refusal here, or in another process of the gateway."""
        if (why := self.bridge.refused) is None:
            return None
        return SigningUnavailable("signing.ukey_refused", f"{why}; nothing more is sent to the card until the "
                                  "gateway's configuration is reloaded (SIGHUP)")  # fmt: skip

    @property
    def url(self) -> str:
        return self.bridge.url

    @property
    def valid_until(self) -> datetime | None:
        return self.signer.valid_until if self.signer is not None else None

    @property
    def up(self) -> bool:
        """The card signs: its control answered last time and it has refused nothing."""
        return self.signer is not None and self.unreachable is None and self.refused is None

    def _know(self, certificate: bytes) -> signing.Signer:
        self.signer = signing.Signer(signing.ExternalKey(certificate, _on_the_card))
        return self.signer

    async def read_certificate(self, *, again: bool = False) -> signing.Signer:
        """The card's certificate read through the control (SigningUnavailable as :meth:`sign`; a refusal here — no
        card — stops nothing: no PIN was sent)."""
        async with self._speaking(pin_sent=False):
            return self._know(await self.bridge.certificate(again=again))

    async def sign(self, root: etree._Element) -> None:
        """Sign ``root`` in place (signing.sign's signature, the card's value). SigningUnavailable: the certificate
        outside its validity, the control out of reach, the card refusing, or a signature that does not verify."""
        # a card that refused is judged at the card's turn (CardRefusal), where a reload elsewhere is seen too
        if self.waiting >= MAX_WAITING:
            raise SigningUnavailable("signing.ukey_busy", f"{self.waiting} declarations are waiting for the UKey at "
                                     f"{self.url} already (a card signs a few a second): send this one again in a "
                                     "moment")  # fmt: skip
        self.waiting += 1
        try:
            await self._sign(root)
        finally:
            self.waiting -= 1

    async def _sign(self, root: etree._Element) -> None:
        signer = self.signer or await self.read_certificate()
        for attempt in (1, 2):
            if (refusal := signer.refusal(datetime.now(UTC))) is not None:
                raise refusal
            if self.bridge.method == SIGN_NO_HASH and signer.backend.algorithm != signing.RSA_SHA1:
                raise SigningUnavailable("signing.ukey_bad_signature", f"the UKey at {self.url} holds an SM2 key "
                                         f"(certificate {signer.backend.key_name}), and {SIGN_NO_HASH} signs a "
                                         f"SHA-1 digest for RSA cards only: set signing_ukey_method to {SIGN}")
            prepared = signing.prepare(root, signer.backend)
            async with self._speaking(pin_sent=True):
                value, cert_no = await self.bridge.sign(prepared.signed_info)
            if cert_no == signer.backend.key_name:
                break
            if attempt == 2:
                raise SigningUnavailable("signing.ukey_bad_signature", f"the UKey at {self.url} signs with "
                                         f"certificate {cert_no} and gives certificate {signer.backend.key_name}")
            # another card is in (a renewed certificate): its certificate read, the SignedInfo made anew for it
            signer = await self.read_certificate(again=True)
        if not signing.verify_bytes(signer.backend.certificate_der, prepared.signed_info, value):
            raise SigningUnavailable("signing.ukey_bad_signature", f"the UKey at {self.url} answered a signature that "
                                     f"does not verify with its certificate {signer.backend.key_name}: customs would "
                                     "refuse it (-621028)")  # fmt: skip
        prepared.finish(value)

    def standing(self, at: datetime) -> dict[str, Any]:
        """Where the key stands (signing.Signer.standing, with ``ukey``, the control's URL); ``state`` is
        ``ukey_refused`` or ``ukey_unreachable`` (with ``reason``) while that is so, whatever the certificate says."""
        out: dict[str, Any] = self.signer.standing(at) if self.signer is not None else {"state": "ukey_unreachable"}
        out["ukey"] = self.url
        if self.refused is not None:
            out.update(state="ukey_refused", reason=self.refused.message)
        elif self.unreachable is not None:
            out.update(state="ukey_unreachable", reason=self.unreachable)
        return out

    @contextlib.asynccontextmanager
    async def _speaking(self, *, pin_sent: bool) -> AsyncIterator[None]:
        """A call to the card: its failures become SigningUnavailable, and what is known of the control follows; a
        refusal of a call that sent the PIN stops all signatures until a reload (the bridge's)."""
        try:
            yield
        except UKeyUnreachable as exc:
            self.unreachable = str(exc)
            raise SigningUnavailable("signing.ukey_unreachable", f"{exc}: the declaration was not signed; send it "
                                     "again once the PC with the UKey is on and its client control runs") from exc
        except UKeyRefused as exc:
            self.unreachable = None if pin_sent else str(exc)
            if pin_sent and (refused := self.refused) is not None:
                raise refused from exc
            raise SigningUnavailable("signing.ukey_refused", str(exc)) from exc
        self.unreachable = None

    async def close(self) -> None:
        await self.bridge.close()
