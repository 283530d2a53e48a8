"""A platform's UKey as a signer, through the E-Port card/key client control (中国电子口岸客户端控件).

A UKey's private key never leaves the card: the card sits in a Windows PC running the e-port's client control, which
listens there on a WebSocket (``ws://<that PC>:61232``) and signs what it is sent with the card's key (spec §9,
§10.3: how the public signers reach a ukey). Its protocol, as the e-port's own JavaScript client speaks it: a text
frame ``{"_method", "_id", "args"}`` and the answer ``{"_method", "_id", "_status", "_args": {"Result", "Data",
"Error"}}``; a connection is greeted with a message whose ``_method`` is ``open``. The methods used here:

* ``cus-sec_SpcSignDataAsPEM`` (``inData``: the text to sign, ``passwd``: the card's PIN): ``Data`` is the signature,
  base64, then the certificate's number;
* ``cus-sec_SpcGetSignCertAsPEM``: ``Data`` is the signing certificate, base64 (or PEM).

One call at a time on one connection (the control answers by method; a card signs one thing at a time anyway, about
250 a minute). The connection is opened on the first call and again after it broke.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
from typing import Any

import aiohttp

from gateway.signing import certificate_serial, certificate_to_der, key_name_for

SIGN = "cus-sec_SpcSignDataAsPEM"
CERTIFICATE = "cus-sec_SpcGetSignCertAsPEM"
#: What the control takes in one frame; more it takes only in blocks (its BLOCKTXT frames), which nothing signed here
#: needs: a SignedInfo is a few hundred bytes, a 179 upload's signed string some kilobytes.
MAX_TEXT = 120 * 1024
DEFAULT_TIMEOUT_S = 30.0


class UKeyUnreachable(Exception):
    """The client control could not be reached or did not answer in time (the PC is off, the control not running):
    try again later."""


class UKeyRefused(Exception):
    """The control answered, and the card refused (wrong PIN, no card, a reader error): ``errors`` as it said them.
    Not tried again by itself: a wrong PIN tried again and again locks the card."""

    def __init__(self, method: str, errors: list[str]) -> None:
        super().__init__(f"the UKey refused {method}: {'; '.join(errors) or 'no reason given'}")
        self.errors = errors


class UKeyBridge:
    """The card behind the client control at ``url``, signing with ``password`` (its PIN; the control's own prompt when
    None)."""

    def __init__(self, url: str, password: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self.password = password
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._certificate: bytes | None = None

    async def sign(self, data: bytes) -> tuple[bytes, str]:
        """The card's signature over ``data`` (UTF-8 text: the control takes text) and its certificate's number,
        lower-case hex as the gateway writes a KeyName. Raises UKeyUnreachable, UKeyRefused."""
        text = data.decode("utf-8")
        if len(data) > MAX_TEXT:
            raise UKeyRefused(SIGN, [f"{len(data)} bytes to sign; the control takes at most {MAX_TEXT} in one frame"])
        args: dict[str, Any] = {"inData": text}
        if self.password is not None:
            args["passwd"] = self.password
        found = await self.call(SIGN, args)
        try:
            signature = base64.b64decode(str(found[0]), validate=True)
        except (IndexError, binascii.Error) as exc:
            raise UKeyRefused(SIGN, [f"the control's answer holds no signature: {found!r:.200}"]) from exc
        if len(found) > 1 and str(found[1]).strip():
            return signature, str(found[1]).strip().lower()
        return signature, key_name_for(certificate_serial(await self.certificate()))

    async def certificate(self) -> bytes:
        """The card's signing certificate, DER (read once per bridge)."""
        if self._certificate is None:
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
        next call opens another) or UKeyRefused (``Result`` false)."""
        async with self._lock:
            # a connection kept since an earlier call may have died with the control (restarted, the PC asleep):
            # found so, it is opened again once before the call counts as failed
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

