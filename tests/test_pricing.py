"""Tests for wflo_otel.pricing: agreement with genai-prices, overrides, bounds, robustness."""

from __future__ import annotations

import json
import math
import random
import threading
import zlib
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import (
    ClauseEquals,
    ClauseOr,
    ClauseStartsWith,
    ConditionalPrice,
    ModelInfo,
    ModelPrice,
    Provider,
    StartDateConstraint,
    Tier,
    TieredPrices,
    TimeOfDateConstraint,
)

from wflo_otel import pricing
from wflo_otel.pricing import (
    GENAI_PRICES_SOURCE,
    Cost,
    PriceBook,
    default_pricebook,
    load_price_file,
    reset_default_pricebook,
)

REL_TOL = 1e-9
N_USAGES = 300


# --- helpers -------------------------------------------------------------------


def _openai() -> Provider:
    return next(p for p in get_snapshot().providers if p.id == "openai")


def _refs_from_match(match: object) -> Iterator[str]:
    """Model strings a user could send that this match logic accepts."""
    if isinstance(match, ClauseEquals):
        yield match.equals
    elif isinstance(match, ClauseStartsWith):
        yield match.starts_with
        yield match.starts_with + "08-06:acme::ft123"  # fine-tuned refs, e.g. ft:gpt-4o-2024-08-06:org::id
    elif isinstance(match, ClauseOr):
        for clause in match.or_:
            yield from _refs_from_match(clause)


def _ref_for(model: ModelInfo) -> str:
    """A model string that genai-prices resolves (with provider openai) to exactly this model."""
    for ref in (model.id, *_refs_from_match(model.match)):
        try:
            _, found = get_snapshot().find_provider_model(ref, None, "openai", None)
        except LookupError:
            continue
        if found is model:
            return ref
    raise AssertionError(f"no model string resolves to {model.id}")


def _has_token_prices(model: ModelInfo) -> bool:
    price = model.get_prices(datetime.now(tz=timezone.utc))
    return any(
        value is not None and pricing._PRICE_KEY_UNITS.get(key, {}).get("dimensions", {}).get("family") == "tokens"
        for key, value in price.__dict__.items()
    )


def _service_tiers(model: ModelInfo) -> list[str]:
    tiers = {v.when["service_tier"] for v in model.price_variants or () if "service_tier" in v.when}
    return sorted(tiers)


OPENAI_TOKEN_MODELS = [m for m in _openai().models if _has_token_prices(m)]
OPENAI_TIERED_VARIANTS = [(m, tier) for m in OPENAI_TOKEN_MODELS for tier in _service_tiers(m)]


def _random_usages(seed: int, n: int = N_USAGES) -> list[tuple[int, int, int, int]]:
    """(input, output, cached, reasoning) with cached <= input and reasoning <= output.

    Magnitudes span 0 to ~1M input tokens so tiered thresholds (e.g. 200k, 272k) are crossed.
    """
    rng = random.Random(seed)
    usages = [(0, 0, 0, 0), (1, 1, 1, 1), (1_000, 500, 200, 0)]
    while len(usages) < n:
        input_tokens = int(10 ** rng.uniform(0, 6))
        output_tokens = int(10 ** rng.uniform(0, 5))
        cached = rng.choice([0, rng.randint(0, input_tokens), input_tokens])
        reasoning = rng.choice([0, rng.randint(0, output_tokens)])
        usages.append((input_tokens, output_tokens, cached, reasoning))
    return usages


def _reference_usd(ref: str, usage: tuple[int, int, int, int], tier: str | None = None) -> float:
    i, o, c, r = usage
    genai_usage = Usage(input_tokens=i, output_tokens=o, cache_read_tokens=c, output_reasoning_tokens=r)
    context = {"service_tier": tier} if tier else None
    return float(calc_price(genai_usage, ref, provider_id="openai", price_context=context).total_price)


def _assert_agrees(book: PriceBook, ref: str, tier: str | None, seed: int) -> None:
    for usage in _random_usages(seed):
        i, o, c, r = usage
        got = book.cost(ref, i, o, c, r, service_tier=tier)
        expected = _reference_usd(ref, usage, tier)
        assert got.source == GENAI_PRICES_SOURCE
        assert got.usd is not None, (ref, tier, usage)
        assert math.isclose(got.usd, expected, rel_tol=REL_TOL), (ref, tier, usage, got, expected)


# --- agreement with genai-prices -------------------------------------------------


def test_every_openai_model_with_token_prices_is_covered() -> None:
    assert len(OPENAI_TOKEN_MODELS) > 50
    assert any(m.id == "gpt-4o-mini" for m in OPENAI_TOKEN_MODELS)
    assert OPENAI_TIERED_VARIANTS


@pytest.mark.parametrize("model", OPENAI_TOKEN_MODELS, ids=lambda m: m.id)
def test_cost_agrees_with_calc_price_for_every_openai_model(model: ModelInfo) -> None:
    _assert_agrees(PriceBook(), _ref_for(model), None, seed=zlib.crc32(model.id.encode()))


@pytest.mark.parametrize(
    ("model", "tier"), OPENAI_TIERED_VARIANTS, ids=[f"{m.id}-{t}" for m, t in OPENAI_TIERED_VARIANTS]
)
def test_cost_agrees_with_calc_price_for_service_tier_variants(model: ModelInfo, tier: str) -> None:
    _assert_agrees(PriceBook(), _ref_for(model), tier, seed=zlib.crc32(f"{model.id}/{tier}".encode()))


