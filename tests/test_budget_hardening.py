"""The budget cap under careless and hostile input (issue 14, items 1 and 2, and their neighbours).

A server that ignores a bad output ceiling, a stream cut mid-way, a read that times
out, a server reporting negative usage: none of them may take a workflow past its
budget or hand money back to it. Driven by the real ``openai`` client against the
local fake server (which answers 256 tokens when the ceiling is not a positive int
and cuts the ``error-midstream`` model's streams after two content chunks) or an
in-memory transport.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import threading

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import wflo_otel
from wflo_otel import BudgetExceededError
from wflo_otel.configuration import current_handle

MESSAGES = [{"role": "user", "content": "Write the longest answer you are allowed to."}]
PROMPT = "Write the longest answer you are allowed to."
BROKEN = "error-midstream"  # the fake server cuts its streams after two content chunks
DEFAULT_CEILING = 300


@pytest.fixture
def spans(tmp_path):
    """configure() with a small default output ceiling and a price for the model whose streams break."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(f"{BROKEN}:\n  input_per_mtok: 0.15\n  output_per_mtok: 0.6\n")
    exporter = InMemorySpanExporter()
    handle = wflo_otel.configure(
        tracer_provider=TracerProvider(),
        exporter=exporter,
        batch=False,
        prices_file=str(prices),
        default_output_tokens=DEFAULT_CEILING,
    )
    try:
        yield exporter
    finally:
        handle.shutdown()


def _llm_spans(exporter):
    return [s for s in exporter.get_finished_spans() if "gen_ai.operation.name" in s.attributes and s.kind.name == "CLIENT"]


def _one_llm_span(exporter):
    (span,) = _llm_spans(exporter)
    return span


def reserved_for(send) -> float | None:
    """What a request reserves: a scope with nothing left refuses it, naming the amount."""
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("measure", budget_usd=0.0):
            send()
    assert caught.value.refused
    return caught.value.requested_usd


def _http():
    """The HTTP library the installed openai is built on: httpx2 for 3.x, httpx for 2.x."""
    return __import__("httpx2" if int(openai.__version__.split(".")[0]) >= 3 else "httpx")


def _broken_connection_errors() -> tuple[type[BaseException], ...]:
    """openai 3.x maps a cut stream to APIConnectionError; 2.x lets the transport's error through."""
    return (openai.APIConnectionError, _http().TransportError)


BROKEN_CONNECTION = _broken_connection_errors()


def _mock_client(handler, is_async: bool = False):
    http = _http()
    if is_async:
        return openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0,
                                  http_client=http.AsyncClient(transport=http.MockTransport(handler)))
    return openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0,
                         http_client=http.Client(transport=http.MockTransport(handler)))


# ====================================================================== 1. invalid output ceilings


def test_eight_threads_with_max_tokens_minus_one_never_spend_past_the_budget(spans, max_output_server):
    """Issue 14's figure: the server ignores ``max_tokens=-1`` and answers 256 tokens (3.4x the budget before)."""
    budget = 0.0005
    client = openai.OpenAI(base_url=max_output_server.base_url, api_key="k", max_retries=0)
    with wflo_otel.workflow("invalid-ceiling", budget_usd=budget, on_exceed="record") as wf:

        def worker() -> None:
            for _ in range(20):
                try:
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=MESSAGES, max_tokens=-1, service_tier="default"
                    )
                except BudgetExceededError:
                    return

        threads = [threading.Thread(target=contextvars.copy_context().run, args=(worker,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        spent = wf.spent_usd
    assert 0 < spent <= budget, f"spent {spent / budget:.2f}x the budget"


CEILINGS = {
    "chat max_tokens": lambda c, v: c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=v),
    "chat max_completion_tokens": lambda c, v: c.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=v
    ),
    "responses max_output_tokens": lambda c, v: c.responses.create(model="gpt-4o-mini", input=PROMPT, max_output_tokens=v),
    "completions max_tokens": lambda c, v: c.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT, max_tokens=v),
}
NO_CEILING = {
    "chat max_tokens": lambda c: c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES),
    "chat max_completion_tokens": lambda c: c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES),
    "responses max_output_tokens": lambda c: c.responses.create(model="gpt-4o-mini", input=PROMPT),
    "completions max_tokens": lambda c: c.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT),
}


