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
    applied = {
        name: (json.loads(attrs) if isinstance(attrs, str) else attrs).get("tenant.id") for name, kind, attrs in rows
    }
    users = [
        (json.loads(attrs) if isinstance(attrs, str) else attrs).get("user.id") for _, kind, attrs in rows if kind == "llm"
    ]
    assert users == [17, 18, 17, None], rows  # the inner workflow wins; the bare call has none
    assert applied["chat own"] == "its-own" and applied["a plain step"] is None  # only calls; never over their own
    assert sorted(query(url, "SELECT tenant, calls FROM cost_rollup_tenant_daily")) == [("", 1), ("acme", 2), ("its-own", 1)]
