"""Benchmark: every dashboard endpoint on a big PostgreSQL database, and what the rollups cost the store.

Run: python bench/dashboard.py [--rows 10000000] [--requests 30]
                               [--store-spans 35000] [--repeat 3]
                               [--pg-url postgresql://postgres@127.0.0.1:5432/postgres] [--keep]

1. Data. A throw-away database gets ``--rows`` step rows (default 10,000,000) made on the
   server by ``generate_series``: executions of 8 steps (a workflow root, a tool step, six
   LLM calls), so 1.25M executions for 10M rows, spread evenly over the last 30 days,
   20 workflows, 12 models, 500 tenants (``tenant.id`` on the workflow span and each LLM
   step, as ``workflow(attributes=...)`` sets them; ``deployment.environment=prod`` on
   every workflow span, an attribute every execution matches), every 10th
   execution failed and every 25th over budget (its last call refused). Execution totals
   are computed from the same formulas, and the rollups are filled by the migration's
   own backfill SQL (``wflo_otel.exporters.rollups.backfill_sql``), then ``ANALYZE``.
   For the Limits and Approvals pages: a daily limit per tenant and an hourly total limit
   over the 30 days (500 x 31 + 721 periods, 501 of them current, a fired alert on every
   10th tenant's), and 10,000 decided approval requests with 20 pending.
2. Endpoints. ``wflo-otel ui``'s server (``UIServer``) on that database; each endpoint
   is requested ``--requests`` times after 3 warm-up requests, over HTTP from this process:
   p50 / p95 / max in ms, the whole request (SQL, rendering, HTTP). Target: p95 < 100 ms.
3. Store. ``SpanStore.write`` throughput with and without the rollup upserts, side by side:
   the same pre-mapped batches of 2,048 spans (bench/export.py's workflows: 7 spans, 5 LLM
   calls each) into a fresh database per run, alternating, ``--repeat`` times per engine;
   medians and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

STEPS_PER_EXECUTION = 8
WORKFLOWS, MODELS, TENANTS, DAYS = 20, 12, 500, 30

# $1 executions, $2 the first start (30 days ago). Execution i starts at $2 + i * (30 days / $1);
# its step k starts k * 100 ms later. LLM call k (2..7): model (i + k) % 12, input 500 + (i*7+k) % 1500
# tokens, output 50 + (i*13+k) % 400, cost from them; the last call of every 25th execution is refused.
EXECUTIONS_SQL = """
INSERT INTO workflow_executions (id, workflow_id, status, budget_usd, cost_total_usd, input_tokens, output_tokens,
                                 llm_calls, trace_id, correlation_id, service_name, started_at, ended_at)
SELECT lpad(to_hex(i), 32, '0'), 'wf-' || (i % 20),
       CASE WHEN i % 25 = 24 THEN 'BUDGET_EXCEEDED' WHEN i % 10 = 9 THEN 'FAILED' ELSE 'COMPLETED' END,
       0.05, t.cost, t.inp, t.outp, t.calls, lpad(to_hex(i), 32, '0'), lpad(to_hex(i), 32, '0'), 'bench',
       $2::timestamptz + i * (interval '30 days' / $1), $2::timestamptz + i * (interval '30 days' / $1) + interval '900 ms'
FROM generate_series(0, $1 - 1) AS i
CROSS JOIN LATERAL (
    SELECT SUM(CASE WHEN i % 25 = 24 AND k = 7 THEN 0 ELSE ((500 + (i * 7 + k) % 1500) * 0.15 + (50 + (i * 13 + k) % 400) * 0.6) / 1e6 END) AS cost,
           SUM(CASE WHEN i % 25 = 24 AND k = 7 THEN 0 ELSE 500 + (i * 7 + k) % 1500 END)::bigint AS inp,
           SUM(CASE WHEN i % 25 = 24 AND k = 7 THEN 0 ELSE 50 + (i * 13 + k) % 400 END)::bigint AS outp,
           SUM(CASE WHEN i % 25 = 24 AND k = 7 THEN 0 ELSE 1 END)::int AS calls
    FROM generate_series(2, 7) AS k
) AS t
"""
STEPS_SQL = """
INSERT INTO step_executions (id, execution_id, trace_id, parent_span_id, name, kind, status, error_type, provider,
                             operation, request_model, response_model, input_tokens, output_tokens, cache_read_tokens,
                             reasoning_tokens, cost_usd, cost_source, started_at, ended_at, duration_ms, attributes)
