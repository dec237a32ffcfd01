"""The fake OpenAI server, exercised through the real ``openai`` client."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time

import openai
import pytest

from wflo_otel.demo import server as server_module
from wflo_otel.demo.server import FakeOpenAIServer, chat_prompt_tokens


def _broken_connection_errors() -> tuple[type[BaseException], ...]:
    """openai 3.x maps a cut stream to APIConnectionError; 2.x lets the transport's error through."""
    errors: list[type[BaseException]] = [openai.APIConnectionError]
    for module in ("httpx", "httpx2"):
        try:
            errors.append(__import__(module).TransportError)
        except ImportError:
            pass
    return tuple(errors)


BROKEN_CONNECTION = _broken_connection_errors()

USER = [{"role": "user", "content": "Say something about observability."}]


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def max_output_server():
    with FakeOpenAIServer(mode="max_output") as srv:
        yield srv


def make_client(srv: FakeOpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0, timeout=10)


@pytest.fixture
def client(server):
    with make_client(server) as c:
        yield c


# --------------------------------------------------------------------------- chat, non-stream


def test_chat_completion_parses_with_full_usage_shape(client):
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=USER)

    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "gpt-4o-mini-2024-07-18"
    assert resp.service_tier == "default"
    assert resp.system_fingerprint
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content

    usage = resp.usage
    assert usage.prompt_tokens == chat_prompt_tokens(USER) == math.ceil(len(USER[0]["content"]) / 4) + 4
    assert 20 <= usage.completion_tokens <= 200
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.prompt_tokens_details.audio_tokens == 0
    details = usage.completion_tokens_details
    assert (details.reasoning_tokens, details.audio_tokens) == (0, 0)
    assert (details.accepted_prediction_tokens, details.rejected_prediction_tokens) == (0, 0)
    # content length roughly tracks completion tokens (~4 chars per token)
    assert abs(len(choice.message.content) - usage.completion_tokens * 4) <= 4


def test_chat_completion_is_deterministic_for_the_same_request(client):
    a = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    b = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert a.usage == b.usage
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.id != b.id


def test_model_with_date_suffix_is_kept_and_unknown_models_get_generic_date(client):
    dated = client.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=USER)
    other = client.chat.completions.create(model="my-model", messages=USER)
    assert dated.model == "gpt-4o-mini-2024-07-18"
    assert other.model == "my-model-2025-01-01"


def test_reasoning_model_reports_half_of_completion_as_reasoning_tokens(client):
    resp = client.chat.completions.create(model="o4-mini", messages=USER)
    usage = resp.usage
    assert usage.completion_tokens_details.reasoning_tokens == usage.completion_tokens // 2 > 0
    gpt5 = client.chat.completions.create(model="gpt-5-mini", messages=USER)
    assert gpt5.usage.completion_tokens_details.reasoning_tokens == gpt5.usage.completion_tokens // 2


def test_cached_marker_reports_half_of_prompt_as_cached_tokens(client):
    messages = [{"role": "user", "content": "[cached] a prompt with a cacheable prefix " * 3}]
    usage = client.chat.completions.create(model="gpt-4o-mini", messages=messages).usage
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens // 2 > 0


def test_long_prompt_reports_cached_tokens_in_multiples_of_128(client):
    messages = [{"role": "system", "content": "x" * 5000}, {"role": "user", "content": "hi"}]
    usage = client.chat.completions.create(model="gpt-4o-mini", messages=messages).usage
    assert usage.prompt_tokens == math.ceil(5002 / 4) + 8
    assert usage.prompt_tokens_details.cached_tokens == (usage.prompt_tokens // 128) * 128


def test_max_tokens_caps_realistic_completion_with_length_finish_reason(client):
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=7)
    assert resp.usage.completion_tokens == 7
    assert resp.choices[0].finish_reason == "length"
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_completion_tokens=5)
    assert resp.usage.completion_tokens == 5


def test_n_choices_are_returned_and_summed_in_usage(client):
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=USER, n=3, max_tokens=10)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage.completion_tokens == 30


def test_tool_marker_returns_a_tool_call(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }}]
    resp = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather in Paris? [tool]"}], tools=tools
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)

    plain = client.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=tools)
    assert plain.choices[0].finish_reason == "stop"
    assert plain.choices[0].message.tool_calls is None


# --------------------------------------------------------------------------- chat, stream


def test_stream_with_include_usage_ends_with_usage_chunk_and_same_text_as_non_stream(client):
    expected = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
    ))

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content

    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage == expected.usage


def test_stream_without_include_usage_carries_no_usage(client):
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_streamed_tool_call_arguments_reassemble(client):
    tools = [{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}},
    }}]
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "[tool]"}], tools=tools, stream=True
    ))
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "lookup"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"q": "example q", "n": 1}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --------------------------------------------------------------------------- max_output mode


