"""``cbec bench``: how fast this machine parses, validates and ingests CEB messages, in one run.

Every figure comes from the same realistic messages: the four legs (CEB311 order, CEB411 payment,
CEB511 waybill, CEB621 signed inventory) of shipments made by :mod:`gateway.samples`, half 9610 and
half 1210, 1–5 goods lines. The run measures:

1. bare lxml: parse + ``XMLSchema.validate`` on one core — the floor the other figures compare with;
2. the pipeline's CPU part in this process (parse, XSD, extract, business rules), one core;
3. the real ``cbec validate --json`` over every message written as a file, in one subprocess call
   (files/s with the interpreter's start-up included, and the start-up itself);
4. full ingest: ``cbec serve`` in its own process on a fresh database, driven over HTTP (gateway.loadgen) at
   the given concurrency — every answer a 202 after the commit, reconciliation included — with p50/p99
   latency, the CPU each process spent per message, and a check in SQL afterwards that every message
   was stored and every shipment is matched (a benchmark that loses data is wrong);
   the same with cbec serve's forwarding running; forwarding until released, first all in ``cbec serve``
   (worker and sandbox in its process, as a newcomer runs it), then in the production topology (``cbec
   serve`` for the API, a ``cbec worker`` and the sandbox in processes of their own), with the CPU each
   process spent per forwarded message; and forwarding alone: a backlog of accepted legs delivered by a ``cbec
   worker`` started afterwards to a ``cbec sandbox`` that holds its receipts back (queue drain rate);
5. full ingest / bare lxml;
6. flatness: a fixed batch ingested again after the tables were bulk-populated (INSERT ... SELECT
   generate_series, rows shaped like the sample documents) to each requested shipment count.

The databases are created for the run next to the given server (``--database-url``, else the local
server at 127.0.0.1:5432 when it answers, else an embedded one) and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from gateway import db, loadgen, samples, signing
from gateway.auth import document_parties
from gateway.messages import CEB_NS, SCHEMA_DIR, lookup
from gateway.pipeline import Pipeline
from gateway.schema import SchemaSet

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CODES_IN_ORDER = ("CEB311", "CEB411", "CEB511", "CEB621")
SHIPMENT_STATE_MATCHED = "matched"
#: Messages ingested (and not counted) before each flatness batch: connections, prepared statements.
WARMUP_MESSAGES = 100
#: cbec validate runs over at least this many files (the corpus repeated when smaller).
MIN_VALIDATE_FILES = 2000


# --- the messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    shipment: int
    code: str
    body: bytes


class Corpus:
    """Sample shipments rendered to XML, legs shuffled within each shipment, shipments one after another."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._sign = signing.throwaway_signer("cbec bench agent")
        self.next_shipment = 0

    def shipments(self, count: int) -> list[Message]:
        out: list[Message] = []
        for _ in range(count):
            s = samples.shipment(self.rng, mode=self.rng.choice(("9610", "1210")), n_items=self.rng.randint(1, 5))
            rendered = samples.render_shipment(s, signer=self._sign)
            legs = list(CODES_IN_ORDER)
            self.rng.shuffle(legs)
            out.extend(Message(self.next_shipment, code, rendered[code]) for code in legs)
            self.next_shipment += 1
        return out


#: Shipments over which the legs of one shipment spread in the interleaved arrival order (see interleave).
INTERLEAVE_WINDOW = 256


def interleave(messages: Sequence[Message], seed: int, window: int = INTERLEAVE_WINDOW) -> list[Message]:
    """The messages in the order a platform's gateway sees them: the order, payment, waybill and inventory of a
    parcel come from four companies, each when its own system sends it, so a shipment's legs arrive among
    other shipments' legs. Each leg arrives at its shipment's number plus a random lag of up to ``window``
    shipments (stable for a seed). Real lags are minutes; at benchmark rates a window of 256 shipments is
    about one second, so legs of one shipment still meet in the gateway often."""
    rng = random.Random(seed * 104729 + 7)
    keyed = [(m.shipment + rng.uniform(0, window), i, m) for i, m in enumerate(messages)]
    return [m for _, _, m in sorted(keyed, key=lambda k: (k[0], k[1]))]


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def bench_lxml(bodies: Sequence[bytes], *, min_seconds: float = 1.0) -> float:
    """Documents/s of bare lxml parse + XMLSchema.validate on one core (passes repeated for min_seconds)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, collect_ids=False)
    schema_parser = etree.XMLParser(no_network=True, resolve_entities=False)
    schema = etree.XMLSchema(etree.parse(str(SCHEMA_DIR / lookup("CEB311").schema), schema_parser))  # type: ignore[union-attr]
    done, started = 0, time.perf_counter()
    while True:
        for body in bodies:
            if not schema.validate(etree.fromstring(body, parser)):
                raise RuntimeError(f"a sample message is not schema-valid: {schema.error_log.last_error}")
        done += len(bodies)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return _rate(done, elapsed)


def bench_pipeline(bodies: Sequence[bytes], *, min_seconds: float = 1.0) -> float:
    """Documents/s of Pipeline.check (parse, XSD, extract, business rules) in this process, one core."""
    pipeline = Pipeline(SchemaSet())
    pipeline.check(bodies[0])  # compile the schema outside the timing
    done, started = 0, time.perf_counter()
    while True:
        for body in bodies:
            pipeline.check(body)
        done += len(bodies)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return _rate(done, elapsed)


def cbec_command() -> list[str]:
    """The installed ``cbec`` console script next to this interpreter, else ``python -m gateway.cli``."""
    script = Path(sys.executable).with_name("cbec")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


@dataclass
class ValidateRun:
    files: int
    valid: int
    seconds: float
    startup_seconds: float

    @property
    def files_per_second(self) -> float:
        return _rate(self.files, self.seconds)

    @property
    def files_per_second_after_startup(self) -> float | None:
        """The rate once started; None when the run was too short to tell it from the start-up's noise."""
        work = self.seconds - self.startup_seconds
        return _rate(self.files, work) if work > 0.1 * self.seconds else None


