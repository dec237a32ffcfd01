"""Budget enforcement: refusals before sending, overruns after, nested and manual scopes."""

from __future__ import annotations

import threading

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import wflo_otel
from wflo_otel import BudgetExceededError
from wflo_otel.budget import Ledger, Scope

MESSAGES = [{"role": "user", "content": "Classify this ticket, please."}]


def _chat(client, **kwargs):
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **{"max_tokens": 100, **kwargs})


def test_exhausted_budget_refuses_before_sending(telemetry, client, openai_server):
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("tiny", budget_usd=0.000001):
            before = openai_server.request_count
            _chat(client)
    assert openai_server.request_count == before, "nothing may be sent"
    error = caught.value
    assert error.refused and error.workflow == "tiny" and error.budget_usd == 0.000001
    (llm,) = telemetry.llm_spans()
    assert llm.attributes["wflo.budget.refused"] is True
    assert llm.attributes["error.type"] == "BudgetExceededError"
    (root,) = telemetry.spans("invoke_workflow")
    assert root.attributes["wflo.execution.status"] == "BUDGET_EXCEEDED"


def test_call_that_overruns_raises_after_it_returns(client, openai_server):
    exporter = InMemorySpanExporter()
    # A 1-token default output ceiling makes the reservation smaller than the real cost.
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=exporter, batch=False, default_output_tokens=1)
    try:
        with pytest.raises(BudgetExceededError) as caught:
            with wflo_otel.workflow("overrun", budget_usd=0.00002) as wf:
                before = openai_server.request_count
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert openai_server.request_count == before + 1, "the call was sent and its cost counted"
        assert not caught.value.refused
        assert caught.value.spent_usd == pytest.approx(wf.spent_usd) and wf.spent_usd > 0.00002
        root = [s for s in exporter.get_finished_spans() if s.name.startswith("invoke_workflow")][0]
        assert root.attributes["wflo.execution.status"] == "BUDGET_EXCEEDED"
    finally:
        handle.shutdown()


def test_on_exceed_record_never_raises_after_the_fact(client):
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False, default_output_tokens=1)
    try:
        with wflo_otel.workflow("recorded", budget_usd=0.00002, on_exceed="record") as wf:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert wf.spent_usd > 0.00002
            with pytest.raises(BudgetExceededError) as caught:  # still refuses what cannot fit
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert caught.value.refused
    finally:
        handle.shutdown()


def test_call_must_fit_every_enclosing_scope_and_each_reports_its_spend(telemetry, client):
    tracer = trace.get_tracer("test", tracer_provider=telemetry.handle.tracer_provider)
    with wflo_otel.workflow("outer", budget_usd=1.0) as outer:
        _chat(client)
        with tracer.start_as_current_span("inner-scope", attributes={"wflo.budget.usd": 0.0001}):
            _chat(client, service_tier="default")  # no tier may be served at priority: reserved at its price
            with pytest.raises(BudgetExceededError) as caught:
                for _ in range(20):
                    _chat(client, service_tier="default")
            assert caught.value.workflow == "inner-scope"
        inner_scope_spend = sum(
            s.attributes.get("wflo.cost.usd", 0) for s in telemetry.llm_spans()[1:]
        )
        assert inner_scope_spend <= 0.0001
    assert outer.spent_usd == pytest.approx(sum(s.attributes.get("wflo.cost.usd", 0) for s in telemetry.llm_spans()))


def test_plain_root_span_is_a_workflow_named_after_it(telemetry, client):
    tracer = trace.get_tracer("test", tracer_provider=telemetry.handle.tracer_provider)
    with tracer.start_as_current_span("nightly-batch") as root:
        _chat(client)
    (llm,) = telemetry.llm_spans()
    trace_hex = format(root.get_span_context().trace_id, "032x")
    assert llm.attributes["wflo.execution.id"] == trace_hex
    assert llm.attributes["wflo.workflow.name"] == "nightly-batch"


def test_manual_span_with_budget_attribute_is_enforced(telemetry, client, openai_server):
    tracer = trace.get_tracer("test", tracer_provider=telemetry.handle.tracer_provider)
    with pytest.raises(BudgetExceededError):
        with tracer.start_as_current_span("manual", attributes={"wflo.budget.usd": 0.0}):
            _chat(client)


def test_ledger_entries_are_freed_when_spans_end(telemetry, client):
    processor = telemetry.handle.budget_processor
    for i in range(5):
        with wflo_otel.workflow("w", budget_usd=1):
            with wflo_otel.step("s"):
                _chat(client)
    assert processor.open_spans == 0


def test_default_budget_applies_to_every_local_root(client, openai_server):
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False, default_budget_usd=0.0)
    try:
        tracer = trace.get_tracer("t", tracer_provider=handle.tracer_provider)
        with pytest.raises(BudgetExceededError):
            with tracer.start_as_current_span("zero-code-root"):
                _chat(client)
    finally:
        handle.shutdown()