@pytest.mark.parametrize("surface", CEILINGS)
@pytest.mark.parametrize("ceiling", [-1, -(2**63), 0, False, 2.5, "-1", "lots"], ids=repr)
def test_an_invalid_ceiling_reserves_the_default_ceiling_never_nothing(spans, client, openai_server, surface, ceiling):
    absent = reserved_for(lambda: NO_CEILING[surface](client))
    before = openai_server.request_count
    assert reserved_for(lambda: CEILINGS[surface](client, ceiling)) == pytest.approx(absent)
    assert absent > 0 and openai_server.request_count == before, "refused before sending"


def test_an_invalid_ceiling_a_server_could_read_as_more_reserves_that_much(spans, client):
    """``"5000"`` or ``5000.0`` (a lenient server reads 5,000) holds as much as ``5000``."""
    as_int = reserved_for(lambda: CEILINGS["chat max_tokens"](client, 5000))
    for lenient in ("5000", 5000.0, 4999.5):
        assert reserved_for(lambda: CEILINGS["chat max_tokens"](client, lenient)) == pytest.approx(as_int)


@pytest.mark.parametrize("ceiling", [10**12, 10**400], ids=["1e12", "1e400"])
def test_an_absurd_ceiling_is_a_finite_worst_case_that_no_budget_fits(spans, client, openai_server, ceiling):
    before = openai_server.request_count
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("absurd", budget_usd=1000.0):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=ceiling)
    requested = caught.value.requested_usd
    assert requested is not None and math.isfinite(requested) and requested > 1000.0
    assert openai_server.request_count == before


def test_an_invalid_n_counts_as_the_most_a_server_could_read_it_as(spans, client):
    one = reserved_for(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100))
    three = reserved_for(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100, n=3))
    for n in (3.0, "3", 2.5):
        assert reserved_for(
            lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100, n=n)
        ) == pytest.approx(three)
    for n in (0, -1, True):
        assert reserved_for(
            lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100, n=n)
        ) == pytest.approx(one)
    assert reserved_for(
        lambda: client.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT, max_tokens=100, best_of=10**400)
    ) > 1e6, "an absurd best_of stays a finite bound every budget refuses"


def test_extra_body_ceiling_and_choices_are_the_ones_reserved(spans, client):
    """``extra_body`` replaces the arguments in the JSON the server gets: its ceiling is the real one."""
    big = reserved_for(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50_000))
    overridden = reserved_for(
        lambda: client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, extra_body={"max_tokens": 50_000}
        )
    )
    assert overridden == pytest.approx(big)
    many = reserved_for(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, n=5)
    )
    assert reserved_for(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, extra_body={"n": 5})
    ) == pytest.approx(many)
    dearer = reserved_for(lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10))
    assert reserved_for(
        lambda: client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, extra_body={"model": "gpt-4o"}
        )
    ) == pytest.approx(dearer), "priced at the model the server is asked for"


def test_an_invalid_default_ceiling_falls_back_to_the_built_in_one(max_output_server):
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False, default_output_tokens=-5)
    try:
        client = openai.OpenAI(base_url=max_output_server.base_url, api_key="k", max_retries=0)
        requested = reserved_for(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES))
        with_4096 = reserved_for(
            lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=4096)
        )
        assert requested == pytest.approx(with_4096)
    finally:
        handle.shutdown()


def test_track_llm_call_reserves_the_configured_default_for_an_invalid_ceiling(spans):
    ran = []

    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    def ask(prompt: str, max_tokens: int = -1):
        ran.append(prompt)
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    def ask_bounded(prompt: str, max_tokens: int = DEFAULT_CEILING):
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    assert reserved_for(lambda: ask("hello")) == pytest.approx(reserved_for(lambda: ask_bounded("hello")))
    assert ran == [], "a refused call never runs"


