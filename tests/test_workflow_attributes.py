"""Attributes set on a workflow apply to every call under it, and so reach the calls' rows.

``workflow(..., attributes={"tenant.id": "acme"})`` sets them on the workflow span; the
budget processor stamps them on each LLM call span under it (the innermost workflow
winning, never over the call's own value), so the stored calls carry them: the tenant of
the cost rollups and the dashboard, and ``SELECT ... WHERE attributes ->> 'tenant.id'`` in SQL.
A real ``openai`` client against the local fake server, the real SQL exporter on SQLite.
"""

from __future__ import annotations

import json

import openai
from opentelemetry.sdk.trace import TracerProvider

import wflo_otel
from test_store_support import query


def _stored(attrs):
    """A row's attributes: JSON text on SQLite."""
    return json.loads(attrs) if isinstance(attrs, str) else attrs


def _ask(client) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def test_calls_carry_their_workflow_s_attributes_into_rows_and_the_tenant_rollup(tmp_path, openai_server):
    url = f"sqlite+aiosqlite:///{tmp_path}/w.db"
    handle = wflo_otel.configure(url, tracer_provider=TracerProvider(), batch=False)
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="k", max_retries=0)
    try:
        with wflo_otel.workflow("triage", attributes={"tenant.id": "acme", "user.id": 17}):
            _ask(client)
            with wflo_otel.workflow("escalate", attributes={"user.id": 18}):
                _ask(client)
            own = handle.tracer_provider.get_tracer("t").start_span(
                "chat own", attributes={"gen_ai.operation.name": "chat", "tenant.id": "its-own"}
            )
            own.end()
            with handle.tracer_provider.get_tracer("t").start_as_current_span("a plain step"):
                pass
        _ask(client)  # no workflow: nothing to apply
        handle.force_flush()
    finally:
        handle.shutdown()
    rows = query(url, "SELECT name, kind, attributes FROM step_executions ORDER BY started_at")
    applied = {name: _stored(attrs).get("tenant.id") for name, kind, attrs in rows}
    users = [_stored(attrs).get("user.id") for _, kind, attrs in rows if kind == "llm"]
    assert users == [17, 18, 17, None], rows  # the inner workflow wins; the bare call has none
    assert applied["chat own"] == "its-own" and applied["a plain step"] is None  # only calls; never over their own
    assert sorted(query(url, "SELECT tenant, calls FROM cost_rollup_tenant_daily")) == [("", 1), ("acme", 2), ("its-own", 1)]


def test_only_what_the_workflow_declared_is_stamped_never_baggage_nor_reserved_names(tmp_path, openai_server):
    # A caller's baggage selects spend limits, but must not write into our rows: not a
    # tenant, not usage. Names the instrumentation reads are never stamped either.
    from opentelemetry import baggage, context

    url = f"sqlite+aiosqlite:///{tmp_path}/w.db"
    handle = wflo_otel.configure(
        url, tracer_provider=TracerProvider(), batch=False,
        limits=[wflo_otel.SpendLimit("per-user", usd=100, per="day", key="user.id")],
    )
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="k", max_retries=0)
    upstream = context.get_current()
    for key, value in (("tenant.id", "victim"), ("gen_ai.usage.input_tokens", "1000000"), ("session.secret", "s3cr3t")):
        upstream = baggage.set_baggage(key, value, upstream)
    token = context.attach(upstream)
    try:
        with wflo_otel.workflow("triage", attributes={"user.id": 7, "gen_ai.response.model": "gpt-4o"}):
            _ask(client)
        handle.force_flush()
    finally:
        context.detach(token)
        handle.shutdown()
    ((attrs, input_tokens, model),) = query(url, "SELECT attributes, input_tokens, response_model FROM step_executions WHERE kind = 'llm'")
    attrs = _stored(attrs)
    assert attrs["user.id"] == 7
    assert "tenant.id" not in attrs and "session.secret" not in attrs
    assert input_tokens < 1000 and model.startswith("gpt-4o-mini")  # the call's own, not the baggage's nor the workflow's
    assert query(url, "SELECT tenant FROM cost_rollup_tenant_daily") == [("",)]


def test_stamping_never_evicts_the_call_s_own_attributes(tmp_path, openai_server):
    url = f"sqlite+aiosqlite:///{tmp_path}/w.db"
    handle = wflo_otel.configure(url, tracer_provider=TracerProvider(), batch=False)
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="k", max_retries=0)
    many = {f"team.k{i}": i for i in range(200)}
    try:
        with wflo_otel.workflow("triage", attributes=many):
            _ask(client)
        handle.force_flush()
    finally:
        handle.shutdown()
    ((attrs, model, cost),) = query(url, "SELECT attributes, request_model, cost_usd FROM step_executions WHERE kind = 'llm'")
    attrs = _stored(attrs)
    assert model == "gpt-4o-mini" and cost > 0 and attrs["gen_ai.operation.name"] == "chat"
    assert 0 < sum(key.startswith("team.") for key in attrs) < 128  # some stamped, the rest left out