def test_max_output_mode_returns_exactly_the_requested_max_tokens(max_output_server):
    with make_client(max_output_server) as client:
        for kwargs in ({"max_tokens": 333}, {"max_completion_tokens": 41}):
            resp = client.chat.completions.create(model="gpt-4o-mini", messages=USER, **kwargs)
            assert resp.usage.completion_tokens == next(iter(kwargs.values()))
            assert resp.choices[0].finish_reason == "length"
        default = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert default.usage.completion_tokens == 256

        chunks = list(client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, max_tokens=1000, stream=True, stream_options={"include_usage": True}
        ))
        assert chunks[-1].usage.completion_tokens == 1000

        resp = client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=77)
        assert resp.usage.output_tokens == 77
        assert resp.status == "incomplete"
        assert resp.incomplete_details.reason == "max_output_tokens"


# --------------------------------------------------------------------------- responses API


def test_responses_create_parses_usage_and_output_text(client):
    resp = client.responses.create(model="gpt-4o-mini", input="Tell me about tracing.", instructions="Be brief.")
    assert resp.object == "response"
    assert resp.status == "completed"
    assert resp.model == "gpt-4o-mini-2024-07-18"
    assert resp.output_text
    usage = resp.usage
    assert usage.input_tokens == math.ceil((len("Tell me about tracing.") + len("Be brief.")) / 4) + 8
    assert 20 <= usage.output_tokens <= 200
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_responses_reasoning_and_cached_details(client):
    resp = client.responses.create(
        model="o3", input=[{"role": "user", "content": [{"type": "input_text", "text": "[cached] long context"}]}]
    )
    assert resp.usage.output_tokens_details.reasoning_tokens == resp.usage.output_tokens // 2
    assert resp.usage.input_tokens_details.cached_tokens == resp.usage.input_tokens // 2 > 0
    assert [item.type for item in resp.output] == ["reasoning", "message"]
    assert resp.output_text


def test_responses_stream_emits_created_deltas_and_completed_with_usage(client):
    expected = client.responses.create(model="gpt-4o-mini", input="stream me")
    with client.responses.create(model="gpt-4o-mini", input="stream me", stream=True) as stream:
        events = list(stream)
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2
    assert "".join(deltas) == expected.output_text
    final = events[-1].response
    assert final.output_text == expected.output_text
    assert final.usage == expected.usage
    assert events[0].response.usage is None


# --------------------------------------------------------------------------- embeddings, legacy


def test_embeddings_parse_with_usage_for_list_and_string_input(client):
    resp = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta gamma"])
    assert resp.object == "list"
    assert [d.index for d in resp.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in resp.data)  # default is base64 on the wire, decoded by the client
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == 2 + 3
    assert resp.model == "text-embedding-3-small"

    floats = client.embeddings.create(
        model="text-embedding-3-small", input="alpha", dimensions=16, encoding_format="float"
    )
    assert len(floats.data[0].embedding) == 16
    again = client.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=16)
    assert again.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_legacy_completions_return_text_completion_with_usage(client):
    resp = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=12)
    assert resp.object == "text_completion"
    assert resp.choices[0].text
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.prompt_tokens == 4
    assert resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == 16


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("model", "exc_type", "code"),
    [
        ("error-429", openai.RateLimitError, 429),
        ("error-500", openai.InternalServerError, 500),
        ("error-503", openai.InternalServerError, 503),
        ("error-400", openai.BadRequestError, 400),
        ("error-404", openai.NotFoundError, 404),
        ("error-401", openai.AuthenticationError, 401),
    ],
)
def test_error_models_raise_the_matching_openai_exception(client, model, exc_type, code):
    with pytest.raises(exc_type) as info:
        client.chat.completions.create(model=model, messages=USER)
    err = info.value
    assert err.status_code == code
    assert set(err.body) == {"message", "type", "param", "code"}
    if code == 429:
        assert err.response.headers["retry-after"] == "0"
        assert err.code == "rate_limit_exceeded"


def test_error_models_apply_to_every_endpoint_and_to_stream_requests(client):
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="error-429", input="x")
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="error-500", input="x")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="error-400", messages=USER, stream=True)


def test_midstream_error_raises_during_iteration_after_two_content_chunks(client):
    stream = client.chat.completions.create(model="error-midstream", messages=USER, stream=True)
    received = []
    with pytest.raises(BROKEN_CONNECTION):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert len(received) == 2


def test_responses_midstream_error_raises_during_iteration(client):
    stream = client.responses.create(model="error-midstream", input="x", stream=True)
    deltas = []
    with pytest.raises(BROKEN_CONNECTION):
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    assert len(deltas) == 2


async def test_async_midstream_error_raises_during_iteration(server):
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
        stream = await client.chat.completions.create(model="error-midstream", messages=USER, stream=True)
        with pytest.raises(BROKEN_CONNECTION):
            async for _ in stream:
                pass


