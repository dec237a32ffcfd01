"""The dashboard over HTTP on both engines: numbers equal the SQL, filters, escaping, sign-in, CSRF.

A real server (``UIServer`` / ``IngestService``) on a real database; the standard library's HTTP client.
The browser-driven proofs are in ``test_dashboard_browser.py``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from dashboard_support import HOSTILE, Client, dashboard_spans, write_spans
from test_store_support import query
from wflo_otel.cli import main
from wflo_otel.dashboard.server import UIServer
from wflo_otel.ingest.server import IngestService


@pytest.fixture
def filled_url(database_url):
    write_spans(database_url, dashboard_spans())
    return database_url


@pytest.fixture
def ui(filled_url):
    with UIServer(filled_url, port=0) as server:
        server.client = Client(server.url)
        yield server


def execute(url: str, *statements: str) -> None:
    import asyncio

    import sqlalchemy as sa

    from wflo_otel.exporters.store import create_engine

    async def run():
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                for sql in statements:
                    await conn.execute(sa.text(sql))
        finally:
            await engine.dispose()

    asyncio.run(run())


def _week_start() -> datetime:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=6)


def _llm_sums_from_steps(url: str):
    """The overview's totals computed from the step rows themselves (not the rollups)."""
    return query(
        url,
        "SELECT COALESCE(SUM(cost_usd), 0), SUM(CASE WHEN COALESCE(error_type, '') <> 'BudgetExceededError' THEN 1 ELSE 0 END),"
        " SUM(input_tokens), SUM(output_tokens), SUM(CASE WHEN error_type = 'BudgetExceededError' THEN 1 ELSE 0 END)"
        " FROM step_executions WHERE kind = 'llm' AND started_at >= :start",
        start=_week_start(),
    )[0]


def test_overview_totals_equal_the_sql_over_the_steps(ui, filled_url):
    data = ui.client.get("/api/overview?window=7d").json()
    cost, calls, inp, out, refusals = _llm_sums_from_steps(filled_url)
    t = data["totals"]
    assert abs(t["cost_usd"] - cost) < 1e-9
    assert (t["calls"], t["input_tokens"], t["output_tokens"], t["refusals"]) == (calls, inp, out, refusals)
    assert refusals > 0 and calls == 60 - refusals
    # The page shows the same numbers (one code path): the exact value rides in data-value.
    html = ui.client.get("/?window=7d").text
    shown = float(re.search(r'id="total-cost" data-value="([^"]+)"', html).group(1))
    assert shown == t["cost_usd"]
    assert re.search(r'id="total-calls" data-value="(\d+)"', html).group(1) == str(calls)
    # Stacked by model, the series add up to the total; the tops name every workflow and tenant.
    assert abs(sum(sum(v) for v in data["series"].values()) - cost) < 1e-9
    assert {w["name"] for w in data["top_workflows"]} == {"support-agent", "summarize", "triage"}
    by_tenant = ui.client.get("/api/overview?window=7d&by=tenant").json()
    assert set(by_tenant["series"]) == {"tenant-0", "tenant-1"}
    assert abs(sum(t["cost_usd"] for t in data["top_tenants"]) - cost) < 1e-9


def test_executions_filter_sort_and_page(ui, filled_url):
    everything = ui.client.get("/api/executions?window=7d").json()["executions"]
    assert len(everything) == 30
    triage = ui.client.get("/api/executions?window=7d&workflow=triage").json()["executions"]
    assert len(triage) == 10 and {r["workflow_id"] for r in triage} == {"triage"}
    over = ui.client.get("/api/executions?window=7d&status=BUDGET_EXCEEDED").json()["executions"]
    (expected,) = query(filled_url, "SELECT COUNT(*) FROM workflow_executions WHERE status = 'BUDGET_EXCEEDED'")[0]
    assert len(over) == expected > 0
    by_cost = ui.client.get("/api/executions?window=7d&sort=cost&order=desc").json()["executions"]
    costs = [r["cost_total_usd"] for r in by_cost]
    assert costs == sorted(costs, reverse=True)
    page = ui.client.get("/executions?window=7d&workflow=triage").text
    assert page.count('href="/executions/') == 10
    assert ui.client.get("/api/executions?sort=nonsense").status_code == 400