def bench_validate(messages: Sequence[Message], folder: Path, *, min_files: int = MIN_VALIDATE_FILES) -> ValidateRun:
    """Time ``cbec validate --json`` over every message as a file (one call), and its start-up alone.

    A small corpus is written several times over (under other names) so that the call covers at least
    ``min_files`` files: with fewer, the start-up hides the rate.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(max(len(messages), min_files)):
        m = messages[i % len(messages)]
        name = f"{i:06d}-{m.code}.xml"
        (folder / name).write_bytes(m.body)
        names.append(name)
    cmd = [*cbec_command(), "validate", "--json"]
    startups = []
    for _ in range(3):  # start-up: interpreter, imports, schema compilation, one file
        started = time.perf_counter()
        subprocess.run([*cmd, names[0]], cwd=folder, capture_output=True, check=True)
        startups.append(time.perf_counter() - started)
    started = time.perf_counter()
    done = subprocess.run([*cmd, *names], cwd=folder, capture_output=True, check=False)
    seconds = time.perf_counter() - started
    results = json.loads(done.stdout)
    valid = sum(1 for r in results if r["valid"])
    if done.returncode != 0 or len(results) != len(names):
        bad = next((r for r in results if not r["valid"]), None)
        raise RuntimeError(f"cbec validate exited {done.returncode}: {bad or done.stderr.decode()[-2000:]}")
    return ValidateRun(len(names), valid, seconds, sorted(startups)[1])


# --- databases -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def database_server(explicit: str | None, data_dir: Path | None) -> AsyncIterator[tuple[str, str]]:
    """Yield (admin DSN, where): the given server, the local one at 127.0.0.1:5432, or an embedded one."""
    dsn = db.resolve_dsn(explicit)
    if dsn is not None:
        yield dsn, "given server"
        return
    if await db.answers(LOCAL_DSN):
        yield LOCAL_DSN, "local server 127.0.0.1:5432"
        return
    if data_dir is not None:
        async with db.EmbeddedPostgres(Path(data_dir) / "pgdata") as pg:
            yield pg.dsn, f"embedded server in {Path(data_dir) / 'pgdata'}"
        return
    folder = tempfile.mkdtemp(prefix="cbec-bench-pg-")
    pg = db.EmbeddedPostgres(folder, cleanup_mode="delete")
    try:
        yield await pg.start(), "embedded server (temporary)"
    finally:
        await pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """A new, migrated database on the server for the block (dropped afterwards): (dsn, name)."""
    name = f"cbec_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = db.with_database(admin_dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
        yield dsn, name
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


# --- the gateway in its own process ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: ``cbec serve`` as the ingest figures measure it: the outbox rows are written in the ingest transaction as
#: always, but no delivery runs in the process (the built-in customs sandbox idles on a free port).
INGEST_ONLY_ENV = {"CBEC_FORWARDING_WORKER": "false", "CBEC_FORWARDING_SANDBOX_PORT": "0"}
#: ``cbec serve`` as it runs by default: its queue worker forwards every message to the built-in customs
#: sandbox (on a free port here), whose receipts come back to the gateway over HTTP.
FORWARDING_ENV = {"CBEC_FORWARDING_SANDBOX_PORT": "0"}
#: ``cbec serve`` with its forwarding and the built-in sandbox answering at once (receipt delays zero): the
#: release run measures the gateway's own forwarding path (queue, customs adapter, receipts), not a wait.
RELEASE_ENV = {"CBEC_FORWARDING_SANDBOX_PORT": "0", "CBEC_FORWARDING_SANDBOX_RECEIPT_DELAY_S": "0"}


async def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (a normal stop), then SIGKILL after 30 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)


class GatewayProcess:
    """``cbec serve`` on a free port with a bench API key; its log (JSON lines) goes to a file."""

    def __init__(
        self,
        dsn: str,
        workdir: Path,
        config: str | None,
        env: dict[str, str] | None = None,
        *,
        customs_key: str | None = None,
        processes: int = 1,
    ) -> None:
        self.dsn = dsn
        self.processes = processes  # cbec serve --processes; the API processes' CPU counts as the gateway's
        self.workdir = workdir
        self.config = config
        self.env = env or {}
        self.port = _free_port()
        self.api_key = secrets.token_urlsafe(24)
        self.customs_key = customs_key  # receipts from a sandbox in its own process
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_file = workdir / f"gateway-{self.port}.log"
        self._log_start = 0
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ)
        keys = [{"name": "bench", "key": self.api_key, "role": "admin"}]
        if self.customs_key:
            keys.append({"name": "customs-sandbox", "key": self.customs_key, "role": "customs"})
        env["CBEC_API_KEYS"] = json.dumps(keys)
        env.setdefault("CBEC_LOG_FORMAT", "json")  # what production writes: one JSON line per request
        env.update(self.env)
        env["CBEC_PROCESSES"] = str(self.processes)
        cmd = [*cbec_command(), "serve", "--database-url", self.dsn, "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.workdir / "gateway-data")]  # fmt: skip
        if self.config:
            cmd += ["--config", self.config]
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self._log_start = log.tell()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"cbec serve exited with {self.proc.returncode}: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.base_url + "/healthz") as resp:
                        # The first process answers before the others listen; a run started then would open all
                        # its connections to the first (the kernel spreads only new connections).
                        if resp.status == 200 and self.listening_api_processes() >= self.processes - 1:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cbec serve did not answer within {timeout:.0f} s: {self.log_tail()}")
                await asyncio.sleep(0.05)

    def listening_api_processes(self) -> int:
        """How many of the other API processes (``--processes N``) have said in the log that they listen."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self._log_start)  # this start's lines only: the file is appended to
                return f.read().count(b'"api_process_listening"')
        except OSError:
            return 0

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        await _terminate(proc)


class HelperProcess:
    """``cbec worker`` or ``cbec sandbox`` in a process of its own (the split topology of run 3d)."""

    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str], ready: str) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.ready = ready  # a line of its output that says it is up
        self.log_file = workdir / f"{name}-{secrets.token_hex(3)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "CBEC_LOG_FORMAT": "json", **self.env}
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen([*cbec_command(), *self.args], stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while self.ready not in self.log_file.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"cbec {self.name} did not start: {tail}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        await _terminate(proc)


#: gateway seconds, {postgres pid: seconds}, client seconds, {other process name: seconds}
Snapshot = tuple[float, dict[int, float], float, dict[str, float]]


def _cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds a process has run: to the nanosecond from Linux's per-thread schedstat where it can be read,
    else from psutil (clock ticks: 10 ms steps, too coarse for a short run of a few dozen messages)."""
    total_ns = 0
    try:
        tasks = os.listdir(f"/proc/{proc.pid}/task")
        for tid in tasks:
            path = f"/proc/{proc.pid}/task/{tid}/schedstat"
            # a thread that ended meanwhile has nothing more to count
            with contextlib.suppress(FileNotFoundError, ProcessLookupError), open(path, "rb") as f:
                total_ns += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        t = proc.cpu_times()
        return float(t.user + t.system)
    return total_ns / 1e9


class CpuMeter:
    """CPU seconds spent by the gateway process, by the PostgreSQL processes working for the bench
    database (its backends and autovacuum workers, plus the shared WAL writer, checkpointer and
    background writer) and by this process (the HTTP client)."""

    _SHARED = ("walwriter", "checkpointer", "background writer", "wal writer")

    def __init__(self, gateway_pid: int, dbname: str, others: dict[str, int] | None = None) -> None:
        self.gateway_pid = gateway_pid
        self.dbname = dbname
        self.others = others or {}  # more processes of ours by name (run 3d: worker, sandbox)

    def _postgres(self) -> dict[int, float]:
        out = {}
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                if not (p.info["name"] or "").startswith("postgres"):
                    continue
                title = " ".join(p.info["cmdline"] or ())
                if f" {self.dbname} " in f" {title} " or any(s in title for s in self._SHARED):
                    out[p.pid] = _cpu_seconds(p)
            except psutil.Error:
                continue
        return out

    @staticmethod
    def _seconds(pid: int) -> float:
        """CPU seconds of the process and its children (the API processes of ``cbec serve --processes N``)."""
        total = 0.0
        try:
            proc = psutil.Process(pid)
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0.0
        for p in family:
            with contextlib.suppress(psutil.Error):
                total += _cpu_seconds(p)
        return total

    def snapshot(self) -> Snapshot:
        others = {name: self._seconds(pid) for name, pid in self.others.items()}
        return self._seconds(self.gateway_pid), self._postgres(), time.process_time(), others

    @staticmethod
    def spent(before: Snapshot, after: Snapshot) -> dict[str, float]:
        pg = sum(v - before[1].get(pid, 0.0) for pid, v in after[1].items())
        out = {"gateway": after[0] - before[0], "postgres": pg, "client": after[2] - before[2]}
        out.update({name: v - before[3].get(name, 0.0) for name, v in after[3].items()})
        return out


# --- driving ingest ----------------------------------------------------------------------------


@dataclass
class IngestRun:
    messages: int
    seconds: float
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    cpu_us_per_message: dict[str, float] = field(default_factory=dict)
    #: Shares of the machine's CPU time during the run: this benchmark's processes, the others, idle.
    machine_share: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: The gateway's ingest transactions during the run, from its /metrics: how many, their messages and seconds.
    transactions: dict[str, float] = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return self.statuses.get("202", 0)

    @property
    def per_second(self) -> float:
        return _rate(self.messages, self.seconds)


#: The ingest transactions' figures in the gateway's /metrics (gateway.metrics), as IngestRun.transactions names them.
_TRANSACTION_SAMPLES = {"cbec_ingest_transaction_messages_count": "count",
                        "cbec_ingest_transaction_messages_sum": "messages",
                        "cbec_ingest_transaction_seconds_sum": "seconds"}  # fmt: skip


async def transaction_tally(gateway: GatewayProcess) -> dict[str, float]:
    """The gateway's ingest transactions so far (count, messages, seconds), read from its /metrics."""
    async with aiohttp.ClientSession() as session, session.get(gateway.base_url + "/metrics") as resp:
        text = await resp.text()
    tally = dict.fromkeys(_TRANSACTION_SAMPLES.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _TRANSACTION_SAMPLES:
                tally[_TRANSACTION_SAMPLES[sample.name]] += sample.value
    return tally


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def drive(
    gateway: GatewayProcess, messages: Sequence[Message], concurrency: int, meter: CpuMeter | None = None
) -> IngestRun:
    """POST every message as XML with ``concurrency`` clients at once; time, latencies, statuses.

    The requests are made before the clock starts and sent over kept-alive connections by gateway.loadgen,
    whose CPU per request is a small share of the run (the load shares the machine with what it measures).
    """
    headers = {"X-API-Key": gateway.api_key, "Content-Type": "application/xml"}
    host, port = "127.0.0.1", gateway.port
    requests = [(m, loadgen.post_request(f"{host}:{port}", "/v1/messages", headers, m.body)) for m in messages]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    todo = iter(requests)
    connections = [loadgen.LoadConnection(host, port) for _ in range(concurrency)]

    async def client(connection: loadgen.LoadConnection) -> None:
        for m, request in todo:  # one shared iterator: each message is sent once
            started = time.perf_counter()
            try:
                status, text = await connection.post(request)
            except (OSError, loadgen.HttpError) as exc:  # TimeoutError is an OSError
                statuses["client-error"] += 1
                errors.append(f"{m.code} of shipment {m.shipment}: {exc!r}")
                continue
            latencies.append(time.perf_counter() - started)
            statuses[str(status)] += 1
            if status != 202 and len(errors) < 5:
                errors.append(f"{m.code} of shipment {m.shipment}: HTTP {status} {text[:500]!r}")

    try:
        before = meter.snapshot() if meter else None
        machine_before = psutil.cpu_times()
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in connections))
        seconds = time.perf_counter() - started
        machine_after = psutil.cpu_times()
        after = meter.snapshot() if meter else None
    finally:
        for c in connections:
            c.close()
    latencies.sort()
    cpu: dict[str, float] = {}
    share: dict[str, float] = {}
    if before is not None and after is not None:
        spent = CpuMeter.spent(before, after)
        cpu = {k: v / len(messages) * 1e6 for k, v in spent.items()}
        total = sum(machine_after) - sum(machine_before)
        idle = (machine_after.idle - machine_before.idle) + (machine_after.iowait - machine_before.iowait)
        if total > 0:
            ours = min(sum(spent.values()), total - idle)
            share = {"bench": ours / total, "others": max(0.0, total - idle - ours) / total, "idle": idle / total}
    return IngestRun(
        messages=len(messages),
        seconds=seconds,
        statuses=dict(statuses),
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        cpu_us_per_message=cpu,
        machine_share=share,
        errors=errors,
    )


