"""Customs' 179 upload (``realTimeDataUpload``, spec §10.2): one platform's payment data, signed, as the form
parameter ``payExInfoStr`` (gateway.realtime writes and signs it).

Request::

    POST <endpoint url>      # https://customs.chinaport.gov.cn/ceb2grab/grab/realTimeDataUpload in production,
                             # https://swapptest.singlewindow.cn/ceb2grab/grab/realTimeDataUpload for tests
    Content-Type: application/x-www-form-urlencoded

    payExInfoStr=<the JSON, URL-encoded>

Customs answers JSON: ``{"code": "10000", "message": "上传成功", ...}`` taken; any other code refused, which a
resend of the same data cannot change (a permanent failure: the job becomes a dead letter, replayable once the
platform's data or key is mended). HTTP 5xx, timeouts and a reply that is no JSON answer are transient.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp

from adapters.base import AdapterTimeouts, HttpAdapter, PermanentError, SendResult, TransientError, classify_status
from gateway import realtime


class RealtimeRefused(PermanentError):
    """Customs answered the upload with a code other than 10000."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"customs refused the payment data: code {code}: {message or '(no message)'}")
        self.code = code
        self.answer = message


class RealtimeAdapter(HttpAdapter):
    name = "realtime"

    def __init__(
        self,
        url: str,
        *,
        timeouts: AdapterTimeouts | float | None = 30.0,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(timeouts=timeouts, headers={"User-Agent": "cbec-gateway-179/1", **(headers or {})},
                         session=session)  # fmt: skip
        self.url = url

    async def send(self, job_payload: Mapping[str, Any]) -> SendResult:
        """``job_payload``: ``body`` (the payExInfoStr text) and ``guid`` (the upload's, for the record)."""
        body = job_payload.get("body")
        if not isinstance(body, str) or not body:
            raise PermanentError("realtime job payload has no body")
        data = urlencode({"payExInfoStr": body}).encode("ascii")
        reply = await self.post(self.url, data=data, content_type="application/x-www-form-urlencoded")
        what = f"{self.name} POST"
        classify_status(reply.status, what=what, body=reply.body, retry_after=reply.headers.get("Retry-After"))
        answer = realtime.customs_answer(reply.body)
        if answer is None:  # a proxy's or a maintenance page: not customs' verdict on the data
            raise TransientError(f"{what}: HTTP {reply.status} without customs' JSON answer")
        code, message = answer
        if code != realtime.SUCCESS:
            raise RealtimeRefused(code, message)
        return SendResult(self.name, reference=str(job_payload.get("guid") or ""), status=reply.status,
                          detail={"code": code, "message": message})  # fmt: skip