def test_most_openai_models_are_priced_by_the_compiled_fast_path() -> None:
    book = PriceBook()
    entries = [book._resolve(_ref_for(m), None) for m in OPENAI_TOKEN_MODELS]
    flat = sum(isinstance(e, pricing._FlatPrice) for e in entries)
    assert flat >= len(entries) // 2, f"only {flat}/{len(entries)} compiled"


def test_gpt_4o_mini_uses_compiled_float_rates() -> None:
    book = PriceBook()
    book.cost("gpt-4o-mini", 1000, 500, 200)
    entry = book._cache["gpt-4o-mini"]
    assert isinstance(entry, pricing._FlatPrice)
    assert (entry.input, entry.cache_read, entry.output) == pytest.approx((0.15e-6, 0.075e-6, 0.6e-6), rel=1e-12)
    assert entry.source == GENAI_PRICES_SOURCE


def test_gpt_4o_mini_cached_and_output_tokens_follow_openai_conventions() -> None:
    cost = PriceBook().cost("gpt-4o-mini", input_tokens=1000, output_tokens=500, cache_read_tokens=200)
    assert cost.source == GENAI_PRICES_SOURCE
    assert cost.usd == pytest.approx(800 * 0.15e-6 + 200 * 0.075e-6 + 500 * 0.6e-6, rel=1e-12)


def test_reasoning_tokens_are_billed_as_part_of_output() -> None:
    book = PriceBook()
    with_reasoning = book.cost("gpt-4o-mini", 1000, 500, 0, reasoning_tokens=400)
    without = book.cost("gpt-4o-mini", 1000, 500, 0)
    assert with_reasoning == without


def test_priority_tier_compiles_its_own_flat_rates() -> None:
    model = next(m for m in OPENAI_TOKEN_MODELS if m.id == "gpt-4o-mini")
    if "priority" not in _service_tiers(model):
        pytest.skip("snapshot has no priority variant for gpt-4o-mini")
    book = PriceBook()
    priority = book.cost("gpt-4o-mini", 1000, 500, 200, service_tier="priority")
    base = book.cost("gpt-4o-mini", 1000, 500, 200)
    assert isinstance(book._cache[("gpt-4o-mini", "priority")], pricing._FlatPrice)
    assert priority.usd is not None and base.usd is not None and priority.usd > base.usd
    assert priority.usd == pytest.approx(_reference_usd("gpt-4o-mini", (1000, 500, 200, 0), "priority"), rel=REL_TOL)


@pytest.mark.parametrize("tier", [None, "default", "auto", "no-such-tier"])
def test_default_auto_and_unknown_tiers_use_the_base_price(tier: str | None) -> None:
    book = PriceBook()
    assert book.cost("gpt-4o", 5000, 700, 1000, service_tier=tier) == book.cost("gpt-4o", 5000, 700, 1000)


def test_tiered_price_model_falls_back_to_calc_price() -> None:
    tiered = [
        m
        for m in OPENAI_TOKEN_MODELS
        if any(isinstance(v, TieredPrices) for v in m.get_prices(datetime.now(tz=timezone.utc)).__dict__.values())
    ]
    if not tiered:
        pytest.skip("snapshot has no tiered OpenAI prices")
    book = PriceBook()
    ref = _ref_for(tiered[0])
    small, large = book.cost(ref, 1_000, 100), book.cost(ref, 900_000, 100)
    assert isinstance(book._cache[ref], pricing._CalcPrice)
    assert small.usd == pytest.approx(_reference_usd(ref, (1_000, 100, 0, 0)), rel=REL_TOL)
    assert large.usd == pytest.approx(_reference_usd(ref, (900_000, 100, 0, 0)), rel=REL_TOL)


def _model_with_scheduled_price_change() -> tuple[Provider, ModelInfo]:
    later = date.today() + timedelta(days=365)
    model = ModelInfo(
        id="acme-1",
        match=ClauseEquals(equals="acme-1"),
        prices=[
            ConditionalPrice(constraint=None, prices=ModelPrice(input_mtok=Decimal("1"), output_mtok=Decimal("2"))),
            ConditionalPrice(
                constraint=StartDateConstraint(start_date=later),
                prices=ModelPrice(input_mtok=Decimal("3"), output_mtok=Decimal("1")),
            ),
        ],
    )
    return Provider(id="acme", name="Acme", api_pattern="acme", models=[model]), model


def test_price_scheduled_to_change_is_not_frozen_into_float_rates() -> None:
    provider, model = _model_with_scheduled_price_change()
    entry = pricing._compile(provider, model, None)
    assert isinstance(entry, pricing._CalcPrice)
    assert entry.cost(1_000_000, 1_000_000, 0, 0).usd == pytest.approx(3.0)  # today's price: 1 + 2
    # The reservation bound covers both today's and the scheduled price.
    assert (entry.max_input, entry.max_output) == pytest.approx((3e-6, 2e-6))


# --- model resolution ------------------------------------------------------------


@pytest.mark.parametrize(
    ("dated", "base"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("GPT-4o-mini-2024-07-18", "gpt-4o-mini"),
    ],
)
def test_dated_snapshot_names_resolve_to_the_base_model_price(dated: str, base: str) -> None:
    book = PriceBook()
    cost = book.cost(dated, 1234, 567, 89)
    assert cost.source == GENAI_PRICES_SOURCE
    assert cost == book.cost(base, 1234, 567, 89)
    assert book.is_known(dated)