@dataclass
class ReleaseBench:
    """Submission to release through the forwarding (gateway.workers.submit_and_wait_released)."""

    shipments: int
    released: int
    seconds: float  # from the first submission until the last shipment was seen released
    submit_seconds: float  # until the last leg was accepted
    customs_done: int  # customs jobs done (messages forwarded) when the run ended
    p50_s: float
    p99_s: float
    #: CPU ms per forwarded message by process (gateway, worker, sandbox, postgres, client)
    cpu_ms_per_message: dict[str, float] = field(default_factory=dict)

    @property
    def forwarded_per_second(self) -> float:
        return _rate(self.customs_done, self.seconds)

    @property
    def ok(self) -> bool:
        return self.released == self.shipments


def release_samples(seed: int, count: int) -> list[samples.ShipmentSample]:
    """Shipments as JSON payloads (the gateway renders and signs the CEB621), half 9610 and half 1210."""
    rng = random.Random(seed * 7919 + 1)
    return [samples.shipment(rng, mode=rng.choice(("9610", "1210")), n_items=rng.randint(1, 5)) for _ in range(count)]


#: Which of the shipments ($1 ebpCode, $2 orderNo) are released, and when: the release run reads this in SQL rather
#: than polling the API, so that its own observation costs the gateway nothing and the times are the recorded ones.
RELEASED_AT = """
SELECT s.ebp_code, s.order_no, extract(epoch FROM s.customs_updated_at)::float8 AS at
  FROM unnest($1::text[], $2::text[]) AS k(ebp, ono)
  JOIN shipments AS s ON s.ebp_code = k.ebp AND s.order_no = k.ono
 WHERE s.customs_status = 'released'
"""


async def bench_release(
    gateway: GatewayProcess,
    shipments: Sequence[samples.ShipmentSample],
    concurrency: int,
    *,
    timeout_s: float,
    meter: CpuMeter | None = None,
) -> ReleaseBench:
    """Submit the shipments to a ``cbec serve`` forwarding to its sandbox (receipt delays zero) and wait until
    every one is released (receipt 800; seen in SQL, timed by the gateway's own record); forwarded messages/s =
    customs jobs done / wall time from the first submission to the last release."""
    from gateway.workers import submit_and_wait_released

    conn = await asyncpg.connect(gateway.dsn)

    async def release_times(keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], float]:
        rows = await conn.fetch(RELEASED_AT, [k[0] for k in keys], [k[1] for k in keys])
        return {(r["ebp_code"], r["order_no"]): r["at"] for r in rows}

    try:
        before = meter.snapshot() if meter else None
        run = await submit_and_wait_released(
            gateway.base_url, gateway.api_key, shipments, concurrency=concurrency, timeout_s=timeout_s, poll_s=0.25,
            release_times=release_times,
        )  # fmt: skip
        after = meter.snapshot() if meter else None
    finally:
        await conn.close()
    states = await _job_states(gateway.dsn, endpoint="customs")
    cpu: dict[str, float] = {}
    if before is not None and after is not None and states.get("done"):
        cpu = {k: v / states["done"] * 1e3 for k, v in CpuMeter.spent(before, after).items()}
    return ReleaseBench(
        shipments=run.shipments,
        released=run.released,
        seconds=run.total_s,
        submit_seconds=run.submit_s,
        customs_done=states.get("done", 0),
        p50_s=run.percentile(0.50) or 0.0,
        p99_s=run.percentile(0.99) or 0.0,
        cpu_ms_per_message=cpu,
    )


class SplitTopology:
    """The production topology of runs 3d and 3e: ``cbec serve`` takes the API only (its receipt watchdog and
    routing; its own worker off, the in-process sandbox idle), ``cbec sandbox`` plays customs in a process of its
    own with the given receipt delay, and a ``cbec worker`` started by :meth:`start_worker` delivers."""

    def __init__(self, dsn: str, work: Path, config: str | None, *, receipt_delay_ms: float, processes: int) -> None:
        self.dsn = dsn
        self.work = work
        self.config = config
        self.receipt_delay_ms = receipt_delay_ms
        customs_key = secrets.token_urlsafe(24)
        api_env = {**RELEASE_ENV, "CBEC_FORWARDING_WORKER": "false"}
        self.gateway = GatewayProcess(dsn, work, config, api_env, customs_key=customs_key, processes=processes)
        self.sandbox_url = f"http://127.0.0.1:{_free_port()}"
        self.helpers: list[HelperProcess] = []

    async def __aenter__(self) -> SplitTopology:
        try:
            await self.gateway.start()
            await self._start(HelperProcess("sandbox", self.sandbox_args(), self.work, {}, "customs sandbox on"))
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def sandbox_args(self) -> list[str]:
        """``cbec sandbox``'s arguments: on the chosen port, its receipts to the API with the customs key."""
        port = self.sandbox_url.rsplit(":", 1)[1]
        return ["sandbox", "--port", port, "--receipt-url", f"{self.gateway.base_url}/v1/receipts",
                # "=": a generated key may begin with "-", which argparse would take for an option
                f"--receipt-key={self.gateway.customs_key}", "--delay-ms", f"{self.receipt_delay_ms:g}"]  # fmt: skip

    async def aclose(self) -> None:
        for h in reversed(self.helpers):
            await h.stop()
        await self.gateway.stop()

    async def _start(self, helper: HelperProcess) -> HelperProcess:
        self.helpers.append(helper)
        await helper.start()
        return helper

    async def start_worker(self) -> HelperProcess:
        args = ["worker", "--database-url", self.dsn, "--sandbox-url", self.sandbox_url, "--no-watchdog",
                "--data-dir", str(self.work / "worker-data")] + (["--config", self.config] if self.config else [])
        return await self._start(HelperProcess("worker", args, self.work, {}, "worker_ready"))

    def meter(self, dbname: str) -> CpuMeter:
        """CPU of the API, the sandbox, the worker (when started) and PostgreSQL, from now on."""
        assert self.gateway.proc is not None
        others = {h.name: h.proc.pid for h in self.helpers if h.proc is not None}
        return CpuMeter(self.gateway.proc.pid, dbname, others)