def test_server_survives_dropped_connections_and_stays_quiet(server, client, capfd):
    for _ in range(3):
        with pytest.raises(BROKEN_CONNECTION):
            list(client.chat.completions.create(model="error-midstream", messages=USER, stream=True))
    with pytest.raises(BROKEN_CONNECTION):
        client.chat.completions.create(model="error-midstream", messages=USER)  # truncated body
    # a client that hangs up half-way through its request
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    sock.close()
    assert client.chat.completions.create(model="gpt-4o-mini", messages=USER).choices
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# --------------------------------------------------------------------------- plain HTTP


def test_health_unknown_paths_and_bad_json_over_plain_http(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}

    conn.request("POST", "/v1/nope", body=b"{}", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 404
    assert resp.getheader("content-type") == "application/json"
    assert json.loads(resp.read())["error"]["type"] == "invalid_request_error"

    conn.request("POST", "/v1/chat/completions", body=b"{not json", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400 and "error" in json.loads(resp.read())
    conn.close()


def test_sse_stream_is_chunked_and_connection_is_reused_afterwards(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    body = json.dumps({"model": "gpt-4o-mini", "messages": USER, "stream": True}).encode()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.getheader("transfer-encoding") == "chunked"
    assert resp.getheader("content-type").startswith("text/event-stream")
    text = resp.read().decode()
    assert text.endswith("data: [DONE]\n\n")
    conn.request("GET", "/health")
    assert conn.getresponse().read() == b'{"status":"ok"}'
    conn.close()
    assert server.connection_count == 1


# --------------------------------------------------------------------------- load / concurrency


def test_200_sequential_requests_share_one_keepalive_connection(server, client):
    for i in range(200):
        resp = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}])
        assert resp.usage.total_tokens > 0
    assert server.request_count == 200
    assert server.connection_count == 1


def test_16_threads_x_50_requests_all_succeed_and_request_count_matches(server, client):
    errors: list[BaseException] = []
    totals: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        try:
            for i in range(50):
                resp = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"thread {t} request {i}"}]
                )
                with lock:
                    totals.append(resp.usage.total_tokens)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not errors
    assert len(totals) == 800
    assert server.request_count == 800
    assert len(server.requests) == 800


async def test_300_concurrent_asyncio_tasks_all_succeed(server):
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=20) as client:
        async def one(i: int) -> int:
            if i % 3 == 0:
                stream = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"task {i}"}],
                    stream=True, stream_options={"include_usage": True},
                )
                usage = None
                async for chunk in stream:
                    usage = chunk.usage or usage
                return usage.total_tokens
            resp = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"task {i}"}]
            )
            return resp.usage.total_tokens

        results = await asyncio.gather(*(one(i) for i in range(300)))
    assert len(results) == 300 and all(r > 0 for r in results)
    assert server.request_count == 300


# --------------------------------------------------------------------------- bookkeeping & lifecycle


def test_requests_records_parsed_bodies_in_order(server, client):
    client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=5)
    client.embeddings.create(model="text-embedding-3-small", input="x")
    assert server.request_count == 2
    assert server.requests[0]["messages"] == USER and server.requests[0]["max_tokens"] == 5
    assert server.requests[1]["input"] == "x"
    server.reset()
    assert server.request_count == 0 and server.requests == []


def test_requests_list_keeps_only_the_most_recent_bodies(server, client, monkeypatch):
    monkeypatch.setattr(server_module, "MAX_KEPT_REQUESTS", 5)
    for i in range(12):
        client.embeddings.create(model="text-embedding-3-small", input=f"n{i}")
    assert server.request_count == 12
    assert [r["input"] for r in server.requests] == [f"n{i}" for i in range(7, 12)]


def test_latency_s_delays_each_answer():
    with FakeOpenAIServer(latency_s=0.05) as srv, make_client(srv) as client:
        start = time.perf_counter()
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert time.perf_counter() - start >= 0.05


def test_stop_is_prompt_with_idle_keepalive_connections_and_frees_the_port():
    srv = FakeOpenAIServer().start()
    client = make_client(srv)
    client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # leaves an idle keep-alive socket
    start = time.perf_counter()
    srv.stop()
    assert time.perf_counter() - start < 1.0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
    client.close()
    srv.stop()  # idempotent


def test_only_loopback_hosts_are_accepted():
    with pytest.raises(ValueError):
        FakeOpenAIServer(host="0.0.0.0")
    with pytest.raises(ValueError):
        FakeOpenAIServer(mode="bogus")
    assert FakeOpenAIServer(host="localhost").base_url.startswith("http://127.0.0.1:")


def test_module_main_serves_until_interrupted():
    proc = subprocess.Popen(
        [sys.executable, "-m", "wflo_otel.demo.server", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell running us in the background may have set SIGINT to "ignore"; undo that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="test", max_retries=0, timeout=5) as client:
            assert client.chat.completions.create(model="gpt-4o-mini", messages=USER).usage.total_tokens > 0
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=5) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