def test_models_of_other_providers_are_found_by_name() -> None:
    book = PriceBook()
    cost = book.cost("claude-3-5-sonnet-latest", 1000, 100)
    assert cost.source == GENAI_PRICES_SOURCE and cost.usd is not None and cost.usd > 0
    expected = calc_price(Usage(input_tokens=1000, output_tokens=100), "claude-3-5-sonnet-latest")
    assert cost.usd == pytest.approx(float(expected.total_price), rel=REL_TOL)


@pytest.mark.parametrize("model", ["no-such-model-xyz", "", "   ", None])
def test_unknown_model_has_unknown_cost_and_no_bound(model: str | None) -> None:
    book = PriceBook()
    assert book.cost(model, 100, 10) == Cost(None, "unknown-model")
    assert book.cost(model, 100, 10, service_tier="priority") == Cost(None, "unknown-model")
    assert book.max_cost(model, 100, 10) is None
    assert book.is_known(model) is False


def test_known_models_are_known() -> None:
    book = PriceBook()
    assert book.is_known("gpt-4o-mini")
    assert book.is_known("gpt-4o-mini-2024-07-18")


# --- odd input never raises --------------------------------------------------------


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": -1},
        {"output_tokens": -5},
        {"input_tokens": 10, "cache_read_tokens": 20},  # more cached than input
        {"output_tokens": 10, "reasoning_tokens": 20},  # more reasoning than output
        {"input_tokens": "100"},
        {"input_tokens": object()},
    ],
)
@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-5.4", "claude-3-5-sonnet-latest"])
def test_inconsistent_or_invalid_tokens_give_unknown_cost_without_raising(model: str, usage: dict) -> None:
    assert PriceBook().cost(model, **usage) == Cost(None, "unknown-model")


