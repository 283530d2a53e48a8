"""Smoke test of ``cbec bench`` at a tiny size: every stage runs for real and every figure is a positive number."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from gateway import bench
from gateway.cli import build_parser
from tests import dbutil

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in _NUMBER.findall(text)]


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_bench_tiny_run_reports_positive_figures(pg_dsn: str) -> None:
    opts = bench.Options(
        database_url=pg_dsn, messages=40, concurrency=4, shipments=[30], batch=40, min_seconds=0.1, processes=2,
        rounds=2,
    )
    report = await bench.run(opts)
    text = bench.format_report(report)

    # Nothing lost: every message stored once, every shipment matched, in the main run and the flatness run.
    assert report.ok, text
    assert report.ingest.accepted == report.ingest.messages == 40
    assert "concurrency 4, 2 processes" in text  # the runs used cbec serve --processes 2
    assert report.verification.messages_stored == 40
    assert report.verification.shipments_matched == report.verification.shipments_expected == 10
    assert report.validate.valid == report.validate.files == bench.MIN_VALIDATE_FILES  # the 40, written 50 times

    # Run 3 twice, each round on its own database, each verified; the figures shown are the slower round's.
    assert len(report.ingest_rounds) == 2 and all(vf.ok and run.accepted == 40 for run, vf in report.ingest_rounds)
    assert report.ingest is min((run for run, _ in report.ingest_rounds), key=lambda run: run.per_second)
    assert [r["ok"] for r in report.as_dict()["ingest_rounds"]] == [True, True]
    assert "rounds on fresh databases" in text

    # Every figure of the table (the lines after the header rule) is a positive number.
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith("---"))
    end = next(
        (i for i in range(rule + 1, len(lines)) if not lines[i].startswith("  ") or lines[i].startswith("  (")),
        len(lines),
    )
    table = lines[rule + 1 : end]
    assert len(table) >= 12, text
    for line in table:
        label, value = line[:61], line[61:]
        figures = _numbers(value)
        assert figures, f"no figure in {line!r}"
        assert all(f > 0 for f in figures), f"not positive: {line!r}"
        assert label.strip()

    # The ceiling the CPU per message sets: the machine's cores over the three processes' CPU per message.
    [ceiling] = [line for line in table if "cores always busy" in line]
    c = report.ingest.cpu_us_per_message
    cores = report.machine["cores"]
    assert _numbers(ceiling[61:]) == [round(cores * 1e6 / (c["gateway"] + c["postgres"] + c["client"]))], ceiling
    assert bench.cpu_ceiling({"gateway": 800.0, "postgres": 400.0, "client": 50.0}, 2) == 1600
    assert bench.cpu_ceiling({}, 2) is None

    # The gateway's own count of its ingest transactions (its /metrics): every message in one of them.
    t = report.ingest.transactions
    assert t["messages"] == 40 and 1 <= t["count"] <= 40 and t["seconds"] > 0, t
    [batches] = [line for line in table if "ingest transactions" in line]
    assert _numbers(batches[61:])[0] == t["count"], batches

    # The same messages with each shipment's legs back to back: stored and matched as well.
    assert report.ingest_adjacent is not None and report.verification_adjacent is not None
    assert report.ingest_adjacent.accepted == 40 and report.verification_adjacent.ok
    assert any("legs back to back" in line for line in table)

    # The run with cbec serve's forwarding (worker + customs sandbox) stored everything too.
    assert report.forwarding is not None and report.forwarding_verification is not None
    assert report.forwarding.accepted == 40 and report.forwarding_verification.ok
    assert any(line.strip().startswith("3b.") for line in table)

    # The release run: every shipment forwarded to the sandbox (four customs messages each) and released.
    rl = report.release
    assert rl is not None and rl.ok, text
    assert rl.shipments == rl.released == 10
    assert rl.customs_done == 40
    assert rl.forwarded_per_second > 0 and 0 < rl.p50_s <= rl.p99_s <= rl.seconds
    assert any(line.strip().startswith("3c.") for line in table)
    assert report.as_dict()["release"]["forwarded_per_second"] == rl.forwarded_per_second
    assert rl.cpu_ms_per_message["gateway"] > 0 and rl.cpu_ms_per_message["postgres"] > 0

    # The same with cbec worker and cbec sandbox in processes of their own: each spent CPU on the run.
    split = report.release_split
    assert split is not None and split.ok, text
    assert split.shipments == split.released == 10 and split.customs_done == 40
    assert all(split.cpu_ms_per_message[p] > 0 for p in ("gateway", "worker", "sandbox", "postgres")), split
    assert any(line.strip().startswith("3d.") for line in table)

    # The backlog run: the three legs of each shipment waited for the worker (the inventories for receipts, which
    # the sandbox holds back), and every one was delivered, the sandbox and PostgreSQL working for them.
    drain = report.drain
    assert drain is not None and drain.ok, text
    assert drain.queued == drain.forwarded == 30 and 0 < drain.seconds < rl.seconds + split.seconds
    assert all(drain.cpu_ms_per_message[p] > 0 for p in ("worker", "sandbox", "postgres")), drain
    assert any(line.strip().startswith("3e.") for line in table)
    assert report.as_dict()["drain"]["forwarded_per_second"] == drain.forwarded_per_second

    flat = report.flatness
    assert len(flat) == 1
    assert flat[0].shipments_stored == 30
    assert flat[0].populate_seconds > 0
    assert flat[0].run.per_second > 0 and flat[0].run.p50_ms > 0 and flat[0].run.p99_ms >= flat[0].run.p50_ms
    assert flat[0].verification.ok
    row = next(line for line in lines if line.strip().startswith("30 "))
    assert all(f > 0 for f in _numbers(row)), row

    assert report.lxml_per_second > report.ingest.per_second > 0
    assert 0 < report.ratio < 1
    assert report.machine["cores"] >= 1 and report.machine["postgres"].startswith("PostgreSQL")


def test_interleave_spreads_the_legs_of_a_shipment_among_others_and_keeps_every_message() -> None:
    adjacent = bench.Corpus(3).shipments(300)
    mixed = bench.interleave(adjacent, seed=3)
    assert sorted(id(m) for m in mixed) == sorted(id(m) for m in adjacent)  # a permutation: nothing lost
    assert bench.interleave(adjacent, seed=3) == mixed  # the same order for the same seed
    # Back to back, each shipment's four legs are neighbours; interleaved, most are not, and no leg is
    # further than the window from its shipment's place.
    def neighbours(ms: list[bench.Message]) -> int:
        return sum(a.shipment == b.shipment for a, b in itertools.pairwise(ms))

    assert neighbours(adjacent) == 3 * 300
    assert neighbours(mixed) < 0.1 * 3 * 300
    for place, m in enumerate(mixed):
        assert abs(place / 4 - m.shipment) <= bench.INTERLEAVE_WINDOW + 4


def test_cli_bench_options() -> None:
    args = build_parser().parse_args(
        ["bench", "--messages", "80", "--concurrency", "8", "--shipments", "1000,1_000_000", "--json"]
    )
    opts = bench.Options.from_args(args)
    assert (opts.messages, opts.concurrency, opts.shipments, opts.batch) == (80, 8, [1000, 1_000_000], 2000)
    assert args.json is True and opts.forwarding is True and opts.processes == 1
    assert bench.Options.from_args(build_parser().parse_args(["bench", "--processes", "2"])).processes == 2
    assert bench.Options.from_args(build_parser().parse_args(["bench", "--no-forwarding"])).forwarding is False
    assert opts.rounds == 3
    assert bench.Options.from_args(build_parser().parse_args(["bench", "--rounds", "5"])).rounds == 5


def _round(per_second: float) -> tuple[bench.IngestRun, bench.Verification]:
    run = bench.IngestRun(messages=int(per_second), seconds=1.0, statuses={}, p50_ms=1.0, p99_ms=2.0)
    return run, bench.Verification(0, 0, 0, 0, 0, 0)


def test_the_median_round_is_the_middle_one_or_the_lower_middle_one() -> None:
    rounds = [_round(1500), _round(1300), _round(1700)]
    assert bench.median_round(rounds) is rounds[0]
    assert bench.median_round(rounds[:2]) is rounds[1]
    assert bench.median_round(rounds[2:]) is rounds[2]
    with pytest.raises(ValueError):
        bench.median_round([])


def test_split_topology_passes_a_customs_key_that_begins_with_a_dash(tmp_path: Path) -> None:
    split = bench.SplitTopology("postgresql://x/y", tmp_path, None, receipt_delay_ms=0, processes=1)
    split.gateway.customs_key = "-Yx_2kQ"  # secrets.token_urlsafe draws "-" as a first character one time in 64
    args = build_parser().parse_args(split.sandbox_args())
    assert args.receipt_key == "-Yx_2kQ"
    assert args.receipt_url == f"{split.gateway.base_url}/v1/receipts" and args.delay_ms == 0


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_a_gateway_with_several_api_processes_is_started_once_all_of_them_listen(
    pg_dsn: str, tmp_path: Path
) -> None:
    # Were the run started when the first process answers, the kernel would hand every connection to it.
    async with dbutil.fresh_database(pg_dsn) as dsn:
        gateway = bench.GatewayProcess(dsn, tmp_path, None, dict(bench.INGEST_ONLY_ENV), processes=3)
        try:
            await gateway.start()
            assert gateway.listening_api_processes() == 2, gateway.log_tail()
        finally:
            await gateway.stop()
        again = bench.GatewayProcess(dsn, tmp_path, None, dict(bench.INGEST_ONLY_ENV), processes=1)
        again.log_file = gateway.log_file  # the same file, appended: the earlier start's lines do not count
        try:
            await again.start()
            assert again.listening_api_processes() == 0
        finally:
            await again.stop()
