"""Benchmark: the documented queries (``wflo_otel.reports.QUERIES``) on a million step rows.

Run: python bench/queries.py [--steps 1000000] [--pg-url postgresql://postgres@127.0.0.1:5432/postgres]
                             [--repeat 5] [--keep]

Creates a throw-away PostgreSQL database, migrates it to head with alembic (so
the indexes and views are exactly the shipped ones), loads the rows server-side
with ``generate_series`` (workflow definitions, one execution per 8 steps: a
workflow root, two plain steps, five LLM calls over six models, 90 days, ~5 %
failed and ~4 % over budget; step rows carry realistic JSON attributes so the heap
is as wide as real data), recomputes the execution totals from the steps as the
store does, runs ``VACUUM ANALYZE`` (what autovacuum does to an insert-only table
on its own), then times each documented query: one warm-up, then the median of
``--repeat`` runs, with the plan's access paths. Target: < 300 ms each. The
database is dropped afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid

import asyncpg

from wflo_otel import migrations
from wflo_otel.reports import QUERIES

TARGET_MS = 300.0
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o3-mini", "claude-3-5-haiku", "gemini-2.0-flash"]
WORKFLOWS = 20
STEPS_PER_EXECUTION = 8


LOAD_SQL = """
INSERT INTO workflow_definitions (id, name, description, policies, created_at, updated_at)
SELECT 'workflow-' || w, 'workflow-' || w, NULL, jsonb_build_object('budget_usd', 0.5), now(), now()
FROM generate_series(0, {workflows} - 1) AS w;

INSERT INTO workflow_executions (id, workflow_id, status, inputs, error, budget_usd, trace_id,
                                 correlation_id, service_name, started_at, ended_at)
SELECT md5('e' || i),
       'workflow-' || (i % {workflows}),
       CASE WHEN i % 20 = 3 THEN 'FAILED' WHEN i % 25 = 7 THEN 'BUDGET_EXCEEDED' ELSE 'COMPLETED' END,
       jsonb_build_object('ticket', i),
       CASE WHEN i % 20 = 3 THEN 'RateLimitError: slow down' WHEN i % 25 = 7 THEN 'budget exceeded' END,
       0.5,
       md5('t' || i),
       md5('e' || i),
       'bench',
       now() - interval '90 days' * (i::float8 / {executions}),
       now() - interval '90 days' * (i::float8 / {executions}) + interval '4 seconds'
FROM generate_series(0, {executions} - 1) AS i;

INSERT INTO step_executions (id, execution_id, trace_id, parent_span_id, name, kind, status, error_type,
                             provider, operation, request_model, response_model, input_tokens, output_tokens,
                             cache_read_tokens, reasoning_tokens, cost_usd, cost_source, started_at, ended_at,
                             duration_ms, attributes, events)
SELECT lpad(to_hex(n), 16, '0'),
       md5('e' || i),
       md5('t' || i),
       CASE WHEN j = 0 THEN NULL ELSE lpad(to_hex(i * {per}), 16, '0') END,
       CASE WHEN j = 0 THEN 'invoke_workflow workflow-' || (i % {workflows})
            WHEN j < 3 THEN 'step-' || j
            ELSE 'chat ' || m.model END,
       CASE WHEN j = 0 THEN 'workflow' WHEN j < 3 THEN 'step' ELSE 'llm' END,
       CASE WHEN j = 7 AND i % 20 = 3 THEN 'ERROR' ELSE 'OK' END,
       CASE WHEN j = 7 AND i % 20 = 3 THEN 'RateLimitError' END,
       CASE WHEN j >= 3 THEN 'openai' END,
       CASE WHEN j = 0 THEN 'invoke_workflow' WHEN j >= 3 THEN 'chat' END,
       CASE WHEN j >= 3 THEN m.model END,
       CASE WHEN j >= 3 THEN m.model || '-2025-01-01' END,
       CASE WHEN j >= 3 THEN 200 + (n * 7919) % 3000 END,
       CASE WHEN j >= 3 THEN 20 + (n * 104729) % 800 END,
       CASE WHEN j >= 3 THEN ((n * 31) % 4) * 256 END,
       CASE WHEN j >= 3 AND m.model LIKE 'o3%' THEN (n * 13) % 500 END,
       CASE WHEN j >= 3 THEN ((200 + (n * 7919) % 3000) * 0.15 + (20 + (n * 104729) % 800) * 0.6) / 1e6 END,
       CASE WHEN j >= 3 THEN 'genai-prices@0.1' END,
       now() - interval '90 days' * (i::float8 / {executions}) + interval '1 millisecond' * (j * 400),
       now() - interval '90 days' * (i::float8 / {executions}) + interval '1 millisecond' * (j * 400 + 50 + (n * 17) % 3000),
       CASE WHEN j = 0 THEN 4000 ELSE 50 + (n * 17) % 3000 END,
       CASE WHEN j >= 3 THEN jsonb_build_object(
               'gen_ai.operation.name', 'chat', 'gen_ai.provider.name', 'openai',
               'gen_ai.request.model', m.model, 'gen_ai.response.model', m.model || '-2025-01-01',
               'gen_ai.response.id', 'chatcmpl-' || md5(n::text),
               'gen_ai.response.finish_reasons', jsonb_build_array('stop'),
               'gen_ai.usage.input_tokens', 200 + (n * 7919) % 3000,
               'gen_ai.usage.output_tokens', 20 + (n * 104729) % 800,
               'server.address', 'api.openai.com', 'server.port', 443,
               'wflo.execution.id', md5('e' || i), 'wflo.workflow.name', 'workflow-' || (i % {workflows}),
               'wflo.cost.source', 'genai-prices@0.1')
            ELSE jsonb_build_object('wflo.execution.id', md5('e' || i),
                                    'wflo.workflow.name', 'workflow-' || (i % {workflows})) END,
       NULL