def test_none_tokens_count_as_zero() -> None:
    book = PriceBook()
    assert book.cost("gpt-4o-mini", None, None, None, None) == Cost(0.0, GENAI_PRICES_SOURCE)  # type: ignore[arg-type]
    assert book.cost("gpt-4o-mini", 1000, None) == book.cost("gpt-4o-mini", 1000, 0)  # type: ignore[arg-type]
    assert book.max_cost("gpt-4o-mini", None, 10) == book.max_cost("gpt-4o-mini", 0, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", [["gpt-4o"], 42, object()])
def test_non_string_model_gives_unknown_without_raising(model: object) -> None:
    book = PriceBook()
    assert book.cost(model, 10, 10) == Cost(None, "unknown-model")  # type: ignore[arg-type]
    assert book.max_cost(model, 10, 10) is None  # type: ignore[arg-type]
    assert book.is_known(model) is False  # type: ignore[arg-type]


def test_max_cost_of_negative_tokens_is_none() -> None:
    assert PriceBook().max_cost("gpt-4o-mini", -1, 10) is None


# --- max_cost ----------------------------------------------------------------------


@pytest.mark.parametrize("model", OPENAI_TOKEN_MODELS, ids=lambda m: m.id)
def test_max_cost_bounds_cost_for_random_usages(model: ModelInfo) -> None:
    book = PriceBook()
    ref = _ref_for(model)
    for tier in [None, *_service_tiers(model)]:
        for i, o, c, r in _random_usages(seed=7, n=60):
            bound = book.max_cost(ref, i, o, service_tier=tier)
            cost = book.cost(ref, i, o, c, r, service_tier=tier).usd
            assert bound is not None and cost is not None
            assert bound >= cost * (1 - 1e-12), (ref, tier, (i, o, c, r), bound, cost)


def test_max_cost_gives_no_cache_discount() -> None:
    bound = PriceBook().max_cost("gpt-4o-mini", 1000, 500, service_tier="default")
    assert bound == pytest.approx(1000 * 0.15e-6 + 500 * 0.6e-6, rel=1e-12)


def test_max_cost_uses_the_highest_tier_rate() -> None:
    price = ModelPrice(
        input_mtok=TieredPrices(base=Decimal("1"), tiers=[Tier(start=200_000, price=Decimal("2"))]),
        output_mtok=TieredPrices(base=Decimal("4"), tiers=[Tier(start=200_000, price=Decimal("6"))]),
    )
    model = ModelInfo(id="acme-tiered", match=ClauseEquals(equals="acme-tiered"), prices=price)
    entry = pricing._compile(Provider(id="acme", name="Acme", api_pattern="acme", models=[model]), model, None)
    assert isinstance(entry, pricing._CalcPrice)
    assert (entry.max_input, entry.max_output) == pytest.approx((2e-6, 6e-6))
    assert entry.cost(1000, 1000, 0, 0).usd == pytest.approx(1000 * 1e-6 + 1000 * 4e-6)


# --- max_cost and service tiers ------------------------------------------------------
#
# A request names the tier it asks for; the response names the tier that served it,
# and the call is charged at that one. A request for no tier, or "auto", may be served
# at any tier (e.g. a project configured for priority), so its reservation must cover
# every tier's price; an explicit tier is bounded at its own prices.

# Every tier a response could report: the model's own variants, the ones OpenAI
# documents, and ones cost() prices at the standard price.
_RESPONSE_TIERS = (None, "default", "auto", "flex", "priority", "fast", "scale", "batch", "no-such-tier")
OPENAI_PRIORITY_MODELS = [m for m in OPENAI_TOKEN_MODELS if "priority" in _service_tiers(m)]
OPENAI_FLEX_MODELS = [m for m in OPENAI_TOKEN_MODELS if "flex" in _service_tiers(m)]


def test_the_snapshot_has_priority_and_flex_prices() -> None:
    assert len(OPENAI_PRIORITY_MODELS) >= 10
    assert any(m.id == "gpt-4o" for m in OPENAI_PRIORITY_MODELS)
    assert OPENAI_FLEX_MODELS


@pytest.mark.parametrize("model", OPENAI_PRIORITY_MODELS, ids=lambda m: m.id)
@pytest.mark.parametrize("requested", [None, "auto"])
def test_a_request_for_no_tier_or_auto_is_bounded_over_every_tier(model: ModelInfo, requested: str | None) -> None:
    book = PriceBook()
    ref = _ref_for(model)
    served_tiers = sorted({*_RESPONSE_TIERS, *_service_tiers(model)}, key=str)
    for i, o, c, r in _random_usages(seed=zlib.crc32(model.id.encode()), n=40):
        bound = book.max_cost(ref, i, o, service_tier=requested)
        assert bound is not None
        for served in served_tiers:
            cost = book.cost(ref, i, o, c, r, service_tier=served).usd
            assert cost is not None
            assert bound >= cost * (1 - 1e-12), (ref, requested, served, (i, o, c, r), bound, cost)


@pytest.mark.parametrize("model", OPENAI_PRIORITY_MODELS, ids=lambda m: m.id)
def test_no_tier_and_auto_bound_at_least_the_priority_price(model: ModelInfo) -> None:
    book = PriceBook()
    ref = _ref_for(model)
    priority = book.max_cost(ref, 10_000, 4_096, service_tier="priority")
    assert priority is not None
    assert book.max_cost(ref, 10_000, 4_096) == book.max_cost(ref, 10_000, 4_096, service_tier="auto")
    assert book.max_cost(ref, 10_000, 4_096) >= priority  # type: ignore[operator]
    assert priority >= book.cost(ref, 10_000, 4_096, 0, 0, service_tier="priority").usd  # type: ignore[operator]


def test_gpt_4o_reservation_covers_a_priority_answer() -> None:
    """The audit's case: reserved at the standard price, charged at priority."""
    book = PriceBook()
    charged = book.cost("gpt-4o", 10_000, 4_096, 0, 0, service_tier="priority").usd
    standard = book.cost("gpt-4o", 10_000, 4_096, 0, 0).usd
    assert charged is not None and standard is not None and charged > standard
    for requested in (None, "auto", "priority"):
        assert book.max_cost("gpt-4o", 10_000, 4_096, service_tier=requested) == pytest.approx(charged, rel=1e-12)
    assert book.max_cost("gpt-4o", 10_000, 4_096, service_tier="default") == pytest.approx(standard, rel=1e-12)


@pytest.mark.parametrize("model", OPENAI_FLEX_MODELS, ids=lambda m: m.id)
def test_an_explicit_flex_request_is_bounded_at_the_flex_price(model: ModelInfo) -> None:
    book = PriceBook()
    ref = _ref_for(model)
    i, o = 20_000, 2_000
    flex_bound = book.max_cost(ref, i, o, service_tier="flex")
    flex_entry = book._cache[(ref, "flex")]
    assert flex_bound == pytest.approx(i * flex_entry.max_input + o * flex_entry.max_output, rel=1e-12)
    if isinstance(flex_entry, pricing._FlatPrice):  # uncached usage costs exactly the bound
        assert flex_bound == pytest.approx(book.cost(ref, i, o, 0, 0, service_tier="flex").usd, rel=1e-12)
    assert flex_bound <= book.max_cost(ref, i, o)  # type: ignore[operator]
    for c, r in ((0, 0), (i // 2, o // 2), (i, o)):
        assert flex_bound >= book.cost(ref, i, o, c, r, service_tier="flex").usd * (1 - 1e-12)  # type: ignore[operator]


def test_an_explicit_flex_bound_is_the_flex_rates_below_the_standard_ones() -> None:
    model = next((m for m in OPENAI_FLEX_MODELS if m.id == "gpt-5.4"), None)
    if model is None:
        pytest.skip("snapshot has no flex variant for gpt-5.4")
    book = PriceBook()
    flex = book.max_cost("gpt-5.4", 1_000, 1_000, service_tier="flex")
    default = book.max_cost("gpt-5.4", 1_000, 1_000, service_tier="default")
    any_tier = book.max_cost("gpt-5.4", 1_000, 1_000)
    assert flex is not None and default is not None and any_tier is not None
    assert flex < default <= any_tier


def test_all_tier_bound_of_a_model_without_tiers_is_its_only_price() -> None:
    model = next(m for m in OPENAI_TOKEN_MODELS if not _service_tiers(m) and m.id == "o3-mini")
    book = PriceBook()
    ref = _ref_for(model)
    assert book.max_cost(ref, 1_000, 500) == book.max_cost(ref, 1_000, 500, service_tier="default")
    assert not isinstance(book._bounds[ref], pricing._TierBound)  # one price: its entry is the bound


def test_all_tier_bound_is_cached_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    book = PriceBook()
    first = book.max_cost("gpt-4o", 1_000, 500)
    assert isinstance(book._bounds["gpt-4o"], pricing._TierBound)

    def fail(model: object) -> object:
        raise AssertionError("rebuilt a cached bound")

    monkeypatch.setattr(book, "_build_bound", fail)
    assert book.max_cost("gpt-4o", 1_000, 500) == first
    assert book.max_cost("gpt-4o", 1_000, 500, service_tier="auto") == first


@pytest.mark.parametrize("tier", [["priority"], 42, object()])
def test_a_non_string_tier_is_bounded_over_every_tier(tier: object) -> None:
    book = PriceBook()
    bound = book.max_cost("gpt-4o", 1_000, 500, service_tier=tier)  # type: ignore[arg-type]
    assert bound == book.max_cost("gpt-4o", 1_000, 500)


def test_an_override_bounds_every_tier_and_replaces_a_cached_bound() -> None:
    book = PriceBook()
    assert book.max_cost("gpt-4o", 1_000_000, 0) == pytest.approx(4.25)  # priority input price
    book.set_price("gpt-4o", input_per_mtok=3.0, output_per_mtok=9.0)
    for tier in (None, "auto", "priority", "flex"):
        assert book.max_cost("gpt-4o", 1_000_000, 1_000_000, service_tier=tier) == pytest.approx(12.0)


def test_all_tier_bound_cache_size_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "_MAX_CACHE_ENTRIES", 10)
    book = PriceBook()
    for n in range(50):
        assert book.max_cost(f"made-up-model-{n}", 1, 1) is None
    assert len(book._bounds) <= 10
    assert book.max_cost("gpt-4o-mini", 1, 1) is not None


# --- audio and cache-write tokens --------------------------------------------------------


def _has_price(model: ModelInfo, key: str) -> bool:
    prices = [model.get_prices(datetime.now(tz=timezone.utc)), *(v.prices for v in model.price_variants or ())]
    return any(p.__dict__.get(key) is not None for p in prices)


OPENAI_AUDIO_MODELS = [
    m for m in OPENAI_TOKEN_MODELS if _has_price(m, "input_audio_mtok") or _has_price(m, "output_audio_mtok")
]
OPENAI_CACHE_WRITE_MODELS = [m for m in OPENAI_TOKEN_MODELS if _has_price(m, "cache_write_mtok")]


def test_bounds_count_every_token_rate_of_a_side() -> None:
    for key in ("input_mtok", "cache_read_mtok", "cache_write_mtok", "input_audio_mtok", "cache_audio_read_mtok"):
        assert key in pricing._INPUT_SIDE_KEYS
    for key in ("output_mtok", "output_reasoning_mtok", "output_audio_mtok"):
        assert key in pricing._OUTPUT_SIDE_KEYS
    assert OPENAI_AUDIO_MODELS and OPENAI_CACHE_WRITE_MODELS


def _audio_usages(seed: int, n: int = 40) -> list[tuple[int, int, int, int, int, int, int]]:
    """(input, output, cached, reasoning, audio in, audio out, cache write), consistent."""
    rng = random.Random(seed)
    usages = []
    for i, o, c, r in _random_usages(seed, n):
        w = rng.choice([0, i - c, rng.randint(0, i - c)])
        ia = rng.choice([0, i, rng.randint(0, i)])
        oa = rng.choice([0, o, rng.randint(0, o)])
        usages.append((i, o, c, r, ia, oa, w))
    return usages


def _reference_detailed(ref: str, usage: tuple[int, ...], tier: str | None = None) -> float:
    i, o, c, r, ia, oa, w = usage
    genai_usage = Usage(
        input_tokens=i, output_tokens=o, cache_read_tokens=c, output_reasoning_tokens=r,
        input_audio_tokens=ia, output_audio_tokens=oa, cache_write_tokens=w,
    )
    context = {"service_tier": tier} if tier else None
    return float(calc_price(genai_usage, ref, provider_id="openai", price_context=context).total_price)


@pytest.mark.parametrize("model", OPENAI_AUDIO_MODELS + OPENAI_CACHE_WRITE_MODELS, ids=lambda m: m.id)
def test_audio_and_cache_write_tokens_are_priced_and_bounded(model: ModelInfo) -> None:
    book = PriceBook()
    ref = _ref_for(model)
    for tier in [None, *_service_tiers(model)]:
        for usage in _audio_usages(seed=zlib.crc32(f"{model.id}/{tier}".encode())):
            i, o, c, r, ia, oa, w = usage
            got = book.cost(
                ref, i, o, c, r, service_tier=tier, input_audio_tokens=ia, output_audio_tokens=oa, cache_write_tokens=w
            ).usd
            try:
                expected = _reference_detailed(ref, usage, tier)
            except ValueError:  # genai-prices refuses this split (e.g. audio and cache both counted)
                continue
            assert got is not None and math.isclose(got, expected, rel_tol=REL_TOL), (ref, tier, usage, got, expected)
            for requested in (tier, None):
                bound = book.max_cost(ref, i, o, service_tier=requested)
                assert bound is not None and bound >= got * (1 - 1e-12), (ref, requested, tier, usage, bound, got)


def test_audio_model_from_the_audit_is_priced_and_reserved_at_audio_rates() -> None:
    if not any(m.id == "gpt-audio" for m in OPENAI_AUDIO_MODELS):
        pytest.skip("snapshot has no audio prices for gpt-audio")
    book = PriceBook()
    cost = book.cost("gpt-audio", 2000, 1000, input_audio_tokens=1900, output_audio_tokens=1000)
    assert cost.usd == pytest.approx(_reference_detailed("gpt-audio", (2000, 1000, 0, 0, 1900, 1000, 0)), rel=REL_TOL)
    assert cost.usd > book.cost("gpt-audio", 2000, 1000).usd  # type: ignore[operator]
    assert book.max_cost("gpt-audio", 2000, 1000) >= cost.usd  # type: ignore[operator]


def test_cache_write_model_from_the_audit_is_priced_at_its_write_rate() -> None:
    if not any(m.id == "gpt-6-sol" for m in OPENAI_CACHE_WRITE_MODELS):
        pytest.skip("snapshot has no cache-write price for gpt-6-sol")
    book = PriceBook()
    cost = book.cost("gpt-6-sol", 100_000, 1000, cache_write_tokens=90_000)
    assert cost.usd == pytest.approx(_reference_detailed("gpt-6-sol", (100_000, 1000, 0, 0, 0, 0, 90_000)), rel=REL_TOL)
    assert book.max_cost("gpt-6-sol", 100_000, 1000) >= cost.usd  # type: ignore[operator]
    assert book.max_cost("gpt-6-sol", 100_000, 1000, service_tier="default") >= cost.usd  # type: ignore[operator]


def test_audio_and_cache_write_counts_do_not_change_a_text_only_price() -> None:
    book = PriceBook()
    plain = book.cost("gpt-4o-mini", 1000, 500, 200)
    detailed = book.cost(
        "gpt-4o-mini", 1000, 500, 200, input_audio_tokens=300, output_audio_tokens=100, cache_write_tokens=400
    )
    assert detailed == plain
    nones = book.cost("gpt-4o-mini", 1000, 500, input_audio_tokens=None, cache_write_tokens=None)  # type: ignore[arg-type]
    assert nones == book.cost("gpt-4o-mini", 1000, 500)


@pytest.mark.parametrize(
    "extra",
    [
        {"input_audio_tokens": -1},
        {"output_audio_tokens": -1},
        {"cache_write_tokens": -1},
        {"input_audio_tokens": 1001},  # more audio than input
        {"output_audio_tokens": 501},  # more audio than output
        {"cache_write_tokens": 801},  # cache reads and writes past the input
        {"input_audio_tokens": "10"},
    ],
)
@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-audio", "gpt-6-sol", "no-such-model"])
def test_inconsistent_audio_or_cache_write_counts_give_unknown_cost(model: str, extra: dict) -> None:
    assert PriceBook().cost(model, 1000, 500, 200, **extra) == Cost(None, "unknown-model")


# --- overrides -------------------------------------------------------------------


def test_override_set_in_code_replaces_the_genai_price() -> None:
    book = PriceBook()
    assert book.cost("gpt-4o-mini", 1000, 500).source == GENAI_PRICES_SOURCE  # cached genai entry
    book.set_price("gpt-4o-mini", input_per_mtok=1.0, output_per_mtok=2.0, cache_read_per_mtok=0.5)
    cost = book.cost("gpt-4o-mini", 1_000_000, 1_000_000, 400_000)
    assert cost.source == "override"
    assert cost.usd == pytest.approx(0.6 * 1.0 + 0.4 * 0.5 + 2.0)
    assert book.max_cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(3.0)


def test_override_applies_to_dated_snapshots_and_all_service_tiers() -> None:
    book = PriceBook()
    book.set_price("gpt-4o", input_per_mtok=1.0, output_per_mtok=2.0)
    for name in ("gpt-4o", "GPT-4o", "gpt-4o-2024-08-06", "gpt-4o-20240806"):
        for tier in (None, "priority"):
            assert book.cost(name, 1_000_000, 0, service_tier=tier) == Cost(pytest.approx(1.0), "override"), name
    assert book.cost("gpt-4o-mini", 10, 10).source == GENAI_PRICES_SOURCE  # another model is untouched


def test_cache_read_override_defaults_to_the_input_price() -> None:
    book = PriceBook(overrides={"my-model": {"input_per_mtok": 3.0, "output_per_mtok": 6.0}})
    assert book.cost("my-model", 1_000_000, 0, cache_read_tokens=500_000) == Cost(pytest.approx(3.0), "override")


def test_overrides_can_add_models_unknown_to_genai_prices() -> None:
    book = PriceBook(overrides={"acme-llm": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}})
    assert book.is_known("acme-llm")
    assert book.cost("acme-llm", 2_000_000, 1_000_000) == Cost(pytest.approx(2.5), "override")


def test_price_file_yaml(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "gpt-4o-mini:\n  input_per_mtok: 0.2\n  output_per_mtok: 0.8\n  cache_read_per_mtok: 0.1\n"
        "my-model:\n  input_per_mtok: 1\n  output_per_mtok: 2\n"
    )
    loaded = load_price_file(path)
    assert loaded == {
        "gpt-4o-mini": {"input_per_mtok": 0.2, "output_per_mtok": 0.8, "cache_read_per_mtok": 0.1},
        "my-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
    }
    book = PriceBook(overrides=loaded)
    assert book.cost("gpt-4o-mini", 1_000_000, 1_000_000, 500_000) == Cost(pytest.approx(0.1 + 0.05 + 0.8), "override")


def test_price_file_json(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"my-model": {"input_per_mtok": 2, "output_per_mtok": 4}}))
    book = PriceBook(overrides=load_price_file(path))
    assert book.cost("my-model", 500_000, 250_000) == Cost(pytest.approx(2.0), "override")


