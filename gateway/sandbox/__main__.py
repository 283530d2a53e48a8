"""``python -m gateway.sandbox [--port 8790] [--receipt-url URL] [--receipt-delay 0.5] ...``"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from decimal import Decimal
from pathlib import Path

from gateway.sandbox.app import SandboxConfig, sandbox_state_dir, seconds, start_sandbox


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gateway.sandbox", description="Run the customs sandbox.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8790)
    p.add_argument("--receipt-url", help="where receipts are POSTed (the gateway's /v1/receipts)")
    p.add_argument("--receipt-header", action="append", default=[], metavar="NAME:VALUE",
                   help="extra header on receipt POSTs, e.g. 'X-API-Key: ...' (repeatable)")
    p.add_argument("--receipt-delay", type=seconds, default=SandboxConfig.receipt_delay)
    p.add_argument("--receipt-batch-window", type=seconds, default=SandboxConfig.receipt_batch_window,
                   help="seconds a receipt waits for others of its type and receiver (default %(default)s)")
    p.add_argument("--receipt-batch-max", type=int, default=SandboxConfig.receipt_batch_max,
                   help="return elements per receipt message at most; 1: one each (default %(default)s)")
    p.add_argument("--receipt-batch-inflight", type=int, default=SandboxConfig.receipt_batch_inflight,
                   help="past its window a batch also waits while this many of its kind are posted; 0: never")
    p.add_argument("--flaky-failures", type=int, default=SandboxConfig.flaky_failures)
    p.add_argument("--timeout-delay", type=seconds, default=SandboxConfig.timeout_delay)
    p.add_argument("--slow-delay", type=seconds, default=SandboxConfig.slow_delay)
    p.add_argument("--no-schema", action="store_true", help="do not XSD-validate incoming messages")
    p.add_argument("--single-limit", type=Decimal, default=SandboxConfig.single_limit)
    p.add_argument("--annual-limit", type=Decimal, default=SandboxConfig.annual_limit)
    p.add_argument("--no-tax-bills", action="store_true",
                   help="send no tax bill (CEB816) after an import inventory's release")
    p.add_argument("--no-tax-bill-status", action="store_true",
                   help="send no status change (CEB818, 2 consolidated) after a tax bill")
    p.add_argument("--tax-bill-status-delay", type=seconds, default=None, metavar="SECONDS",
                   help="seconds from a tax bill to its status change, standing for the return window "
                        "(default: one receipt delay)")
    p.add_argument("--warehouse-callback-url")
    p.add_argument("--warehouse-callback-secret")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="keep its ledgers in DIR/sandbox, to go on from them when started again (as cbec serve "
                        "does in its data folder); default: in memory only")  # fmt: skip
    return p.parse_args(argv)


async def _run(ns: argparse.Namespace) -> None:
    headers = {}
    for item in ns.receipt_header:
        name, _, value = item.partition(":")
        headers[name.strip()] = value.strip()
    running = await start_sandbox(
        ns.host,
        ns.port,
        receipt_url=ns.receipt_url,
        receipt_headers=headers,
        receipt_delay=ns.receipt_delay,
        receipt_batch_window=ns.receipt_batch_window,
        receipt_batch_max=ns.receipt_batch_max,
        receipt_batch_inflight=ns.receipt_batch_inflight,
        flaky_failures=ns.flaky_failures,
        timeout_delay=ns.timeout_delay,
        slow_delay=ns.slow_delay,
        validate_schema=not ns.no_schema,
        single_limit=ns.single_limit,
        annual_limit=ns.annual_limit,
        tax_bills=not ns.no_tax_bills,
        tax_bill_status=not ns.no_tax_bill_status,
        tax_bill_status_delay=ns.tax_bill_status_delay,
        warehouse_callback_url=ns.warehouse_callback_url,
        warehouse_callback_secret=ns.warehouse_callback_secret,
        state_dir=sandbox_state_dir(ns.data_dir),
    )
    print(f"customs sandbox listening on {running.url} (POST /dxp, /ceb, /inspection, /warehouse/orders)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.stop()


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(_args(argv)))


if __name__ == "__main__":
    main()
