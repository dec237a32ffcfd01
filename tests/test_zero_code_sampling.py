"""A sampler decides what is exported, never what is budgeted.

A trace the sampler drops used to be made of non-recording spans that no span
processor sees: its LLM calls went out with no budget at all. Dropped traces are
now recorded but not sampled: budgets hold, nothing of them is exported.
"""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased

import wflo_otel
from wflo_otel.sampling import BudgetKeepingSampler

from zero_code_runs import APP, rows, run_instrumented

BIG = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "an essay"}], max_tokens=100_000)


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ParentBased(TraceIdRatioBased(0.0))], ids=["always_off", "ratio_0"])
def test_a_call_in_a_trace_the_sampler_drops_is_still_refused_and_nothing_is_exported(client, openai_server, sampler):
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    handle = wflo_otel.configure(tracer_provider=provider, exporter=spans, batch=False)
    before = openai_server.request_count
    try:
        with pytest.raises(wflo_otel.BudgetExceededError):
            with wflo_otel.workflow("nightly", budget_usd=0.0002):
                client.chat.completions.create(**BIG)
    finally:
        handle.shutdown()
    assert openai_server.request_count == before  # refused before sending
    assert spans.get_finished_spans() == ()  # and still not exported: the sampler said so


def test_sampled_traces_are_sampled_as_before():
    sampler = BudgetKeepingSampler(ALWAYS_ON)
    result = sampler.should_sample(None, 1, "chat gpt-4o-mini", attributes={"gen_ai.request.model": "gpt-4o-mini"})
    assert result.decision.is_sampled()
    dropped = BudgetKeepingSampler(ALWAYS_OFF).should_sample(None, 1, "x", attributes={"wflo.budget.usd": 0.5})
    assert dropped.decision.is_recording() and not dropped.decision.is_sampled()
    assert dropped.attributes["wflo.budget.usd"] == 0.5  # the processor reads the budget from them


def test_zero_code_run_with_always_off_sampler_still_budgets_every_call(tmp_path, openai_server):
    before = openai_server.request_count
    result = run_instrumented(
        tmp_path, APP, openai_server, OTEL_TRACES_EXPORTER="wflo", OTEL_TRACES_SAMPLER="always_off",
        WFLO_DEFAULT_BUDGET_USD="0.0002",
    )
    assert "big call refused: BudgetExceededError 0.0002" in result.stdout
    assert openai_server.request_count - before == 3
    db = tmp_path / "wflo.db"
    assert not db.exists() or rows(db, "SELECT COUNT(*) FROM step_executions") == [(0,)]  # nothing exported