def test_empty_price_file_means_no_overrides(tmp_path: Path) -> None:
    path = tmp_path / "prices.yml"
    path.write_text("")
    assert load_price_file(path) == {}


BAD_FILES = [
    ("missing.yaml", "m1:\n  input_per_mtok: 1\n", ["m1", "output_per_mtok"]),
    ("negative.yaml", "m2:\n  input_per_mtok: -1\n  output_per_mtok: 1\n", ["m2", "input_per_mtok"]),
    ("text.json", '{"m3": {"input_per_mtok": "cheap", "output_per_mtok": 1}}', ["m3", "input_per_mtok", "cheap"]),
    ("typo.yaml", "m4:\n  input_mtok: 1\n  output_per_mtok: 1\n", ["m4", "input_mtok"]),
    ("bool.yaml", "m5:\n  input_per_mtok: true\n  output_per_mtok: 1\n", ["m5", "input_per_mtok"]),
    ("nan.yaml", "m6:\n  input_per_mtok: .nan\n  output_per_mtok: 1\n", ["m6", "input_per_mtok"]),
    ("flat.yaml", "m7: 0.5\n", ["m7", "mapping"]),
    ("list.yaml", "- m8\n", ["mapping"]),
    ("broken.yaml", "m9: [unclosed\n", ["YAML"]),
    ("broken.json", '{"m10": ', ["JSON"]),
    ("prices.toml", "m11 = 1\n", ["unsupported"]),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_price_file_raises_value_error_naming_the_problem(
    tmp_path: Path, name: str, content: str, expected: list[str]
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError) as excinfo:
        load_price_file(path)
    message = str(excinfo.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_bad_overrides_in_code_raise_value_error() -> None:
    with pytest.raises(ValueError, match="my-model.*output_per_mtok"):
        PriceBook(overrides={"my-model": {"input_per_mtok": 1.0}})
    with pytest.raises(ValueError, match="my-model.*input_per_mtok"):
        PriceBook().set_price("my-model", input_per_mtok=-1.0, output_per_mtok=1.0)


# --- process-wide instance ------------------------------------------------------------


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("WFLO_PRICES_FILE", raising=False)
    reset_default_pricebook()
    yield
    reset_default_pricebook()


@pytest.mark.usefixtures("fresh_default")
def test_default_pricebook_reads_wflo_prices_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("gpt-4o:\n  input_per_mtok: 1\n  output_per_mtok: 1\n")
    monkeypatch.setenv("WFLO_PRICES_FILE", str(path))
    book = default_pricebook()
    assert book is default_pricebook()
    assert book.cost("gpt-4o", 1_000_000, 0).source == "override"
    path.write_text("gpt-4o:\n  input_per_mtok: 5\n  output_per_mtok: 5\n")
    assert default_pricebook().cost("gpt-4o", 1_000_000, 0).usd == pytest.approx(1.0)  # not re-read
    reset_default_pricebook()
    assert default_pricebook().cost("gpt-4o", 1_000_000, 0).usd == pytest.approx(5.0)


@pytest.mark.usefixtures("fresh_default")
def test_default_pricebook_without_prices_file_uses_genai_prices() -> None:
    assert default_pricebook().cost("gpt-4o-mini", 10, 10).source == GENAI_PRICES_SOURCE


# --- concurrency and memory ------------------------------------------------------------


def test_concurrent_costs_and_overrides_stay_consistent() -> None:
    book = PriceBook()
    errors: list[BaseException] = []
    models = ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3-mini", "gpt-4o-mini-2024-07-18"]

    def price_many() -> None:
        try:
            for n in range(2000):
                cost = book.cost(models[n % len(models)], 1000, 100, 10)
                assert cost.usd is not None and cost.source in (GENAI_PRICES_SOURCE, "override")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=price_many) for _ in range(8)]
    for t in threads:
        t.start()
    for n in range(20):
        book.set_price("gpt-4.1", input_per_mtok=float(n), output_per_mtok=1.0)
    for t in threads:
        t.join()
    assert not errors
    assert book.cost("gpt-4.1", 1_000_000, 0) == Cost(pytest.approx(19.0), "override")