def test_executions_filter_by_an_attribute_of_the_workflow_span_as_string_or_number(ui, filled_url, monkeypatch):
    from wflo_otel.dashboard import queries

    listed = lambda q: {r["id"] for r in ui.client.get("/api/executions?window=7d&" + q).json()["executions"]}  # noqa: E731
    everything = listed("")
    tenant0 = listed("attr=tenant.id%3Dtenant-0")
    assert len(tenant0) == 15 and tenant0 < everything
    assert tenant0 | listed("attr=tenant.id=tenant-1") == everything and tenant0.isdisjoint(listed("attr=tenant.id=tenant-1"))
    assert listed("attr=tenant.id%3Dtenant-0&workflow=triage") == tenant0 & listed("workflow=triage")
    assert listed("attr=tenant.id=nobody") == set() and listed("attr=no.such.key=tenant-0") == set()
    # Each of the ways PostgreSQL may take (probing the window's first executions, the index's
    # roots by id, probing the whole window) gives the same answer, on every page.
    for probe_first, sparse in ((2_000, 5_000), (3, 5_000), (3, 3), (0, 3)):
        monkeypatch.setattr(queries, "PROBE_FIRST", probe_first)
        monkeypatch.setattr(queries, "SPARSE_ROOTS", sparse)
        monkeypatch.setattr(queries, "PAGE_SIZE", 4)
        pages = [listed(f"attr=tenant.id%3Dtenant-0&page={n}") for n in range(1, 6)]
        assert set().union(*pages) == tenant0 and sum(map(len, pages)) == 15, (probe_first, sparse)
        assert listed("attr=tenant.id=nobody") == set()
    monkeypatch.undo()
    # A number typed matches an int or float attribute (and a string that spells it).
    assert len(listed("attr=user.id=2")) == 10 and listed("attr=wflo.budget.usd=0.01") == everything
    # The root's attributes, not those of the calls under it (gen_ai.* are on the LLM steps only).
    assert listed("attr=gen_ai.request.model=gpt-4o") == set()
    for bad in ("attr=novalue", "attr=%3Dx", 'attr=a%22b%3D1', "attr=k%3D" + "v" * 1001):
        response = ui.client.get("/api/executions?" + bad)
        assert response.status_code == 400 and "attr" in response.json()["error"], bad
    page = ui.client.get("/executions?window=7d&attr=tenant.id%3D%3Cscript%3E").text
    assert 'value="tenant.id=&lt;script&gt;"' in page and "<script" not in page.lower()
    sort_link = re.search(r'id="sort-cost" href="([^"]+)"', ui.client.get("/executions?window=7d&attr=tenant.id%3Dtenant-0").text)
    assert "attr=tenant.id%3Dtenant-0" in sort_link.group(1)  # sorting and paging keep the filter


TYPED = [  # the value each execution's workflow spans carry under "v"
    "17", 17, 17.0, True, False, "true", ("a", "b"), 2**62, -5, "x'; DROP TABLE step_executions; --", "",
]


def _typed_spans():
    """One execution per value of TYPED; its root and a nested workflow span both carry it."""
    import uuid

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("typed")
    for i, value in enumerate(TYPED):
        common = {"wflo.execution.id": uuid.uuid4().hex, "wflo.workflow.name": f"typed-{i}",
                  "gen_ai.operation.name": "invoke_workflow", "v": value}
        root = tracer.start_span("invoke_workflow typed", attributes={**common, "wflo.execution.root": True})
        tracer.start_span("invoke_workflow nested", context=trace.set_span_in_context(root), attributes=common).end()
        root.end()
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans


def _same_json(a, b) -> bool:
    """Equal as JSON values: numbers by value (17 == 17.0), never a string, number or boolean as another."""
    kind = lambda v: bool if isinstance(v, bool) else str if isinstance(v, str) else tuple if isinstance(v, tuple) else float  # noqa: E731
    return kind(a) is kind(b) and a == b


@pytest.mark.parametrize(
    "typed, matches",
    [
        ("17", ["17", 17, 17.0]),
        ("17.0", [17, 17.0]),
        ("1.7e1", [17, 17.0]),
        ("true", [True, "true"]),
        ("false", [False]),
        ("1", []),  # not True
        ("0", []),  # not False
        ('["a","b"]', []),  # arrays match nothing
        ("a", []),
        ("017", []), ("1_7", []), ("+17", []), ("\uff11\uff17", []),  # only JSON's spelling of a number
        (str(2**62), [2**62]),
        ("99999999999999999999", []),  # past 64 bits: no error
        ("-5", [-5]),
        ("x'; DROP TABLE step_executions; --", ["x'; DROP TABLE step_executions; --"]),
        ("", [""]),
    ],
)
def test_the_attribute_filter_matches_by_json_type_alike_on_both_engines(database_url, typed, matches, monkeypatch):
    from urllib.parse import quote

    from wflo_otel.dashboard import queries

    write_spans(database_url, _typed_spans())
    monkeypatch.setattr(queries, "SPARSE_ROOTS", 2)  # 3+ executions: counted once each, not per span
    with UIServer(database_url, port=0) as server:
        response = Client(server.url).get("/api/executions?window=today&attr=" + quote("v=" + typed, safe=""))
    assert response.status_code == 200, response.text
    found = {r["workflow_id"] for r in response.json()["executions"]}
    expected = {f"typed-{i}" for i, value in enumerate(TYPED) if any(_same_json(value, m) for m in matches)}
    assert found == expected


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_attribute_filter_is_answered_by_the_gin_index_on_postgresql(filled_url):
    import asyncio

    import sqlalchemy as sa

    from wflo_otel.dashboard import queries
    from wflo_otel.exporters.schema import WORKFLOW_SPAN, step_executions
    from wflo_otel.exporters.store import create_engine

    async def plan() -> str:
        engine = create_engine(filled_url)
        try:
            async with engine.connect() as conn:
                where = sa.and_(sa.text(WORKFLOW_SPAN), queries.attribute_match("postgresql", "tenant.id", "17"))
                sql = sa.select(step_executions.c.execution_id).where(where).compile(conn.sync_connection, compile_kwargs={"literal_binds": True})
                await conn.exec_driver_sql("SET enable_seqscan = off")  # a tiny table: make the planner show it can
                return "\n".join(r[0] for r in await conn.exec_driver_sql(f"EXPLAIN {sql}"))
        finally:
            await engine.dispose()

    assert "ix_step_executions_workflow_attributes" in asyncio.run(plan())


