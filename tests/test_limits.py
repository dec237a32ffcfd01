"""Spend limits (issue 16) in one process: matching, refusal, keys, rollover, fail closed, bad input."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from opentelemetry import baggage, context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import wflo_otel
from wflo_otel.cli import fetch
from wflo_otel.limits import LimitEngine, SpendLimit, period_bounds
from wflo_otel.limits_store import LeaseStore

MODEL = "gpt-4o-mini"
MAX_TOKENS = 1000
# gpt-4o-mini: $0.60 per million output tokens; the max_output server answers MAX_TOKENS of them.
CALL_OUTPUT_USD = MAX_TOKENS * 0.60 / 1e6


def _ask(client, **extra):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=MAX_TOKENS, **extra
    )


@pytest.fixture
def max_client(max_output_server):
    import openai

    return openai.OpenAI(base_url=max_output_server.base_url, api_key="k", max_retries=0)


@pytest.fixture
def configured(tmp_path):
    """configure(limits=...) on a SQLite file, spans in memory; undone after the test."""
    handles = []

    def make(limits, alerts=None, database_url=None):
        spans = InMemorySpanExporter()
        url = database_url or f"sqlite+aiosqlite:///{tmp_path}/limits.db"
        handle = wflo_otel.configure(
            url, tracer_provider=TracerProvider(), exporter=spans, batch=False, limits=limits, alerts=alerts,
            default_service_tier="default",  # reserve at standard prices: a call is ~CALL_OUTPUT_USD
        )
        handles.append(handle)
        return handle, spans

    yield make
    for handle in handles:
        handle.shutdown()


# -- bad input is an error at start -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "x", "usd": 1, "per": "fortnight"}, "per must be one of"),
        ({"name": "x", "usd": -1, "per": "day"}, "non-negative"),
        ({"name": "x", "usd": float("nan"), "per": "day"}, "non-negative"),
        ({"name": "x", "usd": 1, "per": "day", "key": ""}, "key must name an attribute"),
        ({"name": "x", "usd": 1, "per": "day", "where": {}}, "names nothing"),
        ({"name": "x", "usd": 1, "per": "day", "where": {"": "a"}}, "empty attribute"),
        ({"name": "x", "usd": 1, "per": "day", "tz": "Mars/Olympus"}, "IANA time zone"),
        ({"name": "x", "usd": 1, "per": "day", "on_unavailable": "maybe"}, "on_unavailable"),
        ({"name": "", "usd": 1, "per": "day"}, "non-empty name"),
    ],
)
def test_an_invalid_limit_is_a_clear_error_when_declared(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpendLimit(**kwargs)


@pytest.mark.parametrize(
    "text, message",
    [
        ("limits: [ {name: a, usd: 1, per: day\n", "does not parse as YAML"),
        ("limits:\n  - {name: a, usd: 1, per: yearly}\n", "per must be one of"),
        ("limits:\n  - {name: a, usd: -5, per: day}\n", "non-negative"),
        ("limits:\n  - {name: a, usd: 5, per: day, where: {}}\n", "names nothing"),
        ("limits:\n  - {name: a, usd: 5, per: day, keys: tenant.id}\n", "unknown fields"),
        ("limits: []\n", "non-empty 'limits' list"),
    ],
)
def test_a_bad_limits_file_fails_configure_naming_the_file(tmp_path, monkeypatch, text, message):
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    monkeypatch.setenv("WFLO_LIMITS_FILE", str(path))
    with pytest.raises(ValueError, match=message) as error:
        wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False)
    assert str(path) in str(error.value)
    from wflo_otel.configuration import current_handle

    assert current_handle() is None  # nothing was set up


def test_a_bad_limits_file_stops_a_zero_code_run_before_the_application_starts(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "limits.yaml"
    path.write_text("limits:\n  - {name: a, usd: 5, per: fortnight}\n")
    env = {**__import__("os").environ, "WFLO_LIMITS_FILE": str(path)}
    run = subprocess.run(
        [sys.executable, "-c", "from wflo_otel.distro import settings; settings(); print('application ran')"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert run.returncode == 2 and "application ran" not in run.stdout
    assert str(path) in run.stderr and "per must be one of" in run.stderr


def test_a_zero_code_run_gets_the_limits_file_s_limits(tmp_path, monkeypatch):
    from wflo_otel import distro

    path = tmp_path / "limits.yaml"
    path.write_text("limits:\n  - {name: script, usd: 0.5, per: run}\n")
    monkeypatch.setenv("WFLO_LIMITS_FILE", str(path))
    monkeypatch.setattr(distro, "_settings", None)
    processor = distro.new_budget_processor()
    try:
        assert [limit.name for limit in processor.limits.limits] == ["script"]
    finally:
        processor.limits.close()
        monkeypatch.setattr(distro, "_settings", None)


def test_limits_file_with_alerts_is_read(tmp_path, monkeypatch):
    from wflo_otel.limits_config import load_limits_file

    path = tmp_path / "limits.yaml"
    path.write_text(
        "limits:\n"
        "  - {name: per-customer, usd: 25, per: day, key: tenant.id}\n"
        "  - {name: triage, usd: 400, per: month, where: {gen_ai.workflow.name: triage}, tz: Europe/Paris}\n"
        "alerts: {webhook: 'http://127.0.0.1:9/hook', secret_env: HOOK_SECRET, at: [0.8]}\n"
    )
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    limits, alerts = load_limits_file(str(path))
    assert [limit.name for limit in limits] == ["per-customer", "triage"]
    assert limits[1].where == {"gen_ai.workflow.name": frozenset({"triage"})}
    assert alerts.secret == "s3cret" and alerts.at == (0.8,)


# -- periods --------------------------------------------------------------------------------------


def test_calendar_periods_follow_the_time_zone():
    from zoneinfo import ZoneInfo

    now = datetime(2026, 3, 29, 12, 30, tzinfo=timezone.utc).timestamp()  # the day Paris moves to summer time
    start, end = period_bounds("day", ZoneInfo("Europe/Paris"), now)
    assert start == datetime(2026, 3, 28, 23, 0, tzinfo=timezone.utc)
    assert end == datetime(2026, 3, 29, 22, 0, tzinfo=timezone.utc)  # a 23-hour day
    start, end = period_bounds("week", timezone.utc, now)
    assert start == datetime(2026, 3, 23, tzinfo=timezone.utc) and end == datetime(2026, 3, 30, tzinfo=timezone.utc)
    start, end = period_bounds("month", timezone.utc, datetime(2026, 12, 31, 23, tzinfo=timezone.utc).timestamp())
    assert (start.month, end.year, end.month) == (12, 2027, 1)
    start, end = period_bounds("hour", timezone.utc, now)
    assert (start.hour, end.hour) == (12, 13)


# -- the cap in one process -------------------------------------------------------------------------


def test_a_call_that_does_not_fit_the_limit_is_refused_unsent_and_names_it(configured, max_client, max_output_server):
    handle, spans = configured([SpendLimit("everything", usd=CALL_OUTPUT_USD * 3.5, per="day")])
    sent_before = max_output_server.request_count
    calls = 0
    with pytest.raises(wflo_otel.BudgetExceededError) as refused:
        for _ in range(10):
            _ask(max_client)
            calls += 1
    assert calls == 3
    assert max_output_server.request_count - sent_before == 3  # the refused call never left
    error = refused.value
    assert error.limit == "everything" and error.key == "" and error.refused
    assert error.period_start == period_bounds("day", timezone.utc, datetime.now(timezone.utc).timestamp())[0]
    assert "spend limit 'everything'" in str(error)
    refused_span = [s for s in spans.get_finished_spans() if s.attributes.get("wflo.limit.refused")]
    assert refused_span and refused_span[0].attributes["wflo.limit.refused"] == "everything"


def test_each_key_has_its_own_money_and_workflow_attributes_select_it(configured, max_client):
    configured([SpendLimit("per-customer", usd=CALL_OUTPUT_USD * 1.5, per="day", key="tenant.id")])
    with wflo_otel.workflow("triage", attributes={"tenant.id": "acme"}):
        _ask(max_client)
        with pytest.raises(wflo_otel.BudgetExceededError) as refused:
            _ask(max_client)
    assert refused.value.key == "acme"
    with wflo_otel.workflow("triage", attributes={"tenant.id": "globex"}):
        with wflo_otel.workflow("nested"):  # nested scopes inherit the attributes
            _ask(max_client)


def test_where_counts_only_the_calls_it_selects(configured, max_client):
    configured([SpendLimit("triage-only", usd=CALL_OUTPUT_USD * 1.5, per="month", where={"gen_ai.workflow.name": "triage"})])
    with wflo_otel.workflow("triage"):
        _ask(max_client)
    for _ in range(3):
        with wflo_otel.workflow("other"):
            _ask(max_client)  # not counted
    with wflo_otel.workflow("triage"), pytest.raises(wflo_otel.BudgetExceededError):
        _ask(max_client)


def test_a_run_limit_caps_parentless_calls_together(configured, max_client):
    """Zero-code scripts: each parentless call is its own execution, a run limit caps them all."""
    configured([SpendLimit("script", usd=CALL_OUTPUT_USD * 2.5, per="run")])
    _ask(max_client)
    _ask(max_client)
    with pytest.raises(wflo_otel.BudgetExceededError):
        _ask(max_client)


async def test_async_calls_are_held_on_limits_too(configured, max_output_server):
    import openai

    configured([SpendLimit("everything", usd=CALL_OUTPUT_USD * 2.5, per="hour")])
    client = openai.AsyncOpenAI(base_url=max_output_server.base_url, api_key="k", max_retries=0)
    try:
        results = await asyncio.gather(
            *[client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=MAX_TOKENS) for _ in range(6)],
            return_exceptions=True,
        )
    finally:
        await client.close()
    refused = [r for r in results if isinstance(r, wflo_otel.BudgetExceededError)]
    assert len(refused) == 4 and all(r.limit == "everything" for r in refused)


def test_attributes_cross_processes_in_baggage(configured):
    from wflo_otel.propagation import with_scope_baggage

    configured([SpendLimit("per-customer", usd=1, per="day", key="tenant.id")])
    with wflo_otel.workflow("triage", attributes={"tenant.id": "acme"}):
        ctx = with_scope_baggage(otel_context.get_current())
    assert baggage.get_baggage("tenant.id", ctx) == "acme"


def test_a_remote_parent_s_baggage_selects_the_key(configured, max_client):
    from opentelemetry import propagate, trace

    handle, _ = configured([SpendLimit("per-customer", usd=CALL_OUTPUT_USD * 1.5, per="day", key="tenant.id")])
    with wflo_otel.workflow("upstream", attributes={"tenant.id": "acme"}):
        carrier: dict = {}
        propagate.inject(carrier)
    downstream = propagate.extract(carrier)
    tracer = handle.tracer_provider.get_tracer("t")
    with tracer.start_as_current_span("downstream", context=downstream):
        _ask(max_client)
        with pytest.raises(wflo_otel.BudgetExceededError) as refused:
            _ask(max_client)
    assert refused.value.key == "acme"


# -- shared state: rollover, fail closed --------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_period_rolls_over_at_its_boundary_and_history_stays(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/roll.db"
    clock = Clock(datetime(2026, 12, 6, 23, 59, 59, tzinfo=timezone.utc).timestamp())
    store = LeaseStore(url, ttl_s=30)
    engine = LimitEngine([SpendLimit("daily", usd=1.0, per="day")], store=store, clock=clock)
    try:
        for _ in range(4):
            engine.reserve(engine.match({}, ()), 0.25).settle(0.25)
        with pytest.raises(wflo_otel.BudgetExceededError):
            engine.reserve(engine.match({}, ()), 0.25)
        clock.now += 2  # 00:00:01 the next day
        engine.reserve(engine.match({}, ()), 0.25).settle(0.25)
        engine.sync_all()
    finally:
        engine.close()
    _, rows = asyncio.run(fetch(url, "SELECT period_start, spent_usd, remaining_usd FROM spend_per_limit ORDER BY period_start"))
    assert [(round(r[1], 6), round(r[2], 6)) for r in rows] == [(1.0, 0.0), (0.25, 0.75)]
    assert [str(r[0])[:10] for r in rows] == ["2026-12-06", "2026-12-07"]


def test_unused_lease_returns_at_shutdown(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/lease.db"
    engine = LimitEngine([SpendLimit("daily", usd=10.0, per="day")], store=LeaseStore(url))
    engine.reserve(engine.match({}, ()), 0.01).settle(0.004)
    engine.sync_all()
    _, rows = asyncio.run(fetch(url, "SELECT spent_usd, leased_usd FROM spend_limit_periods"))
    assert rows[0][1] > 0.01  # a slice was leased, not just the call's worst case
    engine.close()
    _, rows = asyncio.run(fetch(url, "SELECT spent_usd, leased_usd FROM spend_limit_periods"))
    assert [(round(r[0], 6), round(r[1], 6)) for r in rows] == [(0.004, 0.0)]
    _, leases = asyncio.run(fetch(url, "SELECT COUNT(*) FROM spend_limit_leases"))
    assert leases == [(0,)]


@pytest.mark.parametrize("policy", ["refuse", "allow"])
def test_an_unreachable_database_fails_closed_unless_the_limit_allows(configured, max_client, max_output_server, policy):
    down = "postgresql+asyncpg://postgres@127.0.0.1:9/none?connect_timeout=1"
    handle, spans = configured([SpendLimit("everything", usd=5, per="day", on_unavailable=policy)], database_url=down)
    handle.budget_processor.limits.store.timeout_s = 2
    sent = max_output_server.request_count
    if policy == "refuse":
        with pytest.raises(wflo_otel.BudgetExceededError) as refused:
            _ask(max_client)
        assert refused.value.limit == "everything" and refused.value.unavailable
        assert max_output_server.request_count == sent
    else:
        _ask(max_client)
        assert max_output_server.request_count == sent + 1
    call = [s for s in spans.get_finished_spans() if s.name.startswith("chat")][-1]
    assert call.attributes["wflo.limit.unavailable"] == "everything"


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_shows_current_periods_per_key_and_resets_one(tmp_path, capsys):
    from wflo_otel.cli import main

    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    engine = LimitEngine([SpendLimit("per-customer", usd=1.0, per="day", key="tenant.id")], store=LeaseStore(url))
    for tenant, usd in (("acme", 0.4), ("globex", 0.1)):
        engine.reserve(engine.match({"tenant.id": tenant}, ()), usd).settle(usd)
    engine.close()
    assert main(["--database-url", url, "limits"]) == 0
    out = capsys.readouterr().out
    assert "resets_at" in out and "acme" in out and "0.400000" in out and "0.600000" in out and "globex" in out
    assert main(["--database-url", url, "limits", "reset", "per-customer", "--key", "acme"]) == 0
    _, rows = asyncio.run(fetch(url, "SELECT limit_key, spent_usd FROM spend_limit_periods ORDER BY limit_key"))
    assert rows == [("acme", 0.0), ("globex", 0.1)]
    assert main(["--database-url", url, "limits", "reset", "no-such-limit"]) == 1
    assert "no current period of limit 'no-such-limit'" in capsys.readouterr().err


def test_metrics_report_spent_remaining_and_refusals_per_limit_name_only(tmp_path, max_client):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    handle = wflo_otel.configure(
        f"sqlite+aiosqlite:///{tmp_path}/m.db", tracer_provider=TracerProvider(), exporter=False,
        meter_provider=MeterProvider(metric_readers=[reader]), default_service_tier="default",
        limits=[SpendLimit("per-customer", usd=CALL_OUTPUT_USD * 1.5, per="day", key="tenant.id")],
        alerts=wflo_otel.Alerts(at=(0.5,)),
    )
    try:
        for tenant in ("acme", "globex"):
            with wflo_otel.workflow("w", attributes={"tenant.id": tenant}):
                _ask(max_client)
        with wflo_otel.workflow("w", attributes={"tenant.id": "acme"}), pytest.raises(wflo_otel.BudgetExceededError):
            _ask(max_client)
        handle.budget_processor.limits.alerts.flush()
        points = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name.startswith("wflo.limit."):
                        points[metric.name] = [(dict(p.attributes), p.value) for p in metric.data.data_points]
    finally:
        handle.shutdown()
    assert points["wflo.limit.refusals"] == [({"wflo.limit.name": "per-customer"}, 1)]
    (labels, spent), = points["wflo.limit.spent_usd"]
    assert labels == {"wflo.limit.name": "per-customer"} and spent == pytest.approx(CALL_OUTPUT_USD, rel=0.05)
    (_, remaining), = points["wflo.limit.remaining_usd"]
    assert remaining == pytest.approx(CALL_OUTPUT_USD * 0.5, rel=0.1)
    assert points["wflo.limit.alerts"] == [({"wflo.limit.name": "per-customer", "wflo.limit.threshold": 0.5}, 2)]  # acme, globex


def test_a_limit_refusal_releases_the_budget_and_a_failed_call_releases_the_limit(configured, max_client):
    import openai

    handle, _ = configured([SpendLimit("everything", usd=CALL_OUTPUT_USD * 1.5, per="day")])
    engine = handle.budget_processor.limits
    with wflo_otel.workflow("w", budget_usd=1.0) as wf:
        _ask(max_client)
        with pytest.raises(wflo_otel.BudgetExceededError) as refused:
            _ask(max_client)
        assert refused.value.limit == "everything"
        assert wf._scope.reserved_usd == 0.0  # the budget's hold went with the refusal
        unreachable = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)
        spent_before = engine.buckets()[0].spent
        with pytest.raises(openai.APIConnectionError):
            unreachable.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    (bucket,) = engine.buckets()
    assert bucket.reserved == pytest.approx(0.0, abs=1e-15) and bucket.spent == spent_before  # released, not charged


def test_alerts_never_show_their_secret_or_webhook():
    alerts = wflo_otel.Alerts(webhook="https://hooks.slack.com/services/T0/B0/XYZ", secret="s3cret")
    assert "s3cret" not in repr(alerts) and "XYZ" not in repr(alerts)
    with pytest.raises(ValueError, match=r"fractions in \(0, 1\]"):
        wflo_otel.Alerts(at=(0.5, -1))
    with pytest.raises(ValueError, match="http"):
        wflo_otel.Alerts(webhook="ftp://x")