def test_cache_size_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "_MAX_CACHE_ENTRIES", 10)
    book = PriceBook()
    for n in range(50):
        book.cost(f"made-up-model-{n}", 1, 1)
    assert len(book._cache) <= 10
    assert book.cost("gpt-4o-mini", 1, 1).usd is not None


def test_time_of_day_price_is_not_frozen_into_float_rates() -> None:
    off_peak = TimeOfDateConstraint(start_time=time(16, 30), end_time=time(0, 30))
    model = ModelInfo(
        id="acme-offpeak",
        match=ClauseEquals(equals="acme-offpeak"),
        prices=[
            ConditionalPrice(constraint=None, prices=ModelPrice(input_mtok=Decimal("2"), output_mtok=Decimal("8"))),
            ConditionalPrice(constraint=off_peak, prices=ModelPrice(input_mtok=Decimal("1"), output_mtok=Decimal("4"))),
        ],
    )
    entry = pricing._compile(Provider(id="acme", name="Acme", api_pattern="acme", models=[model]), model, None)
    assert isinstance(entry, pricing._CalcPrice)
    assert (entry.max_input, entry.max_output) == pytest.approx((2e-6, 8e-6))


def test_a_snapshot_rebuilds_a_book_that_prices_alike_and_changes_with_an_override() -> None:
    book = PriceBook(overrides={"in-house-llm": {"input_per_mtok": 2.0, "output_per_mtok": 8.0}})
    copy = PriceBook.from_snapshot(book.snapshot())
    for model in ("in-house-llm", "gpt-4o-mini", "no-such-model"):
        assert copy.cost(model, 1000, 100, 0, 0) == book.cost(model, 1000, 100, 0, 0)
    assert copy.snapshot() == book.snapshot()

    before = book.snapshot()
    book.set_price("in-house-llm", input_per_mtok=4.0, output_per_mtok=8.0)
    assert book.snapshot() != before
    assert PriceBook.from_snapshot(book.snapshot()).cost("in-house-llm", 1_000_000, 0).usd == pytest.approx(4.0)


