"""Ingest throughput: ``wflo-otel serve`` next to Arize Phoenix, same spans, same machine.

    python bench/ingest.py                      # 10,000 spans, SQLite and PostgreSQL, Phoenix included
    python bench/ingest.py --spans 20000        # the size of the published Phoenix reference
    python bench/ingest.py --no-phoenix         # wflo-otel only
    python bench/ingest.py --engines sqlite
    python bench/ingest.py --workers 2          # wflo-otel serve --workers 2 (SO_REUSEPORT)

Both services get the same OTLP/HTTP protobuf requests (traces of 5 spans shaped
like LLM workflows, ``--batch`` spans per request, ``--concurrency`` requests in
flight — what a Collector's ``otlphttp`` exporter does), and a sender that honours
429/503 with Retry-After. For each service and engine it reports:

* accepted/s — spans acknowledged (HTTP 200) per second of sending;
* persisted/s — spans counted in the database per second, until the last one is there;
* max lag — the longest a span acknowledged at time t waited until the database held
  as many spans as had been acknowledged at t (wflo-otel answers after the commit,
  so its lag is the polling interval at most).

Phoenix runs from its own virtual environment (``$WFLO_BENCH_PHOENIX_VENV``, default
``/tmp/wflo-bench-phoenix-venv``), created with ``pip install 'arize-phoenix[pg]==20.26.1'``
on first use; without it (no network, install failure) Phoenix is skipped with a
message. PostgreSQL runs use throw-away databases on ``$WFLO_TEST_PG_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``), dropped afterwards.

Reference (Phoenix 20.26.1, 20,000 spans, 5 per trace): ~100 spans/s persisted on
SQLite, ~130 spans/s on PostgreSQL. Target: wflo-otel at 50x that or more.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from wflo_otel.ingest.synthetic import make_request, split

PHOENIX_VERSION = "20.26.1"
PHOENIX_VENV = Path(os.environ.get("WFLO_BENCH_PHOENIX_VENV", "/tmp/wflo-bench-phoenix-venv"))
PG_ADMIN_URL = os.environ.get("WFLO_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REFERENCE = {"sqlite": 100.0, "postgresql": 130.0}  # Phoenix 20.26.1, persisted spans/s
POLL_S = 0.1


@dataclass
class Result:
    system: str
    engine: str
    spans: int
    accepted_s: float = 0.0
    persisted_s: float = 0.0
    max_lag_s: float = 0.0
    retries: int = 0
    note: str = ""
    acks: list = field(default_factory=list)  # (time, cumulative spans acknowledged)
    polls: list = field(default_factory=list)  # (time, spans in the database)

    @property
    def accepted_rate(self) -> float:
        return self.spans / self.accepted_s if self.accepted_s else 0.0

    @property
    def persisted_rate(self) -> float:
        return self.spans / self.persisted_s if self.persisted_s else 0.0


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_url(name: str, driver: str = "postgresql") -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}".replace("postgresql://", f"{driver}://", 1)


async def pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Counter:
    """Counts spans in a table, cheaply enough to poll ten times a second."""

    def __init__(self, engine: str, where: str, table: str) -> None:
        self.engine, self.where, self.table = engine, where, table
        self._pg = None

    async def count(self) -> int:
        if self.engine == "sqlite":
            return await asyncio.to_thread(self._sqlite_count)
        import asyncpg

        try:
            if self._pg is None:
                self._pg = await asyncpg.connect(self.where, timeout=5)
            return await self._pg.fetchval(f"SELECT COUNT(*) FROM {self.table}")
        except (asyncpg.UndefinedTableError, OSError, asyncpg.PostgresError):
            self._pg = None
            return 0

    def _sqlite_count(self) -> int:
        if not Path(self.where).exists():
            return 0
        try:
            conn = sqlite3.connect(f"file:{self.where}?mode=ro", uri=True, timeout=5)
            try:
                return conn.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            return 0

    async def close(self) -> None:
        if self._pg is not None:
            await self._pg.close()


async def wait_http(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"exited with {process.returncode} before answering {url}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status < 500:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- the measurement


async def drive(
    url: str, bodies: list[bytes], spans_per_body: list[int], counter: Counter, result: Result, concurrency: int
) -> None:
    """Send every body (retrying 429/503 after Retry-After) while polling the span count."""
    total = sum(spans_per_body)
    acked = 0
    start = time.monotonic()
    done_sending = asyncio.Event()

    async def poll() -> None:
        while True:
            n = await counter.count()
            now = time.monotonic() - start
            result.polls.append((now, n))
            if n >= total and done_sending.is_set():
                result.persisted_s = now
                return
            if now > 3600:
                result.note = "gave up waiting for the database after an hour"
                result.persisted_s = now
                return
            await asyncio.sleep(POLL_S)

    queue: asyncio.Queue = asyncio.Queue()
    for item in zip(bodies, spans_per_body, strict=True):
        queue.put_nowait(item)
    headers = {"Content-Type": "application/x-protobuf"}

    async def sender(session: aiohttp.ClientSession) -> None:
        nonlocal acked
        while not queue.empty():
            body, n = queue.get_nowait()
            while True:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        break
                    if response.status in (429, 502, 503, 504):
                        result.retries += 1
                        await asyncio.sleep(float(response.headers.get("Retry-After", "1") or 1))
                        continue
                    raise RuntimeError(f"{url} answered {response.status}")
            acked += n
            result.acks.append((time.monotonic() - start, acked))

    poller = asyncio.create_task(poll())
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(sender(session) for _ in range(concurrency)))
    result.accepted_s = time.monotonic() - start
    done_sending.set()
    await poller
    result.max_lag_s = max_lag(result.acks, result.polls)


def max_lag(acks: list[tuple[float, int]], polls: list[tuple[float, int]]) -> float:
    """For each acknowledgement, how long until the database held that many spans."""
    worst, j = 0.0, 0
    for t, n in acks:
        while j < len(polls) and (polls[j][1] < n or polls[j][0] < t):
            j += 1
        if j == len(polls):
            return float("inf")
        worst = max(worst, polls[j][0] - t)
    return worst


# --------------------------------------------------------------------------- the systems


async def run_wflo(engine: str, bodies, counts, concurrency: int, workdir: Path, workers: int = 1) -> Result:
    result = Result("wflo-otel" if workers == 1 else f"wflo-otel x{workers}", engine, sum(counts))
    dbname = None
    if engine == "sqlite":
        db = workdir / "wflo.db"
        url, counter = f"sqlite+aiosqlite:///{db}", Counter("sqlite", str(db), "step_executions")
    else:
        dbname = f"wflo_bench_{uuid.uuid4().hex[:8]}"
        await pg_admin(f'CREATE DATABASE "{dbname}"')
        url, counter = pg_url(dbname, "postgresql+asyncpg"), Counter("postgresql", pg_url(dbname), "step_executions")
    exe = Path(sys.executable).parent / "wflo-otel"
    port = ["--port", "0"] if workers == 1 else ["--port", str(free_port()), "--workers", str(workers)]
    process = subprocess.Popen(
        [str(exe), "--database-url", url, "serve", *port],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for _ in range(workers):  # each worker says where it listens (the same port)
            line = await asyncio.to_thread(process.stdout.readline)
            if "listening on" not in line:
                raise RuntimeError(f"wflo-otel serve did not start: {line!r}")
        target = line.split("listening on ")[1].split()[0]
        await drive(target, bodies, counts, counter, result, concurrency)
    finally:
        stop(process)
        await counter.close()
        if dbname:
            await pg_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return result


def phoenix_available() -> tuple[Path | None, str]:
    exe = PHOENIX_VENV / "bin" / "phoenix"
    if exe.exists():
        return exe, ""
    if PHOENIX_VENV.exists():
        return None, f"Phoenix unavailable ({PHOENIX_VENV} exists without a phoenix command)"
    print(f"installing arize-phoenix=={PHOENIX_VERSION} into {PHOENIX_VENV} (first use; a few minutes)…", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PHOENIX_VENV)], check=True, capture_output=True)
        subprocess.run(
            [
                str(PHOENIX_VENV / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                f"arize-phoenix[pg]=={PHOENIX_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=1800,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(PHOENIX_VENV, ignore_errors=True)
        return None, f"Phoenix unavailable (install failed: {type(exc).__name__})"
    return (exe, "") if exe.exists() else (None, "Phoenix unavailable (no phoenix command after install)")


async def run_phoenix(exe: Path, engine: str, bodies, counts, concurrency: int, workdir: Path) -> Result:
    result = Result(f"Phoenix {PHOENIX_VERSION}", engine, sum(counts))
    port, grpc_port = free_port(), free_port()
    home = workdir / "phoenix"
    home.mkdir()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(home),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    dbname = None
    if engine == "sqlite":
        counter = Counter("sqlite", str(home / "phoenix.db"), "spans")
    else:
        dbname = f"phoenix_bench_{uuid.uuid4().hex[:8]}"
        await pg_admin(f'CREATE DATABASE "{dbname}"')
        env["PHOENIX_SQL_DATABASE_URL"] = pg_url(dbname)
        counter = Counter("postgresql", pg_url(dbname), "spans")
    log = open(workdir / "phoenix.log", "w")
    process = subprocess.Popen([str(exe), "serve"], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            await wait_http(f"http://127.0.0.1:{port}/healthz", process)
        except RuntimeError as exc:
            log.flush()
            tail = (workdir / "phoenix.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{exc}: {' | '.join(tail)}") from None
        await drive(f"http://127.0.0.1:{port}/v1/traces", bodies, counts, counter, result, concurrency)
    finally:
        stop(process)
        log.close()
        await counter.close()
        if dbname:
            await pg_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return result


# --------------------------------------------------------------------------- main


def table(results: list[Result]) -> str:
    header = f"{'engine':<11} {'system':<16} {'spans':>7} {'accepted/s':>11} {'persisted/s':>12} {'max lag':>8} {'x Phoenix':>10}"
    lines = [header, "-" * len(header)]
    for r in results:
        phoenix = next((p for p in results if p.engine == r.engine and p.system.startswith("Phoenix")), None)
        if r.system.startswith("Phoenix"):
            ratio = "1.0"
        elif phoenix and phoenix.persisted_rate:
            ratio = f"{r.persisted_rate / phoenix.persisted_rate:.0f}"
        else:
            ratio = f"({r.persisted_rate / REFERENCE[r.engine]:.0f} vs ref)"
        lag = "inf" if r.max_lag_s == float("inf") else f"{r.max_lag_s:.1f}s"
        lines.append(
            f"{r.engine:<11} {r.system:<16} {r.spans:>7} {r.accepted_rate:>11,.0f} {r.persisted_rate:>12,.0f} {lag:>8} {ratio:>10}"
            + (f"  {r.note}" if r.note else "")
        )
    return "\n".join(lines)


async def main_async(args) -> int:
    traces = max(1, args.spans // args.spans_per_trace)
    request = make_request(traces=traces, spans_per_trace=args.spans_per_trace, seed=7, start_ns=time.time_ns())
    parts = split(request, args.batch)
    bodies = [p.SerializeToString() for p in parts]
    counts = [len(p.resource_spans[0].scope_spans[0].spans) for p in parts]
    print(
        f"{sum(counts)} spans ({traces} traces of {args.spans_per_trace}) in {len(bodies)} OTLP/HTTP protobuf "
        f"requests of <= {args.batch} spans, {args.concurrency} in flight; {os.cpu_count()} CPUs",
        flush=True,
    )
    phoenix_exe, why = (None, "Phoenix skipped (--no-phoenix)") if args.no_phoenix else phoenix_available()
    if phoenix_exe is None:
        print(why, flush=True)
    results: list[Result] = []
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory(prefix=f"wflo-bench-{engine}-") as tmp:
            print(f"[{engine}] wflo-otel serve …", flush=True)
            results.append(await run_wflo(engine, bodies, counts, args.concurrency, Path(tmp), args.workers))
        if phoenix_exe is not None:
            with tempfile.TemporaryDirectory(prefix=f"phoenix-bench-{engine}-") as tmp:
                print(f"[{engine}] Phoenix {PHOENIX_VERSION} …", flush=True)
                try:
                    results.append(await run_phoenix(phoenix_exe, engine, bodies, counts, args.concurrency, Path(tmp)))
                except Exception as exc:  # report, carry on with the rest
                    print(f"[{engine}] Phoenix failed: {exc}", flush=True)
    print()
    print(table(results))
    print(f"\nPublished reference, Phoenix {PHOENIX_VERSION}: ~100 spans/s (SQLite), ~130 spans/s (PostgreSQL).")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=10_000)
    parser.add_argument("--spans-per-trace", type=int, default=5)
    parser.add_argument("--batch", type=int, default=512, help="spans per request (the SDK's default batch)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=1, help="wflo-otel serve --workers (processes on one port)")
    parser.add_argument("--no-phoenix", action="store_true")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
