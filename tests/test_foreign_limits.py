"""Calls of other GenAI instrumentations fill spend limits, as wflo's own calls do.

Their spans (OpenLLMetry, openai-v2, OpenInference) are priced when they end; that
cost is charged to every matching limit's current period, so a user whose calls go
through another instrumentation has limits that fill and refuse wflo's next calls.
"""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import baggage, context as otel_context, trace

import wflo_otel
from wflo_otel.cli import fetch
from wflo_otel.limits import SpendLimit
from test_foreign_spans import OPENINFERENCE_LLM, OPENLLMETRY_CHAT, SEMCONV_CHAT, price
from test_limits import CALL_OUTPUT_USD, _ask, configured, max_client  # noqa: F401 (fixtures)

PEER_CALLS = (OPENLLMETRY_CHAT, SEMCONV_CHAT, OPENINFERENCE_LLM)
PEER_COSTS = (price("gpt-4o-2024-08-06", 1000, 200, 800), price("gpt-4o-mini", 1000, 200), price("gpt-4o-mini", 1000, 200, 400))
PEER_USD = sum(PEER_COSTS)


def _peer_calls(handle) -> None:
    """The calls another instrumentation makes: real SDK spans carrying GenAI usage, priced when they end."""
    tracer = trace.get_tracer("opentelemetry.instrumentation.openai_v2", tracer_provider=handle.tracer_provider)
    for attrs in PEER_CALLS:
        tracer.start_span("chat", attributes=attrs).end()


@pytest.mark.parametrize("per", ["day", "run"])
def test_peer_calls_fill_a_limit_once_and_wflo_s_next_calls_get_what_is_left(configured, max_client, tmp_path, per):
    # Room for the peers' calls and two and a half of wflo's: counted once, that is two more calls.
    handle, _ = configured([SpendLimit("everything", usd=PEER_USD + CALL_OUTPUT_USD * 2.5, per=per)])
    engine = handle.budget_processor.limits
    with wflo_otel.workflow("peers"):
        _peer_calls(handle)
        (bucket,) = engine.buckets()
        assert bucket.known_spent == pytest.approx(PEER_USD, rel=1e-9)
        calls = 0
        with pytest.raises(wflo_otel.BudgetExceededError) as refused:
            for _ in range(5):
                _ask(max_client)
                calls += 1
    assert calls == 2
    assert refused.value.limit == "everything"
    if per == "day":  # the shared ledger counts the peers' spend once
        handle.shutdown()
        url = f"sqlite+aiosqlite:///{tmp_path}/limits.db"  # where `configured` keeps the leases
        _, rows = asyncio.run(fetch(url, "SELECT spent_usd FROM spend_limit_periods"))
        assert rows[0][0] == pytest.approx(PEER_USD + 2 * CALL_OUTPUT_USD, rel=1e-3)


def test_peer_calls_match_limits_by_span_scope_and_baggage_attributes(configured, max_client):
    handle, _ = configured([
        SpendLimit("per-tenant", usd=PEER_USD + CALL_OUTPUT_USD * 0.5, per="day", key="tenant.id"),
        SpendLimit("search-team", usd=100.0, per="day", where={"team": "search"}),
        SpendLimit("gpt-4o", usd=100.0, per="run", where={"gen_ai.request.model": "gpt-4o"}),
        SpendLimit("other-team", usd=100.0, per="day", where={"team": "ads"}),
    ])
    engine = handle.budget_processor.limits
    token = otel_context.attach(baggage.set_baggage("team", "search"))
    try:
        with wflo_otel.workflow("triage", attributes={"tenant.id": "acme"}):
            _peer_calls(handle)
            with pytest.raises(wflo_otel.BudgetExceededError) as refused:
                _ask(max_client)  # fits no more: the peers spent acme's day
    finally:
        otel_context.detach(token)
    assert (refused.value.limit, refused.value.key) == ("per-tenant", "acme")
    spent = {(b.limit.name, b.key): b.known_spent for b in engine.buckets()}
    assert spent[("per-tenant", "acme")] == pytest.approx(PEER_USD, rel=1e-9)  # the workflow's attributes
    assert spent[("search-team", "")] == pytest.approx(PEER_USD, rel=1e-9)  # baggage
    assert spent[("gpt-4o", "")] == pytest.approx(PEER_COSTS[0], rel=1e-9)  # the span's own attribute
    assert ("other-team", "") not in spent
