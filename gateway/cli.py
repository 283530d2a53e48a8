"""The ``cbec`` command: serve, worker, sandbox, replay, validate, db migrate, bench.

Exit codes: 0 success, 1 invalid input (validate) or a database that cannot be used (also an embedded one that
stopped under serve or worker), 2 usage errors (argparse's own convention; a configuration that cannot be used is
one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from gateway import config


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file (also CBEC_CONFIG)")
    p.add_argument("--database-url", help="PostgreSQL DSN (also CBEC_DATABASE_URL); default: embedded PostgreSQL")
    p.add_argument("--data-dir", type=Path, help="where the embedded PostgreSQL and local state live (default ./var)")


def _unusable(reason: object) -> NoReturn:
    print(f"cbec: the configuration is not usable: {reason}", file=sys.stderr)
    raise SystemExit(2)  # a usage error: nothing started


def reload_settings(config_file: str | None, options: dict[str, Any]) -> config.Settings:
    """The configuration (the file and the environment) with the command line's options over it; read at start, and
    again by ``cbec serve`` and ``cbec worker`` on SIGHUP (gateway.server). Raises what config.load raises."""
    return config.load(config_file).with_overrides(**options)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("database_url", "data_dir", "host", "port", "processes")
    return {name: getattr(args, name, None) for name in names}


def _settings(args: argparse.Namespace) -> config.Settings:
    try:
        s = reload_settings(args.config, _options(args))
    # a TOML syntax error is a ValueError; a value of the wrong kind (a list for a port, a table for a rate) is
    # a TypeError where a conversion refuses it
    except (OSError, ValueError, TypeError, ArithmeticError) as exc:
        _unusable(exc)
    if s.processes < 1:
        _unusable(f"processes must be at least 1, got {s.processes}")
    return s


def validate_files(
    paths: Sequence[str], *, verify_signatures: bool = False, trusted_certs: Sequence[bytes] | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """Validate files offline with one compiled schema set. Returns (results, any_unreadable)."""
    from gateway.errors import MessageRejected
    from gateway.pipeline import Pipeline, looks_like_json
    from gateway.schema import SchemaSet

    pipeline = Pipeline(SchemaSet(), verify_signatures=verify_signatures, trusted_certs=trusted_certs)
    results: list[dict[str, Any]] = []
    unreadable = False
    for path in paths:
        # warnings (gateway.rules.WARNINGS) leave a file valid: listed beside its errors, [] when none
        entry: dict[str, Any] = {"file": path, "message_type": None, "valid": False, "errors": [], "warnings": []}
        try:
            body = Path(path).read_bytes()
        except OSError as exc:
            unreadable = True
            entry["errors"] = [{"layer": "parse", "code": "io.unreadable", "path": "/", "message": str(exc)}]
            results.append(entry)
            continue
        try:
            if looks_like_json(body):  # a seller's JSON document set (docs/json-api.md)
                if pipeline.signer is None:  # the gateway signs JSON inventories: a throwaway key stands in here
                    from gateway.signing import throwaway_signer

                    pipeline.signer = throwaway_signer("cbec validate (throwaway)")
                checked = pipeline.check_json_body(body)
            else:
                checked = pipeline.check(body)
        except MessageRejected as exc:
            entry["errors"] = [i.as_dict() for i in exc.issues]
            entry["message_type"] = exc.message_type
        else:
            entry["message_type"] = checked.message.type.code
            entry["valid"] = True
            entry["warnings"] = [i.as_dict() for i in checked.warnings]
        results.append(entry)
    return results, unreadable


def _cmd_validate(args: argparse.Namespace) -> int:
    trusted = None
    if args.trusted_certs:
        from gateway.signing import read_certificates

        try:
            trusted = read_certificates(Path(args.trusted_certs))
        except (OSError, ValueError) as exc:
            print(f"cbec: --trusted-certs: {exc}", file=sys.stderr)
            return 2
    results, unreadable = validate_files(
        args.files, verify_signatures=args.verify_signatures or trusted is not None, trusted_certs=trusted
    )
    if args.json:
        json.dump(results, sys.stdout, ensure_ascii=False, indent=None)
        sys.stdout.write("\n")
    else:
        for r in results:
            kind = r["message_type"] or "?"
            warnings = r["warnings"]
            if r["valid"]:
                told = f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""
                print(f"{r['file']}: valid {kind}{told}")
            else:
                print(f"{r['file']}: INVALID {kind} ({len(r['errors'])} error{'s' if len(r['errors']) != 1 else ''})")
            for e in r["errors"]:
                print(f"  [{e['layer']}] {e['code']} at {e['path']}: {e['message']}")
            for w in warnings:
                print(f"  warning [{w['layer']}] {w['code']} at {w['path']}: {w['message']}")
        bad = sum(not r["valid"] for r in results)
        warned = sum(bool(r["warnings"]) for r in results)
        print(f"{len(results) - bad} valid, {bad} invalid" + (f", {warned} with warnings" if warned else ""))
    if unreadable:
        return 2
    return 0 if all(r["valid"] for r in results) else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _shared_metrics(settings.processes, settings.data_dir):
        from gateway.server import serve

        asyncio.run(serve(settings, reload=functools.partial(reload_settings, args.config, _options(args))))
    return 0


@contextlib.contextmanager
def _shared_metrics(processes: int, data_dir: Path) -> Iterator[None]:
    """Several API processes share their /metrics figures through files in a fresh folder (gateway.metrics),
    named in the environment before prometheus_client is imported here or in the processes spawned later.

    The folder is ``data_dir/metrics-<pid>``, removed at the end; one left by a ``cbec serve`` that was killed is
    removed by the next start (its pid is gone)."""
    if processes < 2 or os.environ.get(config.METRICS_SHARED_DIR_ENV):  # one process, or a folder the operator chose
        yield
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob("metrics-*"):
        pid = stale.name.removeprefix("metrics-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = data_dir / f"metrics-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    os.environ[config.METRICS_SHARED_DIR_ENV] = str(folder.resolve())
    try:
        yield
    finally:
        os.environ.pop(config.METRICS_SHARED_DIR_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _cmd_worker(args: argparse.Namespace) -> int:
    from gateway import db
    from gateway.server import run_worker

    settings = _settings(args)
    pgdata = Path(settings.data_dir) / "pgdata"
    embedded = db.resolve_dsn(settings.database_url) is None
    if settings.forwarding.enabled and embedded and not db.embedded_running(pgdata):
        # A worker delivers what a gateway's database queues: an embedded server of its own would be empty, and
        # it would run, migrated and idle, delivering nothing. It may join the one a cbec serve runs here.
        _unusable(f"cbec worker needs the gateway's database: --database-url, CBEC_DATABASE_URL or database_url "
                  f"(or a cbec serve running on the embedded PostgreSQL in {pgdata}, which it joins)")  # fmt: skip
    worker = run_worker(
        settings, sandbox_url=args.sandbox_url, worker_id=args.worker_id, watchdog=not args.no_watchdog,
        reload=functools.partial(reload_settings, args.config, _options(args)),
    )
    asyncio.run(worker)
    return 0


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from gateway.sandbox import start_sandbox
    from gateway.sandbox.app import sandbox_state_dir
    from gateway.server import settled_heap, stopped_by_signals

    async def run() -> None:
        headers = {"X-API-Key": args.receipt_key} if args.receipt_key else {}
        sandbox = await start_sandbox(
            args.host,
            args.port,
            receipt_url=args.receipt_url,
            receipt_headers=headers,
            receipt_delay=args.delay_ms / 1000,
            failure_rate=args.failure_rate,
            warehouse_callback_url=args.warehouse_callback_url,
            warehouse_callback_headers={"X-API-Key": args.warehouse_key} if args.warehouse_key else {},
            state_dir=sandbox_state_dir(args.data_dir),
        )
        print(f"customs sandbox on {sandbox.url}: POST /dxp /ceb /inspection /warehouse/orders", flush=True)
        stop = asyncio.Event()
        try:
            async with stopped_by_signals(stop):
                with settled_heap():
                    await stop.wait()
        finally:
            await sandbox.stop()

    asyncio.run(run())
    return 0


def _cmd_ukey_sandbox(args: argparse.Namespace) -> int:
    """The E-Port client control with a card in it, played on this machine (gateway.sandbox.ukey): for trying
    ``signing_ukey_url`` or a 179 platform's ``ukey_url`` without a card. The card's key is the files given, or a TEST
    key made now; its certificate is written to ``--cert-out`` (for ``trusted_certs``)."""
    from gateway.sandbox.ukey import start_ukey
    from gateway.server import stopped_by_signals
    from gateway.signing import RsaSha1Key, SignatureBackend, Sm2Sm3Key, generate_test_key

    kind: Literal["rsa", "sm2"] = "sm2" if args.algorithm == "sm2-sm3" else "rsa"
    if bool(args.key_file) != bool(args.cert_file):
        print("cbec ukey-sandbox: --key-file and --cert-file go together", file=sys.stderr)
        return 2
    try:
        key_pem, cert_pem = ((Path(args.key_file).read_bytes(), Path(args.cert_file).read_bytes()) if args.key_file
                             else generate_test_key(kind, "cbec ukey-sandbox card (TEST)"))  # fmt: skip
        card_key: SignatureBackend = Sm2Sm3Key.from_pem(key_pem, cert_pem, signature_format="raw") if kind == "sm2" \
            else RsaSha1Key.from_pem(key_pem, cert_pem)  # fmt: skip
        if args.cert_out:
            Path(args.cert_out).write_bytes(cert_pem)
    except (OSError, ValueError) as exc:
        print(f"cbec ukey-sandbox: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        try:
            card = await start_ukey(card_key, pin=args.pin, host=args.host, port=args.port)
        except OSError as exc:
            reason = f"cbec ukey-sandbox: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
            raise SystemExit(reason) from None
        print(f"UKey client control on {card.url}: a card with certificate {card_key.key_name} ({args.algorithm}), "
              f"PIN {args.pin}", flush=True)
        stop = asyncio.Event()
        try:
            async with stopped_by_signals(stop):
                await stop.wait()
        finally:
            await card.stop()

    asyncio.run(run())
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from gateway.server import replay

    if not args.job and not args.endpoint and not args.all:
        print("cbec replay: name --job ID (repeatable), --endpoint E or --all", file=sys.stderr)
        return 2
    try:
        replayed = asyncio.run(replay(_settings(args), job_ids=args.job or None, endpoint=args.endpoint,
                                      everything=args.all))  # fmt: skip
    except ValueError as exc:  # an endpoint nothing knows
        print(f"cbec replay: {exc}", file=sys.stderr)
        return 2
    print(f"replayed {len(replayed)} dead letter{'s' if len(replayed) != 1 else ''}"
          + (f": {', '.join(map(str, replayed))}" if replayed else ""))  # fmt: skip
    if not_dead := sorted(set(args.job or ()) - set(replayed)):
        # a mistyped id, or a job already queued again: said, and the exit status tells a script
        print(f"not replayed (unknown, queued, running or done, or a dead letter of another endpoint than "
              f"--endpoint): {', '.join(map(str, not_dead))}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from gateway import configcheck

    settings = _settings(args)  # a configuration that cannot be read: exit 2, as cbec serve would
    lines = configcheck.check(settings)
    lines.insert(0, asyncio.run(configcheck.database_line(settings)))
    lines.extend(asyncio.run(configcheck.ukey_lines(settings)))
    for line in lines:
        print(f"{line.level.value:5}  {line.text}")
    status = configcheck.exit_status(lines)
    print({0: "usable", 1: "usable, with warnings", 2: "not usable"}[status])
    return status


def _cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.server import migrate_only

    applied = asyncio.run(migrate_only(_settings(args)))
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from gateway.bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbec", description="Cross-border e-commerce (CEB) declaration gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway API (embedded PostgreSQL unless a DSN is given)")
    _add_server_options(p)
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8080)")
    p.add_argument("--processes", type=int, help="API processes sharing the port (default 1; also CBEC_PROCESSES)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("worker", help="deliver queued messages (customs, inspection, warehouse, webhooks), no API")
    _add_server_options(p)
    p.add_argument("--sandbox-url", help="the customs sandbox when no customs endpoint is configured "
                   "(default http://127.0.0.1:<forwarding.sandbox_port>)")  # fmt: skip
    p.add_argument("--worker-id", help="name in the queue's claims (default host:pid:random)")
    p.add_argument("--no-watchdog", action="store_true", help="leave the receipt watchdog to other processes")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("sandbox", help="run the customs sandbox alone (docs/sandbox.md)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8790, help="listen port (default 8790; 0: any free port)")
    p.add_argument("--receipt-url", help="where receipts go, e.g. http://127.0.0.1:8080/v1/receipts")
    p.add_argument("--receipt-key", help="API key (role customs) sent with the receipts as X-API-Key")
    p.add_argument("--warehouse-callback-url",
                   help="where its warehouse's callbacks go, e.g. http://127.0.0.1:8080/v1/warehouse/callbacks")
    p.add_argument("--warehouse-key", help="API key (role warehouse) sent with the callbacks as X-API-Key")
    p.add_argument("--delay-ms", type=float, default=500.0, help="delay before each receipt (default 500)")
    p.add_argument("--failure-rate", type=float, default=0.0, help="fraction of requests answered 503 (default 0)")
    p.add_argument("--data-dir", help="keep its ledgers in DATA_DIR/sandbox and go on from them when started again "
                   "(as cbec serve does in its data folder); default: in memory only")  # fmt: skip
    p.set_defaults(func=_cmd_sandbox)

    p = sub.add_parser("ukey-sandbox", help="play a UKey's E-Port client control, a TEST card in it (docs/sandbox.md)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=61232, help="listen port (default 61232, the control's; 0: any free)")
    p.add_argument("--algorithm", choices=("rsa-sha1", "sm2-sm3"), default="sm2-sm3",
                   help="the card's key (default sm2-sm3, as the e-port's cards since 2022)")
    p.add_argument("--key-file", help="the card's key (PEM) instead of a TEST key made now; with --cert-file")
    p.add_argument("--cert-file", help="the card's certificate (PEM)")
    p.add_argument("--pin", default="88888888", help="the card's PIN (default 88888888, a new card's)")
    p.add_argument("--cert-out", help="write the card's certificate (PEM) there, e.g. for trusted_certs")
    p.set_defaults(func=_cmd_ukey_sandbox)

    p = sub.add_parser("replay", help="move dead letters back to the delivery queue")
    _add_server_options(p)
    p.add_argument("--job", type=int, action="append", metavar="ID", help="a dead job's id (repeatable)")
    p.add_argument("--endpoint", help="every dead job of this endpoint")
    p.add_argument("--all", action="store_true", help="every dead job")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("validate", help="validate CEB XML files offline (schema + business rules)")
    p.add_argument("--json", action="store_true", help="print one JSON array, one object per file")
    p.add_argument("--verify-signatures", action="store_true",
                   help="verify the ds:Signature of each signed message (digest, value, KeyName)")
    p.add_argument("--trusted-certs", metavar="PATH",
                   help="a PEM bundle or a folder of certificates: signatures must be made with one of them "
                   "(implies --verify-signatures)")  # fmt: skip
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("config", help="configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="what a configuration would do, before cbec serve starts with it or takes it on "
                        "SIGHUP (exit 0 usable, 1 with warnings, 2 not usable)")  # fmt: skip
    _add_server_options(c)
    c.set_defaults(func=_cmd_config_check)

    p = sub.add_parser("db", help="database maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    m = dbsub.add_parser("migrate", help="apply pending migrations")
    _add_server_options(m)
    m.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("bench", help="measure parse/validate/ingest throughput and print the figures")
    _add_server_options(p)
    p.add_argument("--messages", type=int, default=4000, help="messages to ingest over HTTP (default 4000)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent HTTP clients (default 32)")
    p.add_argument(
        "--shipments",
        default="",
        help="stored-shipment counts for the flatness run, e.g. 10000,100000",
    )
    p.add_argument("--batch", type=int, default=2000, help="messages ingested per flatness row (default 2000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the sample messages (default 1)")
    p.add_argument("--processes", type=int, default=1, help="cbec serve --processes for the runs (default 1)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of the full ingest run, each on a fresh database; the median is shown (default 3)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of a table")
    p.add_argument(
        "--no-forwarding",
        action="store_true",
        help="skip the ingest run with the built-in forwarding (queue worker + customs sandbox) running",
    )
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from gateway.sandbox.state import StateUnusable

        if isinstance(exc, StateUnusable):  # cbec serve's or cbec sandbox's: one line, what to do about it
            print(f"cbec: the customs sandbox's state: {exc} (stop the other sandbox, or move the folder away to "
                  "start it afresh)", file=sys.stderr)  # fmt: skip
            return 2
        if not _database_unusable(exc):
            raise
        # a wrong or unreachable --database-url, a database not migrated: one line, not a traceback
        print(f"cbec: cannot use the database: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1


def _database_unusable(exc: BaseException) -> bool:
    """An unreachable or wrong --database-url, a database not there or not migrated: not a bug of cbec's (whose
    other errors keep their traceback)."""
    import asyncpg  # here: cbec validate needs no database driver

    from gateway.db import NewerDatabase, database_away

    wrong = (
        asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError, asyncpg.UndefinedTableError,
        asyncpg.ClientConfigurationError, NewerDatabase,
    )  # fmt: skip
    return database_away(exc) or isinstance(exc, wrong)


if __name__ == "__main__":
    sys.exit(main())
