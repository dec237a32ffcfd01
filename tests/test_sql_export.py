"""The SQL exporter on both engines: rows, totals, foreign keys, idempotence, ordering."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import wflo_otel
from wflo_otel.cli import fetch
from wflo_otel.exporters.sql import SQLSpanExporter
from wflo_otel.exporters.store import create_engine
from wflo_otel.reports import QUERIES

MESSAGES = [{"role": "user", "content": "Route ticket 7 [cached]"}]


def query(url: str, sql: str, **params):
    return asyncio.run(fetch(url, sql, params))[1]


def run_triage(client, budget=0.05):
    with wflo_otel.workflow("triage", budget_usd=budget, inputs={"ticket": 7}) as wf:
        with wflo_otel.step("classify"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=60)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        for _ in stream:
            pass
    return wf


def test_workflow_lands_as_definition_execution_and_steps(database_url, sql_telemetry, client):
    wf = run_triage(client)
    sql_telemetry.force_flush()

    (definition,) = query(database_url, "SELECT id, name, policies FROM workflow_definitions")
    policies = definition[2] if isinstance(definition[2], dict) else json.loads(definition[2])
    assert definition[:2] == ("triage", "triage") and policies == {"budget_usd": 0.05}

    (execution,) = query(
        database_url,
        "SELECT id, workflow_id, status, inputs, budget_usd, cost_total_usd, input_tokens, output_tokens,"
        " llm_calls, trace_id, correlation_id FROM workflow_executions",
    )
    steps = query(
        database_url,
        "SELECT name, kind, cost_usd, input_tokens, output_tokens, cache_read_tokens, execution_id"
        " FROM step_executions ORDER BY started_at",
    )
    assert [(s[0], s[1]) for s in steps] == [
        ("invoke_workflow triage", "workflow"),
        ("classify", "step"),
        ("chat gpt-4o-mini", "llm"),
        ("chat gpt-4o-mini", "llm"),
    ]
    llm_steps = [s for s in steps if s[1] == "llm"]
    inputs = execution[3] if isinstance(execution[3], dict) else json.loads(execution[3])
    assert execution[0] == wf.execution_id and execution[1] == "triage" and execution[2] == "COMPLETED"
    assert inputs == {"ticket": 7} and execution[4] == 0.05
    assert execution[5] == pytest.approx(sum(s[2] for s in llm_steps)) and execution[5] == pytest.approx(wf.spent_usd)
    assert execution[6] == sum(s[3] for s in llm_steps) and execution[7] == sum(s[4] for s in llm_steps)
    assert execution[8] == 2 and re.fullmatch(r"[0-9a-f]{32}", execution[9]) and execution[10] == wf.execution_id
    assert llm_steps[0][5] > 0, "cached tokens land in their own column"
    assert {s[6] for s in steps} == {wf.execution_id}


def test_budget_exceeded_execution_is_recorded(database_url, sql_telemetry, client):
    with pytest.raises(wflo_otel.BudgetExceededError):
        run_triage(client, budget=0.0000001)
    sql_telemetry.force_flush()
    (row,) = query(database_url, "SELECT status, llm_calls, error FROM workflow_executions")
    assert row[0] == "BUDGET_EXCEEDED" and row[1] == 0 and "budget" in row[2]


def _spans_of_one_run(client):
    """Spans of a real instrumented run, captured in memory so the test controls delivery."""
    exporter = InMemorySpanExporter()
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=exporter, batch=False)
    try:
        wf = run_triage(client)
    finally:
        handle.shutdown()
    return wf, list(exporter.get_finished_spans())


def _totals(url):
    return query(url, "SELECT status, cost_total_usd, input_tokens, output_tokens, llm_calls FROM workflow_executions")


def test_duplicate_delivery_is_one_row_counted_once(database_url, client):
    wf, spans = _spans_of_one_run(client)
    exporter = SQLSpanExporter(database_url)
    try:
        assert exporter.export(spans).name == "SUCCESS"
        once = _totals(database_url)
        assert exporter.export(spans).name == "SUCCESS"
        assert exporter.export(spans[:2]).name == "SUCCESS"
        assert _totals(database_url) == once
        assert query(database_url, "SELECT COUNT(*) FROM step_executions") == [(len(spans),)]
        assert once[0][1] == pytest.approx(wf.spent_usd)
    finally:
        exporter.shutdown()


def test_children_exported_before_their_root_still_land(database_url, client):
    wf, spans = _spans_of_one_run(client)
    root = [s for s in spans if s.name.startswith("invoke_workflow")]
    children = [s for s in spans if not s.name.startswith("invoke_workflow")]
    exporter = SQLSpanExporter(database_url)
    try:
        exporter.export(children[:1])
        exporter.export(children[1:])
        (running,) = query(database_url, "SELECT status, workflow_id, llm_calls FROM workflow_executions")
        assert running == ("RUNNING", "triage", 2)
        exporter.export(root)
        (final,) = _totals(database_url)
        assert final[0] == "COMPLETED" and final[1] == pytest.approx(wf.spent_usd) and final[4] == 2
    finally:
        exporter.shutdown()


def test_foreign_keys_are_enforced(database_url, sql_telemetry, client):
    run_triage(client)
    sql_telemetry.force_flush()

    async def orphan_insert():
        engine = create_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        "INSERT INTO step_executions (id, execution_id, trace_id, name, kind, status, started_at)"
                        " VALUES ('00000000000000aa', 'no-such-execution', 't', 'n', 'step', 'OK', CURRENT_TIMESTAMP)"
                    )
                )
        finally:
            await engine.dispose()

    with pytest.raises(sa.exc.IntegrityError):
        asyncio.run(orphan_insert())


def test_documented_queries_run_on_both_engines(database_url, sql_telemetry, client):
    wf = run_triage(client)
    with pytest.raises(wflo_otel.BudgetExceededError):
        run_triage(client, budget=0.0000001)
    sql_telemetry.force_flush()

    per_workflow = query(database_url, QUERIES["cost_per_workflow"])
    assert per_workflow[0][0] == "triage" and per_workflow[0][1] == 2
    assert per_workflow[0][5] == pytest.approx(wf.spent_usd)
    per_model = query(database_url, QUERIES["cost_per_model_per_day"])
    assert per_model[0][1].startswith("gpt-4o-mini") and per_model[0][2] == 2
    assert per_model[0][6] == pytest.approx(wf.spent_usd)
    recent = query(database_url, QUERIES["recent_executions"])
    assert {r[2] for r in recent} == {"COMPLETED", "BUDGET_EXCEEDED"}
    bad = query(database_url, QUERIES["over_budget_or_failed"])
    assert [r[2] for r in bad] == ["BUDGET_EXCEEDED"]
    steps = query(database_url, QUERIES["steps_of_an_execution"], execution_id=wf.execution_id)
    assert [s[1] for s in steps] == ["workflow", "step", "llm", "llm"]


def test_a_burst_of_spans_faster_than_the_database_loses_none(tmp_path):
    """configure() sizes the batch processor for a database: a 10,000-span burst all lands."""
    url = f"sqlite+aiosqlite:///{tmp_path}/burst.db"
    handle = wflo_otel.configure(url, tracer_provider=TracerProvider())
    try:
        tracer = handle.tracer_provider.get_tracer("burst")
        with wflo_otel.workflow("burst"):
            for i in range(10_000):
                tracer.start_span(f"step-{i % 10}").end()
    finally:
        handle.shutdown()  # flushes
    assert query(url, "SELECT COUNT(*) FROM step_executions") == [(10_001,)]


def test_attribute_values_json_has_no_words_for_are_stored_readably(database_url):
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider.add_span_processor(SimpleSpanProcessor(memory))
    odd = {
        "plain": "text",
        "not.a.number": float("nan"),
        "infinite": float("-inf"),
        "nul.char": "before\x00after",
        "says.null": "nullable",
        "huge": 2**70,
        "floats": (0.1, 2.5e-07),
    }
    with provider.get_tracer("t").start_as_current_span("odd values", attributes=odd):
        pass
    exporter = SQLSpanExporter(database_url)
    try:
        assert exporter.export(memory.get_finished_spans()).name == "SUCCESS"
    finally:
        exporter.shutdown()
    ((stored,),) = query(database_url, "SELECT attributes FROM step_executions")
    stored = stored if isinstance(stored, dict) else json.loads(stored)
    assert stored["plain"] == "text" and stored["says.null"] == "nullable"
    # JSON has no NaN or Infinity: kept as strings, never as null; NUL is dropped (jsonb refuses it).
    assert stored["not.a.number"] == "nan" and stored["infinite"] == "-inf"
    assert stored["nul.char"] == "beforeafter"
    assert stored["huge"] == 2**70 and stored["floats"] == [0.1, 2.5e-07]
