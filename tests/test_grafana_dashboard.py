"""The Grafana dashboard (dashboards/wflo-otel-postgres.json): a valid dashboard whose every panel is right.

Structure: unique panel ids, grid positions inside 24 columns and not overlapping, every
data-source reference resolving to a data-source template variable of the right plugin, every
``$variable`` defined and every defined variable used.

PostgreSQL panels: a real PostgreSQL database filled by the real exporter (the OpenAI client
against the local fake server, two services, refusals and failures, plus older executions
exported by ``SQLSpanExporter``), each panel's SQL expanded as Grafana would for a fixed time range
(``grafana_support``: variables, then macros) and run; the rows must equal totals computed here,
in Python, from the raw rows — with every filter at *All* and with a narrowed selection.

Prometheus panels: every metric and label the PromQL names must appear in the exposition text
``opentelemetry-exporter-prometheus`` produces from our metrics in the same run.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

import wflo_otel
from conftest import throwaway_database
from grafana_support import ALL, Variables, expand_macros, go_float, grafana_sql, interpolate_variables, rfc3339nano
from test_store_support import make_workflows

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "wflo-otel-postgres.json"
PG_TYPE = "grafana-postgresql-datasource"
PROM_TYPE = "prometheus"
GRAFANA_BUILTINS = {"__interval", "__interval_ms", "__rate_interval", "__range", "__range_s", "__range_ms", "__dashboard", "__from", "__to"}
DAY_NS = 86_400 * 10**9
MESSAGES = [{"role": "user", "content": "where did the money go [cached]"}]


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels(dashboard: dict, datasource_type: str) -> list[dict]:
    return [p for p in dashboard["panels"] if p.get("datasource", {}).get("type") == datasource_type]


# -- structure -----------------------------------------------------------------------------------


def _overlaps(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def _used_variables(text: str) -> set[str]:
    found = set()
    for match in re.finditer(r"\$(\w+)|\[\[(\w+?)(?::\w+)?\]\]|\$\{(\w+)(?:\.[^:^\}]+)?(?::[^\}]+)?\}", text):
        found.add(match.group(1) or match.group(2) or match.group(3))
    return found


def test_dashboard_is_a_grafana_dashboard_with_unique_ids_and_a_tidy_grid():
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36 and dashboard["id"] is None
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    grids = [p["gridPos"] for p in panels]
    for panel, grid in zip(panels, grids):
        assert grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] >= 1 and grid["h"] >= 1, panel["title"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the 24-column grid"
    for i, a in enumerate(grids):
        for b in grids[i + 1 :]:
            assert not _overlaps(a, b), f"panels overlap: {a} {b}"
    for panel in panels:
        if panel["type"] == "row":
            assert panel["gridPos"]["w"] == 24 and not panel.get("targets")
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    assert query_panels(dashboard, PG_TYPE) and query_panels(dashboard, PROM_TYPE)
    assert len(query_panels(dashboard, PG_TYPE)) + len(query_panels(dashboard, PROM_TYPE)) == sum(
        1 for p in panels if p["type"] != "row"
    ), "every panel queries PostgreSQL or Prometheus"


def test_every_datasource_reference_resolves_to_a_datasource_variable_of_its_plugin():
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource_variables = {name: v["query"] for name, v in variables.items() if v["type"] == "datasource"}
    assert datasource_variables == {"DS_POSTGRES": PG_TYPE, "DS_PROMETHEUS": PROM_TYPE}

    def check(reference: dict, where: str) -> None:
        match = re.fullmatch(r"\$\{(\w+)\}", reference["uid"])
        assert match, f"{where}: datasource uid {reference['uid']!r} is not a template variable"
        assert datasource_variables.get(match.group(1)) == reference["type"], f"{where}: {reference}"

    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        check(panel["datasource"], panel["title"])
        for target in panel["targets"]:
            check(target["datasource"], panel["title"])
            assert target["datasource"] == panel["datasource"], "a panel's queries use the panel's data source"
            if target["datasource"]["type"] == PG_TYPE:
                assert target["editorMode"] == "code" and target["rawQuery"] and target["format"] in ("table", "time_series")
            else:
                assert target["expr"]
    for variable in variables.values():
        if variable["type"] == "query":
            check(variable["datasource"], f"variable {variable['name']}")


def test_every_variable_used_is_defined_and_every_defined_variable_is_used():
    dashboard = load_dashboard()
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    texts = [t.get("rawSql") or t.get("expr") for p in dashboard["panels"] for t in p.get("targets", [])]
    texts += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    references = json.dumps([p.get("datasource") for p in dashboard["panels"]])
    used = set().union(*(_used_variables(t) for t in texts + [references]))
    macros = {name for t in texts for name in re.findall(r"\$(__\w+)\(", t)}
    assert used - defined - GRAFANA_BUILTINS - macros == set(), "undefined variables"
    assert defined - used == set(), "variables no query uses"


# -- the expansion itself --------------------------------------------------------------------------


def test_macros_expand_the_way_grafanas_postgresql_plugin_expands_them():
    start = datetime(2017, 4, 21, 5, 1, 17, tzinfo=timezone.utc)
    end = datetime(2017, 4, 21, 5, 6, 17, 500000, tzinfo=timezone.utc)
    assert expand_macros("WHERE $__timeFilter(time_column)", start, end) == (
        "WHERE time_column BETWEEN '2017-04-21T05:01:17Z' AND '2017-04-21T05:06:17.5Z'"
    )
    assert expand_macros("SELECT $__timeGroupAlias(t, '5m'), 1", start, end) == 'SELECT floor(extract(epoch from t)/300)*300 AS "time", 1'
    assert expand_macros("GROUP BY $__timeGroup(t, 1d)", start, end) == "GROUP BY floor(extract(epoch from t)/86400)*86400"
    assert expand_macros("SELECT $__timeGroup(t,1h), v", start, end).endswith('*3600 AS "time", v')  # pre-5.3 form
    assert expand_macros("$__timeFrom() $__unixEpochFilter(ts)", start, end) == "'2017-04-21T05:01:17Z' ts >= 1492750877 AND ts <= 1492751177"
    assert [go_float(s) for s in (300.0, 86400.0, 604800.0, 1e6, 0.5)] == ["300", "86400", "604800", "1e+06", "0.5"]
    assert rfc3339nano(datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=timezone.utc)) == "2026-01-02T03:04:05.12Z"


def test_variables_interpolate_the_way_grafanas_sql_datasources_format_them():
    definitions = {
        "multi": {"multi": True, "includeAll": True},
        "custom_all": {"multi": True, "includeAll": True, "allValue": "'__all__'"},
        "single": {"multi": False, "includeAll": False},
    }
    variables = Variables(definitions, {"multi": ["a", "o'b"], "custom_all": ALL, "single": "it's"}, builtins={"__interval": "1h"})
    sql = "x IN ($multi) AND y IN (${custom_all}) AND z = '[[single]]' AND $__timeFilter(t) $__interval"
    assert interpolate_variables(sql, variables) == (
        "x IN ('a','o''b') AND y IN ('__all__') AND z = 'it''s' AND $__timeFilter(t) 1h"
    )
    everything = Variables(definitions, {"multi": ALL}, options={"multi": ["a", "b"]})
    assert interpolate_variables("$multi", everything) == "'a','b'"


# -- a real database, filled by the real exporter ----------------------------------------------------


class Data:
    """The database, the raw rows read back, the fixed time range and the Prometheus exposition."""

    def __init__(self, url: str, exposition: str, time_from: datetime, time_to: datetime) -> None:
        self.url = url
        self.dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.exposition = exposition
        self.time_from, self.time_to = time_from, time_to
        self.steps, self.executions, self.definitions = asyncio.run(self._raw_rows())

    async def _raw_rows(self):
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            steps = await conn.fetch(
                "SELECT s.id, s.execution_id, s.kind, s.status, s.started_at, s.request_model, s.response_model,"
                " s.input_tokens, s.output_tokens, s.cache_read_tokens, s.reasoning_tokens, s.cost_usd,"
                " s.attributes::text AS attributes, e.workflow_id, e.service_name"
                " FROM step_executions s JOIN workflow_executions e ON e.id = s.execution_id"
            )
            executions = await conn.fetch("SELECT * FROM workflow_executions")
            definitions = [r[0] for r in await conn.fetch("SELECT id FROM workflow_definitions")]
        finally:
            await conn.close()
        return [dict(r) for r in steps], [dict(r) for r in executions], definitions

    def run(self, sql: str) -> list[dict]:
        async def go():
            import asyncpg

            conn = await asyncpg.connect(self.dsn)
            try:
                return [dict(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()

        return asyncio.run(go())


def _run_workflows(client, service: str, meter_provider, url: str, scenario) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    handle = wflo_otel.configure(url, tracer_provider=provider, meter_provider=meter_provider, batch=False)
    try:
        scenario(client)
        assert handle.force_flush()
    finally:
        handle.shutdown()


def _checkout(client) -> None:
    import openai

    for _ in range(3):
        with wflo_otel.workflow("support-agent", budget_usd=1.0):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=50)
    with pytest.raises(wflo_otel.BudgetExceededError):
        with wflo_otel.workflow("summarize", budget_usd=0.0):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        with wflo_otel.workflow("triage", budget_usd=1.0):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            client.chat.completions.create(model="error-429", messages=MESSAGES)


def _batch(client) -> None:
    for _ in range(2):
        with wflo_otel.workflow("summarize", budget_usd=1.0):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=40)


def _export_history(url: str, spool_dir: Path) -> None:
    """Executions of earlier days, through the same exporter: three days ago (in range), 40 (not)."""
    from wflo_otel.exporters.sql import SQLSpanExporter

    now = datetime.now(timezone.utc)
    recent, _ = make_workflows(6, llm_calls=2, seed=5, start_ns=int((now - timedelta(days=3)).timestamp() * 1e9), over_budget_every=3, failing_every=5)
    old, _ = make_workflows(3, llm_calls=2, seed=6, start_ns=int((now - timedelta(days=40)).timestamp() * 1e9), workflow="support-agent")
    exporter = SQLSpanExporter(url, spool_dir=spool_dir, handle_sigterm=False)
    try:
        assert exporter.export(recent + old).name == "SUCCESS"
    finally:
        exporter.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory, openai_server):
    import openai
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest

    directory = tmp_path_factory.mktemp("grafana")
    with throwaway_database("postgresql", directory) as url:
        registry = CollectorRegistry()
        meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="test-key", max_retries=0)
        _run_workflows(client, "checkout-api", meter_provider, url, _checkout)
        _run_workflows(client, "batch-worker", meter_provider, url, _batch)
        _export_history(url, directory / "spool")
        exposition = generate_latest(registry).decode()
        meter_provider.shutdown()
        now = datetime.now(timezone.utc)
        time_to = (now + timedelta(minutes=10)).replace(microsecond=123000)
        time_from = (now - timedelta(days=7)).replace(microsecond=456000)
        yield Data(url, exposition, time_from, time_to)


# -- what each panel must show, computed from the raw rows --------------------------------------------


def _model(step: dict) -> str | None:
    return step["response_model"] or step["request_model"]


def _refused(step: dict) -> bool:
    return json.loads(step["attributes"] or "{}").get("wflo.budget.refused") is True


def _sum(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) if values else None


class Expect:
    """The filters of one selection applied to the raw rows."""

    def __init__(self, data: Data, selected: dict) -> None:
        self.data, self.selected = data, selected

    def _chosen(self, name: str, value) -> bool:
        choice = self.selected.get(name, ALL)
        return choice == ALL or value in choice

    def _in_range(self, moment: datetime) -> bool:
        return self.data.time_from <= moment <= self.data.time_to

    def steps(self) -> list[dict]:
        return [
            s
            for s in self.data.steps
            if s["kind"] == "llm"
            and self._in_range(s["started_at"])
            and self._chosen("workflow", s["workflow_id"])
            and self._chosen("model", _model(s))
            and self._chosen("service", s["service_name"] or "(none)")
        ]

    def executions(self) -> list[dict]:
        return [
            e
            for e in self.data.executions
            if self._in_range(e["started_at"])
            and self._chosen("workflow", e["workflow_id"])
            and self._chosen("service", e["service_name"] or "(none)")
        ]

    def buckets(self, seconds: int, key) -> dict:
        groups = defaultdict(list)
        for s in self.steps():
            bucket = math.floor(s["started_at"].timestamp() / seconds) * seconds
            groups[(bucket, key(s))].append(s["cost_usd"])
        return {k: _sum(v) for k, v in groups.items()}


def _series(rows: list[dict]) -> dict:
    return {(float(r["time"]), r["metric"]): r["value"] for r in rows}


def _assert_close(actual, expected, what: str) -> None:
    if expected is None or actual is None:
        assert actual == expected, what
    else:
        assert float(actual) == pytest.approx(float(expected), rel=1e-9, abs=1e-12), what


def _assert_series(rows, expected: dict) -> None:
    series = _series(rows)
    assert set(series) == set(expected)
    for key, value in expected.items():
        _assert_close(series[key], value, str(key))
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows), "time series rows sorted by time"


def _check_spend(rows, x: Expect):
    _assert_close(rows[0]["spend_usd"], _sum(s["cost_usd"] for s in x.steps()) or 0, "spend")


def _check_calls(rows, x: Expect):
    assert rows == [{"calls": len(x.steps())}]


def _check_tokens(rows, x: Expect):
    steps = x.steps()
    assert rows == [{"input": sum(s["input_tokens"] or 0 for s in steps), "output": sum(s["output_tokens"] or 0 for s in steps)}]


def _check_refusals(rows, x: Expect):
    assert rows == [{"refused": sum(1 for s in x.steps() if _refused(s))}]


def _check_errors(rows, x: Expect):
    assert rows == [{"errors": sum(1 for s in x.steps() if s["status"] == "ERROR" and not _refused(s))}]


def _over_budget(e: dict) -> bool:
    return e["status"] == "BUDGET_EXCEEDED" or (e["budget_usd"] is not None and e["cost_total_usd"] > e["budget_usd"])


def _check_over_budget_stat(rows, x: Expect):
    executions = x.executions()
    assert rows == [{"over_budget": sum(1 for e in executions if _over_budget(e)), "executions": len(executions)}]


def _check_spend_by_model(rows, x: Expect):
    _assert_series(rows, x.buckets(3600, lambda s: _model(s) or "(none)"))


def _check_spend_by_workflow(rows, x: Expect):
    _assert_series(rows, x.buckets(3600, lambda s: s["workflow_id"]))


def _check_cost_per_day_per_service(rows, x: Expect):
    _assert_series(rows, x.buckets(86400, lambda s: s["service_name"] or "(none)"))


def _check_top_workflows(rows, x: Expect):
    groups = defaultdict(list)
    for e in x.executions():
        groups[e["workflow_id"]].append(e)
    expected = sorted(groups, key=lambda w: (-sum(e["cost_total_usd"] for e in groups[w]), w))[:10]
    assert [r["workflow"] for r in rows] == expected
    for row in rows:
        executions = groups[row["workflow"]]
        assert row["executions"] == len(executions)
        assert row["llm_calls"] == sum(e["llm_calls"] for e in executions)
        assert (row["input_tokens"], row["output_tokens"]) == (
            sum(e["input_tokens"] for e in executions),
            sum(e["output_tokens"] for e in executions),
        )
        _assert_close(row["cost_usd"], sum(e["cost_total_usd"] for e in executions), row["workflow"])
        assert row["over_budget"] == sum(1 for e in executions if e["status"] == "BUDGET_EXCEEDED")
        assert row["failed"] == sum(1 for e in executions if e["status"] == "FAILED")


def _check_top_models(rows, x: Expect):
    groups = defaultdict(list)
    for s in x.steps():
        groups[_model(s) or "(none)"].append(s)
    cost = {m: _sum(s["cost_usd"] for s in steps) for m, steps in groups.items()}
    expected = sorted(groups, key=lambda m: (cost[m] is None, -(cost[m] or 0), m))[:10]
    assert [r["model"] for r in rows] == expected
    for row in rows:
        steps = groups[row["model"]]
        assert row["calls"] == len(steps)
        assert row["input_tokens"] == _sum(s["input_tokens"] for s in steps)
        assert row["output_tokens"] == _sum(s["output_tokens"] for s in steps)
        assert row["cached_tokens"] == _sum(s["cache_read_tokens"] for s in steps)
        _assert_close(row["cost_usd"], cost[row["model"]], row["model"])


def _check_cost_per_model_per_day(rows, x: Expect):
    first, last = x.data.time_from.date(), x.data.time_to.date()  # the literals cast to DATE
    groups = defaultdict(list)
    for s in x.data.steps:
        day = s["started_at"].astimezone(timezone.utc).date()
        if s["kind"] == "llm" and s["input_tokens"] is not None and first <= day <= last and x._chosen("model", _model(s)):
            groups[(day, _model(s))].append(s)
    assert {(r["day"], r["model"]) for r in rows} == set(groups)
    for row in rows:
        steps = groups[(row["day"], row["model"])]
        assert row["calls"] == len(steps)
        assert (row["input_tokens"], row["output_tokens"]) == (sum(s["input_tokens"] for s in steps), _sum(s["output_tokens"] for s in steps))
        _assert_close(row["cost_usd"], _sum(s["cost_usd"] for s in steps), str(row["day"]))
    assert [r["day"] for r in rows] == sorted((r["day"] for r in rows), reverse=True)


def _check_executions(rows, x: Expect):
    expected = sorted(x.executions(), key=lambda e: (-e["started_at"].timestamp(), e["id"]))[:200]
    assert [r["execution_id"] for r in rows] == [e["id"] for e in expected]
    for row, e in zip(rows, expected):
        assert (row["workflow"], row["status"], row["service"], row["llm_calls"]) == (
            e["workflow_id"],
            e["status"],
            e["service_name"],
            e["llm_calls"],
        )
        _assert_close(row["cost_usd"], e["cost_total_usd"], e["id"])
        if e["budget_usd"]:
            _assert_close(row["budget_used_pct"], 100.0 * e["cost_total_usd"] / e["budget_usd"], e["id"])
        else:
            assert row["budget_used_pct"] is None
        _assert_close(row["duration_ms"], (e["ended_at"] - e["started_at"]).total_seconds() * 1000, e["id"])


def _check_budget_exceeded(rows, x: Expect):
    expected = sorted((e for e in x.executions() if _over_budget(e)), key=lambda e: (-e["started_at"].timestamp(), e["id"]))
    assert [r["execution_id"] for r in rows] == [e["id"] for e in expected]
    for row, e in zip(rows, expected):
        _assert_close(row["over_by_usd"], e["cost_total_usd"] - e["budget_usd"], e["id"])


CHECKS = {
    "Spend": _check_spend,
    "LLM calls": _check_calls,
    "Tokens": _check_tokens,
    "Refusals": _check_refusals,
    "Errors": _check_errors,
    "Executions over budget": _check_over_budget_stat,
    "Spend over time by model": _check_spend_by_model,
    "Spend over time by workflow": _check_spend_by_workflow,
    "Top workflows": _check_top_workflows,
    "Top models": _check_top_models,
    "Cost per day per service": _check_cost_per_day_per_service,
    "Cost per model per day": _check_cost_per_model_per_day,
    "Executions": _check_executions,
    "Budget-exceeded executions": _check_budget_exceeded,
}


def _variables(dashboard: dict, selected: dict, panel: dict | None = None) -> Variables:
    definitions = {v["name"]: v for v in dashboard["templating"]["list"]}
    interval = (panel or {}).get("interval", "1h")  # Grafana's $__interval, at the panel's minimum here
    return Variables(definitions, selected, builtins={"__interval": interval})


SELECTIONS = {
    "everything": {},
    "narrowed": {"workflow": ["support-agent", "summarize"], "model": ["gpt-4o-mini-2024-07-18"], "service": ["checkout-api"]},
}


def test_the_data_covers_what_the_panels_show(data):
    """The scenario has what every panel needs, and the time range cuts some of it off."""
    statuses = {e["status"] for e in data.executions}
    assert {"COMPLETED", "FAILED", "BUDGET_EXCEEDED"} <= statuses
    assert {e["service_name"] for e in data.executions} >= {"checkout-api", "batch-worker"}
    assert any(_refused(s) for s in data.steps) and any(s["status"] == "ERROR" and not _refused(s) for s in data.steps)
    assert any(e["started_at"] < data.time_from for e in data.executions), "some executions fall before the range"
    days = {s["started_at"].date() for s in data.steps if data.time_from <= s["started_at"] <= data.time_to}
    assert len(days) >= 2


@pytest.mark.parametrize("selection", sorted(SELECTIONS))
def test_every_postgresql_panel_shows_the_totals_of_the_raw_rows(data, selection):
    dashboard = load_dashboard()
    panels = query_panels(dashboard, PG_TYPE)
    assert {p["title"] for p in panels} == set(CHECKS), "each PostgreSQL panel has its check"
    expect = Expect(data, SELECTIONS[selection])
    assert expect.steps() and expect.executions()
    for panel in panels:
        (target,) = panel["targets"]
        sql = grafana_sql(target["rawSql"], _variables(dashboard, SELECTIONS[selection], panel), data.time_from, data.time_to)
        assert "$" not in sql, f"{panel['title']}: unexpanded {sql}"
        rows = data.run(sql)
        if target["format"] == "time_series":
            assert all({"time", "metric", "value"} == set(r) for r in rows)
        CHECKS[panel["title"]](rows, expect)


def test_the_narrowed_selection_changes_what_the_panels_show(data):
    dashboard = load_dashboard()
    (spend,) = [p for p in query_panels(dashboard, PG_TYPE) if p["title"] == "Spend"]
    totals = {}
    for name, selected in SELECTIONS.items():
        sql = grafana_sql(spend["targets"][0]["rawSql"], _variables(dashboard, selected), data.time_from, data.time_to)
        totals[name] = data.run(sql)[0]["spend_usd"]
    everything = sum(s["cost_usd"] or 0 for s in data.steps)
    assert 0 < totals["narrowed"] < totals["everything"] < everything


def test_variable_queries_list_the_workflows_models_and_services_of_the_range(data):
    dashboard = load_dashboard()
    options = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        sql = grafana_sql(variable["query"], _variables(dashboard, {}), data.time_from, data.time_to)
        options[variable["name"]] = [next(iter(r.values())) for r in data.run(sql)]
    everything = Expect(data, {})
    assert options["workflow"] == sorted(data.definitions)
    assert options["model"] == sorted({_model(s) for s in everything.steps() if _model(s)})
    assert options["service"] == sorted({e["service_name"] or "(none)" for e in everything.executions()})


# -- Prometheus ----------------------------------------------------------------------------------------


def _exposed(exposition: str) -> dict[str, set[str]]:
    """Sample name -> label names, from the exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, set[str]] = defaultdict(set)
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples[sample.name] |= set(sample.labels)
    return samples


