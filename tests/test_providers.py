"""Every OpenAI-compatible provider priced as itself: the provider comes from the client's base URL.

The real openai client is configured with each provider's real URL; a local transport
answers with the provider's recorded response shape (see provider_fakes.py). Each call
must cost what ``genai_prices.calc_price(..., provider_api_url=<that URL>)`` says.
"""

from __future__ import annotations

import genai_prices
import pytest
from genai_prices.data_snapshot import get_snapshot

import wflo_otel
from wflo_otel.pricing import PriceBook, provider_for_url, provider_name

from provider_fakes import (
    AZURE_CHAT,
    DEEPSEEK_CHAT,
    GROQ_CHAT,
    OPENROUTER_CHAT,
    CannedServer,
    azure_client,
    client_for,
    openai_chat,
)

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def canned():
    with CannedServer() as server:
        yield server


def _reference(body: dict, url: str) -> float:
    """What genai-prices charges for this response at the provider of ``url``."""
    usage = body["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    tier = body.get("service_tier")
    calc = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage["prompt_tokens"],
            output_tokens=usage["completion_tokens"],
            cache_read_tokens=cached,
            output_reasoning_tokens=reasoning,
        ),
        body["model"],
        provider_api_url=url,
        price_context={"service_tier": tier} if tier else None,
    )
    return float(calc.total_price)


CASES = [
    # (client base URL, request model, recorded body, gen_ai.provider.name)
    ("https://api.groq.com/openai/v1", "llama-3.3-70b-versatile", GROQ_CHAT, "groq"),
    ("https://api.deepseek.com", "deepseek-chat", DEEPSEEK_CHAT, "deepseek"),
    ("https://openrouter.ai/api/v1", "deepseek/deepseek-chat", OPENROUTER_CHAT, "openrouter"),
]


@pytest.mark.parametrize(("url", "model", "body", "name"), CASES, ids=[c[3] for c in CASES])
def test_each_provider_is_priced_as_genai_prices_prices_its_api_url(telemetry, canned, url, model, body, name):
    canned.answer(body)
    client = client_for(url, canned)

    client.chat.completions.create(model=model, messages=MESSAGES)

    (span,) = telemetry.llm_spans()
    attrs = span.attributes
    assert attrs["gen_ai.provider.name"] == name
    assert attrs["wflo.cost.source"].startswith("genai-prices@")
    assert attrs["wflo.cost.usd"] == pytest.approx(_reference(body, str(client.base_url)), rel=1e-9)
    assert canned.requests[0]["path"].endswith("/chat/completions")  # answered locally


def test_azure_openai_is_priced_and_named_as_azure(telemetry, canned):
    canned.answer(AZURE_CHAT)
    client = azure_client("https://wflo-test.openai.azure.com", canned)

    client.chat.completions.create(model="my-gpt-4o-mini-deployment", messages=MESSAGES)

    (span,) = telemetry.llm_spans()
    assert span.attributes["gen_ai.provider.name"] == "azure.ai.openai"
    assert span.attributes["server.address"] == "wflo-test.openai.azure.com"
    expected = _reference(AZURE_CHAT, str(client.base_url))
    assert span.attributes["wflo.cost.usd"] == pytest.approx(expected, rel=1e-9)
    assert "/deployments/my-gpt-4o-mini-deployment/" in canned.requests[0]["path"]


def test_a_model_two_providers_serve_is_priced_at_the_one_that_served_it(telemetry, canned):
    """deepseek-chat bought through OpenRouter costs OpenRouter's price, not DeepSeek's own."""
    book = PriceBook()
    at_deepseek = book.cost("deepseek-chat", 1830, 412, provider="deepseek").usd
    at_openrouter = book.cost("deepseek/deepseek-chat", 1830, 412, provider="openrouter").usd
    assert at_deepseek != pytest.approx(at_openrouter)
    canned.answer(OPENROUTER_CHAT)

    client_for("https://openrouter.ai/api/v1", canned).chat.completions.create(
        model="deepseek/deepseek-chat", messages=MESSAGES
    )

    (span,) = telemetry.llm_spans()
    assert span.attributes["wflo.cost.usd"] == pytest.approx(at_openrouter, rel=1e-9)