async def bench_release_split(
    dsn: str,
    dbname: str,
    work: Path,
    config: str | None,
    shipments: Sequence[samples.ShipmentSample],
    concurrency: int,
    *,
    timeout_s: float,
    processes: int = 1,
) -> ReleaseBench:
    """The release run in the production topology (:class:`SplitTopology`, receipt delays zero)."""
    async with SplitTopology(dsn, work, config, receipt_delay_ms=0, processes=processes) as split:
        await split.start_worker()
        return await bench_release(split.gateway, shipments, concurrency, timeout_s=timeout_s,
                                   meter=split.meter(dbname))  # fmt: skip


#: The drain run's sandbox holds its receipts this long: they would come after the run, which ends before.
DRAIN_RECEIPT_DELAY_MS = 600_000

#: The customs jobs of the drain run: how many are done, and the span from the first claim to the last delivery as
#: PostgreSQL recorded them.
DRAIN_STATE = """
WITH first AS (
    SELECT min(a.started_at) AS at FROM job_attempts AS a JOIN jobs AS k ON k.id = a.job_id
     WHERE k.endpoint = 'customs'
)
SELECT count(*) FILTER (WHERE j.state = 'done') AS done,
       extract(epoch FROM max(j.finished_at) - (SELECT at FROM first))::float8 AS seconds
  FROM jobs AS j WHERE j.endpoint = 'customs'
"""


@dataclass
class DrainBench:
    """A backlog forwarded: every leg accepted first, then ``cbec worker`` started (run 3e)."""

    queued: int  # customs jobs waiting when the worker started (orders, payments, waybills)
    forwarded: int  # of them delivered when the run ended
    seconds: float  # from the first claim to the last delivery, as recorded in PostgreSQL
    #: CPU ms per forwarded message by process (worker, sandbox, postgres; gateway and client near zero)
    cpu_ms_per_message: dict[str, float] = field(default_factory=dict)

    @property
    def forwarded_per_second(self) -> float:
        return _rate(self.forwarded, self.seconds)

    @property
    def ok(self) -> bool:
        return self.queued > 0 and self.forwarded == self.queued


async def bench_drain(
    dsn: str,
    dbname: str,
    work: Path,
    config: str | None,
    shipments: Sequence[samples.ShipmentSample],
    concurrency: int,
    *,
    timeout_s: float,
    processes: int = 1,
) -> DrainBench:
    """Forwarding alone: the shipments are submitted with no worker running, so their orders, payments and
    waybills wait in the queue (the inventories wait for receipts); then a ``cbec worker`` delivers the backlog
    to ``cbec sandbox`` in a process of its own, whose receipts are held until after the run. Measures what the
    worker, the sandbox and PostgreSQL need per delivered message, without ingest or receipts beside them."""
    from gateway.workers import submit_shipments

    async with SplitTopology(dsn, work, config, receipt_delay_ms=DRAIN_RECEIPT_DELAY_MS,
                             processes=processes) as split:  # fmt: skip
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            await submit_shipments(http, split.gateway.base_url, split.gateway.api_key, shipments,
                                   concurrency=concurrency)  # fmt: skip
        conn = await asyncpg.connect(dsn)
        try:
            queued = int(await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE endpoint = 'customs' AND state = 'queued'"))  # fmt: skip
            await split.start_worker()
            # From the worker's "ready" on (seen within 50 ms): its start-up (imports, schemas) is not delivery work.
            meter = split.meter(dbname)
            before = meter.snapshot()
            deadline = time.monotonic() + timeout_s
            while True:
                row = await conn.fetchrow(DRAIN_STATE)
                if row["done"] >= queued or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.25)
            after = meter.snapshot()
        finally:
            await conn.close()
    forwarded = int(row["done"])
    cpu = {k: v / forwarded * 1e3 for k, v in CpuMeter.spent(before, after).items()} if forwarded else {}
    return DrainBench(queued=queued, forwarded=forwarded, seconds=float(row["seconds"] or 0.0), cpu_ms_per_message=cpu)


@dataclass
class Verification:
    messages_sent: int
    messages_stored: int
    shipments_expected: int
    shipments_stored: int
    shipments_matched: int
    rejected: int

    @property
    def ok(self) -> bool:
        return (
            self.messages_stored == self.messages_sent
            and self.shipments_stored == self.shipments_matched == self.shipments_expected
            and self.rejected == 0
        )


async def verify(dsn: str, messages: Sequence[Message]) -> Verification:
    """Count in SQL what the run stored: every message (by guid) once, every shipment matched, nothing rejected."""
    guids: list[str] = []
    order_nos: list[str] = []
    for m in messages:
        root = etree.fromstring(m.body)
        guids.append(root.get("guid", ""))
        if m.code == "CEB311":
            order_nos.append(root.findtext(f".//{{{CEB_NS}}}orderNo") or "")
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM messages WHERE guid = ANY ($1::text[])", guids)
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(*) FILTER (WHERE state = $2) AS matched"
            " FROM shipments WHERE order_no = ANY ($1::text[])",
            order_nos,
            SHIPMENT_STATE_MATCHED,
        )
        assert row is not None
        rejected = await conn.fetchval("SELECT count(*) FROM rejected_messages")
    finally:
        await conn.close()
    return Verification(len(messages), stored, len(order_nos), row["n"], row["matched"], rejected)


# --- bulk population for the flatness runs -------------------------------------------------------

POPULATE_SUBMITTER = "bench-populate"

#: Per shipment number g.i, the values that must differ between shipments (keys, guids, the buyer);
#: everything else is copied from a real sample document, so rows have the true shape and size.
_VARY = {
    "guid": "upper(gen_random_uuid()::text)",
    "orderNo": "'ZG20240101' || lpad(g.i::text, 12, '0')",
    "logisticsNo": "'YT' || lpad(g.i::text, 13, '0')",
    "payTransactionId": "'2088' || '20240101' || lpad(g.i::text, 12, '0')",
    "copNo": "'INV20240101' || lpad(g.i::text, 8, '0')",
    "buyerIdNumber": "'110101' || lpad((g.i % 400000)::text, 12, '0')",  # some buyers come back
    "payerIdNumber": "'110101' || lpad((g.i % 400000)::text, 12, '0')",
}
_AT = "(timestamptz '2024-01-01 00:00:00+08' + g.i * interval '20 seconds')"
_COLUMNS_FROM_HEAD = (
    ("order_no", "orderNo"), ("ebp_code", "ebpCode"), ("ebc_code", "ebcCode"), ("logistics_code", "logisticsCode"),
    ("logistics_no", "logisticsNo"), ("pay_code", "payCode"), ("pay_transaction_id", "payTransactionId"),
    ("app_type", "appType"), ("app_time", "appTime"), ("app_status", "appStatus"),
)  # fmt: skip


@dataclass
class _Template:
    code: str
    kind: str
    keys: tuple[str, ...]
    path: str
    head: dict[str, str]
    lines: list[dict[str, str]]
    parties: list[str]


def _templates(messages: Sequence[Message]) -> list[_Template]:
    """One real document of each leg, extracted by the pipeline (the shape the store writes)."""
    pipeline = Pipeline(SchemaSet())
    out: dict[str, _Template] = {}
    # The median shipment (3 goods lines) of the corpus, else the one with the most lines below.
    by_lines = sorted(messages, key=lambda m: (abs(m.body.count(b"<ceb:gnum>") - 3), m.shipment))
    for m in by_lines:
        if m.code in out:
            continue
        doc = pipeline.check(m.body).message.documents[0]
        out[m.code] = _Template(m.code, doc.type.kind.value, doc.type.keys, doc.path, doc.head, doc.lines,
                                sorted(document_parties(doc)))  # fmt: skip
    return [out[c] for c in CODES_IN_ORDER]