def test_every_prometheus_panel_names_metrics_and_labels_our_exporter_exposes(data):
    exposed = _exposed(data.exposition)
    dashboard = load_dashboard()
    named = set()
    for panel in query_panels(dashboard, PROM_TYPE):
        for target in panel["targets"]:
            expr = target["expr"]
            metrics = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[\[{]", expr))
            assert metrics, f"{panel['title']}: no metric selector in {expr}"
            missing = metrics - set(exposed)
            assert not missing, f"{panel['title']}: {missing} not in the exposition"
            labels = set().union(*(exposed[m] for m in metrics))
            grouped = {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in group.split(",")}
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert grouped | legend <= labels, f"{panel['title']}: labels {(grouped | legend) - labels} not exposed"
            named |= metrics
    # The two: the semantic-convention token histogram and the cost counter.
    assert {"gen_ai_client_token_usage_sum", "gen_ai_client_token_usage_bucket", "wflo_llm_cost_USD_total"} <= named


# -- the read-only role of dashboards/README.md ----------------------------------------------------------


def _readme_role_sql(role: str, database: str, owner: str) -> str:
    """The README's role block, with this test's role, database and table owner."""
    text = (DASHBOARD.parent / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```sql\n(.*?)```", text, re.S) if "CREATE ROLE" in b]
    block = re.sub(r"\bgrafana_reader\b", role, block)
    block = re.sub(r"\bDATABASE wflo\b", f'DATABASE "{database}"', block)
    return re.sub(r"\bFOR ROLE wflo\b", f'FOR ROLE "{owner}"', block)


def test_the_readme_read_only_role_runs_every_panel_and_writes_nothing(data):
    import asyncpg

    role = f"grafana_reader_{uuid.uuid4().hex[:8]}"
    database = data.dsn.rsplit("/", 1)[1]
    dashboard = load_dashboard()
    statements = [
        grafana_sql(t["rawSql"], _variables(dashboard, {}, p), data.time_from, data.time_to)
        for p in query_panels(dashboard, PG_TYPE)
        for t in p["targets"]
    ]

    async def go():
        admin = await asyncpg.connect(data.dsn)
        try:
            owner = await admin.fetchval("SELECT current_user")
            await admin.execute(_readme_role_sql(role, database, owner))
            address = urlsplit(data.dsn)
            reader_dsn = address._replace(netloc=f"{role}:change-me@{address.hostname}:{address.port or 5432}")
            reader = await asyncpg.connect(urlunsplit(reader_dsn))
            try:
                for sql in statements:
                    await reader.fetch(sql)
                with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
                    await reader.execute("UPDATE workflow_executions SET cost_total_usd = 0")
                await reader.execute("SET default_transaction_read_only = off")
                with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                    await reader.execute("DELETE FROM step_executions")
                # What a later migration creates (a rollup table) is readable without another GRANT.
                await admin.execute("CREATE TABLE grafana_later_rollup (hour timestamptz)")
                assert await reader.fetch("SELECT * FROM grafana_later_rollup") == []
            finally:
                await reader.close()
        finally:
            await admin.execute("DROP TABLE IF EXISTS grafana_later_rollup")
            await admin.execute(f'DROP OWNED BY "{role}"')
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
            await admin.close()

    asyncio.run(go())