# ====================================================================== 2. streams broken mid-way


def test_eighty_broken_streams_are_charged_and_refused_once_the_budget_is_used(spans, client):
    """Issue 14's figure: before, none was refused and $0 was charged."""
    budget = 0.001
    refused = 0
    with wflo_otel.workflow("broken-streams", budget_usd=budget) as wf:
        for _ in range(80):
            try:
                for _chunk in client.chat.completions.create(model=BROKEN, messages=MESSAGES, max_tokens=100, stream=True):
                    pass
            except BudgetExceededError:
                refused += 1
            except BROKEN_CONNECTION:
                pass
        spent = wf.spent_usd
    assert refused > 0 and 0 < spent <= budget


def _chat_stream(c):
    for _ in c.chat.completions.create(model=BROKEN, messages=MESSAGES, max_tokens=100, stream=True):
        pass


def _responses_stream(c):
    for _ in c.responses.create(model=BROKEN, input=PROMPT, max_output_tokens=100, stream=True):
        pass


def _completions_stream(c):
    for _ in c.completions.create(model=BROKEN, prompt=PROMPT, max_tokens=100, stream=True):
        pass


def _chat_helper(c):
    with c.chat.completions.stream(model=BROKEN, messages=MESSAGES, max_tokens=100) as stream:
        for _ in stream:
            pass


def _responses_helper(c):
    with c.responses.stream(model=BROKEN, input=PROMPT, max_output_tokens=100) as stream:
        for _ in stream:
            pass


def _raw_stream(c):
    raw = c.chat.completions.with_raw_response.create(model=BROKEN, messages=MESSAGES, max_tokens=100, stream=True)
    for _ in raw.parse():
        pass


def _streaming_response(c):
    with c.chat.completions.with_streaming_response.create(
        model=BROKEN, messages=MESSAGES, max_tokens=100, stream=True
    ) as response:
        for _ in response.parse():
            pass


BROKEN_STREAMS = {
    "chat": _chat_stream,
    "responses": _responses_stream,
    "completions": _completions_stream,
    "chat.completions.stream()": _chat_helper,
    "responses.stream()": _responses_helper,
    "with_raw_response": _raw_stream,
    "with_streaming_response": _streaming_response,
}


@pytest.mark.parametrize("surface", BROKEN_STREAMS)
def test_a_stream_broken_after_its_first_chunk_keeps_its_reservation_charged(spans, client, surface):
    send = BROKEN_STREAMS[surface]
    reservation = reserved_for(lambda: send(client))
    with wflo_otel.workflow("broken", budget_usd=1.0) as wf:
        with pytest.raises(Exception) as caught:
            send(client)
        spent = wf.spent_usd
    assert not isinstance(caught.value, BudgetExceededError), "the connection's error reaches the user"
    assert reservation > 0 and spent == pytest.approx(reservation)
    span = [s for s in _llm_spans(spans) if s.status.status_code.name == "ERROR" and "wflo.budget.refused" not in s.attributes][-1]
    assert span.attributes["wflo.cost.source"] == "no-usage"
    assert "wflo.cost.usd" not in span.attributes


async def _async_chat_stream(c):
    async for _ in await c.chat.completions.create(model=BROKEN, messages=MESSAGES, max_tokens=100, stream=True):
        pass


async def _async_responses_stream(c):
    async for _ in await c.responses.create(model=BROKEN, input=PROMPT, max_output_tokens=100, stream=True):
        pass


async def _async_chat_helper(c):
    async with c.chat.completions.stream(model=BROKEN, messages=MESSAGES, max_tokens=100) as stream:
        async for _ in stream:
            pass


async def _async_responses_helper(c):
    async with c.responses.stream(model=BROKEN, input=PROMPT, max_output_tokens=100) as stream:
        async for _ in stream:
            pass