def test_a_budget_reserves_at_the_providers_price_and_admits_a_model_only_it_lists(telemetry, canned):
    """A Groq model no name lookup finds is reserved and settled at Groq's price, not refused as unknown."""
    canned.answer(GROQ_CHAT)
    client = client_for("https://api.groq.com/openai/v1", canned)
    bound = PriceBook().max_cost("llama-3.3-70b-versatile", 10, 100, provider="groq")
    assert bound is not None and PriceBook().max_cost("llama-3.3-70b-versatile", 10, 100) is None

    with wflo_otel.workflow("groq-budget", budget_usd=1.0, unknown_model="refuse") as wf:
        client.chat.completions.create(model="llama-3.3-70b-versatile", messages=MESSAGES, max_tokens=100)

    assert wf.spent_usd == pytest.approx(_reference(GROQ_CHAT, str(client.base_url)), rel=1e-9)


def test_an_unknown_url_falls_back_to_the_model_name_and_is_named_openai(telemetry, canned):
    canned.answer(openai_chat())
    client = client_for("http://localhost:8000/v1", canned)

    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    (span,) = telemetry.llm_spans()
    assert provider_for_url(client.base_url) is None
    assert span.attributes["gen_ai.provider.name"] == "openai"
    usage = genai_prices.Usage(input_tokens=1000, output_tokens=200, cache_read_tokens=0, output_reasoning_tokens=0)
    expected = float(genai_prices.calc_price(usage, "gpt-4o-mini-2024-07-18", provider_id="openai").total_price)
    assert span.attributes["wflo.cost.usd"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1/",
        "https://wflo-test.openai.azure.com/openai/",
        "https://api.groq.com/openai/v1/",
        "https://api.deepseek.com/",
        "https://openrouter.ai/api/v1/",
        "https://api.together.xyz/v1/",
        "https://api.mistral.ai/v1/",
        "https://api.x.ai/v1/",
        "http://127.0.0.1:11434/v1/",
    ],
)
def test_provider_for_url_is_the_provider_genai_prices_matches(url):
    try:
        expected = get_snapshot().find_provider(None, None, url).id
    except LookupError:
        expected = None
    assert provider_for_url(url) == expected


def test_provider_names_follow_the_genai_conventions():
    assert provider_name("azure") == "azure.ai.openai"
    assert provider_name("mistral") == "mistral_ai"
    assert provider_name("x-ai") == "x_ai"
    assert provider_name("groq") == "groq"
    assert provider_name(None) == "openai"


def test_a_model_the_provider_does_not_list_is_unknown_there_rather_than_priced_elsewhere():
    book = PriceBook()
    assert book.cost("gpt-4o-mini", 1000, 100).usd is not None
    assert book.cost("gpt-4o-mini", 1000, 100, provider="groq").source == "unknown-model"
    assert book.max_cost("gpt-4o-mini", 1000, 100, provider="groq") is None


def test_an_override_prices_the_model_at_every_provider():
    book = PriceBook(overrides={"llama-3.3-70b-versatile": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}})
    cost = book.cost("llama-3.3-70b-versatile", 1_000_000, 1_000_000, provider="groq")
    assert (cost.usd, cost.source) == (pytest.approx(3.0), "override")


def test_metrics_name_the_provider_too(telemetry, canned):
    canned.answer(GROQ_CHAT)
    client_for("https://api.groq.com/openai/v1", canned).chat.completions.create(
        model="llama-3.3-70b-versatile", messages=MESSAGES
    )

    (point,) = telemetry.metric_points("gen_ai.client.operation.duration")
    assert point.attributes["gen_ai.provider.name"] == "groq"