# --- end to end: a reservation holds whatever tier serves the call ------------------------
#
# The fake server of tests/conftest.py answers every request at service_tier "default",
# so these use an in-memory transport that answers as a project configured for
# priority processing does: at "priority" unless the request asks for another tier.

E2E_MODEL = "gpt-4o-mini"
E2E_MAX_TOKENS = 4096
E2E_MESSAGES = [{"role": "user", "content": "Write the longest answer you are allowed to."}]


class _PriorityProject:
    """Answers chat completions with max_tokens of output, at the tier a priority project would use."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, request):  # type: ignore[no-untyped-def]
        http = _http_module()
        self.requests += 1
        body = json.loads(request.content)
        asked = body.get("service_tier")
        served = asked if asked in ("default", "flex", "priority") else "priority"  # auto / none: the project's tier
        prompt = sum(len(m["content"]) for m in body["messages"])  # bytes bound the reserved token estimate
        completion = body["max_tokens"]
        return http.Response(200, json={
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
            "service_tier": served,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        })


def _http_module():  # type: ignore[no-untyped-def]
    """The HTTP library the installed openai is built on: httpx2 for 3.x, httpx for 2.x."""
    import openai

    return __import__("httpx2" if int(openai.__version__.split(".")[0]) >= 3 else "httpx")


@pytest.fixture
def wflo() -> Iterator[object]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import wflo_otel

    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=InMemorySpanExporter(), batch=False)
    try:
        yield handle
    finally:
        handle.shutdown()


def _priority_client(server: _PriorityProject):  # type: ignore[no-untyped-def]
    import openai

    http = _http_module()
    return openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0,
                         http_client=http.Client(transport=http.MockTransport(server)))


def _tier_kwargs(tier: str | None) -> dict[str, str]:
    return {} if tier is None else {"service_tier": tier}


@pytest.mark.parametrize("tier", [None, "auto", "priority"])
def test_a_call_that_may_be_served_at_priority_is_refused_if_only_the_standard_price_fits(wflo, tier) -> None:
    import wflo_otel
    from wflo_otel import BudgetExceededError

    if "priority" not in _service_tiers(next(m for m in OPENAI_TOKEN_MODELS if m.id == E2E_MODEL)):
        pytest.skip("snapshot has no priority price for gpt-4o-mini")
    book = wflo.pricebook  # type: ignore[attr-defined]
    standard = book.max_cost(E2E_MODEL, 0, E2E_MAX_TOKENS, service_tier="default")
    priority = book.max_cost(E2E_MODEL, 0, E2E_MAX_TOKENS, service_tier="priority")
    budget = (standard + priority) / 2  # the output ceiling fits at the standard price only
    server = _PriorityProject()
    client = _priority_client(server)
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("priority", budget_usd=budget) as wf:
            client.chat.completions.create(model=E2E_MODEL, messages=E2E_MESSAGES, max_tokens=E2E_MAX_TOKENS,
                                           **_tier_kwargs(tier))
    assert caught.value.refused and server.requests == 0, "refused before sending, not overrun after"
    assert wf.spent_usd == 0.0

    # Asking for the standard tier explicitly is reserved, served and charged at it.
    with wflo_otel.workflow("default", budget_usd=budget) as wf:
        client.chat.completions.create(model=E2E_MODEL, messages=E2E_MESSAGES, max_tokens=E2E_MAX_TOKENS,
                                       service_tier="default")
    assert server.requests == 1 and 0 < wf.spent_usd <= budget


@pytest.mark.parametrize("tier", [None, "auto"])
def test_a_call_served_at_priority_is_charged_at_priority_within_its_reservation(wflo, tier) -> None:
    import wflo_otel

    book = wflo.pricebook  # type: ignore[attr-defined]
    server = _PriorityProject()
    client = _priority_client(server)
    prompt = sum(len(m["content"]) for m in E2E_MESSAGES)
    charged = book.cost(E2E_MODEL, prompt, E2E_MAX_TOKENS, service_tier="priority").usd
    budget = charged * 1.5  # room for the loose input estimate, at any tier
    with wflo_otel.workflow("served", budget_usd=budget) as wf:
        client.chat.completions.create(model=E2E_MODEL, messages=E2E_MESSAGES, max_tokens=E2E_MAX_TOKENS,
                                       **_tier_kwargs(tier))
    assert server.requests == 1
    assert wf.spent_usd == pytest.approx(charged, rel=1e-9) and wf.spent_usd <= budget


def test_an_override_prices_the_snapshots_genai_prices_resolves_to_it_and_no_others():
    book = PriceBook(overrides={"gpt-4o": {"input_per_mtok": 2.5, "output_per_mtok": 10}, "house": {"input_per_mtok": 1, "output_per_mtok": 2}})
    assert book.cost("gpt-4o-2024-08-06", input_tokens=1_000_000).source == "override"  # resolves to gpt-4o
    listed_apart = book.cost("gpt-4o-2024-05-13", input_tokens=1_000_000)  # its own model, at its own price
    assert listed_apart.source.startswith("genai-prices") and listed_apart.usd == pytest.approx(5.0)
    assert book.max_cost("gpt-4o-2024-05-13", 1_000_000, 0) >= listed_apart.usd
    assert book.cost("house-2025-01-01", input_tokens=1_000_000).usd == pytest.approx(1.0)  # unknown dated name