def _head_sql(t: _Template) -> str:
    vary = ", ".join(f"'{name}', {expr}" for name, expr in _VARY.items() if name in t.head)
    return f"($1::jsonb || jsonb_build_object({vary}))"


def _documents_sql(t: _Template, k: int) -> str:
    cols = ", ".join(c for c, _ in _COLUMNS_FROM_HEAD)
    vals = ", ".join(f"x.head->>'{f}'" for _, f in _COLUMNS_FROM_HEAD)
    key2 = f"coalesce(x.head->>'{t.keys[1]}', '')" if len(t.keys) > 1 else "''"
    return f"""
INSERT INTO documents (id, message_id, doc_index, doc_guid, kind, message_type, key1, key2, {cols},
                       path, head, lines, parties, is_current, withdrawn, created_at)
SELECT $4 + (x.i - $7) * 4 + {k}, $5 + (x.i - $7) * 4 + {k}, 1, x.head->>'guid', '{t.kind}', '{t.code}',
       x.head->>'{t.keys[0]}', {key2}, {vals}, '{t.path}', x.head, $2::jsonb, $3::text[], true, false, x.at
  FROM (SELECT g.i, {_head_sql(t)} AS head, {_AT} AS at FROM generate_series($6::bigint, $8::bigint - 1) AS g(i)) AS x
"""


_MESSAGES_SQL = f"""
INSERT INTO messages (id, guid, message_type, sha256, raw_xml, source, submitter, received_at, response, http_status)
SELECT x.id, x.guid, x.code, sha256(int8send(x.id)),
       format('<?xml version="1.0" encoding="UTF-8"?><ceb:%sMessage xmlns:ceb="http://www.chinaport.gov.cn/ceb" '
              'guid="%s" version="1.0"><!-- bulk-populated by cbec bench: a stand-in for the %s XML -->'
              '</ceb:%sMessage>',
              x.code, x.guid, x.code, x.code),
       'xml', '{POPULATE_SUBMITTER}', x.at,
       jsonb_build_object('id', x.id, 'guid', x.guid, 'message_type', x.code, 'shipments', '[]'::jsonb,
                          'documents', jsonb_build_array(jsonb_build_object(
                              'index', 1, 'kind', x.kind, 'outcome', 'accepted', 'code', NULL, 'message', NULL))),
       202
  FROM (SELECT $1 + (g.i - $4) * 4 + t.k AS id, upper(gen_random_uuid()::text) AS guid, t.code, t.kind, {_AT} AS at
          FROM generate_series($2::bigint, $3::bigint - 1) AS g(i)
         CROSS JOIN (VALUES (0, 'CEB311', 'order'), (1, 'CEB411', 'payment'), (2, 'CEB511', 'waybill'),
                            (3, 'CEB621', 'inventory')) AS t(k, code, kind)) AS x
"""

_SHIPMENTS_SQL = f"""
INSERT INTO shipments (ebp_code, order_no, ebc_code, state, missing, findings, parties, mode, buyer_id_number,
                       created_at, updated_at)
SELECT $1, {_VARY["orderNo"]}, $2, 'matched', '{{}}', '[]', $3::text[], $4, {_VARY["buyerIdNumber"]}, {_AT}, {_AT}
  FROM generate_series($5::bigint, $6::bigint - 1) AS g(i)
"""

_LEDGER_SQL = f"""
INSERT INTO tax_ledger (buyer_id_number, year, ebc_code, order_no, amount)
SELECT {_VARY["buyerIdNumber"]}, 2024, $1, {_VARY["orderNo"]}, $2::numeric
  FROM generate_series($3::bigint, $4::bigint - 1) AS g(i)
"""


@dataclass
class Population:
    shipments: int
    seconds: float
    rows: dict[str, int]


class Populator:
    """Adds bulk shipments (4 messages, 4 documents, a shipment and a ledger row each) to a database."""

    CHUNK = 50_000

    def __init__(self, dsn: str, messages: Sequence[Message]) -> None:
        self.dsn = dsn
        self.templates = _templates(messages)
        self.next_i = 0  # shipment number of the next populated shipment (keys derive from it)

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.dsn)
        await db._init_connection(conn)  # the same jsonb codecs as the gateway
        return conn

    async def add(self, count: int, progress: Callable[[str], None] | None = None) -> float:
        """Populate ``count`` shipments; returns the seconds it took (inserts, ANALYZE, CHECKPOINT)."""
        started = time.perf_counter()
        conns = [await self._connect() for _ in range(3)]
        try:
            superuser = await conns[0].fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if superuser:
                # Consistent by construction; skipping the per-row foreign-key triggers lets messages and
                # documents go in side by side. Local to these sessions: the gateway is not affected.
                for c in conns:
                    await c.execute("SET session_replication_role = replica")
            msg_base = await conns[0].fetchval("SELECT coalesce(max(id), 0) + 1000 FROM messages")
            doc_base = await conns[0].fetchval("SELECT coalesce(max(id), 0) + 1000 FROM documents")
            first, end = self.next_i, self.next_i + count
            chunks = [(a, min(a + self.CHUNK, end)) for a in range(first, end, self.CHUNK)]
            inv = self.templates[3]
            parties = sorted({p for t in self.templates for p in t.parties})

            async def messages(conn: asyncpg.Connection) -> None:
                for a, b in chunks:
                    await conn.execute(_MESSAGES_SQL, msg_base, a, b, first)

            async def documents(conn: asyncpg.Connection) -> None:
                for n, (a, b) in enumerate(chunks):
                    for k, t in enumerate(self.templates):
                        await conn.execute(_documents_sql(t, k), t.head, t.lines, t.parties, doc_base, msg_base, a,
                                           first, b)  # fmt: skip
                    if progress and (n + 1) % 4 == 0:
                        progress(f"  populated {b - first:,} of {count:,} shipments")

            async def shipments(conn: asyncpg.Connection) -> None:
                for a, b in chunks:
                    await conn.execute(_SHIPMENTS_SQL, inv.head.get("ebpCode", ""), inv.head.get("ebcCode"), parties,
                                       inv.head.get("tradeMode"), a, b)  # fmt: skip
                    await conn.execute(_LEDGER_SQL, inv.head.get("ebcCode", ""), "1234.56", a, b)

            if superuser:
                await asyncio.gather(messages(conns[0]), documents(conns[1]), shipments(conns[2]))
            else:
                await messages(conns[0])
                await documents(conns[0])
                await shipments(conns[0])
            for name in ("messages", "documents"):
                await conns[0].execute(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))"
                )
            self.next_i = end
            await asyncio.gather(*(c.execute(f"ANALYZE {t}") for c, t in zip(
                conns, ("documents", "messages", "shipments"), strict=True)))  # fmt: skip
            await conns[0].execute("ANALYZE tax_ledger")
            if superuser:
                # Start the measurement without a checkpoint of the bulk load still to write.
                await conns[0].execute("CHECKPOINT")
        finally:
            for c in conns:
                await c.close()
        return time.perf_counter() - started


# --- the report --------------------------------------------------------------------------------


@dataclass
class FlatRow:
    shipments_stored: int
    populate_seconds: float
    run: IngestRun
    verification: Verification
    autovacuum_seen: bool


