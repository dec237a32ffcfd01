"""A call with no parent span is an execution of its service, not a workflow named ``chat <model>``.

Named after the call, every model was a workflow of its own and a zero-code
program's executions read as a list of models. Named after the service
(``OTEL_SERVICE_NAME`` / the resource's ``service.name``), they are the program's
executions, one per call (each call is a trace of its own, and the budget
``WFLO_DEFAULT_BUDGET_USD`` caps each of them: see docs/zero-code.md). Spans with a
parent, manual root spans and ``workflow()`` keep their names.
"""

from __future__ import annotations

import sqlite3

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import wflo_otel
from wflo_otel.exporters.sql import SQLSpanExporter

from zero_code_runs import rows, run_instrumented

MIXED_APP = """
import os

import openai
import wflo_otel
from opentelemetry import trace

client = openai.OpenAI(base_url=os.environ["FAKE_OPENAI_URL"], api_key="test-key", max_retries=0)

def ask(model="gpt-4o-mini"):
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=10)

ask(); ask("gpt-4o")  # parentless: executions of the service, whatever the model
with trace.get_tracer("app").start_as_current_span("nightly-job"):
    ask()
with wflo_otel.workflow("triage"):
    ask()
"""


def test_parentless_calls_in_a_zero_code_run_are_executions_of_the_service(tmp_path, openai_server):
    run_instrumented(tmp_path, MIXED_APP, openai_server, OTEL_TRACES_EXPORTER="wflo")
    db = tmp_path / "wflo.db"
    per_workflow = rows(
        db, "SELECT workflow_id, COUNT(*), SUM(llm_calls) FROM workflow_executions GROUP BY workflow_id ORDER BY 1"
    )
    assert per_workflow == [("nightly-job", 1, 1), ("triage", 1, 1), ("zero-code-app", 2, 2)]
    assert rows(db, "SELECT id FROM workflow_definitions ORDER BY id") == [("nightly-job",), ("triage",), ("zero-code-app",)]
    steps = rows(db, "SELECT name FROM step_executions WHERE kind = 'llm' ORDER BY name")
    assert steps == [("chat gpt-4o",)] + [("chat gpt-4o-mini",)] * 3  # the call spans keep their names


def test_configure_names_a_parentless_call_after_the_service_in_its_budget_scope(client):
    spans = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "billing"}))
    handle = wflo_otel.configure(tracer_provider=provider, exporter=spans, batch=False, default_budget_usd=1.0)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    finally:
        handle.shutdown()
    (span,) = spans.get_finished_spans()
    assert span.name == "chat gpt-4o-mini"
    assert span.attributes["wflo.workflow.name"] == "billing"
    assert span.attributes["wflo.budget.usd"] == 1.0  # it is still its own budget scope


def test_a_parentless_call_of_another_instrumentation_is_stored_as_an_execution_of_its_service(tmp_path):
    """Spans that never saw wflo-otel's processor (the Collector path) are named the same way."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "ranker"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("other-instrumentation")
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5,
    }
    tracer.start_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes=attributes).end()
    tracer.start_span("rebuild-index").end()  # a plain root span keeps its own name
    db = tmp_path / "w.db"
    exporter = SQLSpanExporter(f"sqlite+aiosqlite:///{db}", spool_dir=tmp_path / "spool", handle_sigterm=False)
    try:
        assert exporter.export(memory.get_finished_spans()).name == "SUCCESS"
    finally:
        exporter.shutdown()
    connection = sqlite3.connect(db)
    try:
        stored = connection.execute("SELECT workflow_id, llm_calls FROM workflow_executions ORDER BY 1").fetchall()
    finally:
        connection.close()
    assert stored == [("ranker", 1), ("rebuild-index", 0)]
