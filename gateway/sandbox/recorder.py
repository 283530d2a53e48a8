"""A tiny HTTP recorder: accepts every POST on 127.0.0.1 and keeps it, for tests that need a receiving end
(the gateway's receipt endpoint, a warehouse callback URL, a seller's webhook URL).

``rec = await start_recorder()``; point something at ``rec.url + "/anything"``; ``await rec.wait_for(3)``;
inspect ``rec.requests``; ``await rec.stop()``. ``rec.status`` sets the answer (e.g. 503 to play a broken
receiver).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.config import netloc


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    status: int = 200
    _runner: web.AppRunner | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self._changed:
            self.requests.append(Recorded(request.method, request.path, dict(request.headers), body))
            self._changed.notify_all()
        return web.json_response({"status": "recorded"}, status=self.status)

    async def wait_for(
        self, count: int, *, timeout: float = 5.0, where: Callable[[Recorded], bool] | None = None
    ) -> list[Recorded]:
        """Wait until at least ``count`` requests (matching ``where``) have arrived; return those."""

        def matching() -> list[Recorded]:
            return [r for r in self.requests if where is None or where(r)]

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(matching()) >= count), timeout)
            return matching()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start_recorder(host: str = "127.0.0.1", port: int = 0) -> Recorder:
    rec = Recorder()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", rec._handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    rec._runner = runner
    rec.url = f"http://{netloc(host, runner.addresses[0][1])}"
    return rec