@dataclass
class Report:
    machine: dict[str, Any]
    corpus: dict[str, Any]
    lxml_per_second: float
    pipeline_per_second: float
    validate: ValidateRun
    ingest: IngestRun  # the median of ingest_rounds by messages per second
    verification: Verification
    #: Run 3 again and again, each on a fresh database and a new gateway: one run's rate moves with the machine
    #: (on a shared virtual machine, ±10 % between runs minutes apart); every round must verify.
    ingest_rounds: list[tuple[IngestRun, Verification]]
    ingest_adjacent: IngestRun | None  # the same messages, each shipment's legs back to back
    verification_adjacent: Verification | None
    forwarding: IngestRun | None
    forwarding_verification: Verification | None
    forwarding_jobs: dict[str, int]
    release: ReleaseBench | None
    release_split: ReleaseBench | None
    drain: DrainBench | None
    flatness: list[FlatRow]
    notes: list[str]

    @property
    def ratio(self) -> float:
        return self.ingest.per_second / self.lxml_per_second if self.lxml_per_second else 0.0

    @property
    def ok(self) -> bool:
        return (
            self.verification.ok
            and all(vf.ok for _, vf in self.ingest_rounds)
            and (self.verification_adjacent is None or self.verification_adjacent.ok)
            and (self.forwarding_verification is None or self.forwarding_verification.ok)
            and (self.release is None or self.release.ok)
            and (self.release_split is None or self.release_split.ok)
            and (self.drain is None or self.drain.ok)
            and all(r.verification.ok for r in self.flatness)
        )

    def as_dict(self) -> dict[str, Any]:
        def run(r: IngestRun) -> dict[str, Any]:
            return {**asdict(r), "per_second": r.per_second, "accepted": r.accepted}

        def release(r: ReleaseBench | None) -> dict[str, Any] | None:
            return None if r is None else {**asdict(r), "forwarded_per_second": r.forwarded_per_second, "ok": r.ok}

        return {
            "machine": self.machine,
            "corpus": self.corpus,
            "lxml_parse_validate_per_second": self.lxml_per_second,
            "pipeline_check_per_second": self.pipeline_per_second,
            "validate": {
                **asdict(self.validate),
                "files_per_second": self.validate.files_per_second,
                "files_per_second_after_startup": self.validate.files_per_second_after_startup,
            },
            "ingest": run(self.ingest),
            "verification": {**asdict(self.verification), "ok": self.verification.ok},
            "ingest_rounds": [
                {
                    "per_second": r.per_second,
                    "p50_ms": r.p50_ms,
                    "p99_ms": r.p99_ms,
                    "cpu_us_per_message": r.cpu_us_per_message,
                    "ok": vf.ok,
                }
                for r, vf in self.ingest_rounds
            ],
            "ingest_adjacent": run(self.ingest_adjacent) if self.ingest_adjacent else None,
            "verification_adjacent": (
                {**asdict(self.verification_adjacent), "ok": self.verification_adjacent.ok}
                if self.verification_adjacent
                else None
            ),
            "ingest_over_lxml": self.ratio,
            "ingest_with_forwarding": run(self.forwarding) if self.forwarding else None,
            "ingest_with_forwarding_verification": (
                {**asdict(self.forwarding_verification), "ok": self.forwarding_verification.ok}
                if self.forwarding_verification
                else None
            ),
            "forwarding_jobs_after_run": self.forwarding_jobs,
            "release": release(self.release),
            "release_split": release(self.release_split),
            "drain": (
                None if self.drain is None
                else {**asdict(self.drain), "forwarded_per_second": self.drain.forwarded_per_second,
                      "ok": self.drain.ok}
            ),
            "flatness": [
                {
                    "shipments_stored": r.shipments_stored,
                    "populate_seconds": r.populate_seconds,
                    "run": run(r.run),
                    "verification": {**asdict(r.verification), "ok": r.verification.ok},
                    "autovacuum_seen": r.autovacuum_seen,
                }
                for r in self.flatness
            ],
            "ok": self.ok,
            "notes": self.notes,
        }


def cpu_ceiling(cpu_us_per_message: dict[str, float], cores: int) -> float | None:
    """Messages/s at this CPU per message (all the bench's processes, client included) with every core busy all the
    time: what no arrangement of the processes can pass on this machine. None without the figures."""
    total = sum(cpu_us_per_message.values())
    return cores * 1e6 / total if total > 0 and cores > 0 else None


def format_report(r: Report) -> str:
    m = r.machine
    out = [
        "cbec bench",
        f"  machine     {m['cpu']}, {m['cores']} cores, {m['memory_gb']:.0f} GB; load average at start {m['load']}",
        f"  PostgreSQL  {m['postgres']} ({m['postgres_where']}; synchronous_commit={m['synchronous_commit']},"
        f" fsync={m['fsync']}, shared_buffers={m['shared_buffers']})",
        f"  Python      {m['python']}, lxml {m['lxml']} (libxml2 {m['libxml2']})",
        f"  messages    {r.corpus['messages']:,} ({r.corpus['shipments']:,} shipments × 4 legs; "
        f"{r.corpus['mix']}; 1–5 lines; {r.corpus['avg_bytes']:,.0f} bytes on average)",
        f"  arrival     {r.corpus.get('arrival', 'legs back to back')} (legs come from four companies)",
        "",
        f"  {'measure':<58} {'value':>14}",
        f"  {'-' * 58} {'-' * 14}",
    ]

    def row(label: str, value: str) -> None:
        out.append(f"  {label:<58} {value:>14}")

    v, i = r.validate, r.ingest
    row("1. bare lxml parse + XMLSchema.validate, 1 core (docs/s)", f"{r.lxml_per_second:,.0f}")
    row("   pipeline check in process: + extract + rules (docs/s)", f"{r.pipeline_per_second:,.0f}")
    row(f"2. cbec validate --json, {v.files:,} files in one call (files/s)", f"{v.files_per_second:,.0f}")
    row("   start-up of cbec validate (s)", f"{v.startup_seconds:.2f}")
    after = v.files_per_second_after_startup
    row("   files/s after start-up", f"{after:,.0f}" if after is not None else "n/a (too short)")
    procs = r.corpus.get("processes", 1)
    where = f", {procs} processes" if procs > 1 else ""
    row(f"3. full ingest, HTTP, concurrency {r.corpus['concurrency']}{where} (msg/s)", f"{i.per_second:,.0f}")
    if len(r.ingest_rounds) > 1:  # the figures of run 3 are its median round's
        row("   rounds on fresh databases, the median above (msg/s)",
            " / ".join(f"{run.per_second:,.0f}" for run, _ in r.ingest_rounds))  # fmt: skip
    row("   latency p50 / p99 (ms)", f"{i.p50_ms:.1f} / {i.p99_ms:.1f}")
    if (t := i.transactions) and t["count"]:
        row("   ingest transactions / messages each / ms each",
            f"{t['count']:,.0f} / {t['messages'] / t['count']:.1f} / {t['seconds'] / t['count'] * 1000:.1f}")
    row("   accepted (HTTP 202) / sent", f"{i.accepted:,} / {i.messages:,}")
    vf = r.verification
    row("   stored messages / sent (SQL)", f"{vf.messages_stored:,} / {vf.messages_sent:,}")
    row("   shipments matched / expected (SQL)", f"{vf.shipments_matched:,} / {vf.shipments_expected:,}")
    if i.cpu_us_per_message:
        c = i.cpu_us_per_message
        row("   CPU per message: gateway / PostgreSQL / client (µs)",
            f"{c['gateway']:.0f} / {c['postgres']:.0f} / {c['client']:.0f}")  # fmt: skip
        ceiling = cpu_ceiling(c, m["cores"])
        if ceiling is not None:
            row(f"   at that CPU per message, {m['cores']} cores always busy (msg/s)", f"{ceiling:,.0f}")

    def ingest_rows(label: str, run: IngestRun | None, vf: Verification | None) -> None:
        if run is None or vf is None:
            return
        row(label, f"{run.per_second:,.0f}")
        row("   latency p50 / p99 (ms)", f"{run.p50_ms:.1f} / {run.p99_ms:.1f}")
        row("   accepted / stored / shipments matched",
            f"{run.accepted:,} / {vf.messages_stored:,} / {vf.shipments_matched:,}")  # fmt: skip
        if run.cpu_us_per_message:
            c = run.cpu_us_per_message
            row("   CPU per message: gateway / PostgreSQL / client (µs)",
                f"{c['gateway']:.0f} / {c['postgres']:.0f} / {c['client']:.0f}")  # fmt: skip

    ingest_rows("   the same, each shipment's 4 legs back to back (msg/s)", r.ingest_adjacent, r.verification_adjacent)
    ingest_rows("3b. the same with cbec serve's forwarding running (msg/s)", r.forwarding, r.forwarding_verification)
    for label, rl in (
        ("3c. forwarding to the sandbox, all in cbec serve (msg/s)", r.release),
        ("3d. the same, worker and sandbox in own processes (msg/s)", r.release_split),
    ):
        if rl is None:
            continue
        row(label, f"{rl.forwarded_per_second:,.0f}")
        row("   time from submission to 800 released p50 / p99 (s)", f"{rl.p50_s:.2f} / {rl.p99_s:.2f}")
        row("   shipments released / submitted (receipt delays 0)", f"{rl.released:,} / {rl.shipments:,}")
        row("   customs messages forwarded / wall time (s)", f"{rl.customs_done:,} / {rl.seconds:.1f}")
        if rl.cpu_ms_per_message:
            names = [n for n in ("gateway", "worker", "sandbox", "postgres", "client") if n in rl.cpu_ms_per_message]
            short = {"postgres": "pg"}
            row(f"   CPU ms per message: {'/'.join(short.get(n, n) for n in names)}",
                " / ".join(f"{rl.cpu_ms_per_message[n]:.3g}" for n in names))  # fmt: skip
    if r.drain is not None:
        d = r.drain
        row("3e. a backlog forwarded: cbec worker → cbec sandbox (msg/s)", f"{d.forwarded_per_second:,.0f}")
        row("   messages forwarded / waiting when the worker started", f"{d.forwarded:,} / {d.queued:,}")
        span = f"{d.seconds:.3g}" if d.seconds < 100 else f"{d.seconds:,.0f}"  # a tiny backlog drains in ms
        row("   first claim to last delivery (s)", span)
        if d.cpu_ms_per_message:
            c = d.cpu_ms_per_message
            row("   CPU ms per message: worker/sandbox/pg",
                f"{c['worker']:.3g} / {c['sandbox']:.3g} / {c['postgres']:.3g}")  # three figures: a tiny backlog's
            # drain lasts milliseconds, and a process's share of it rounded to hundredths of a ms could read 0
    row("4. full ingest / bare lxml", f"{r.ratio:.3f} ({1 / r.ratio:.0f}×)" if r.ratio else "-")
    if i.machine_share:
        sh = i.machine_share
        out.append(
            f"  (during 3. the machine's CPU went {sh['bench'] * 100:.0f}% to this benchmark's processes, "
            f"{sh['others'] * 100:.0f}% to other processes, {sh['idle'] * 100:.0f}% idle)"
        )
    if r.forwarding_jobs:
        jobs = ", ".join(f"{n:,} {state}" for state, n in sorted(r.forwarding_jobs.items()))
        out.append(f"  (forwarding jobs when that run ended: {jobs})")
    if r.flatness:
        out += [
            "",
            f"  5. flatness: {r.flatness[0].run.messages:,} messages ingested after bulk population",
            f"  {'stored shipments':>16} {'populate (s)':>12} {'messages/s':>11} {'p50 (ms)':>9} {'p99 (ms)':>9}"
            f" {'gateway/pg µs':>14}  verified",
        ]
        for f in r.flatness:
            c = f.run.cpu_us_per_message
            cpu = f"{c.get('gateway', 0):.0f}/{c.get('postgres', 0):.0f}" if c else "-"
            ok = "ok" if f.verification.ok else "LOST DATA"
            ok += ", autovacuum ran" if f.autovacuum_seen else ""
            out.append(
                f"  {f.shipments_stored:>16,} {f.populate_seconds:>12.3g} {f.run.per_second:>11,.0f}"
                f" {f.run.p50_ms:>9.1f} {f.run.p99_ms:>9.1f} {cpu:>14}  {ok}"
            )
    if not r.ok:
        out += ["", "  VERIFICATION FAILED: the gateway did not store everything it was sent (see above)."]
    for e in r.ingest.errors[:5]:
        out.append(f"  error: {e}")
    for n in r.notes:
        out.append(f"  note: {n}")
    return "\n".join(out)


