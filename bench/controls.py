"""Checkpoint latency and approval release latency, SQLite against PostgreSQL, side by side.

    .venv/bin/python bench/controls.py                      # SQLite file + a throw-away PostgreSQL database
    .venv/bin/python bench/controls.py --checkpoints 500 --approvals 30
    WFLO_BENCH_PG_URL=postgresql://user@host:5432/postgres .venv/bin/python bench/controls.py

Checkpoint latency: ``wf.checkpoint(name, state)`` with a ~1 KB state, timed from the
call to its return (the row is committed then), inside one workflow.

Release latency: a thread waits in ``wf.require_approval`` (its own store, as another
process would have); a second store decides it; the time from the decision being asked
for (``decide()`` called: its transaction included) to the waiter's return. PostgreSQL wakes the waiter by
``NOTIFY``; SQLite polls every ``SQLITE_POLL_S``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid

from opentelemetry.sdk.trace import TracerProvider

import wflo_otel
from wflo_otel import migrations
from wflo_otel.controls.store import SQLITE_POLL_S, ControlStore, close_stores

STATE = {"notes": ["finding %d: the customer asked about order %d" % (i, 4400 + i) for i in range(20)], "step": 3}


def _checkpoints(url: str, n: int) -> list[float]:
    os.environ["WFLO_DATABASE_URL"] = url
    times = []
    with wflo_otel.workflow("bench-checkpoints") as wf:
        wf.checkpoint("warm-up", STATE)
        for i in range(n):
            start = time.perf_counter()
            wf.checkpoint(f"c{i}", STATE)
            times.append(time.perf_counter() - start)
    return times


def _releases(url: str, n: int) -> list[float]:
    os.environ["WFLO_DATABASE_URL"] = url
    decider = ControlStore(url, migrate=False)
    times = []
    try:
        with wflo_otel.workflow("bench-approvals") as wf:
            for _ in range(n):
                released = {}

                def wait():
                    wf.require_approval("gate", timeout_s=60)
                    released["at"] = time.perf_counter()

                waiter = threading.Thread(target=wait)
                waiter.start()
                pending = []
                while not pending:
                    pending = decider.run(lambda: decider.approvals("PENDING", execution_id=wf.execution_id))
                    time.sleep(0.005)
                time.sleep(0.05)  # the waiter is waiting, not reading its request for the first time
                deciding = time.perf_counter()
                decider.run(lambda: decider.decide(pending[0].id, approved=True, by="bench"))
                waiter.join()
                times.append(released["at"] - deciding)
    finally:
        decider.close()
    return times


def _summary(times: list[float]) -> tuple[float, float, float]:
    """(median, 99th percentile, max) in ms."""
    ms = sorted(t * 1000 for t in times)
    return statistics.median(ms), ms[max(int(len(ms) * 0.99) - 1, 0)], ms[-1]


async def _pg_admin(admin: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=300)
    parser.add_argument("--approvals", type=int, default=20)
    args = parser.parse_args()
    admin = os.environ.get("WFLO_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    pg_name = f"wflo_bench_{uuid.uuid4().hex[:8]}"
    folder = tempfile.mkdtemp(prefix="wflo-bench-controls-")
    engines = {"sqlite": f"sqlite+aiosqlite:///{folder}/controls.db"}
    try:
        asyncio.run(_pg_admin(admin, f'CREATE DATABASE "{pg_name}"'))
        engines["postgresql"] = admin.rsplit("/", 1)[0] + "/" + pg_name
    except Exception as exc:  # no PostgreSQL here: SQLite alone
        print(f"(PostgreSQL unavailable at {admin}: {exc})", file=sys.stderr)
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False)
    results = {}
    try:
        for engine, url in engines.items():
            migrations.upgrade(url)
            results[engine] = (_summary(_checkpoints(url, args.checkpoints)), _summary(_releases(url, args.approvals)))
            close_stores()
    finally:
        handle.shutdown()
        if "postgresql" in engines:
            asyncio.run(_pg_admin(admin, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
    print(f"checkpoints: {args.checkpoints} per engine (~1 KB state); approvals: {args.approvals} per engine "
          f"(SQLite poll {SQLITE_POLL_S * 1000:.0f} ms)")
    print(f"{'engine':<12}{'checkpoint p50 ms':>19}{'p99 ms':>9}{'release p50 ms':>16}{'max ms':>9}")
    for engine, ((c50, c99, _), (r50, _, rmax)) in results.items():
        print(f"{engine:<12}{c50:>19.2f}{c99:>9.2f}{r50:>16.1f}{rmax:>9.1f}")
    if len(results) == 2:
        (sc, sr), (pc, pr) = results["sqlite"], results["postgresql"]
        print(f"ratio postgresql/sqlite: checkpoint p50 x{pc[0] / sc[0]:.2f}, release p50 x{pr[0] / sr[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
