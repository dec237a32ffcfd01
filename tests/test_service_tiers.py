"""Reservations at the tier the provider serves: learned per endpoint and model from responses."""

from __future__ import annotations

import pytest

import wflo_otel
from wflo_otel.instrumentation.openai.tiers import TierMemory
from wflo_otel.pricing import PriceBook

from provider_fakes import CannedServer, client_for, openai_chat

MESSAGES = [{"role": "user", "content": "Say hello"}]
BOOK = PriceBook()
MODEL = "gpt-4o-mini"
# The output ceiling each request reserves for.
OUT = 1000


@pytest.fixture(scope="module")
def canned():
    with CannedServer() as server:
        yield server


def test_tierless_requests_reserve_at_the_dearest_tier_until_a_response_names_one(telemetry, canned):
    canned.answer(openai_chat(service_tier="default", prompt=10, completion=20))
    client = client_for("https://api.openai.com/v1", canned)
    dearest = BOOK.max_cost(MODEL, 0, OUT)
    standard = BOOK.max_cost(MODEL, 0, OUT, service_tier="default")
    assert dearest > standard * 1.5  # gpt-4o-mini has a priority tier
    # A budget between the two bounds: the first call (tier unknown) cannot fit, the call
    # after a response named "default" does.
    budget = (standard + dearest) / 2 + 0.0001

    with wflo_otel.workflow("tiers-first", budget_usd=budget):
        with pytest.raises(wflo_otel.BudgetExceededError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)
    with wflo_otel.workflow("tiers-learn"):  # no budget: the response still teaches the tier
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)
    with wflo_otel.workflow("tiers-after", budget_usd=budget) as wf:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)

    assert wf.spent_usd == pytest.approx(BOOK.cost("gpt-4o-mini-2024-07-18", 10, 20, service_tier="default").usd)


def test_the_cap_holds_when_the_served_tier_changes(telemetry, canned):
    """Learned "default", then served at "priority": the call settles at priority's price, the
    overrun raises, and the next reservation is at priority's price."""
    client = client_for("https://api.openai.com/v1", canned)
    canned.answer(openai_chat(service_tier="default", prompt=10, completion=20))
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)  # learns "default"
    prompt, completion = 10, OUT
    standard_bound = BOOK.max_cost(MODEL, 0, OUT, service_tier="default")
    priority_cost = BOOK.cost("gpt-4o-mini-2024-07-18", prompt, completion, service_tier="priority").usd
    assert priority_cost > standard_bound * 1.2
    budget = standard_bound * 1.1  # fits a reservation at "default", not a call served at "priority"
    canned.answer(openai_chat(service_tier="priority", prompt=prompt, completion=completion))

    with wflo_otel.workflow("tier-changes", budget_usd=budget) as wf:
        with pytest.raises(wflo_otel.BudgetExceededError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)
        assert wf.spent_usd == pytest.approx(priority_cost)  # settled at the tier the response named
    with wflo_otel.workflow("after-change", budget_usd=budget):
        with pytest.raises(wflo_otel.BudgetExceededError) as refused:  # now reserved at priority: refused unsent
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)
    assert refused.value.spent_usd == 0
    assert len(canned.requests) == 1


def test_a_request_naming_its_tier_teaches_nothing_about_the_projects_tier(telemetry, canned):
    client = client_for("https://api.openai.com/v1", canned)
    canned.answer(openai_chat(service_tier="flex", prompt=10, completion=20))
    client.chat.completions.create(model="o3", messages=MESSAGES, max_tokens=10, service_tier="flex")
    dearest = BOOK.max_cost("o3", 0, OUT)
    flex = BOOK.max_cost("o3", 0, OUT, service_tier="flex")
    assert flex < dearest

    with wflo_otel.workflow("explicit-tier", budget_usd=(flex + dearest) / 2):
        with pytest.raises(wflo_otel.BudgetExceededError):  # still reserved at the dearest tier
            client.chat.completions.create(model="o3", messages=MESSAGES, max_tokens=OUT)