# --- the run -----------------------------------------------------------------------------------


async def machine_facts(dsn: str, where: str) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    conn = await asyncpg.connect(dsn)
    try:
        pg = await conn.fetchval("SELECT version()")
        settings = {
            name: await conn.fetchval(f"SHOW {name}") for name in ("synchronous_commit", "fsync", "shared_buffers")
        }
    finally:
        await conn.close()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": psutil.virtual_memory().total / 2**30,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "postgres": pg.split(" on ")[0],
        "postgres_where": where,
        **settings,
        "python": platform.python_version(),
        "lxml": etree.__version__,
        "libxml2": ".".join(map(str, etree.LIBXML_VERSION)),
    }


async def _autovacuum_running(conn: asyncpg.Connection, dbname: str) -> bool:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'autovacuum worker'"
    return bool(await conn.fetchval(sql, dbname))


@dataclass
class Options:
    database_url: str | None = None
    config: str | None = None
    data_dir: Path | None = None
    messages: int = 4000
    concurrency: int = 32
    shipments: list[int] = field(default_factory=list)
    batch: int = 2000
    seed: int = 1
    min_seconds: float = 1.0  # per in-process CPU measurement
    processes: int = 1  # cbec serve --processes for the ingest runs
    rounds: int = 3  # run 3, each round on a fresh database: the median round is reported, every round verified
    forwarding: bool = True  # also run the ingest with cbec serve's forwarding (worker + customs sandbox)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        counts = [int(x.replace("_", "")) for x in (getattr(args, "shipments", "") or "").split(",") if x.strip()]
        return cls(
            database_url=getattr(args, "database_url", None),
            config=getattr(args, "config", None),
            data_dir=getattr(args, "data_dir", None),
            messages=int(getattr(args, "messages", 4000)),
            concurrency=int(getattr(args, "concurrency", 32)),
            shipments=sorted(set(counts)),
            batch=int(getattr(args, "batch", None) or 2000),
            seed=int(getattr(args, "seed", None) or 1),
            forwarding=not getattr(args, "no_forwarding", False),
            processes=int(getattr(args, "processes", None) or 1),
            rounds=max(1, int(getattr(args, "rounds", None) or 3)),
        )


