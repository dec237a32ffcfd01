"""Budgets that hold: hard caps under concurrency, policies, other instrumentations, processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import wflo_otel
from wflo_otel import BudgetExceededError

MESSAGES = [{"role": "user", "content": "Write the longest answer you are allowed to."}]


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=exporter, batch=False)
    try:
        yield exporter
    finally:
        handle.shutdown()


def _spent(exporter) -> float:
    return sum(s.attributes.get("wflo.cost.usd", 0.0) for s in exporter.get_finished_spans())


def test_500_concurrent_tasks_never_spend_past_the_budget(spans, max_output_server):
    """The server always returns max_tokens of output: every reservation is a tight bound."""
    budget = 0.01

    async def run() -> tuple[float, int]:
        client = openai.AsyncOpenAI(base_url=max_output_server.base_url, api_key="k", max_retries=0)
        async with wflo_otel.workflow("burst", budget_usd=budget) as wf:

            async def one():
                try:
                    await client.chat.completions.create(
                        model="gpt-4o-mini", messages=MESSAGES, max_tokens=100, service_tier="default"
                    )
                    return 1
                except BudgetExceededError as exc:
                    assert exc.refused, "with ceilings given, nothing may overrun after the fact"
                    return 0

            sent = sum(await asyncio.gather(*(one() for _ in range(500))))
        await client.close()
        return wf.spent_usd, sent

    spent, sent = asyncio.run(run())
    assert spent <= budget
    assert _spent(spans) == pytest.approx(spent)
    assert 0 < sent < 500, "some calls fit, the rest were refused"
    # Reservations over-estimate input (bytes, not tokens), so a burst stops a little short.
    assert spent > budget * 0.75, "refusals only happen when the budget is really used up"


def test_concurrent_streams_never_spend_past_the_budget(spans, max_output_server):
    budget = 0.004

    async def run() -> float:
        client = openai.AsyncOpenAI(base_url=max_output_server.base_url, api_key="k", max_retries=0)
        async with wflo_otel.workflow("streams", budget_usd=budget) as wf:

            async def one():
                try:
                    stream = await client.chat.completions.create(
                        model="gpt-4o-mini", messages=MESSAGES, max_tokens=150, stream=True
                    )
                    async for _ in stream:
                        pass
                except BudgetExceededError as exc:
                    assert exc.refused

            await asyncio.gather(*(one() for _ in range(120)))
        await client.close()
        return wf.spent_usd

    spent = asyncio.run(run())
    assert 0 < spent <= budget
    assert _spent(spans) == pytest.approx(spent)


def test_unknown_model_is_allowed_and_flagged_by_default(spans, client):
    with wflo_otel.workflow("w", budget_usd=0.01) as wf:
        client.chat.completions.create(model="house-model-7b", messages=MESSAGES)
    assert wf.spent_usd == 0
    llm = [s for s in spans.get_finished_spans() if s.name.startswith("chat")][0]
    assert llm.attributes["wflo.cost.source"] == "unknown-model"


def test_unknown_model_refuse_policy_refuses_before_sending(spans, client, openai_server):
    before = openai_server.request_count
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("strict", budget_usd=1.0, unknown_model="refuse"):
            client.chat.completions.create(model="house-model-7b", messages=MESSAGES)
    assert caught.value.refused and caught.value.requested_usd is None
    assert openai_server.request_count == before


def test_track_llm_call_prices_and_budgets_a_client_we_do_not_patch(spans):
    calls = []

    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    def call_my_gateway(prompt: str, max_tokens: int = 50):
        calls.append(prompt)
        return {"id": "r1", "model": "gpt-4o-mini", "usage": {"prompt_tokens": 1000, "completion_tokens": 50}}

    with wflo_otel.workflow("gateway", budget_usd=0.01) as wf:
        call_my_gateway("hello")
    (llm,) = [s for s in spans.get_finished_spans() if s.name == "chat gpt-4o-mini"]
    expected = 1000 * 0.15e-6 + 50 * 0.6e-6
    assert llm.attributes["wflo.cost.usd"] == pytest.approx(expected)
    assert wf.spent_usd == pytest.approx(expected)

    with pytest.raises(BudgetExceededError):
        with wflo_otel.workflow("gateway", budget_usd=0.0):
            call_my_gateway("never sent")
    assert calls == ["hello"], "a refused call never runs"


async def test_track_llm_call_async_with_openai_shaped_response_stacks_with_step(spans):
    from openai.types.chat import ChatCompletion

    def completion(model: str) -> ChatCompletion:
        return ChatCompletion.model_validate(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 400, "completion_tokens": 40, "total_tokens": 440},
            }
        )

    @wflo_otel.step("draft")
    @wflo_otel.track_llm_call()
    async def draft(model: str, messages, max_tokens: int = 64):
        await asyncio.sleep(0)
        return completion(model)

    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    @wflo_otel.step("review")
    def review(text: str):
        return completion("gpt-4o-mini")

    with wflo_otel.workflow("stacked", budget_usd=1.0) as wf:
        await draft("gpt-4o-mini", MESSAGES)
        review("ok")
    finished = {s.name: s for s in spans.get_finished_spans()}
    llm_spans = [s for s in spans.get_finished_spans() if s.name == "chat gpt-4o-mini"]
    assert len(llm_spans) == 2
    assert finished["draft"].context.span_id in {s.parent.span_id for s in llm_spans}, "step outside, LLM inside"
    assert finished["review"].parent.span_id in {s.context.span_id for s in llm_spans}, "LLM outside, step inside"
    assert llm_spans[0].attributes["gen_ai.response.id"] == "c1"
    assert wf.spent_usd == pytest.approx(2 * (400 * 0.15e-6 + 40 * 0.6e-6))


def test_spans_of_other_instrumentations_with_usage_are_charged(spans):
    tracer = trace.get_tracer("another.instrumentation", tracer_provider=wflo_otel.configure().tracer_provider)
    with wflo_otel.workflow("mixed", budget_usd=1.0) as wf:
        with tracer.start_as_current_span(
            "chat gpt-4o",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 2000,
                "gen_ai.usage.output_tokens": 100,
            },
        ):
            pass
    assert wf.spent_usd == pytest.approx(2000 * 2.5e-6 + 100 * 10e-6)


def test_spans_that_never_end_are_evicted_after_the_ttl(spans):
    processor = wflo_otel.configure().budget_processor
    tracer = trace.get_tracer("t", tracer_provider=wflo_otel.configure().tracer_provider)
    leaked = [tracer.start_span(f"leak-{i}") for i in range(10)]
    assert processor.open_spans == 10
    assert processor.evict_expired(now=10**12) == 10
    assert processor.open_spans == 0
    for span in leaked:
        span.end()  # ending after eviction is harmless


def test_budget_error_names_scope_budget_spend_and_reservations():
    error = BudgetExceededError(0.04, 0.05, workflow="agent", execution_id="e1", reserved_usd=0.008, requested_usd=0.003, refused=True)
    text = str(error)
    assert "agent" in text and "e1" in text and "refused before sending" in text
    assert "0.050000" in text and "0.040000" in text and "0.008000" in text
    overrun = BudgetExceededError(0.06, 0.05, workflow="agent")
    assert "exceeds budget" in str(overrun) and not overrun.refused


def test_downstream_process_joins_the_execution_and_enforces_what_remains(spans, openai_server):
    app = Path(__file__).parent / "apps" / "downstream_service.py"
    env = {**os.environ, "OPENAI_BASE_URL": openai_server.base_url}
    env.pop("OTEL_PROPAGATORS", None)
    proc = subprocess.Popen([sys.executable, str(app)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        port = int(proc.stdout.readline())
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="k", max_retries=0)
        with wflo_otel.workflow("distributed", budget_usd=0.0003) as wf:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
            remaining_here = wf.remaining_usd
            headers = {"Content-Type": "application/json"}
            propagate.inject(headers)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/work",
                data=json.dumps({"max_calls": 50, "max_tokens": 100}).encode(),
                headers=headers,
            )
            answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert answer["execution_id"] == wf.execution_id
    assert answer["workflow"] == "distributed"
    assert answer["budget_usd"] == pytest.approx(remaining_here, rel=1e-6)
    assert answer["refused"] == {"workflow": "distributed", "execution_id": wf.execution_id, "refused": True}
    assert 0 < answer["spent_usd"] <= remaining_here


def test_a_request_for_n_choices_reserves_n_times_the_output_ceiling(spans, max_output_server):
    """The server returns max_tokens for every one of the n choices: 8 × 1000 tokens do not fit $0.011."""
    client = openai.OpenAI(base_url=max_output_server.base_url, api_key="k", max_retries=0)
    before = max_output_server.request_count
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("choices", budget_usd=0.011) as wf:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000, n=8, service_tier="default")
    assert caught.value.refused and max_output_server.request_count == before, "refused before sending"
    with wflo_otel.workflow("choices", budget_usd=0.011) as wf:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000, n=1, service_tier="default")
    assert 0 < wf.spent_usd <= 0.011


def test_unknown_model_refuse_holds_in_a_scope_without_a_budget(spans, client, openai_server):
    before = openai_server.request_count
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("strict", unknown_model="refuse"):
            client.chat.completions.create(model="house-model-7b", messages=MESSAGES)
    assert caught.value.refused and caught.value.unknown_price and caught.value.budget_usd is None
    assert "price is unknown" in str(caught.value)
    assert openai_server.request_count == before
    with wflo_otel.workflow("lenient"):  # the default policy still lets it through
        client.chat.completions.create(model="house-model-7b", messages=MESSAGES)
    assert openai_server.request_count == before + 1


def test_track_llm_call_reserves_with_the_functions_default_max_tokens(spans):
    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    def ask(prompt: str, max_tokens: int = 50):
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 100, "completion_tokens": 50}}

    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    def ask_with_options(prompt: str, **options):
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 100, "completion_tokens": 50}}

    # 4,096 default output tokens would be $0.0025 of gpt-4o-mini output; 50 are $0.00003.
    with wflo_otel.workflow("small", budget_usd=0.0005) as wf:
        ask("hello")
        ask_with_options("hello", max_tokens=50)
    assert wf.spent_usd == pytest.approx(2 * (100 * 0.15e-6 + 50 * 0.6e-6))


def test_the_projects_default_tier_sets_what_a_request_naming_none_reserves(max_output_server, monkeypatch):
    client = openai.OpenAI(base_url=max_output_server.base_url, api_key="k", max_retries=0)

    def reserve_one_call(**configure_kwargs) -> bool:
        handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False, **configure_kwargs)
        try:
            with wflo_otel.workflow("tiers", budget_usd=0.011):
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000)
            return True
        except BudgetExceededError as exc:
            assert exc.refused
            return False
        finally:
            handle.shutdown()

    # gpt-4o at standard prices: 1,000 output tokens fit $0.011; at priority they do not.
    assert not reserve_one_call(), "no tier known: bounded at the model's most expensive one"
    assert reserve_one_call(default_service_tier="default")
    monkeypatch.setenv("WFLO_DEFAULT_SERVICE_TIER", "default")
    assert reserve_one_call()
    monkeypatch.setenv("WFLO_DEFAULT_SERVICE_TIER", "auto")  # says nothing about the tier
    assert not reserve_one_call()