def test_tiers_are_learned_per_endpoint(telemetry, canned):
    canned.answer(openai_chat(service_tier="default", prompt=10, completion=20))
    client_for("https://api.openai.com/v1", canned).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)
    other = client_for("https://proxy.example.internal/v1", canned)
    dearest = BOOK.max_cost(MODEL, 0, OUT)
    standard = BOOK.max_cost(MODEL, 0, OUT, service_tier="default")

    with wflo_otel.workflow("other-endpoint", budget_usd=(standard + dearest) / 2):
        with pytest.raises(wflo_otel.BudgetExceededError):
            other.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)


def test_tier_memory_is_bounded_and_forgets_the_oldest_first():
    memory = TierMemory(max_entries=3)
    for i in range(5):
        memory.learn(("e", f"m{i}"), "default")
    memory.learn(("e", "m4"), "priority")

    assert len(memory) == 3
    assert memory.tier(("e", "m0")) is None and memory.tier(("e", "m1")) is None
    assert memory.tier(("e", "m4")) == "priority"
    memory.learn(("e", "m2"), None)  # a response naming no tier teaches nothing
    memory.learn(("e", "m2"), "auto")
    assert memory.tier(("e", "m2")) == "default"


def test_a_flex_answer_to_a_tierless_request_does_not_lower_reservations_below_default(telemetry, canned):
    """flex is served only when asked for: it says the project's tier is at least "default"."""
    client = client_for("https://api.openai.com/v1", canned)
    canned.answer(openai_chat(service_tier="flex", prompt=10, completion=20))
    client.chat.completions.create(model="o3", messages=MESSAGES, max_tokens=OUT)  # names no tier; served "flex"
    flex = BOOK.max_cost("o3", 0, OUT, service_tier="flex")
    standard = BOOK.max_cost("o3", 0, OUT, service_tier="default")
    assert flex < standard

    with wflo_otel.workflow("after-flex", budget_usd=(flex + standard) / 2):
        with pytest.raises(wflo_otel.BudgetExceededError):  # reserved at "default", not "flex"
            client.chat.completions.create(model="o3", messages=MESSAGES, max_tokens=OUT)
    assert len(canned.requests) == 1


def test_a_cheaper_answer_never_lowers_the_learned_tier(telemetry, canned):
    client = client_for("https://api.openai.com/v1", canned)
    for tier in ("priority", "default", "flex"):  # dearest first, then cheaper answers
        canned.answer(openai_chat(service_tier=tier, prompt=10, completion=20))
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)
    standard = BOOK.max_cost(MODEL, 0, OUT, service_tier="default")
    priority = BOOK.max_cost(MODEL, 0, OUT, service_tier="priority")
    assert standard < priority

    with wflo_otel.workflow("after-cheaper", budget_usd=(standard + priority) / 2):
        with pytest.raises(wflo_otel.BudgetExceededError):  # still reserved at "priority"
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)


def test_tier_memory_only_goes_up_and_never_below_default():
    memory = TierMemory()
    memory.learn(("e", "m"), "flex")
    assert memory.tier(("e", "m")) == "default"
    memory.learn(("e", "m"), "priority")
    memory.learn(("e", "m"), "default")
    memory.learn(("e", "m"), "batch")
    memory.learn(("e", "m"), "some-new-tier")  # not ranked: teaches nothing
    assert memory.tier(("e", "m")) == "priority"


@pytest.fixture
def not_learning():
    from opentelemetry.sdk.trace import TracerProvider

    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False, learn_service_tier=False)
    yield handle
    handle.shutdown()


def test_with_learning_off_tierless_requests_always_reserve_at_the_dearest_tier(not_learning, canned):
    client = client_for("https://api.openai.com/v1", canned)
    canned.answer(openai_chat(service_tier="default", prompt=10, completion=20))
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)
    dearest = BOOK.max_cost(MODEL, 0, OUT)
    standard = BOOK.max_cost(MODEL, 0, OUT, service_tier="default")

    with wflo_otel.workflow("not-learning", budget_usd=(standard + dearest) / 2):
        with pytest.raises(wflo_otel.BudgetExceededError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUT)


@pytest.mark.parametrize("raw, learns", [("", True), ("true", True), ("false", False), ("0", False), ("nope", False)])
def test_wflo_learn_service_tier_turns_learning_off_and_a_bad_value_is_the_strict_cap(monkeypatch, raw, learns):
    from wflo_otel.settings import learn_service_tier

    monkeypatch.setenv("WFLO_LEARN_SERVICE_TIER", raw)
    assert learn_service_tier() is learns