async def run(opts: Options, progress: Callable[[str], None] | None = None) -> Report:
    say = progress or (lambda _msg: None)
    n_shipments = max(1, opts.messages // 4)
    corpus = Corpus(opts.seed)
    say(f"generating {n_shipments * 4:,} messages ...")
    adjacent = corpus.shipments(n_shipments)
    messages = interleave(adjacent, opts.seed)
    bodies = [m.body for m in messages]
    notes: list[str] = []
    if opts.messages % 4:
        notes.append(f"--messages rounded down to whole shipments: {len(messages):,}")

    say("bare lxml ...")
    lxml_rate = bench_lxml(bodies, min_seconds=opts.min_seconds)
    say("pipeline check ...")
    pipeline_rate = bench_pipeline(bodies, min_seconds=opts.min_seconds)

    with tempfile.TemporaryDirectory(prefix="cbec-bench-") as tmp:
        work = Path(tmp)
        say(f"cbec validate over {len(messages):,} files ...")
        validate = await asyncio.to_thread(bench_validate, messages, work / "files")

        async with database_server(opts.database_url, opts.data_dir) as (admin_dsn, where):
            machine = await machine_facts(admin_dsn, where)
            rounds: list[tuple[IngestRun, Verification]] = []
            for k in range(opts.rounds):
                say(f"full ingest of {len(messages):,} messages ({where}), round {k + 1} of {opts.rounds} ...")
                run_k, verification_k, _ = await _ingest_run(admin_dsn, work, opts, messages, INGEST_ONLY_ENV)
                rounds.append((run_k, verification_k))
            ingest, verification = median_round(rounds)
            say(f"full ingest of the same {len(messages):,} messages, each shipment's legs back to back ...")
            ingest_adjacent, verification_adjacent, _ = await _ingest_run(
                admin_dsn, work, opts, adjacent, INGEST_ONLY_ENV
            )

            forwarding: IngestRun | None = None
            forwarding_verification: Verification | None = None
            forwarding_jobs: dict[str, int] = {}
            release: ReleaseBench | None = None
            release_split: ReleaseBench | None = None
            drain: DrainBench | None = None
            if opts.forwarding:
                if _uses_sandbox(opts.config):
                    say(f"full ingest of {len(messages):,} messages with forwarding to the customs sandbox ...")
                    forwarding, forwarding_verification, forwarding_jobs = await _ingest_run(
                        admin_dsn, work, opts, messages, FORWARDING_ENV
                    )
                    release_set = release_samples(opts.seed, n_shipments)
                    say(f"forwarding {len(release_set):,} shipments to the sandbox until released ...")
                    timeout_s = max(60.0, n_shipments * 0.2)
                    async with fresh_database(admin_dsn) as (dsn, dbname):
                        gateway = GatewayProcess(dsn, work, opts.config, RELEASE_ENV, processes=opts.processes)
                        try:
                            await gateway.start()
                            assert gateway.proc is not None
                            release = await bench_release(gateway, release_set, opts.concurrency, timeout_s=timeout_s,
                                                          meter=CpuMeter(gateway.proc.pid, dbname))  # fmt: skip
                        finally:
                            await gateway.stop()
                    say("again with cbec worker and cbec sandbox in processes of their own ...")
                    async with fresh_database(admin_dsn) as (dsn, dbname):
                        release_split = await bench_release_split(
                            dsn, dbname, work, opts.config, release_set, opts.concurrency, timeout_s=timeout_s,
                            processes=opts.processes,
                        )  # fmt: skip
                    say("a backlog of the same shipments' legs forwarded by cbec worker ...")
                    async with fresh_database(admin_dsn) as (dsn, dbname):
                        drain = await bench_drain(
                            dsn, dbname, work, opts.config, release_set, opts.concurrency, timeout_s=timeout_s,
                            processes=opts.processes,
                        )  # fmt: skip
                    if not drain.ok:
                        notes.append(f"drain run: {drain.queued - drain.forwarded:,} of {drain.queued:,} messages"
                                     " not forwarded before the timeout; see the worker log")  # fmt: skip
                    for label, r in (("release run", release), ("split release run", release_split)):
                        if not r.ok:
                            notes.append(f"{label}: {r.shipments - r.released:,} shipments not released"
                                         " before the timeout; see the gateway log")  # fmt: skip
                else:
                    notes.append("the configuration names a customs endpoint: the run with forwarding was skipped")

            flatness: list[FlatRow] = []
            if opts.shipments:
                flatness = await _flatness(opts, corpus, messages, admin_dsn, work, say, notes)

    report = Report(
        machine=machine,
        corpus={
            "messages": len(messages),
            "shipments": n_shipments,
            "mix": _mix(messages),
            "arrival": f"each leg at a random point within {INTERLEAVE_WINDOW} shipments of its shipment's place",
            "avg_bytes": sum(map(len, bodies)) / len(bodies),
            "concurrency": opts.concurrency,
            "processes": opts.processes,
        },
        lxml_per_second=lxml_rate,
        pipeline_per_second=pipeline_rate,
        validate=validate,
        ingest=ingest,
        verification=verification,
        ingest_rounds=rounds,
        ingest_adjacent=ingest_adjacent,
        verification_adjacent=verification_adjacent,
        forwarding=forwarding,
        forwarding_verification=forwarding_verification,
        forwarding_jobs=forwarding_jobs,
        release=release,
        release_split=release_split,
        drain=drain,
        flatness=flatness,
        notes=notes,
    )
    return report


def median_round(rounds: Sequence[tuple[IngestRun, Verification]]) -> tuple[IngestRun, Verification]:
    """The round whose rate is the median (the lower middle one of an even number)."""
    if not rounds:
        raise ValueError("no rounds")
    ordered = sorted(rounds, key=lambda r: r[0].per_second)
    return ordered[(len(ordered) - 1) // 2]


async def _ingest_run(
    admin_dsn: str, work: Path, opts: Options, messages: Sequence[Message], env: dict[str, str]
) -> tuple[IngestRun, Verification, dict[str, int]]:
    """``cbec serve`` (with ``env``) on a fresh database driven with the messages: the run, what SQL finds
    stored afterwards, and the queue's jobs by state."""
    async with fresh_database(admin_dsn) as (dsn, dbname):
        gateway = GatewayProcess(dsn, work, opts.config, env, processes=opts.processes)
        try:
            await gateway.start()
            assert gateway.proc is not None
            before = await transaction_tally(gateway)
            run = await drive(gateway, messages, opts.concurrency, CpuMeter(gateway.proc.pid, dbname))
            after = await transaction_tally(gateway)
            run.transactions = {k: after[k] - before[k] for k in after}
            jobs = await _job_states(dsn)
        finally:
            await gateway.stop()
        return run, await verify(dsn, messages), jobs


def _uses_sandbox(config_file: str | None) -> bool:
    """Whether ``cbec serve`` with this configuration forwards to its built-in sandbox (never to real customs)."""
    from gateway import config
    from gateway.workers import uses_sandbox

    fwd = config.load(config_file).forwarding
    return fwd.enabled and uses_sandbox(fwd)


async def _job_states(dsn: str, *, endpoint: str | None = None) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT state, count(*) AS n FROM jobs WHERE $1::text IS NULL OR endpoint = $1 GROUP BY state", endpoint
        )
    finally:
        await conn.close()
    return {r["state"]: r["n"] for r in rows}


def _mix(messages: Sequence[Message]) -> str:
    modes = Counter(b"<ceb:tradeMode>1210<" in m.body for m in messages if m.code == "CEB621")
    return f"CEB311/411/511/621 alike, {modes[False]} × 9610 and {modes[True]} × 1210 shipments"


async def _flatness(
    opts: Options,
    corpus: Corpus,
    messages: Sequence[Message],
    admin_dsn: str,
    work: Path,
    say: Callable[[str], None],
    notes: list[str],
) -> list[FlatRow]:
    rows: list[FlatRow] = []
    batch_shipments = max(1, opts.batch // 4)
    warmup_shipments = max(1, WARMUP_MESSAGES // 4)
    async with fresh_database(admin_dsn) as (dsn, dbname):
        populator = Populator(dsn, messages)
        stored = 0  # shipments in the database: populated plus those ingested by earlier rounds
        for target in opts.shipments:
            populate_seconds = 0.0
            if target > stored:
                say(f"populating to {target:,} shipments ...")
                populate_seconds = await populator.add(target - stored, say)
                stored = target
                if populate_seconds > 300:
                    notes.append(
                        f"populating {target:,} shipments took {populate_seconds:.0f} s, more than five minutes"
                    )
            gateway = GatewayProcess(dsn, work, opts.config, INGEST_ONLY_ENV, processes=opts.processes)
            warmup = interleave(corpus.shipments(warmup_shipments), opts.seed + target)
            batch = interleave(corpus.shipments(batch_shipments), opts.seed + target + 1)
            try:
                await gateway.start()
                assert gateway.proc is not None
                await drive(gateway, warmup, opts.concurrency)
                say(f"ingesting {len(batch):,} messages over {stored:,} stored shipments ...")
                conn = await asyncpg.connect(dsn)
                try:
                    vacuum_before = await _autovacuum_running(conn, dbname)
                    run = await drive(gateway, batch, opts.concurrency, CpuMeter(gateway.proc.pid, dbname))
                    vacuum_after = await _autovacuum_running(conn, dbname)
                finally:
                    await conn.close()
            finally:
                await gateway.stop()
            verification = await verify(dsn, [*warmup, *batch])
            rows.append(FlatRow(stored, populate_seconds, run, verification, vacuum_before or vacuum_after))
            stored += warmup_shipments + batch_shipments
    return rows


def main(args: argparse.Namespace) -> int:
    opts = Options.from_args(args)
    as_json = bool(getattr(args, "json", False))

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report = asyncio.run(run(opts, say))
    if as_json:
        json.dump(report.as_dict(), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 0 if report.ok else 1
