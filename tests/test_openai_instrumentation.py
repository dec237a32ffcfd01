"""The OpenAI instrumentation, through the real ``openai`` client against a local server."""

from __future__ import annotations

import asyncio

import openai
import pytest
from genai_prices import Usage, calc_price
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode

import wflo_otel
from wflo_otel.instrumentation.openai import OpenAIInstrumentor

MESSAGES = [{"role": "user", "content": "Summarise ticket 42 [cached]"}]


def _reference_cost(attrs) -> float:
    usage = Usage(
        input_tokens=attrs["gen_ai.usage.input_tokens"],
        cache_read_tokens=attrs["gen_ai.usage.cache_read.input_tokens"],
        output_tokens=attrs["gen_ai.usage.output_tokens"],
        output_reasoning_tokens=attrs["gen_ai.usage.reasoning.output_tokens"],
    )
    return float(calc_price(usage, attrs["gen_ai.response.model"], provider_id="openai").total_price)


def test_chat_call_becomes_client_span_with_usage_and_cost(telemetry, client, openai_server):
    response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)

    (span,) = telemetry.llm_spans()
    attrs = span.attributes
    assert span.kind is SpanKind.CLIENT
    assert span.name == "chat gpt-4o-mini"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == response.model
    assert attrs["gen_ai.response.id"] == response.id
    assert list(attrs["gen_ai.response.finish_reasons"]) == [c.finish_reason for c in response.choices]
    assert attrs["gen_ai.usage.input_tokens"] == response.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == response.usage.completion_tokens
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == response.usage.prompt_tokens_details.cached_tokens > 0
    assert attrs["gen_ai.request.max_tokens"] == 50
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == int(openai_server.base_url.split(":")[2].split("/")[0])
    assert attrs["wflo.cost.usd"] == pytest.approx(_reference_cost(attrs), rel=1e-9)
    assert attrs["wflo.cost.source"].startswith("genai-prices@")


def test_reasoning_tokens_are_recorded_and_priced(telemetry, client):
    client.chat.completions.create(model="o3-mini", messages=MESSAGES, max_completion_tokens=200)
    (span,) = telemetry.llm_spans()
    assert span.attributes["gen_ai.usage.reasoning.output_tokens"] > 0
    assert span.attributes["wflo.cost.usd"] == pytest.approx(_reference_cost(span.attributes), rel=1e-9)


def test_no_prompt_or_completion_content_is_recorded_by_default(telemetry, client):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "SECRET-PROMPT"}])
    (span,) = telemetry.llm_spans()
    flat = repr(dict(span.attributes)) + repr([e.attributes for e in span.events])
    assert "SECRET-PROMPT" not in flat
    assert "test-key" not in flat


def test_stream_records_usage_and_hides_the_usage_chunk_it_requested(telemetry, client):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    chunks = list(stream)

    assert chunks and all(chunk.choices for chunk in chunks), "the user never asked for the usage chunk"
    (span,) = telemetry.llm_spans()
    assert span.attributes["gen_ai.usage.output_tokens"] > 0
    assert span.attributes["gen_ai.request.stream"] is True
    assert span.attributes["wflo.cost.usd"] == pytest.approx(_reference_cost(span.attributes), rel=1e-9)


def test_the_usage_chunk_it_requested_is_never_parsed_into_an_sdk_model(telemetry, client):
    parsed = []
    process = client._process_response_data

    def counting(*args, **kwargs):
        parsed.append(kwargs.get("data"))
        return process(*args, **kwargs)

    client._process_response_data = counting  # what the SDK's stream calls for every event it yields
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))

    assert len(parsed) == len(chunks) and all(data["choices"] for data in parsed)
    (span,) = telemetry.llm_spans()
    assert span.attributes["gen_ai.usage.input_tokens"] > 0 and span.attributes["gen_ai.usage.output_tokens"] > 0
    assert span.attributes["wflo.cost.usd"] == pytest.approx(_reference_cost(span.attributes), rel=1e-9)


async def test_async_stream_usage_chunk_is_read_without_an_sdk_model(telemetry, async_client):
    parsed = []
    process = async_client._process_response_data

    def counting(*args, **kwargs):
        parsed.append(kwargs.get("data"))
        return process(*args, **kwargs)

    async_client._process_response_data = counting
    stream = await async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]

    assert len(parsed) == len(chunks) and all(chunk.choices for chunk in chunks)
    (span,) = telemetry.llm_spans()
    assert span.attributes["gen_ai.usage.output_tokens"] > 0


def test_stream_with_include_usage_keeps_the_users_usage_chunk(telemetry, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    (span,) = telemetry.llm_spans()
    assert span.attributes["gen_ai.usage.output_tokens"] == chunks[-1].usage.completion_tokens


def test_stream_asks_for_usage_keeping_the_users_stream_options_and_extra_body(telemetry, client, openai_server):
    options, extra = {"include_obfuscation": False}, {"user": "ticket-42"}
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=options, extra_body=extra
        )
    )

    sent = openai_server.requests[-1]
    assert sent["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert sent["user"] == "ticket-42"
    assert options == {"include_obfuscation": False} and extra == {"user": "ticket-42"}, "the user's dicts are untouched"
    assert chunks and all(chunk.choices for chunk in chunks), "the usage chunk we asked for stays hidden"
    (span,) = telemetry.llm_spans()
    assert span.attributes["gen_ai.usage.output_tokens"] > 0


def test_stream_usage_asked_for_through_extra_body_is_the_users(telemetry, client, openai_server):
    extra = {"stream_options": {"include_usage": True}}
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_body=extra))

    assert openai_server.requests[-1]["stream_options"] == {"include_usage": True}
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    (span,) = telemetry.llm_spans()
    assert span.attributes["gen_ai.usage.output_tokens"] == chunks[-1].usage.completion_tokens


