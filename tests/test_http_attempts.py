"""HTTP attempts under each LLM call: spans of opentelemetry-instrumentation-httpx, counted on the LLM span.

The real openai client retries against a local server that answers 429, then 500,
then the completion; every attempt must be a child span of the LLM span, none may
carry trace context or baggage to the provider, and a user's own httpx
instrumentation must not make them twice.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from opentelemetry import propagate
from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor, HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import wflo_otel

from provider_fakes import CannedServer, client_for, httpx_module, local_transport, openai_chat

MESSAGES = [{"role": "user", "content": "Say hello"}]
RATE_LIMITED = (429, {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}})
SERVER_ERROR = (500, {"error": {"message": "The server had an error", "type": "server_error"}})
PROPAGATION_HEADERS = {"traceparent", "tracestate", "baggage"}


@pytest.fixture(scope="module")
def canned():
    with CannedServer() as server:
        yield server


@pytest.fixture
def traced():
    """configure() with attempt spans on, exporting to memory."""
    spans = InMemorySpanExporter()
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=spans, batch=False, http_spans=True)
    try:
        yield spans
    finally:
        handle.shutdown()


def _user_instrumentor():
    return HTTPX2ClientInstrumentor() if httpx_module().__name__ == "httpx2" else HTTPXClientInstrumentor()


def _split(spans):
    llm = [s for s in spans if s.kind is SpanKind.CLIENT and "gen_ai.operation.name" in s.attributes]
    http = [s for s in spans if s.kind is SpanKind.CLIENT and "gen_ai.operation.name" not in s.attributes]
    return llm, http


def _status(span):
    return span.attributes.get("http.response.status_code", span.attributes.get("http.status_code"))


def _leaked(server) -> list[set[str]]:
    return [{k.lower() for k in r["headers"]} & PROPAGATION_HEADERS for r in server.requests]


def test_each_retry_is_an_attempt_span_under_the_llm_span_and_counted(traced, canned):
    canned.answer(RATE_LIMITED, SERVER_ERROR, openai_chat())
    client = client_for("https://api.openai.com/v1", canned, max_retries=3)

    with wflo_otel.workflow("retries", budget_usd=1.0):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    (llm,), attempts = _split(traced.get_finished_spans())
    assert llm.attributes["wflo.http.attempts"] == 3
    assert [_status(a) for a in attempts] == [429, 500, 200]
    assert all(a.parent.span_id == llm.context.span_id for a in attempts)
    assert all(a.start_time >= llm.start_time and a.end_time <= llm.end_time for a in attempts)


def test_a_call_that_exhausts_its_retries_records_every_attempt(traced, canned):
    canned.answer(RATE_LIMITED)
    client = client_for("https://api.openai.com/v1", canned, max_retries=1)

    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    (llm,), attempts = _split(traced.get_finished_spans())
    assert llm.attributes["wflo.http.attempts"] == 2
    assert [_status(a) for a in attempts] == [429, 429]


async def test_async_calls_have_their_attempts_too(traced, canned):
    canned.answer(SERVER_ERROR, openai_chat())
    http_client = openai.DefaultAsyncHttpxClient(transport=_async_local_transport(canned.port))
    client = openai.AsyncOpenAI(base_url="https://api.openai.com/v1", api_key="k", http_client=http_client, max_retries=2)

    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    (llm,), attempts = _split(traced.get_finished_spans())
    assert llm.attributes["wflo.http.attempts"] == 2
    assert [_status(a) for a in attempts] == [500, 200]
    await client.close()


def test_no_trace_context_or_baggage_reaches_the_provider(traced, canned):
    """Our baggage carries the execution id, workflow and remaining budget: never sent to a third party,
    even when the user's own httpx instrumentation injects into every other request."""
    canned.answer(openai_chat())
    client = client_for("https://api.openai.com/v1", canned)
    instrumentor = _user_instrumentor()
    instrumentor.instrument(tracer_provider=wflo_otel.configuration.tracer_provider())
    try:
        with wflo_otel.workflow("secret-budget", budget_usd=1.0):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            client._client.post("https://api.openai.com/v1/not-an-llm-call", json={})  # the app's own request
    finally:
        instrumentor.uninstrument()

    llm_request, own_request = _leaked(canned)
    assert llm_request == set()
    assert {"traceparent", "baggage"} <= own_request  # propagation still works for everything else


def test_no_duplicate_attempt_spans_when_the_user_instruments_httpx_too(traced, canned):
    canned.answer(SERVER_ERROR, openai_chat())
    client = client_for("https://api.openai.com/v1", canned, max_retries=2)
    instrumentor = _user_instrumentor()
    instrumentor.instrument(tracer_provider=wflo_otel.configuration.tracer_provider())
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        instrumentor.uninstrument()

    (llm,), attempts = _split(traced.get_finished_spans())
    assert [_status(a) for a in attempts] == [500, 200]  # the user's spans, once each
    assert all(a.parent.span_id == llm.context.span_id for a in attempts)
    assert llm.attributes["wflo.http.attempts"] == 2
    assert _leaked(canned) == [set(), set()]