SELECT lpad(to_hex(i * 8 + k), 16, '0'), lpad(to_hex(i), 32, '0'), lpad(to_hex(i), 32, '0'),
       CASE WHEN k = 0 THEN NULL ELSE lpad(to_hex(i * 8), 16, '0') END,
       CASE WHEN k = 0 THEN 'invoke_workflow wf-' || (i % 20) WHEN k = 1 THEN 'retrieve' ELSE 'chat model-' || ((i + k) % 12) END,
       CASE WHEN k = 0 THEN 'workflow' WHEN k = 1 THEN 'tool' ELSE 'llm' END,
       CASE WHEN refused OR (k = 0 AND i % 10 = 9) THEN 'ERROR' ELSE 'OK' END,
       CASE WHEN refused THEN 'BudgetExceededError' END,
       CASE WHEN k >= 2 THEN 'openai' END, CASE WHEN k >= 2 THEN 'chat' END,
       CASE WHEN k >= 2 THEN 'model-' || ((i + k) % 12) END, CASE WHEN k >= 2 THEN 'model-' || ((i + k) % 12) END,
       CASE WHEN k >= 2 THEN CASE WHEN refused THEN 0 ELSE 500 + (i * 7 + k) % 1500 END END,
       CASE WHEN k >= 2 THEN CASE WHEN refused THEN 0 ELSE 50 + (i * 13 + k) % 400 END END,
       CASE WHEN k >= 2 THEN 0 END, CASE WHEN k >= 2 THEN 0 END,
       CASE WHEN k >= 2 THEN CASE WHEN refused THEN 0 ELSE ((500 + (i * 7 + k) % 1500) * 0.15 + (50 + (i * 13 + k) % 400) * 0.6) / 1e6 END END,
       CASE WHEN k >= 2 THEN 'bench' END,
       $2::timestamptz + i * (interval '30 days' / $1) + k * interval '100 ms',
       $2::timestamptz + i * (interval '30 days' / $1) + k * interval '100 ms' + interval '90 ms', 90,
       CASE WHEN k >= 2 THEN jsonb_build_object('tenant.id', 'tenant-' || (i % 500))
            WHEN k = 0 THEN jsonb_build_object('tenant.id', 'tenant-' || (i % 500), 'deployment.environment', 'prod') END
FROM generate_series($3::int, $4::int) AS i
CROSS JOIN generate_series(0, 7) AS k
CROSS JOIN LATERAL (SELECT k = 7 AND i % 25 = 24 AS refused) AS r
"""


# $1 the first period start (30 days ago): a daily limit per tenant and an hourly total limit, every period
# up to the current one (whose end is in the future); every 10th tenant's current period fired its 80 % alert.
LIMITS_SQL = """
INSERT INTO spend_limit_periods (limit_name, limit_key, period_start, period_end, per, limit_usd, spent_usd, leased_usd)
SELECT 'tenant-daily', 'tenant-' || t, date_trunc('day', $1::timestamptz) + d * interval '1 day',
       date_trunc('day', $1::timestamptz) + (d + 1) * interval '1 day', 'day', 5.0, (t % 97) / 16.0, (t % 5) / 100.0