def test_a_hostile_span_name_is_escaped_everywhere(ui, filled_url):
    (execution_id,) = query(filled_url, "SELECT execution_id FROM step_executions WHERE name = :n LIMIT 1", n=HOSTILE)[0]
    html = ui.client.get(f"/executions/{execution_id}").text
    assert HOSTILE not in html
    assert "&lt;script&gt;alert('wflo')&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    response = ui.client.get("/")
    assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'none': no script runs
    data = ui.client.get(f"/api/executions/{execution_id}").json()
    assert HOSTILE in [s["name"] for s in data["steps"]]


def test_a_token_requires_sign_in_with_a_csrf_token_and_sets_a_strict_httponly_cookie(filled_url):
    with UIServer(filled_url, port=0, token="s3cret") as ui:
        client = Client(ui.url)
        first = client.get("/executions?window=7d")
        assert first.status_code == 303 and first.headers["location"].startswith("/signin?next=")
        assert client.get("/api/overview").status_code == 401
        assert client.get("/api/overview", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        form = client.get("/signin?next=/executions").text
        csrf = re.search(r'name=csrf value="([^"]+)"', form).group(1)
        assert client.post("/signin", data={"token": "s3cret", "next": "/"}).status_code == 403  # no CSRF token
        wrong = client.post("/signin", data={"token": "nope", "csrf": csrf, "next": "/"})
        assert wrong.status_code == 401 and "wrong token" in wrong.text
        ok = client.post("/signin", data={"token": "s3cret", "csrf": csrf, "next": "//evil.example/"})
        assert ok.status_code == 303 and ok.headers["location"] == "/"  # never redirected off-site
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret" not in cookie
        assert client.get("/executions?window=7d").status_code == 200
        assert client.post("/signout", data={"csrf": "forged"}).status_code == 403
        out = client.post("/signout", data={"csrf": csrf})
        assert out.status_code == 303
        assert client.get("/").status_code == 303


def test_serve_mounts_the_dashboard_beside_ingest_with_the_same_token(filled_url):
    with IngestService(filled_url, port=0, token="tok") as service:
        client = Client(service.url)
        assert client.get("/").status_code == 303
        assert client.get("/api/overview?window=7d", headers={"Authorization": "Bearer tok"}).json()["totals"]["calls"] > 0
        assert client.post("/v1/traces", body=b"{}", headers={"Content-Type": "application/json"}).status_code == 401


def test_limits_and_approvals_pages_appear_only_when_their_tables_exist(filled_url, monkeypatch):
    from wflo_otel.dashboard.web import Dashboard

    monkeypatch.setattr(Dashboard, "OPTIONAL_PAGES_TTL_S", 0.0)  # the navigation looks each time
    with UIServer(filled_url, port=0) as ui:
        client = Client(ui.url)
        assert 'href="/approvals"' in client.get("/").text and 'href="/limits"' in client.get("/").text
        cascade = "" if filled_url.startswith("sqlite") else " CASCADE"  # its views go with it
        execute(filled_url, "DROP VIEW IF EXISTS approval_latency", f"DROP TABLE approval_requests{cascade}")
        assert 'href="/approvals"' not in client.get("/").text
        assert client.get("/approvals").status_code == 404 and client.get("/limits").status_code == 200


def test_report_html_is_one_self_contained_file_with_the_overview(filled_url, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["--database-url", filled_url, "report", "--html", str(out), "--window", "7d"]) == 0
    html = out.read_text()
    cost = _llm_sums_from_steps(filled_url)[0]
    assert abs(float(re.search(r'id="total-cost" data-value="([^"]+)"', html).group(1)) - cost) < 1e-12
    assert "<svg" in html and "Top workflows" in html and HOSTILE not in html
    # Nothing to fetch: no script, no stylesheet link, no src=, no URL but the SVG namespace.
    assert not re.search(r"<script|<link rel=stylesheet|src=", html)
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= {"http://www.w3.org/2000/svg"}