def test_stream_closed_early_still_ends_its_span_once(telemetry, client):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    with stream:
        next(iter(stream))
    stream.close()
    assert len(telemetry.llm_spans()) == 1


async def test_async_chat_and_async_stream_are_instrumented(telemetry, async_client):
    await async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stream = await async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    seen = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in seen)
    spans = telemetry.llm_spans()
    assert len(spans) == 2
    assert all(s.attributes["wflo.cost.usd"] > 0 for s in spans)


def test_api_error_is_recorded_and_reraised_unchanged(telemetry, client):
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="error-429", messages=MESSAGES)
    (span,) = telemetry.llm_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "RateLimitError"
    assert type(caught.value) is openai.RateLimitError


def test_midstream_error_ends_span_as_error(telemetry, client):
    stream = client.chat.completions.create(model="error-midstream", messages=MESSAGES, stream=True)
    with pytest.raises(Exception):
        for _ in stream:
            pass
    (span,) = telemetry.llm_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert "error.type" in span.attributes


def test_llm_span_nests_under_step_and_workflow_with_execution_id(telemetry, client):
    with wflo_otel.workflow("triage", inputs={"ticket": 7}) as wf:
        with wflo_otel.step("classify"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    spans = {s.name: s for s in telemetry.spans()}
    llm, step, root = spans["chat gpt-4o-mini"], spans["classify"], spans["invoke_workflow triage"]
    assert llm.parent.span_id == step.context.span_id
    assert step.parent.span_id == root.context.span_id
    assert {s.attributes["wflo.execution.id"] for s in (llm, step, root)} == {wf.execution_id}
    assert root.attributes["wflo.execution.cost_usd"] == pytest.approx(llm.attributes["wflo.cost.usd"])
    assert root.attributes["wflo.execution.status"] == "COMPLETED"


def test_metrics_record_tokens_duration_and_cost(telemetry, client):
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    token_points = telemetry.metric_points("gen_ai.client.token.usage")
    assert {p.attributes["gen_ai.token.type"] for p in token_points} == {"input", "output"}
    (duration,) = telemetry.metric_points("gen_ai.client.operation.duration")
    assert duration.count == 1
    assert list(duration.explicit_bounds)[:3] == [0.01, 0.02, 0.04]
    (cost,) = telemetry.metric_points("wflo.llm.cost")
    assert cost.value == pytest.approx(telemetry.llm_spans()[0].attributes["wflo.cost.usd"])


def test_suppress_instrumentation_sends_without_a_span(telemetry, client, openai_server):
    before = openai_server.request_count
    with suppress_instrumentation():
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert openai_server.request_count == before + 1
    assert telemetry.llm_spans() == []


def test_uninstrument_restores_the_original_methods():
    from openai.resources.chat.completions import AsyncCompletions, Completions

    original_sync, original_async = Completions.create, AsyncCompletions.create
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument()
    instrumentor.instrument()  # twice is harmless
    assert Completions.create is not original_sync
    instrumentor.uninstrument()
    assert Completions.create is original_sync
    assert AsyncCompletions.create is original_async


def test_unknown_model_never_breaks_the_call(telemetry, client):
    response = client.chat.completions.create(model="my-finetune-xyz", messages=MESSAGES)
    assert response.choices
    (span,) = telemetry.llm_spans()
    assert span.attributes["wflo.cost.source"] == "unknown-model"
    assert "wflo.cost.usd" not in span.attributes


def test_one_shot_message_iterator_survives_budget_estimation(telemetry, client, openai_server):
    def messages():
        yield {"role": "user", "content": "generated message"}

    with wflo_otel.workflow("gen", budget_usd=1.0):
        response = client.chat.completions.create(model="gpt-4o-mini", messages=messages())
    assert response.choices
    assert openai_server.requests[-1]["messages"] == [{"role": "user", "content": "generated message"}]


async def test_concurrent_async_calls_each_get_their_own_span(telemetry, async_client):
    async with wflo_otel.workflow("fanout", budget_usd=10) as wf:
        await asyncio.gather(
            *(async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES) for _ in range(20))
        )
    spans = telemetry.llm_spans()
    assert len(spans) == 20
    assert len({s.context.span_id for s in spans}) == 20
    assert wf.spent_usd == pytest.approx(sum(s.attributes["wflo.cost.usd"] for s in spans))


def test_llm_span_is_current_while_the_request_is_sent(telemetry, openai_server):
    """So HTTP client spans (httpx instrumentation) nest under the LLM span, not beside it."""
    from opentelemetry import trace

    seen = []
    http_client = openai.DefaultHttpxClient(event_hooks={"request": [lambda request: seen.append(trace.get_current_span())]})
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="k", max_retries=0, http_client=http_client)
    with wflo_otel.workflow("w"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    (llm,) = telemetry.llm_spans()
    assert [s.get_span_context().span_id for s in seen] == [llm.context.span_id]


def test_instrumented_call_inside_a_tracked_function_is_counted_once(telemetry, client):
    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    def gateway():
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    with wflo_otel.workflow("w") as wf:
        gateway()
    (llm,) = telemetry.llm_spans()
    assert wf.spent_usd == pytest.approx(llm.attributes["wflo.cost.usd"])