FROM generate_series(0::bigint, {steps} - 1) AS n
CROSS JOIN LATERAL (SELECT n / {per} AS i, n % {per} AS j) AS ij
CROSS JOIN LATERAL (SELECT (ARRAY{models})[1 + (n * 2654435761 % {n_models})::int] AS model) AS m;

UPDATE workflow_executions AS e
SET (cost_total_usd, input_tokens, output_tokens, llm_calls) = (t.cost, t.input_tokens, t.output_tokens, t.calls)
FROM (
    SELECT execution_id,
           COALESCE(SUM(cost_usd) FILTER (WHERE kind = 'llm'), 0) AS cost,
           COALESCE(SUM(input_tokens) FILTER (WHERE kind = 'llm'), 0) AS input_tokens,
           COALESCE(SUM(output_tokens) FILTER (WHERE kind = 'llm'), 0) AS output_tokens,
           COUNT(*) FILTER (WHERE kind = 'llm') AS calls
    FROM step_executions GROUP BY execution_id
) AS t
WHERE e.id = t.execution_id;

UPDATE workflow_executions SET cost_total_usd = budget_usd * 1.2 WHERE status = 'BUDGET_EXCEEDED';
"""


def _plan_summary(plan: dict) -> str:
    """Access paths of a plan: index names, or 'Seq Scan on t'."""
    found: list[str] = []

    def walk(node: dict) -> None:
        kind = node.get("Node Type", "")
        if "Index" in kind and node.get("Index Name"):
            found.append(f"{kind.replace(' Scan', '')}: {node['Index Name']}")
        elif kind == "Seq Scan":
            found.append(f"Seq Scan: {node.get('Relation Name')}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return ", ".join(dict.fromkeys(found))


def _to_asyncpg(sql: str) -> tuple[str, list[str]]:
    names: list[str] = []

    def repl(match) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    import re

    return re.sub(r":([a-z_]+)", repl, sql), names


@contextlib.asynccontextmanager
async def loaded_database(pg_url: str, steps: int, keep: bool = False):
    """A throw-away database migrated to head, loaded with ``LOAD_SQL`` and analysed.

    Yields ``(connection, executions)``; prints what it loaded; drops the database after
    unless ``keep``. Shared by the benchmarks that read this data (``grafana_panels.py``).
    """
    name = f"wflo_bench_{uuid.uuid4().hex[:10]}"
    db_url = f"{pg_url.rsplit('/', 1)[0]}/{name}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await asyncio.to_thread(migrations.upgrade, db_url)
        conn = await asyncpg.connect(db_url)
        try:
            executions = steps // STEPS_PER_EXECUTION
            sql = LOAD_SQL.format(
                workflows=WORKFLOWS,
                executions=executions,
                steps=executions * STEPS_PER_EXECUTION,
                per=STEPS_PER_EXECUTION,
                models="[" + ", ".join(f"'{m}'" for m in MODELS) + "]",
                n_models=len(MODELS),
            )
            t0 = time.perf_counter()
            await conn.execute(sql)
            load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            await conn.execute("VACUUM ANALYZE")
            vacuum_s = time.perf_counter() - t0
            count = await conn.fetchval("SELECT COUNT(*) FROM step_executions")
            size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('step_executions'))")
            print(
                f"loaded {count:,} step rows, {executions:,} executions in {load_s:.1f}s "
                f"(VACUUM ANALYZE {vacuum_s:.1f}s); step_executions with indexes: {size}\n"
            )
            yield conn, executions
        finally:
            await conn.close()
    finally:
        if not keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept database {db_url}")
        await admin.close()


def parse_args(doc: str, argv=None, repeat: int = 5, add_arguments=None) -> argparse.Namespace:
    """The options every benchmark on this data takes, plus what ``add_arguments(parser)`` adds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--keep", action="store_true", help="keep the database (prints its URL)")
    return parser.parse_args(argv)


async def run(args) -> int:
    rows_out = []
    worst = 0.0
    async with loaded_database(args.pg_url, args.steps, args.keep) as (conn, executions):
        sample = await conn.fetchval(
            "SELECT id FROM workflow_executions ORDER BY started_at DESC LIMIT 1 OFFSET $1", executions // 2
        )
        for key, text in QUERIES.items():
            query, names = _to_asyncpg(text)
            params = [{"execution_id": sample, "workflow": "workflow-3"}[n] for n in names]
            await conn.fetch(query, *params)  # warm-up
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                result = await conn.fetch(query, *params)
                times.append((time.perf_counter() - t0) * 1000)
            plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + query, *params))[0]
            median = statistics.median(times)
            worst = max(worst, median)
            rows_out.append((key, median, min(times), len(result), _plan_summary(plan)))

    width = max(len(r[0]) for r in rows_out)
    print(f"{'query'.ljust(width)}  {'median ms':>9}  {'min ms':>7}  {'rows':>5}  ok   access paths")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 7}  {'-' * 5}  ---  {'-' * 12}")
    for key, median, best, count, paths in rows_out:
        ok = "yes" if median < TARGET_MS else "NO"
        print(f"{key.ljust(width)}  {median:9.1f}  {best:7.1f}  {count:5d}  {ok:3}  {paths}")
    print(f"\nslowest median {worst:.1f} ms; target < {TARGET_MS:.0f} ms each: {'met' if worst < TARGET_MS else 'NOT met'}")
    return 0 if worst < TARGET_MS else 1


def main(argv=None) -> int:
    return asyncio.run(run(parse_args(__doc__, argv)))


if __name__ == "__main__":
    sys.exit(main())