def test_spend_never_exceeds_budget_under_thread_concurrency(max_output_server):
    """16 threads race on one scope; the server always returns max_tokens, so reservations are exact bounds."""
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False)
    client = openai.OpenAI(base_url=max_output_server.base_url, api_key="k", max_retries=0)
    budget = 0.002
    refused = []
    try:
        with wflo_otel.workflow("race", budget_usd=budget) as wf:
            ctx = trace.set_span_in_context(wf.span)

            def worker():
                from opentelemetry import context

                token = context.attach(ctx)
                try:
                    for _ in range(40):
                        try:
                            _chat(client, max_tokens=200)
                        except BudgetExceededError as exc:
                            assert exc.refused
                            refused.append(exc)
                finally:
                    context.detach(token)

            threads = [threading.Thread(target=worker) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert wf.spent_usd <= budget
            assert wf.spent_usd > budget * 0.5, "the budget was actually used"
            assert refused, "the race reached the cap"
    finally:
        handle.shutdown()


def test_ledger_reserve_is_all_or_nothing_across_the_chain():
    ledger = Ledger()
    outer, inner = Scope(1, "outer", "e", 1.0), Scope(2, "inner", "e", 0.1)
    with pytest.raises(BudgetExceededError) as caught:
        ledger.reserve((outer, inner), 0.2)
    assert caught.value.workflow == "inner"
    assert outer.reserved_usd == 0 and inner.reserved_usd == 0
    reservation = ledger.reserve((outer, inner), 0.05)
    assert ledger.settle(reservation, 0.04) is None
    assert (outer.spent_usd, inner.spent_usd, inner.reserved_usd) == (0.04, 0.04, 0.0)
    ledger.release(ledger.reserve((outer, inner), 0.05))
    assert inner.reserved_usd == 0.0


def test_budget_error_is_picklable():
    import pickle

    error = BudgetExceededError(0.2, 0.1, workflow="w", execution_id="e", refused=True, requested_usd=0.05)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.spent_usd, copy.budget_usd, copy.workflow, copy.refused) == (0.2, 0.1, "w", True)
    assert str(copy) == str(error)


def test_manual_root_span_refused_by_its_budget_lands_as_budget_exceeded(telemetry, client):
    tracer = trace.get_tracer("test", tracer_provider=telemetry.handle.tracer_provider)
    with tracer.start_as_current_span("caught", attributes={"wflo.budget.usd": 0.0}):
        with pytest.raises(BudgetExceededError):
            _chat(client)  # refused; the application carries on
    with pytest.raises(BudgetExceededError):
        with tracer.start_as_current_span("uncaught", attributes={"wflo.budget.usd": 0.0}):
            _chat(client)
    with tracer.start_as_current_span("fine"):
        _chat(client)
    status = {s.name: s.attributes.get("wflo.execution.status") for s in telemetry.spans() if s.parent is None}
    assert status == {"caught": "BUDGET_EXCEEDED", "uncaught": "BUDGET_EXCEEDED", "fine": None}


def test_manual_span_overrun_lands_as_budget_exceeded(client):
    exporter = InMemorySpanExporter()
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=exporter, batch=False, default_output_tokens=1)
    try:
        tracer = trace.get_tracer("test", tracer_provider=handle.tracer_provider)
        with tracer.start_as_current_span("batch", attributes={"wflo.budget.usd": 0.00002, "wflo.budget.on_exceed": "record"}):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        (root,) = [s for s in exporter.get_finished_spans() if s.name == "batch"]
        assert root.attributes["wflo.execution.status"] == "BUDGET_EXCEEDED"
    finally:
        handle.shutdown()


def test_nested_workflow_without_a_budget_reports_its_own_spend(telemetry, client):
    with wflo_otel.workflow("outer", budget_usd=1.0) as outer:
        _chat(client)
        with wflo_otel.workflow("inner") as inner:
            _chat(client)
        assert inner.remaining_usd is None
    costs = [s.attributes["wflo.cost.usd"] for s in telemetry.llm_spans()]
    assert inner.spent_usd == pytest.approx(costs[1]) and inner.spent_usd > 0
    assert outer.spent_usd == pytest.approx(sum(costs))
    (inner_span,) = telemetry.spans("invoke_workflow inner")
    assert inner_span.attributes["wflo.execution.cost_usd"] == pytest.approx(costs[1])


def test_nested_workflow_applies_its_own_unknown_model_policy(telemetry, client, openai_server):
    with wflo_otel.workflow("outer", budget_usd=1.0):
        client.chat.completions.create(model="house-model-7b", messages=MESSAGES)
        with pytest.raises(BudgetExceededError) as caught:
            with wflo_otel.workflow("inner", unknown_model="refuse"):
                client.chat.completions.create(model="house-model-7b", messages=MESSAGES)
    assert caught.value.workflow == "inner" and caught.value.unknown_price