FROM generate_series(0, 499) AS t CROSS JOIN generate_series(0, 30) AS d
UNION ALL
SELECT 'total-hourly', '*', date_trunc('hour', $1::timestamptz) + h * interval '1 hour',
       date_trunc('hour', $1::timestamptz) + (h + 1) * interval '1 hour', 'hour', 50.0, (h % 60)::float, 0.5
FROM generate_series(0, 720) AS h;
"""
LIMIT_ALERTS_SQL = """
INSERT INTO spend_limit_alerts (limit_name, limit_key, period_start, threshold, spent_usd, fired_at)
SELECT limit_name, limit_key, period_start, 0.8, spent_usd, now() FROM spend_limit_periods
WHERE period_end > now() AND limit_name = 'tenant-daily' AND right(limit_key, 1) = '0'
"""
# $1 executions, $2 the first start: 10,000 decided requests spread over the executions, 20 pending.
APPROVALS_SQL = """
INSERT INTO approval_requests (id, execution_id, name, kind, message, status, decided_by, decided_at, reason, timeout_s,
                               expires_at, created_at)
SELECT lpad(to_hex(a), 32, '0'), lpad(to_hex(a * ($1 / 10020)), 32, '0'), 'send-refund', 'gate', 'Refund $' || a,
       CASE WHEN a >= 10000 THEN 'PENDING' WHEN a % 3 = 0 THEN 'REJECTED' ELSE 'APPROVED' END,
       CASE WHEN a < 10000 THEN 'approver-' || (a % 7) END,
       CASE WHEN a < 10000 THEN $2::timestamptz + a * interval '4 minutes' + interval '1 minute' END,
       CASE WHEN a < 10000 AND a % 3 = 0 THEN 'too high' END, 86400,
       CASE WHEN a < 10000 THEN $2::timestamptz + a * interval '4 minutes' ELSE now() END + interval '1 day',
       CASE WHEN a < 10000 THEN $2::timestamptz + a * interval '4 minutes' ELSE now() END
