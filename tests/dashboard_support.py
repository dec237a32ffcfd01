"""Data for the dashboard tests: real SDK spans written by the real store, timed today.

(No tests here; imported by ``test_dashboard*.py``.)
"""

from __future__ import annotations

import time
import uuid

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from test_store_support import write_groups

HOSTILE = "<script>alert('wflo')</script>"
WORKFLOWS = ("support-agent", "summarize", "triage")
MODELS = ("gpt-4o-mini", "gpt-4o")


def dashboard_spans(executions: int = 30, *, hostile_every: int = 10):
    """``executions`` workflows in the last hour: three workflows, two models, two tenants;
    every 4th over budget (a refused call), every 7th failed; a step named ``HOSTILE`` now and then."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("dashboard-tests")
    now = time.time_ns()
    for i in range(executions):
        name = WORKFLOWS[i % len(WORKFLOWS)]
        execution_id = uuid.uuid4().hex
        common = {"wflo.execution.id": execution_id, "wflo.workflow.name": name}
        t0 = now - (executions - i) * 2 * 10**9 - 60 * 10**9
        status = "BUDGET_EXCEEDED" if i % 4 == 3 else ("FAILED" if i % 7 == 6 else "COMPLETED")
        root = tracer.start_span(
            f"invoke_workflow {name}", start_time=t0,
            attributes={"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": name,
                        "wflo.execution.root": True, "wflo.budget.usd": 0.01,
                        "tenant.id": f"tenant-{i % 2}", "user.id": i % 3, **common},
        )
        ctx = trace.set_span_in_context(root)
        step_name = HOSTILE if hostile_every and i % hostile_every == 0 else "retrieve"
        tracer.start_span(step_name, context=ctx, start_time=t0 + 10**6,
                          attributes={"wflo.step.kind": "step", **common}).end(end_time=t0 + 2 * 10**8)
        for k, model in enumerate(MODELS):
            attrs = {
                "gen_ai.operation.name": "chat", "gen_ai.request.model": model, "gen_ai.response.model": model,
                "gen_ai.usage.input_tokens": 200 + 10 * i, "gen_ai.usage.output_tokens": 50 + i,
                "wflo.cost.usd": 0.0004 * (k + 1) + i * 1e-5, "tenant.id": f"tenant-{i % 2}", **common,
            }
            if status == "BUDGET_EXCEEDED" and k == 1:
                attrs.update({"error.type": "BudgetExceededError", "wflo.cost.usd": 0.0,
                              "gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0})
            span = tracer.start_span(f"chat {model}", context=ctx, kind=SpanKind.CLIENT,
                                     start_time=t0 + (k + 2) * 3 * 10**8, attributes=attrs)
            if status == "BUDGET_EXCEEDED" and k == 1:
                span.set_status(Status(StatusCode.ERROR, "budget"))
            span.end(end_time=t0 + (k + 3) * 3 * 10**8)
        root.set_attribute("wflo.execution.status", status)
        if status == "FAILED":
            root.set_status(Status(StatusCode.ERROR, "RateLimitError"))
        root.end(end_time=t0 + 15 * 10**8)
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans


def write_spans(url: str, spans) -> None:
    write_groups(url, [spans])


class Client:
    """A small HTTP client (the standard library's): keeps cookies, never follows redirects.

    (httpx is not installed on every leg: openai 3.x brings httpx2.)
    """

    def __init__(self, base_url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, *, data: dict | None = None, headers: dict | None = None, body: bytes | None = None):
        import http.client
        from urllib.parse import urlencode

        headers = dict(headers or {})
        if data is not None:
            body = urlencode(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
        finally:
            conn.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if 'Max-Age=0' in header or 'expires=Thu, 01 Jan 1970' in header or value in ('""', ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return Response(response.status, response.headers, text)

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.request("POST", path, **kwargs)


class Response:
    def __init__(self, status: int, headers, text: str) -> None:
        self.status_code = status
        self.headers = headers
        self.text = text

    def json(self):
        import json

        return json.loads(self.text)


def add_limit_periods(url: str) -> list[tuple[str, str, float]]:
    """Current and past periods of two spend limits, as ``limits_store`` writes them: (limit, key, spent) of the current ones."""
    import asyncio
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa

    from wflo_otel.exporters.store import create_engine
    from wflo_otel.limits_store import timestamp_param

    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    sqlite = url.startswith("sqlite")
    ts = lambda value: timestamp_param(value, sqlite)  # noqa: E731
    rows = [
        ("daily-total", "*", now - timedelta(hours=1), now + timedelta(hours=23), "day", 5.0, 1.234567, 0.5),
        ("per-tenant", "tenant-0", now, now + timedelta(hours=1), "hour", 0.01, 0.0125, 0.0),  # over its limit
        ("per-tenant", "tenant-1", now, now + timedelta(hours=1), "hour", 0.01, 0.003, 0.002),
        ("per-tenant", "tenant-1", now - timedelta(hours=1), now, "hour", 0.01, 0.009, 0.0),  # an ended period
    ]

    async def run():
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                for name, key, start, end, per, limit, spent, leased in rows:
                    await conn.execute(
                        sa.text(
                            "INSERT INTO spend_limit_periods (limit_name, limit_key, period_start, period_end, per, limit_usd,"
                            " spent_usd, leased_usd) VALUES (:n, :k, :s, :e, :p, :l, :sp, :le)"
                        ),
                        {"n": name, "k": key, "s": ts(start), "e": ts(end), "p": per, "l": limit, "sp": spent, "le": leased},
                    )
        finally:
            await engine.dispose()

    asyncio.run(run())
    return [(n, k, sp) for n, k, s, e, p, lim, sp, le in rows[:3]]


def add_pending_approval(url: str, name: str = "send-refund", message: str = "Refund $420") -> str:
    """A PENDING request written by the controls' own store (its execution's placeholder row too)."""
    import uuid

    from wflo_otel.controls.store import ControlStore, ExecutionRef

    store = ControlStore(url, migrate=False)
    try:
        ref = ExecutionRef(uuid.uuid4().hex, "refunds")
        return store.run(lambda: store.create_approval(ref, name, message=message, timeout_s=600)).id
    finally:
        store.close()
