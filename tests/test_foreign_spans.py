"""Spans of other GenAI instrumentations are the same calls to the tables and to budgets.

Users who already run OpenLLMetry, OpenInference (Phoenix), the official openai-v2
instrumentation or an agent framework send those spans through the exporter or a
Collector into ``wflo-otel serve``; "what did each workflow cost" must count each
model call once, priced by wflo, under whichever names the span carries it.
"""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import wflo_otel
from wflo_otel.cli import fetch
from wflo_otel.exporters.sql import SQLSpanExporter
from wflo_otel.ingest import IngestService
from wflo_otel.pricing import default_pricebook

OPENINFERENCE_LLM = {
    "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini", "llm.provider": "openai",
    "llm.token_count.prompt": 1000, "llm.token_count.completion": 200, "llm.token_count.total": 1200,
    "llm.token_count.prompt_details.cache_read": 400,
}
OPENINFERENCE_EMBEDDING = {
    "openinference.span.kind": "EMBEDDING", "embedding.model_name": "text-embedding-3-small",
    "llm.token_count.prompt": 500, "llm.token_count.total": 500,
}
OPENLLMETRY_CHAT = {
    "gen_ai.system": "openai", "llm.request.type": "chat", "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.prompt_tokens": 1000,
    "gen_ai.usage.completion_tokens": 200, "gen_ai.usage.cache_read_input_tokens": 800,
}
SEMCONV_CHAT = {
    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 200,
}
FLEX_CHAT = {
    "gen_ai.operation.name": "chat", "gen_ai.request.model": "o3", "openai.response.service_tier": "flex",
    "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 1000,
}
# Usage summed over the calls inside: the semconv agent span, pydantic-ai's agent run.
AGENT_SUMMED = {"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 2000, "gen_ai.usage.output_tokens": 400}
PYDANTIC_AI_RUN = {"model_name": "gpt-4o-mini", "gen_ai.usage.input_tokens": 2000, "gen_ai.usage.output_tokens": 400}


def price(model, input_tokens, output_tokens, cache_read=0, tier=None) -> float:
    return default_pricebook().cost(
        model, input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read, service_tier=tier
    ).usd


# name of the root span -> (its attributes, children's attributes, expected llm_calls, tokens in/out, cost)
TRACES = {
    "openinference": ({"openinference.span.kind": "CHAIN"}, [OPENINFERENCE_LLM, OPENINFERENCE_EMBEDDING],
                      2, 1500, 200, price("gpt-4o-mini", 1000, 200, 400) + price("text-embedding-3-small", 500, 0)),
    "openllmetry": ({}, [OPENLLMETRY_CHAT], 1, 1000, 200, price("gpt-4o-2024-08-06", 1000, 200, 800)),
    "semconv-agent": (AGENT_SUMMED, [SEMCONV_CHAT, SEMCONV_CHAT], 2, 2000, 400, 2 * price("gpt-4o-mini", 1000, 200)),
    "agent run": (PYDANTIC_AI_RUN, [SEMCONV_CHAT, SEMCONV_CHAT], 2, 2000, 400, 2 * price("gpt-4o-mini", 1000, 200)),
    "flex": ({}, [FLEX_CHAT], 1, 1000, 1000, price("o3", 1000, 1000, tier="flex")),
}


def foreign_spans():
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "peer-app"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("a.peer.instrumentation")
    for name, (root_attrs, children, *_) in TRACES.items():
        with tracer.start_as_current_span(name, attributes=root_attrs):
            for attrs in children:
                tracer.start_span("call", attributes=attrs).end()
            tracer.start_span("GET /search", attributes={"http.request.method": "GET"}).end()
    return memory.get_finished_spans()


def query(url: str, sql: str):
    return asyncio.run(fetch(url, sql, {}))[1]


@pytest.fixture(params=["exporter", "ingest"])
def deliver(request, database_url, tmp_path):
    """Export spans in-process, or through OTLP/HTTP into the ingest service (as a Collector would)."""
    if request.param == "exporter":
        exporter = SQLSpanExporter(database_url, spool_dir=tmp_path / "spool", handle_sigterm=False)
        yield exporter.export
        exporter.shutdown()
        return
    with IngestService(database_url, port=0) as service:
        otlp = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{service.port}/v1/traces")
        yield otlp.export
        otlp.shutdown()


def test_each_peer_call_is_counted_once_and_priced_by_wflo(deliver, database_url):
    assert deliver(foreign_spans()).name == "SUCCESS"
    rows = query(
        database_url, "SELECT workflow_id, llm_calls, input_tokens, output_tokens, cost_total_usd FROM workflow_executions"
    )
    got = {row[0]: row[1:] for row in rows}
    assert set(got) == set(TRACES)
    for name, (*_, calls, tokens_in, tokens_out, cost) in TRACES.items():
        assert got[name][:3] == (calls, tokens_in, tokens_out), name
        assert got[name][3] == pytest.approx(cost, rel=1e-9), name
    kinds = query(database_url, "SELECT name, kind, request_model, provider FROM step_executions WHERE name <> 'call'")
    assert {(name, kind) for name, kind, *_ in kinds} == {(n, "workflow") for n in TRACES} | {("GET /search", "other")}
    (openinference,) = query(
        database_url, "SELECT request_model, provider, cache_read_tokens FROM step_executions WHERE request_model = 'gpt-4o-mini' AND provider = 'openai' AND cache_read_tokens = 400"
    )
    assert openinference == ("gpt-4o-mini", "openai", 400)


def test_budgets_charge_peer_calls_once_under_their_own_names():
    exporter = InMemorySpanExporter()
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=exporter, batch=False)
    try:
        tracer = trace.get_tracer("a.peer.instrumentation", tracer_provider=handle.tracer_provider)
        with wflo_otel.workflow("peers", budget_usd=1.0) as wf:
            for attrs in (OPENINFERENCE_LLM, OPENLLMETRY_CHAT, FLEX_CHAT):
                tracer.start_span("call", attributes=attrs).end()
            with tracer.start_as_current_span("agent", attributes=AGENT_SUMMED):
                tracer.start_span("call", attributes=SEMCONV_CHAT).end()
    finally:
        handle.shutdown()
    expected = (
        price("gpt-4o-mini", 1000, 200, 400) + price("gpt-4o-2024-08-06", 1000, 200, 800)
        + price("o3", 1000, 1000, tier="flex") + price("gpt-4o-mini", 1000, 200)
    )
    assert wf.spent_usd == pytest.approx(expected, rel=1e-9)