FROM generate_series(0, 10019) AS a
"""


def _dsn(admin: str, name: str) -> str:
    return admin.rsplit("/", 1)[0] + "/" + name


async def _admin(admin: str, sql: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fill(dsn: str, rows: int) -> dict[str, float]:
    """Generate the data on the server; seconds per phase."""
    from datetime import datetime, timedelta, timezone

    from wflo_otel.exporters.rollups import ROLLUPS, backfill_sql

    executions = rows // STEPS_PER_EXECUTION
    first = datetime.now(timezone.utc) - timedelta(days=DAYS)
    conn = await asyncpg.connect(dsn, command_timeout=None)
    timings = {}
    try:
        started = time.perf_counter()
        await conn.execute(
            "INSERT INTO workflow_definitions (id, name, created_at, updated_at) "
            "SELECT 'wf-' || w, 'wf-' || w, now(), now() FROM generate_series(0, 19) AS w"
        )
        await conn.execute(EXECUTIONS_SQL, executions, first)
        timings["executions"] = time.perf_counter() - started
        started = time.perf_counter()
        # Bulk load: the secondary indexes are built after the rows, and the foreign key (which
        # the generated ids satisfy by construction) is not checked row by row.
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'step_executions' AND indexname NOT LIKE '%pkey'"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        await conn.execute("SET session_replication_role = replica")
        chunk = 250_000
        for low in range(0, executions, chunk):
            await conn.execute(STEPS_SQL, executions, first, low, min(low + chunk, executions) - 1)
            print(f"  steps: {min(low + chunk, executions) * STEPS_PER_EXECUTION:,} / {executions * STEPS_PER_EXECUTION:,}", flush=True)
        await conn.execute("SET session_replication_role = DEFAULT")
        for index in indexes:
            await conn.execute(index["indexdef"])
        timings["steps"] = time.perf_counter() - started
        started = time.perf_counter()
        for rollup in ROLLUPS:
            await conn.execute(backfill_sql(rollup, "postgresql"))
        timings["rollups"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute(LIMITS_SQL, first)
        await conn.execute(LIMIT_ALERTS_SQL)
        await conn.execute(APPROVALS_SQL, executions, first)
        timings["limits+approvals"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("ANALYZE")
        timings["analyze"] = time.perf_counter() - started
        counts = {
            t: await conn.fetchval(f"SELECT COUNT(*) FROM {t}")
            for t in ("workflow_executions", "step_executions", *(r.table for r in ROLLUPS))
        }
    finally:
        await conn.close()
    print("  rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    return timings


def endpoints(executions: int) -> list[tuple[str, str]]:
    """(label, path) of every dashboard endpoint, with a real execution id and filters."""
    execution_id = "%032x" % (executions // 2)
    return [
        ("overview today (page)", "/?window=today"),
        ("overview 7 days (page)", "/?window=7d"),
        ("overview 30 days (page)", "/?window=30d"),
        ("overview 30 days by workflow (API)", "/api/overview?window=30d&by=workflow"),
        ("overview 30 days by tenant (page)", "/?window=30d&by=tenant"),
        ("executions 7 days (page)", "/executions?window=7d"),
        ("executions 30 days by cost (page)", "/executions?window=30d&sort=cost"),
        ("executions wf-9 FAILED 30 days (API)", "/api/executions?window=30d&workflow=wf-9&status=FAILED"),
        ("executions page 20 (API)", "/api/executions?window=30d&page=20"),
        ("executions tenant-17 7 days (page)", "/executions?window=7d&attr=tenant.id%3Dtenant-17"),
        ("executions tenant-17 wf-17 30 days (API)", "/api/executions?window=30d&workflow=wf-17&attr=tenant.id%3Dtenant-17"),
        ("executions unknown tenant 7 days (API)", "/api/executions?window=7d&attr=tenant.id%3Dnobody"),
        ("executions env=prod (all) 30 days (API)", "/api/executions?window=30d&attr=deployment.environment%3Dprod"),
        ("one execution (page)", f"/executions/{execution_id}"),
        ("one execution (API)", f"/api/executions/{execution_id}"),
        ("limits: 501 current periods (page)", "/limits"),
        ("approvals: 20 pending, 50 decided of 10,000 (page)", "/approvals"),
    ]


def time_endpoints(url: str, requests: int, executions: int) -> list[tuple[str, float, float, float]]:
    from wflo_otel.dashboard.server import UIServer

    results = []
    with UIServer(url, port=0) as server:
        for label, path in endpoints(executions):
            times = []
            for n in range(3 + requests):
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
                started = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                elapsed = (time.perf_counter() - started) * 1000
                conn.close()
                if response.status != 200:
                    raise SystemExit(f"{path}: HTTP {response.status}")
                if n >= 3:
                    times.append(elapsed)
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            results.append((label, statistics.median(times), p95, times[-1]))
            print(f"  {label:40} p50 {results[-1][1]:7.1f}  p95 {p95:7.1f}  max {times[-1]:7.1f} ms", flush=True)
    return results


# --------------------------------------------------------------------------- store throughput


def store_batches(spans: int):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import export as export_bench
    from wflo_otel.exporters.mapping import map_records
    from wflo_otel.exporters.records import record_from_readable_span
    from wflo_otel.pricing import default_pricebook

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    export_bench.emit_workflows(provider.get_tracer("bench"), spans // export_bench.SPANS_PER_EXECUTION)
    captured = list(memory.get_finished_spans())
    provider.shutdown()
    pricebook = default_pricebook()
    batch = export_bench.BATCH
    return len(captured), [
        map_records((record_from_readable_span(s) for s in captured[i : i + batch]), pricebook) for i in range(0, len(captured), batch)
    ]


async def _store_rate(url: str, batches, count: int, rollups: bool, after_migrate: tuple[str, ...] = ()) -> float:
    """Spans a second ``SpanStore.write`` takes ``batches`` at, into ``url`` migrated then altered by ``after_migrate``."""
    import sqlalchemy as sa

    from wflo_otel.exporters.store import SpanStore

    store = SpanStore(url, rollups=rollups)
    try:
        await store.migrate()
        if after_migrate:
            async with store.engine.begin() as conn:
                for statement in after_migrate:
                    await conn.execute(sa.text(statement))
        started = time.perf_counter()
        for batch in batches:
            await store.write(batch)
        return count / (time.perf_counter() - started)
    finally:
        await store.dispose()


def store_throughput(admin: str, spans: int, repeat: int) -> list[tuple[str, float, float, float]]:
    count, batches = store_batches(spans)
    results = []
    for engine in ("sqlite", "postgresql"):
        rates = {False: [], True: []}
        ratios = []
        for _ in range(repeat):
            pair = {}
            for rollups in (False, True):
                if engine == "sqlite":
                    folder = tempfile.mkdtemp(prefix="wflo-bench-")
                    url = f"sqlite+aiosqlite:///{folder}/store.db"
                    pair[rollups] = asyncio.run(_store_rate(url, batches, count, rollups))
                else:
                    name = f"wflo_bench_{uuid.uuid4().hex[:8]}"
                    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
                    try:
                        url = _dsn(admin, name).replace("postgresql://", "postgresql+asyncpg://", 1)
                        pair[rollups] = asyncio.run(_store_rate(url, batches, count, rollups))
                    finally:
                        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                rates[rollups].append(pair[rollups])
            ratios.append(pair[True] / pair[False])
        row = (engine, statistics.median(rates[False]), statistics.median(rates[True]), statistics.median(ratios))
        results.append(row)
        print(f"  {engine:10} without rollups {row[1]:9,.0f} spans/s   with {row[2]:9,.0f} spans/s   ratio {row[3]:.2f}", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="step rows (8 per execution); 0: skip the endpoints")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per endpoint")
    parser.add_argument("--store-spans", type=int, default=35_000, help="spans per store run; 0: skip")
    parser.add_argument("--repeat", type=int, default=3, help="alternating without/with pairs per engine")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the generated database (its name is printed)")
    args = parser.parse_args(argv)

    if args.store_spans:
        print(f"store throughput, {args.store_spans:,} spans per run, {args.repeat} alternating pairs per engine:")
        store_rows = store_throughput(args.pg_url, args.store_spans, args.repeat)
    if args.rows:
        from wflo_otel import migrations

        name = f"wflo_dashboard_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(_admin(args.pg_url, f'CREATE DATABASE "{name}"'))
        dsn = _dsn(args.pg_url, name)
        url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        try:
            migrations.upgrade(url)
            print(f"generating {args.rows:,} step rows in {name}:")
            timings = asyncio.run(fill(dsn, args.rows))
            print("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
            print(f"endpoints, {args.requests} requests each after 3 warm-up:")
            results = time_endpoints(url, args.requests, args.rows // STEPS_PER_EXECUTION)
        finally:
            if not args.keep:
                asyncio.run(_admin(args.pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        print(f"\n| endpoint ({args.rows:,} steps) | p50 ms | p95 ms | max ms |\n| --- | ---: | ---: | ---: |")
        for label, p50, p95, worst in results:
            print(f"| {label} | {p50:.1f} | {p95:.1f} | {worst:.1f} |")
        slow = [label for label, _, p95, _ in results if p95 >= 100]
        print(f"target p95 < 100 ms: {'met by every endpoint' if not slow else 'missed by ' + ', '.join(slow)}")
    if args.store_spans:
        print("\n| store (SpanStore.write) | without rollups | with rollups | ratio |\n| --- | ---: | ---: | ---: |")
        for engine, without, with_, ratio in store_rows:
            print(f"| {engine} | {without:,.0f} spans/s | {with_:,.0f} spans/s | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
