"""Conformance on real OpenAI traffic: every recorded cassette replayed through the real client.

The cassettes (VCR YAML recorded from the OpenAI API by the OpenTelemetry
Python Contrib project; see NOTICE.md in their directory) live outside this
repository: ``$WFLO_CASSETTES``, default ``../shared/fixtures/openai-cassettes`` beside the repository.
Each recorded request is re-issued through ``openai.OpenAI`` / ``AsyncOpenAI``
with its own JSON body (``chat.completions.create(**body)`` and so on, streams
consumed to the end); an in-memory transport answers with the recorded response,
in order. For every recorded call we check: exactly one span; usage attributes
equal to the recorded ``usage``; ``wflo.cost.usd`` equal to an independent
``genai_prices.calc_price`` of that usage (or ``unknown-model`` where genai-prices
does not know the model); recorded errors as ERROR spans whose ``error.type`` is
the class name of what the client raised.

Without the cassettes the module is skipped — except under ``CI=true``, where
their absence fails the run.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
import yaml
from genai_prices import Usage, calc_price
from opentelemetry.trace import SpanKind, StatusCode

# ../shared beside the repository (how CI and the sessions lay it out), or $WFLO_CASSETTES.
_DEFAULT_CASSETTES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "openai-cassettes"
CASSETTE_DIR = Path(os.environ.get("WFLO_CASSETTES") or _DEFAULT_CASSETTES)
IN_CI = os.environ.get("CI", "").lower() == "true"

if not CASSETTE_DIR.is_dir() and not IN_CI:
    pytest.skip(f"no recorded OpenAI cassettes at {CASSETTE_DIR} (set WFLO_CASSETTES)", allow_module_level=True)

CASSETTES = sorted(CASSETTE_DIR.glob("*.yaml")) if CASSETTE_DIR.is_dir() else []


def _http_module():
    """What the installed openai is built on: httpx2 for 3.x, httpx for 2.x."""
    return __import__("httpx2" if int(openai.__version__.split(".")[0]) >= 3 else "httpx")


class Interaction:
    """One recorded request and its response."""

    def __init__(self, raw: dict) -> None:
        request, response = raw["request"], raw["response"]
        self.method = request["method"].upper()
        self.path = urlsplit(request["uri"]).path
        self.body = json.loads(request["body"]) if request.get("body") else {}
        self.status = int(response["status"]["code"])
        headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        content_type = headers.get("content-type") or ["application/json"]
        self.content_type = content_type[0] if isinstance(content_type, list) else content_type
        self.text = response["body"]["string"]

    @property
    def streamed(self) -> bool:
        return self.body.get("stream") is True

    def recorded_outcome(self) -> tuple[dict | None, str | None, str | None]:
        """(usage, response model, response id) as the recorded response reports them."""
        if not self.content_type.startswith("text/event-stream"):
            data = json.loads(self.text)
            return data.get("usage"), data.get("model"), data.get("id")
        usage = model = response_id = None
        for line in self.text.splitlines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if "response" in event:  # Responses API events carry the response
                response = event["response"]
                model, response_id = response.get("model") or model, response.get("id") or response_id
                usage = response.get("usage") or usage
            else:  # chat chunks
                model, response_id = event.get("model") or model, event.get("id") or response_id
                usage = event.get("usage") or usage
        return usage, model, response_id


def _load(path: Path) -> list[Interaction]:
    return [Interaction(raw) for raw in yaml.safe_load(path.read_text())["interactions"]]


class Replay:
    """An HTTP handler answering each request with the next recorded response, in order."""

    def __init__(self, interactions: list[Interaction]) -> None:
        self.pending = list(interactions)
        self.http = _http_module()

    def __call__(self, request):
        assert self.pending, f"unrecorded request {request.method} {request.url}"
        recorded = self.pending.pop(0)
        assert (request.method, request.url.path) == (recorded.method, recorded.path)
        sent = json.loads(request.content)
        # We may add stream_options.include_usage to a chat stream; nothing recorded is changed.
        changed = {k: (v, sent.get(k)) for k, v in recorded.body.items() if sent.get(k) != v}
        assert not changed, f"request differs from the recorded one: {changed}"
        return self.http.Response(
            recorded.status, headers={"content-type": recorded.content_type}, content=recorded.text.encode()
        )


_RESOURCES = {"/v1/chat/completions": ("chat", "completions"), "/v1/embeddings": ("embeddings",), "/v1/responses": ("responses",)}


def _resource(client, interaction: Interaction):
    resource = client
    for name in _RESOURCES[interaction.path]:
        resource = getattr(resource, name)
    return resource


def _replay_sync(path: Path, interactions: list[Interaction]) -> list:
    http = _http_module()
    client = openai.OpenAI(
        api_key="test_openai_api_key", max_retries=0, http_client=http.Client(transport=http.MockTransport(Replay(interactions)))
    )
    raw = "with_raw_response" in path.name
    outcomes = []
    for interaction in interactions:
        resource = _resource(client, interaction)
        try:
            if raw:  # the recording was made through .with_raw_response: replay it that way
                result = resource.with_raw_response.create(**interaction.body).parse()
            else:
                result = resource.create(**interaction.body)
            if interaction.streamed:
                result = list(result)
            outcomes.append(result)
        except openai.APIError as exc:
            outcomes.append(exc)
    return outcomes


async def _replay_async(path: Path, interactions: list[Interaction]) -> list:
    http = _http_module()
    client = openai.AsyncOpenAI(
        api_key="test_openai_api_key",
        max_retries=0,
        http_client=http.AsyncClient(transport=http.MockTransport(Replay(interactions))),
    )
    raw = "with_raw_response" in path.name
    outcomes = []
    for interaction in interactions:
        resource = _resource(client, interaction)
        try:
            if raw:
                result = (await resource.with_raw_response.create(**interaction.body)).parse()
            else:
                result = await resource.create(**interaction.body)
            if interaction.streamed:
                result = [item async for item in result]
            outcomes.append(result)
        except openai.APIError as exc:
            outcomes.append(exc)
    return outcomes


def _expected_usage(usage: dict, path: str) -> dict:
    """The span attributes a recorded ``usage`` must produce."""
    if path == "/v1/responses":
        return {
            "gen_ai.usage.input_tokens": usage["input_tokens"],
            "gen_ai.usage.output_tokens": usage["output_tokens"],
            "gen_ai.usage.cache_read.input_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens", 0),
            "gen_ai.usage.reasoning.output_tokens": (usage.get("output_tokens_details") or {}).get("reasoning_tokens", 0),
        }
    expected = {"gen_ai.usage.input_tokens": usage["prompt_tokens"]}
    if "completion_tokens" in usage:
        expected["gen_ai.usage.output_tokens"] = usage["completion_tokens"]
        expected["gen_ai.usage.cache_read.input_tokens"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        expected["gen_ai.usage.reasoning.output_tokens"] = (usage.get("completion_tokens_details") or {}).get(
            "reasoning_tokens", 0
        )
    return expected


def _reference_price(expected: dict, model: str) -> float | None:
    """Independent price of the recorded usage; None when genai-prices does not know the model."""
    usage = Usage(
        input_tokens=expected["gen_ai.usage.input_tokens"],
        cache_read_tokens=expected.get("gen_ai.usage.cache_read.input_tokens", 0),
        output_tokens=expected.get("gen_ai.usage.output_tokens", 0),
        output_reasoning_tokens=expected.get("gen_ai.usage.reasoning.output_tokens", 0),
    )
    try:
        return float(calc_price(usage, model, provider_id="openai").total_price)
    except LookupError:
        return None


_USAGE_KEYS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.reasoning.output_tokens",
)


def test_recorded_cassettes_are_present_and_cover_every_api():
    assert CASSETTE_DIR.is_dir(), f"CI=true needs the recorded cassettes at {CASSETTE_DIR} (WFLO_CASSETTES)"
    paths = {interaction.path for cassette in CASSETTES for interaction in _load(cassette)}
    assert {"/v1/chat/completions", "/v1/embeddings", "/v1/responses"} <= paths
    statuses = {interaction.status >= 400 for cassette in CASSETTES for interaction in _load(cassette)}
    assert statuses == {True, False}, "errors and successes are both recorded"


@pytest.mark.parametrize("cassette", CASSETTES, ids=[p.stem for p in CASSETTES])
def test_recorded_call_gives_one_span_with_recorded_usage_and_independent_cost(telemetry, cassette):
    interactions = _load(cassette)
    if cassette.name.startswith("test_async_"):
        outcomes = asyncio.run(_replay_async(cassette, interactions))
    else:
        outcomes = _replay_sync(cassette, interactions)

    finished = telemetry.exporter.get_finished_spans()
    spans = [s for s in finished if s.kind is SpanKind.CLIENT and "gen_ai.operation.name" in s.attributes]
    assert len(spans) == len(interactions), "exactly one LLM span per recorded call"
    # HTTP attempt spans (WFLO_HTTP_SPANS=true) are CLIENT spans too, always under an LLM span
    attempts = [s for s in finished if s.kind is SpanKind.CLIENT and s not in spans]
    assert all(a.parent.span_id in {s.context.span_id for s in spans} for a in attempts)
    for interaction, outcome, span in zip(interactions, outcomes, spans):
        attrs = span.attributes
        assert attrs["gen_ai.request.model"] == interaction.body["model"]
        assert attrs["server.address"] == "api.openai.com" and attrs["server.port"] == 443
        if interaction.status >= 400:
            assert isinstance(outcome, openai.APIStatusError) and outcome.status_code == interaction.status
            assert span.status.status_code is StatusCode.ERROR
            assert attrs["error.type"] == type(outcome).__qualname__
            continue
        assert not isinstance(outcome, Exception), outcome
        assert span.status.status_code is not StatusCode.ERROR
        usage, model, response_id = interaction.recorded_outcome()
        assert attrs["gen_ai.response.model"] == model
        if response_id is not None:
            assert attrs["gen_ai.response.id"] == response_id
        if usage is None:  # a stream recorded without usage: nothing invented
            assert not any(key in attrs for key in _USAGE_KEYS)
            assert attrs["wflo.cost.source"] == "no-usage"
            continue
        expected = _expected_usage(usage, interaction.path)
        assert {key: attrs.get(key) for key in _USAGE_KEYS if key in attrs} == expected
        price = _reference_price(expected, model)
        if price is None:
            assert attrs["wflo.cost.source"] == "unknown-model"
            assert "wflo.cost.usd" not in attrs
        else:
            assert attrs["wflo.cost.usd"] == pytest.approx(price, rel=1e-9, abs=1e-15)
            assert attrs["wflo.cost.source"].startswith("genai-prices@")
