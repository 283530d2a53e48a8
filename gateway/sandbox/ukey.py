"""A stand-in for the E-Port card/key client control (gateway.ukey): a WebSocket on 127.0.0.1 that greets a connection
with ``open``, answers ``cus-sec_SpcGetSignCertAsPEM`` with its certificate and ``cus-sec_SpcSignDataAsPEM`` with a
signature by its key — a TEST key, SM2 signatures raw r‖s as a card's — once the PIN is the card's; an RSA card
answers ``cus-sec_SpcSignDataNoHashAsPEM`` too, signing the SHA-1 digest it is given (an SM2 card refuses it). For
trying a UKey platform, and its tests, without a card.

``card = await start_ukey(key)``; point ``ukey_url`` at ``card.url``; ``card.calls`` lists what it was asked and
``card.wrong_pins`` counts the signatures asked with a wrong PIN; ``card.present = False`` plays a card pulled out;
``card.signing_s`` the time a signature takes; ``await card.stop()``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.config import netloc
from gateway.signing import RsaSha1Key, SignatureBackend, certificate_serial, key_name_for
from gateway.ukey import CERTIFICATE, SIGN, SIGN_METHODS

DEFAULT_PIN = "88888888"  # what a new card's PIN is until its holder changes it


@dataclass
class SimulatedCard:
    key: SignatureBackend
    pin: str = DEFAULT_PIN
    present: bool = True
    signing_s: float = 0.0  # how long each signature takes
    url: str = ""
    calls: list[str] = field(default_factory=list)
    wrong_pins: int = 0  # signatures asked with a PIN not the card's: a real card locks after a few
    runner: web.AppRunner | None = None
    sockets: set[web.WebSocketResponse] = field(default_factory=set)

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        method = str(request.get("_method"))
        self.calls.append(method)
        given = request.get("args")
        args: dict[str, Any] = given if isinstance(given, dict) else {}
        result: dict[str, Any] = {"Result": False, "Data": [], "Error": []}
        if not self.present:
            result["Error"] = ["[读卡器底层库]未找到卡片(card not found)", "Err:Custom50070"]
        elif method == CERTIFICATE:
            result.update(Result=True, Data=[base64.b64encode(self.key.certificate_der).decode("ascii")])
        elif method in SIGN_METHODS and args.get("passwd", self.pin) != self.pin:
            self.wrong_pins += 1
            result["Error"] = ["口令错误(wrong PIN)", "Err:Custom50001"]
        elif method in SIGN_METHODS and isinstance(args.get("inData"), str):
            signature = self._signature(method, args["inData"])
            cert_no = key_name_for(certificate_serial(self.key.certificate_der))
            if signature is None:
                result["Error"] = [f"{method}: inData is not a SHA-1 digest in hex, or the card's key is not RSA"]
            else:
                result.update(Result=True, Data=[base64.b64encode(signature).decode("ascii"), cert_no])
        else:
            result["Error"] = [f"unknown method or arguments: {method}"]
        return {"_id": request.get("_id"), "_method": method, "_status": "00", "_args": result}

    def _signature(self, method: str, in_data: str) -> bytes | None:
        if method == SIGN:
            return self.key.sign_bytes(in_data.encode("utf-8"))
        try:
            digest = bytes.fromhex(in_data)
        except ValueError:
            return None
        if len(digest) != 20 or not isinstance(self.key, RsaSha1Key):
            return None
        return self.key.sign_sha1_digest(digest)

    async def stop(self) -> None:
        """The control gone (the PC off): its connections closed, nothing listening."""
        for ws in list(self.sockets):
            await ws.close()
        if self.runner is not None:
            await self.runner.cleanup()


async def start_ukey(key: SignatureBackend, *, pin: str = DEFAULT_PIN, host: str = "127.0.0.1",
                     port: int = 0) -> SimulatedCard:  # fmt: skip
    """The client control with a card holding ``key`` (its certificate too), listening on ``host:port`` (0: free)."""
    card = SimulatedCard(key, pin)

    async def control(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        card.sockets.add(ws)
        try:
            await ws.send_str(json.dumps({"_id": 0, "_method": "open", "_status": "00", "_args": {"Result": True}}))
            async for frame in ws:
                try:
                    asked = json.loads(frame.data)
                except (ValueError, TypeError):
                    continue
                if isinstance(asked, dict):
                    if card.signing_s and asked.get("_method") == SIGN:
                        await asyncio.sleep(card.signing_s)  # a real card takes about a quarter of a second
                    await ws.send_str(json.dumps(card.answer(asked), ensure_ascii=False))
        finally:
            card.sockets.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/", control)
    card.runner = web.AppRunner(app, access_log=None)
    await card.runner.setup()
    site = web.TCPSite(card.runner, host, port)
    await site.start()
    card.url = f"ws://{netloc(host, card.runner.addresses[0][1])}"
    return card