def test_no_duplicate_attempt_spans_when_the_user_instruments_the_client(traced, canned):
    canned.answer(openai_chat())
    client = client_for("https://api.openai.com/v1", canned)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # our transport is now in place
    type(_user_instrumentor()).instrument_client(client._client, tracer_provider=wflo_otel.configuration.tracer_provider())
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    llm, attempts = _split(traced.get_finished_spans())
    assert len(llm) == 2 and len(attempts) == 2  # ours for the first call, the user's for the second
    assert [a.parent.span_id for a in attempts] == [s.context.span_id for s in llm]
    assert _leaked(canned) == [set(), set()]


def _one_call(canned, **configure_kwargs):
    spans = InMemorySpanExporter()
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=spans, batch=False, **configure_kwargs)
    try:
        canned.answer(openai_chat())
        client_for("https://api.openai.com/v1", canned).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        handle.shutdown()
    return _split(spans.get_finished_spans())


def test_attempt_spans_are_off_by_default_and_on_with_the_environment(canned, monkeypatch):
    monkeypatch.delenv("WFLO_HTTP_SPANS", raising=False)
    (llm,), attempts = _one_call(canned)
    assert attempts == [] and "wflo.http.attempts" not in llm.attributes
    assert _leaked(canned) == [set()]

    monkeypatch.setenv("WFLO_HTTP_SPANS", "true")
    (llm,), attempts = _one_call(canned)
    assert len(attempts) == 1 and llm.attributes["wflo.http.attempts"] == 1


def test_configure_http_spans_false_wins_over_the_environment(canned, monkeypatch):
    monkeypatch.setenv("WFLO_HTTP_SPANS", "true")
    (llm,), attempts = _one_call(canned, http_spans=False)
    assert attempts == [] and "wflo.http.attempts" not in llm.attributes


# The query of docs/providers.md, as it is run here on both engines.
ATTEMPTS_QUERY = """SELECT llm.id, llm.name, COUNT(*) AS attempts, SUM(http.duration_ms) AS http_ms
FROM step_executions llm
JOIN step_executions http ON http.parent_span_id = llm.id AND http.kind = 'other'
WHERE llm.kind = 'llm'
GROUP BY llm.id, llm.name
HAVING COUNT(*) > 1;"""


def test_attempt_spans_are_stored_as_steps_of_kind_other(database_url, canned):
    from pathlib import Path

    from wflo_otel.cli import fetch

    assert ATTEMPTS_QUERY in (Path(__file__).resolve().parents[1] / "docs" / "providers.md").read_text()
    handle = wflo_otel.configure(database_url, tracer_provider=TracerProvider(), batch=False, http_spans=True)
    try:
        canned.answer(RATE_LIMITED, openai_chat())
        client = client_for("https://api.openai.com/v1", canned, max_retries=1)
        with wflo_otel.workflow("stored-attempts", budget_usd=1.0):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        handle.shutdown()

    def query(sql):
        return asyncio.run(fetch(database_url, sql, {}))[1]

    kinds = sorted(kind for (kind,) in query("SELECT kind FROM step_executions"))
    assert kinds == ["llm", "other", "other", "workflow"]
    assert query("SELECT cost_usd FROM step_executions WHERE kind = 'other'") == [(None,), (None,)]
    assert query("SELECT llm_calls FROM workflow_executions") == [(1,)]
    ((llm_id, name, attempts, http_ms),) = query(ATTEMPTS_QUERY)  # the call that needed a retry
    assert (name, attempts) == ("chat gpt-4o-mini", 2) and http_ms > 0


def _async_local_transport(port: int):
    httpx = httpx_module()

    class LocalAsyncTransport(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request):
            request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
            return await super().handle_async_request(request)

    return LocalAsyncTransport()


def test_the_propagator_guard_keeps_the_applications_propagators_visible(traced, canned):
    canned.answer(openai_chat())
    client_for("https://api.openai.com/v1", canned).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    names = [type(p).__name__ for p in getattr(propagate.get_global_textmap(), "_propagators", [])]
    assert names == ["TraceContextTextMapPropagator", "WfloBaggagePropagator"]


def test_a_tracked_functions_own_requests_keep_their_trace_context(traced, canned):
    """track_llm_call wraps the application's code: whom it calls (a wflo-aware service of its own,
    which enforces the budget it is handed) is its business, so its requests still carry the context."""
    canned.answer(openai_chat())
    http = httpx_module().Client(transport=local_transport(canned.port))
    instrumentor = _user_instrumentor()
    instrumentor.instrument(tracer_provider=wflo_otel.configuration.tracer_provider())

    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    def ask(max_tokens: int = 10):
        return http.post("https://models.internal.example/v1/chat/completions", json={}).json()

    try:
        with wflo_otel.workflow("tracked", budget_usd=1.0):
            ask()
    finally:
        instrumentor.uninstrument()
        http.close()

    assert {"traceparent", "baggage"} <= _leaked(canned)[0]