async def _async_streaming_response(c):
    async with c.chat.completions.with_streaming_response.create(
        model=BROKEN, messages=MESSAGES, max_tokens=100, stream=True
    ) as response:
        async for _ in await response.parse():
            pass


ASYNC_BROKEN_STREAMS = {
    "chat": _async_chat_stream,
    "responses": _async_responses_stream,
    "chat.completions.stream()": _async_chat_helper,
    "responses.stream()": _async_responses_helper,
    "with_streaming_response": _async_streaming_response,
}


@pytest.mark.parametrize("surface", ASYNC_BROKEN_STREAMS)
async def test_an_async_stream_broken_after_its_first_chunk_keeps_its_reservation_charged(spans, async_client, surface):
    send = ASYNC_BROKEN_STREAMS[surface]
    with pytest.raises(BudgetExceededError) as caught:
        async with wflo_otel.workflow("measure", budget_usd=0.0):
            await send(async_client)
    reservation = caught.value.requested_usd
    async with wflo_otel.workflow("broken", budget_usd=1.0) as wf:
        with pytest.raises(Exception) as caught:
            await send(async_client)
        spent = wf.spent_usd
    assert not isinstance(caught.value, BudgetExceededError)
    assert reservation > 0 and spent == pytest.approx(reservation)


def _sse(events) -> bytes:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()


CHUNK = {"id": "chatcmpl-cut", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
CONTENT = {**CHUNK, "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]}
USAGE = {**CHUNK, "choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}}


def _cut_after(body: bytes):
    """A response body that delivers ``body`` and then loses the connection."""
    http = _http()

    def chunks():
        yield body
        raise http.ReadError("connection reset by peer")

    return http.Response(200, headers={"content-type": "text/event-stream"}, content=chunks())


def test_a_stream_broken_after_its_usage_is_settled_at_that_usage(spans):
    client = _mock_client(lambda request: _cut_after(_sse([CONTENT, USAGE])))
    with wflo_otel.workflow("cut", budget_usd=1.0) as wf:
        with pytest.raises(BROKEN_CONNECTION):
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=4000, stream=True):
                pass
        spent = wf.spent_usd
    span = _one_llm_span(spans)
    expected = 1000 * 0.15e-6 + 200 * 0.6e-6
    assert span.attributes["wflo.cost.usd"] == pytest.approx(expected)
    assert spent == pytest.approx(expected), "settled at the usage seen, not the 4,000-token worst case"


def test_a_stream_error_before_any_chunk_is_released_and_one_after_is_charged(spans):
    http = _http()
    error_first = _sse([{"error": {"message": "overloaded", "type": "server_error"}}])
    error_later = _sse([CONTENT, {"error": {"message": "overloaded", "type": "server_error"}}])
    for body, charged in ((error_first, False), (error_later, True)):
        client = _mock_client(lambda request: http.Response(200, headers={"content-type": "text/event-stream"}, content=body))
        with wflo_otel.workflow("error-event", budget_usd=1.0) as wf:
            with pytest.raises(openai.APIError):
                for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100, stream=True):
                    pass
            spent = wf.spent_usd
        assert (spent > 0) is charged


async def test_a_stream_cancelled_after_its_first_chunk_keeps_its_reservation_charged(spans):
    http = _http()
    first_chunk = asyncio.Event()

    async def stalls():
        yield _sse([CONTENT])
        await asyncio.sleep(30)

    client = _mock_client(
        lambda request: http.Response(200, headers={"content-type": "text/event-stream"}, content=stalls()), is_async=True
    )

    async def read():
        async for _ in await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100, stream=True):
            first_chunk.set()

    async with wflo_otel.workflow("cancelled", budget_usd=1.0) as wf:
        task = asyncio.ensure_future(read())
        await asyncio.wait_for(first_chunk.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        spent = wf.spent_usd
    assert spent > 0
    assert _one_llm_span(spans).attributes["wflo.cost.source"] == "no-usage"


# ====================================================================== 3. the same class, nearby


def test_a_read_timeout_keeps_the_reservation_charged_a_refused_connection_releases_it(spans):
    """The API bills an answer the client never read; a connection never made cost nothing."""
    http = _http()
    for error, charged in ((http.ReadTimeout, True), (http.RemoteProtocolError, True), (http.ConnectError, False)):

        def handler(request, error=error):
            raise error("simulated", request=request)

        client = _mock_client(handler)
        with wflo_otel.workflow("timeout", budget_usd=1.0) as wf:
            with pytest.raises(openai.APIConnectionError):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
            spent = wf.spent_usd
        assert (spent > 0) is charged, error.__name__


async def test_a_cancelled_call_keeps_its_reservation_charged(spans):
    """``asyncio.wait_for`` around a call: the request went out and the provider bills the answer."""
    http = _http()
    sent = asyncio.Event()

    async def handler(request):
        sent.set()
        await asyncio.sleep(30)

    client = _mock_client(handler, is_async=True)
    async with wflo_otel.workflow("wait-for", budget_usd=1.0) as wf:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100), 0.5
            )
        spent = wf.spent_usd
    assert sent.is_set() and spent > 0
    assert _one_llm_span(spans).attributes["wflo.cost.source"] == "no-usage"


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -1_000_000_000, "completion_tokens": 5, "total_tokens": 0},
    {"prompt_tokens": 10, "completion_tokens": -1_000_000_000, "total_tokens": 0},
    {"prompt_tokens": 10, "total_tokens": 10},
], ids=["negative input", "negative output", "no output count"])
def test_implausible_usage_never_settles_below_the_worst_case(spans, usage):
    """Negative counts would hand money back to the budget; a missing output count would price the answer at $0."""
    http = _http()
    answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
              "usage": usage}
    client = _mock_client(lambda request: http.Response(200, json=answer))
    reservation = reserved_for(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100))
    with wflo_otel.workflow("negative", budget_usd=1.0) as wf:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
        spent = wf.spent_usd
    assert spent == pytest.approx(reservation), "the worst case stays charged"
    span = [s for s in _llm_spans(spans) if "wflo.budget.refused" not in s.attributes][-1]
    assert "wflo.cost.usd" not in span.attributes and span.attributes["wflo.cost.source"] == "no-usage"


