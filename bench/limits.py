"""Benchmark: what spend limits add to an LLM call, and how often they go to the database.

Run: python bench/limits.py [--rounds R] [--calls N] [--engine sqlite|postgresql] [--url URL]

Exit status 1 when 3 matching limits add more than TARGET (10 %) to a call.

The real ``openai.OpenAI`` client with an in-memory transport (``_harness.make_client``),
instrumented as ``configure()`` does, every call inside
``workflow("triage", budget_usd=1000, attributes={"tenant.id": "acme"})``. Rounds of N
calls alternate without limits (A) and with three limits that all match the call (B:
``per-customer`` by ``tenant.id`` per day, ``triage-monthly`` where the workflow is
triage, ``everything`` per month), leased from a real database (a SQLite file by
default). The limits are switched on the same processor between rounds, so nothing
else differs. Each (A, B) pair gives a ratio of CPU time per call; the median is
reported. Lease round trips are counted over every B call (amortised leases: one
transaction per slice, see docs/spend-limits.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from opentelemetry.sdk.trace import TracerProvider

import wflo_otel
from _harness import DroppingExporter, call_once, make_client
from wflo_otel.limits import LimitEngine, SpendLimit
from wflo_otel.limits_store import LeaseStore

TARGET = 1.10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--url", help="database for the leases (default: a temporary SQLite file)")
    args = parser.parse_args()
    url = args.url or f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/limits-bench.db"

    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=DroppingExporter(), default_service_tier="default")
    processor = handle.budget_processor
    store = LeaseStore(url)
    engine = LimitEngine(
        [
            SpendLimit("per-customer", usd=1e6, per="day", key="tenant.id"),
            SpendLimit("triage-monthly", usd=1e6, per="month", where={"gen_ai.workflow.name": "triage"}),
            SpendLimit("everything", usd=1e6, per="month"),
        ],
        store=store,
    )
    client = make_client()

    def timed_round(limits: LimitEngine | None) -> float:
        processor.limits = limits
        with wflo_otel.workflow("triage", budget_usd=1000, attributes={"tenant.id": "acme"}):
            started = time.process_time()
            for _ in range(args.calls):
                call_once(client)
            return (time.process_time() - started) / args.calls

    timed_round(engine)  # warm up: migrate, first leases, caches
    timed_round(None)
    trips_before, calls_with = store.round_trips, 0
    without, with_limits, ratios = [], [], []
    for _ in range(args.rounds):
        a = timed_round(None)
        b = timed_round(engine)
        calls_with += args.calls
        without.append(a)
        with_limits.append(b)
        ratios.append(b / a)
    trips = store.round_trips - trips_before
    processor.limits = None
    engine.close()
    handle.shutdown()

    ratio = statistics.median(ratios)
    engine_name = "PostgreSQL" if "postgresql" in url else "SQLite"
    print(f"spend limits, {args.rounds} rounds x {args.calls} calls, leases on {engine_name} (CPU time per call, median)")
    print(f"  no limits            {statistics.median(without) * 1e6:9.1f} µs")
    print(f"  3 matching limits    {statistics.median(with_limits) * 1e6:9.1f} µs")
    print(f"  ratio                {ratio:9.3f}   (target < {TARGET:.2f})")
    print(f"  lease round trips    {trips * 1000 / calls_with:9.1f} per 1,000 calls ({trips} over {calls_with} calls, 3 limits)")
    return 0 if ratio < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
