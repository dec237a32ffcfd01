"""The rollup tables are kept in the insert transaction and always equal the SUM over the steps.

On both engines: batches delivered twice and out of order (children before their roots),
refusals, errors and a tenant attribute, and the migration's backfill of steps stored
before the table existed.
"""

from __future__ import annotations

import asyncio
import uuid

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from test_store_support import assert_rollups_match_steps, batches, query, write_groups
from wflo_otel import migrations

HOUR_NS = 3600 * 10**9
START_NS = 1_780_000_000 * 10**9  # 2026-05-28 20:26:40 UTC: three hours of one day


def tenant_spans(executions: int = 12):
    """Executions over three hours and two tenants; some calls refused by the budget, some failed."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("rollup-tests")
    for i in range(executions):
        execution_id = uuid.uuid4().hex
        common = {"wflo.execution.id": execution_id, "wflo.workflow.name": f"wf-{i % 2}"}
        t0 = START_NS + (i % 3) * HOUR_NS + i * 10**9
        root = tracer.start_span(
            f"invoke_workflow wf-{i % 2}", start_time=t0,
            attributes={"gen_ai.operation.name": "invoke_workflow", "wflo.execution.root": True, **common},
        )
        ctx = trace.set_span_in_context(root)
        for k in range(3):
            attrs = {
                "gen_ai.operation.name": "chat", "gen_ai.request.model": f"m-{k}",
                "gen_ai.usage.input_tokens": 100 + k, "gen_ai.usage.output_tokens": 10 + i,
                "wflo.cost.usd": 0.001 * (k + 1), "tenant.id": f"tenant-{i % 2}", **common,
            }
            if k == 2 and i % 4 == 0:
                attrs = {**attrs, "error.type": "BudgetExceededError", "wflo.cost.usd": 0.0}
            span = tracer.start_span(f"chat m-{k}", context=ctx, kind=SpanKind.CLIENT, start_time=t0 + k, attributes=attrs)
            if k == 1 and i % 5 == 0:
                span.set_status(Status(StatusCode.ERROR, "RateLimitError"))
            span.end(end_time=t0 + k + 1000)
        root.end(end_time=t0 + 10_000)
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans


def test_rollups_equal_the_steps_after_duplicate_and_out_of_order_deliveries(database_url):
    spans = tenant_spans()
    # Shuffled (children before roots, across batches), every batch twice, then all again cut differently.
    groups = [b for batch in batches(spans, 7, seed=4) for b in (batch, batch)] + batches(spans, 25, seed=5)
    write_groups(database_url, groups)
    assert_rollups_match_steps(database_url)
    calls, refusals, errors, cost = query(
        database_url, "SELECT SUM(calls), SUM(refusals), SUM(errors), SUM(cost_usd) FROM cost_rollup_hourly"
    )[0]
    assert (calls, refusals, errors) == (12 * 3 - 3, 3, 3)  # i = 0, 4, 8 refused; i = 0, 5, 10 failed
    (executions_cost,) = query(database_url, "SELECT SUM(cost_total_usd) FROM workflow_executions")[0]
    assert abs(cost - executions_cost) < 1e-9
    tenants = query(database_url, "SELECT tenant, SUM(calls + refusals) FROM cost_rollup_tenant_daily GROUP BY tenant ORDER BY tenant")
    assert tenants == [("tenant-0", 18), ("tenant-1", 18)]
    (hours,) = query(database_url, "SELECT COUNT(DISTINCT hour) FROM cost_rollup_hourly")[0]
    (days,) = query(database_url, "SELECT COUNT(DISTINCT day) FROM cost_rollup_daily")[0]
    assert (hours, days) == (3, 1)


def test_migration_backfills_rollups_from_steps_stored_before_it(database_url):
    write_groups(database_url, [tenant_spans(6)])

    def down_and_up(conn):
        migrations.downgrade_connection(conn, "0002")
        migrations.upgrade_connection(conn, "head")

    asyncio.run(migrations.run_async(database_url, down_and_up))
    (rows,) = query(database_url, "SELECT COUNT(*) FROM cost_rollup_hourly")[0]
    assert rows > 0
    assert_rollups_match_steps(database_url)


def test_a_store_without_rollup_maintenance_leaves_the_table_alone(database_url):
    write_groups(database_url, [tenant_spans(2)], rollups=False)
    for table in ("cost_rollup_hourly", "cost_rollup_daily", "cost_rollup_tenant_daily"):
        assert query(database_url, f"SELECT COUNT(*) FROM {table}") == [(0,)]


def test_a_late_child_naming_no_workflow_is_booked_under_its_stored_execution(database_url):
    """A foreign LLM span (no ``wflo.workflow.name``) arriving after its root: the placeholder row
    of its batch names the service, but the execution stored says ``wf-a``, and so does the rollup."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("rollup-tests")
    execution_id = uuid.uuid4().hex
    root = tracer.start_span("invoke_workflow wf-a", start_time=START_NS, attributes={
        "gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": "wf-a",
        "wflo.execution.root": True, "wflo.execution.id": execution_id,
    })
    child = tracer.start_span("chat m", context=trace.set_span_in_context(root), kind=SpanKind.CLIENT, start_time=START_NS + 1,
                              attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m",
                                          "gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 3,
                                          "wflo.cost.usd": 0.25, "wflo.execution.id": execution_id})
    child.end(end_time=START_NS + 1000)
    root.end(end_time=START_NS + 2000)
    spans = {s.name: s for s in memory.get_finished_spans()}
    provider.shutdown()
    write_groups(database_url, [[spans["invoke_workflow wf-a"]], [spans["chat m"]]])
    assert query(database_url, "SELECT workflow_id, calls, cost_usd FROM cost_rollup_daily") == [("wf-a", 1, 0.25)]
    assert_rollups_match_steps(database_url)
