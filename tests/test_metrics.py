"""Metrics a cost dashboard reads: calls by status, tokens by type, USD, budget events."""

from __future__ import annotations

import openai
import pytest

import wflo_otel

MESSAGES = [{"role": "user", "content": "metrics please [cached]"}]


def _by(points, key):
    return {p.attributes[key]: p.value for p in points}


def test_counters_sum_calls_tokens_and_cost_across_calls(telemetry, client):
    responses = [client.chat.completions.create(model="o3-mini", messages=MESSAGES) for _ in range(3)]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="error-429", messages=MESSAGES)

    calls = telemetry.metric_points("wflo.llm.calls")
    ok = sum(p.value for p in calls if p.attributes["wflo.call.status"] == "ok")
    errors = sum(p.value for p in calls if p.attributes["wflo.call.status"] == "error")
    assert (ok, errors) == (3, 1)

    tokens = _by(telemetry.metric_points("wflo.llm.tokens"), "gen_ai.token.type")
    assert tokens["input"] == sum(r.usage.prompt_tokens for r in responses)
    assert tokens["output"] == sum(r.usage.completion_tokens for r in responses)
    assert tokens["cache_read"] == sum(r.usage.prompt_tokens_details.cached_tokens for r in responses)
    assert tokens["reasoning"] == sum(r.usage.completion_tokens_details.reasoning_tokens for r in responses)

    (cost,) = telemetry.metric_points("wflo.llm.cost")
    assert cost.value == pytest.approx(sum(s.attributes["wflo.cost.usd"] for s in telemetry.llm_spans() if "wflo.cost.usd" in s.attributes))
    assert cost.attributes["gen_ai.request.model"] == "o3-mini"

    durations = telemetry.metric_points("gen_ai.client.operation.duration")
    assert sum(p.count for p in durations) == 4
    assert any(p.attributes.get("error.type") == "RateLimitError" for p in durations)


def test_budget_refusals_are_counted(telemetry, client):
    with pytest.raises(wflo_otel.BudgetExceededError):
        with wflo_otel.workflow("capped", budget_usd=0.0):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    (event,) = telemetry.metric_points("wflo.budget.events")
    assert event.value == 1
    assert event.attributes == {"gen_ai.workflow.name": "capped", "wflo.budget.event": "refused"}


def _calls(reader) -> int:
    data = reader.get_metrics_data()
    return sum(
        point.value
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "wflo.llm.calls"
        for point in metric.data.data_points
    )


def test_counters_keep_counting_across_shutdown_and_configure_on_one_meter_provider(client):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    for _ in range(2):
        handle = wflo_otel.configure(tracer_provider=TracerProvider(), meter_provider=meter_provider, exporter=False)
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        finally:
            handle.shutdown()
    assert _calls(reader) == 4


def test_tracked_calls_count_on_the_configured_meter_provider(telemetry):
    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    def ask(prompt: str):
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    ask("a"), ask("b")
    assert _calls(telemetry.metric_reader) == 2
    (cost,) = telemetry.metric_points("wflo.llm.cost")
    assert cost.value == pytest.approx(2 * (10 * 0.15e-6 + 5 * 0.6e-6))
