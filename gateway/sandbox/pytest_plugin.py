"""pytest fixtures for the customs sandbox.

Use it with ``pytest_plugins = ["gateway.sandbox.pytest_plugin"]`` in the top-level conftest (or
``-p gateway.sandbox.pytest_plugin``), or import the fixtures into a test module.

* ``customs_sandbox`` — the base URL (``http://127.0.0.1:<port>``) of a sandbox started for the test on a
  free port, with millisecond delays. When ``CBEC_CUSTOMS_SANDBOX_URL`` is set, that URL is yielded instead
  (a real or shared sandbox) and nothing is started.
* ``customs_sandbox_local`` — the :class:`~gateway.sandbox.app.RunningSandbox` itself (stats, config,
  ``wait_idle``); tests using it are skipped when ``CBEC_CUSTOMS_SANDBOX_URL`` points elsewhere, since an
  external sandbox's counters cannot be trusted to be this test's.
* ``http_recorder`` — a :class:`~gateway.sandbox.recorder.Recorder`: an HTTP receiver on 127.0.0.1 that keeps
  every request (receipts, warehouse callbacks, webhooks).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.sandbox.app import RunningSandbox, start_sandbox
from gateway.sandbox.recorder import Recorder, start_recorder

ENV_URL = "CBEC_CUSTOMS_SANDBOX_URL"

#: Fast settings for tests: receipts within milliseconds, TIMEOUT- held 5 s (longer than any test timeout).
TEST_CONFIG: dict[str, Any] = {
    "receipt_delay": 0.005,
    "slow_delay": 0.05,
    "timeout_delay": 5.0,
    "warehouse_callback_delay": 0.005,
    "flaky_failures": 2,
}


def external_sandbox_url() -> str | None:
    url = os.environ.get(ENV_URL, "").strip()
    return url.rstrip("/") or None


@pytest_asyncio.fixture
async def _customs_sandbox_running() -> AsyncIterator[RunningSandbox | None]:
    if external_sandbox_url():
        yield None
        return
    running = await start_sandbox("127.0.0.1", 0, **TEST_CONFIG)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def customs_sandbox(_customs_sandbox_running: RunningSandbox | None) -> str:
    """Base URL of the customs sandbox (local, or ``$CBEC_CUSTOMS_SANDBOX_URL``)."""
    if _customs_sandbox_running is None:
        url = external_sandbox_url()
        assert url is not None
        return url
    return _customs_sandbox_running.url


@pytest.fixture
def customs_sandbox_local(_customs_sandbox_running: RunningSandbox | None) -> RunningSandbox:
    """The locally started sandbox; skips when an external one is configured."""
    if _customs_sandbox_running is None:
        pytest.skip(f"{ENV_URL} points at an external sandbox; this test needs the local sandbox's stats")
    return _customs_sandbox_running


@pytest_asyncio.fixture
async def http_recorder() -> AsyncIterator[Recorder]:
    """A :class:`~gateway.sandbox.recorder.Recorder` on 127.0.0.1: a receiving end that keeps every request."""
    rec = await start_recorder()
    try:
        yield rec
    finally:
        await rec.stop()