def test_a_tracked_call_returning_unreadable_usage_never_raises_and_stays_charged(spans):
    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    def ask(prompt: str, max_tokens: int = 100):
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": float("nan"), "completion_tokens": 5}}

    reservation = reserved_for(lambda: ask("hello"))
    with wflo_otel.workflow("nan", budget_usd=1.0) as wf:
        result = ask("hello")
        spent = wf.spent_usd
    assert result["model"] == "gpt-4o-mini"
    assert spent == pytest.approx(reservation) and math.isfinite(spent)


def test_an_input_the_estimate_cannot_measure_still_reserves_the_output_ceiling(spans):
    class Opaque:
        """A message object only the user's own client understands."""

        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    ran = []

    @wflo_otel.track_llm_call(model="gpt-4o-mini")
    def ask(messages, max_tokens: int = 1000):
        ran.append(messages)
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    output_only = current_handle().pricebook.max_cost("gpt-4o-mini", 0, 1000)
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("opaque", budget_usd=output_only * 0.9):
            ask(Opaque())
    assert caught.value.refused and caught.value.requested_usd == pytest.approx(output_only)
    assert ran == []
    with wflo_otel.workflow("opaque", budget_usd=1.0) as wf:  # unmeasurable requests are still sent and traced
        ask(Opaque())
        assert wf.spent_usd > 0
    assert len(ran) == 1


def test_a_nan_budget_caps_everything_instead_of_nothing(spans, client, openai_server):
    before = openai_server.request_count
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("nan-budget", budget_usd=float("nan")):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    assert caught.value.refused and openai_server.request_count == before
