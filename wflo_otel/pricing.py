"""USD cost of LLM calls, priced from the bundled ``genai-prices`` snapshot.

Pricing runs on every instrumented call, so it has to cost microseconds, not the
~50 µs of ``genai_prices.calc_price`` (Decimal arithmetic, model matching, usage
decomposition). :class:`PriceBook` therefore resolves each ``(model, service_tier)``
once and caches the result:

* a *flat* entry (three float per-token rates) when the price in force now is a
  plain per-token price over input / cached input / output tokens and no date or
  time-of-day constraint can change it later — the hot path is then one dict
  lookup and a few float multiplications;
* a *calc* entry for anything else (tiered prices, prices that change at a future
  date or time of day, audio/image/character priced models, ...), which keeps the
  resolved genai-prices model and calls its ``calc_price`` per call;
* an *unknown* entry, so unknown model strings are not looked up again.

:meth:`PriceBook.max_cost` bounds a call before it is sent, so it must hold whatever
tier ends up serving the request: an explicit tier (``default``, ``flex``,
``priority``, ...) is bounded at that tier's prices, while no tier or ``auto``
(which OpenAI may serve at the project's configured tier, e.g. priority) is bounded
at the highest price over every tier the model has prices for. Those all-tier
bounds are cached per model as well. Bounds cover every token rate a side can be
billed at (audio, cache writes, images, ... as well as text).

Each OpenAI-compatible provider is priced as itself: the instrumentation names the
provider from the client's base URL (:func:`provider_for_url`, genai-prices' own
API-URL patterns) and passes ``provider=`` to ``cost()`` / ``max_cost()``, so a
model two providers serve is priced at the one that served it. Only when the URL
is no known provider's (a local server, a proxy) is the model found by name:
``openai`` first, then any provider that lists it.

Price data is never fetched at run time (no ``UpdatePrices``); users can add or
replace prices with overrides (code or a YAML/JSON file named by
``WFLO_PRICES_FILE``).

Token conventions are OpenAI's: ``input_tokens`` includes ``cache_read_tokens``,
``cache_write_tokens`` and ``input_audio_tokens``, and ``output_tokens`` includes
``reasoning_tokens`` and ``output_audio_tokens``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import yaml
from genai_prices.data_snapshot import get_snapshot
from genai_prices.data_units import unit_data
from genai_prices.types import (
    ModelInfo,
    ModelPrice,
    PriceContext,
    Provider,
    StartDateConstraint,
    TieredPrices,
    TimeOfDateConstraint,
)

__all__ = (
    "GENAI_PRICES_SOURCE",
    "OVERRIDE_SOURCE",
    "PRICES_FILE_ENV",
    "UNKNOWN_COST",
    "UNKNOWN_MODEL_SOURCE",
    "Cost",
    "PriceBook",
    "default_pricebook",
    "load_price_file",
    "provider_for_url",
    "provider_name",
    "reset_default_pricebook",
)

_log = logging.getLogger(__name__)

GENAI_PRICES_SOURCE: str = f"genai-prices@{genai_prices.__version__}"
OVERRIDE_SOURCE = "override"
UNKNOWN_MODEL_SOURCE = "unknown-model"
PRICES_FILE_ENV = "WFLO_PRICES_FILE"

# Tiers that cost() prices at the model's standard price. A response names the tier
# that served it, so "auto" there means the standard price; a *request* for "auto"
# (or none) may be served at any tier, so max_cost() bounds it over all of them.
_BASE_TIERS = frozenset({"default", "auto"})
_ANY_TIER = "auto"
# Unbounded model strings (e.g. from a misbehaving proxy) must not grow memory forever.
_MAX_CACHE_ENTRIES = 4096
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")

# Override file keys: required, optional.
_OVERRIDE_KEYS = ("input_per_mtok", "output_per_mtok")
_OPTIONAL_OVERRIDE_KEYS = ("cache_read_per_mtok",)

# Price constraints whose effect over time _breakpoints() knows how to enumerate.
_KNOWN_CONSTRAINTS = (StartDateConstraint, TimeOfDateConstraint)
# genai-prices price keys, by the unit family they price (tokens, tool_calls, ...).
_PRICE_KEY_UNITS: dict[str, Mapping[str, Any]] = {u["price_key"]: u for u in unit_data.values()}
# The only token prices the flat fast path knows how to apply.
_FLAT_TOKEN_KEYS = frozenset({"input_mtok", "output_mtok", "cache_read_mtok"})
# Price keys a token of each side can be billed at (text, cache reads and writes,
# audio, images, reasoning, ...), from genai-prices' unit registry; used for
# max_cost() upper bounds, which must hold whatever kind the tokens turn out to be.
_INPUT_SIDE_KEYS = tuple(
    key
    for key, unit in _PRICE_KEY_UNITS.items()
    if unit["dimensions"].get("family") == "tokens" and unit["dimensions"].get("direction") == "input"
)
_OUTPUT_SIDE_KEYS = tuple(
    key
    for key, unit in _PRICE_KEY_UNITS.items()
    if unit["dimensions"].get("family") == "tokens" and unit["dimensions"].get("direction") == "output"
)


@dataclass(frozen=True, slots=True)
class Cost:
    """Cost of one call: ``usd`` is None when the price is unknown."""

    usd: float | None
    source: str  # GENAI_PRICES_SOURCE | OVERRIDE_SOURCE | UNKNOWN_MODEL_SOURCE


UNKNOWN_COST = Cost(None, UNKNOWN_MODEL_SOURCE)

# A frozen dataclass __init__ goes through object.__setattr__ per field (~0.2 µs);
# filling the slots directly halves that, which matters on the per-call hot path.
_new_object = object.__new__
_set_usd = Cost.usd.__set__  # type: ignore[attr-defined]
_set_source = Cost.source.__set__  # type: ignore[attr-defined]


class _FlatPrice:
    """Per-token float rates: the fast path for plain token prices and overrides."""

    __slots__ = ("input", "cache_read", "output", "source", "max_input", "max_output")

    def __init__(self, input: float, cache_read: float, output: float, source: str) -> None:
        self.input = input
        self.cache_read = cache_read
        self.output = output
        self.source = source
        # Upper bound for max_cost(): no cache discount (nor cache premium).
        self.max_input: float | None = max(input, cache_read)
        self.max_output: float | None = output

    def cost(self, i: int, o: int, c: int, r: int) -> Cost:
        # Reasoning tokens are part of output_tokens and billed at the output rate.
        cost = _new_object(Cost)
        _set_usd(cost, (i - c) * self.input + c * self.cache_read + o * self.output)
        _set_source(cost, self.source)
        return cost

    def cost_detailed(self, i: int, o: int, c: int, r: int, ia: int, oa: int, w: int) -> Cost:
        # Flat entries only exist for prices with no audio or cache-write rate (and
        # overrides, which have none): such tokens are billed as the text input /
        # output tokens they are counted in, as genai-prices does.
        return self.cost(i, o, c, r)

    def __repr__(self) -> str:
        rates = f"input={self.input!r}, cache_read={self.cache_read!r}, output={self.output!r}"
        return f"_FlatPrice({rates}, source={self.source!r})"


class _CalcPrice:
    """Delegates to genai-prices per call, for prices the flat path cannot express."""

    __slots__ = ("provider", "model", "price_context", "source", "max_input", "max_output")

    def __init__(
        self,
        provider: Provider,
        model: ModelInfo,
        price_context: PriceContext | None,
        bound: tuple[float, float],
    ) -> None:
        self.provider = provider
        self.model = model
        self.price_context = price_context
        self.source = GENAI_PRICES_SOURCE
        self.max_input: float | None = bound[0]
        self.max_output: float | None = bound[1]

    def cost(self, i: int, o: int, c: int, r: int) -> Cost:
        usage = genai_prices.Usage(
            input_tokens=i, output_tokens=o, cache_read_tokens=c, output_reasoning_tokens=r
        )
        return self._calc(usage)

    def cost_detailed(self, i: int, o: int, c: int, r: int, ia: int, oa: int, w: int) -> Cost:
        usage = genai_prices.Usage(
            input_tokens=i,
            output_tokens=o,
            cache_read_tokens=c,
            output_reasoning_tokens=r,
            input_audio_tokens=ia,
            output_audio_tokens=oa,
            cache_write_tokens=w,
        )
        return self._calc(usage)

    def _calc(self, usage: genai_prices.Usage) -> Cost:
        try:
            calc = self.model.calc_price(usage, self.provider, price_context=self.price_context)
        except (ValueError, ArithmeticError):
            _log.debug("genai-prices could not price %s for %r", self.model.id, usage, exc_info=True)
            return UNKNOWN_COST
        return Cost(float(calc.total_price), self.source)

    def __repr__(self) -> str:
        where = f"provider={self.provider.id!r}, model={self.model.id!r}"
        return f"_CalcPrice({where}, price_context={self.price_context!r})"


class _UnknownPrice:
    """Cached negative result so unknown models are not matched again on every call."""

    __slots__ = ()
    source = UNKNOWN_MODEL_SOURCE
    max_input: float | None = None
    max_output: float | None = None

    def cost(self, i: int, o: int, c: int, r: int) -> Cost:
        return UNKNOWN_COST

    def cost_detailed(self, i: int, o: int, c: int, r: int, ia: int, oa: int, w: int) -> Cost:
        return UNKNOWN_COST

    def __repr__(self) -> str:
        return "_UnknownPrice()"


class _TierBound:
    """max_cost() rates of a model over all its service tiers (a request for none, or "auto")."""

    __slots__ = ("max_input", "max_output")

    def __init__(self, max_input: float, max_output: float) -> None:
        self.max_input: float | None = max_input
        self.max_output: float | None = max_output

    def __repr__(self) -> str:
        return f"_TierBound(max_input={self.max_input!r}, max_output={self.max_output!r})"


_PriceEntry = _FlatPrice | _CalcPrice | _UnknownPrice
_BoundEntry = _PriceEntry | _TierBound
_UNKNOWN_ENTRY = _UnknownPrice()


class PriceBook:
    """Thread-safe price lookups; caches per (model, service_tier), and all-tier bounds per model.

    Reads of the cache take no lock (a dict lookup is atomic); resolving a new key,
    and changing overrides, happen under a lock so a stale entry can't be stored
    after an override changed.
    """

    def __init__(
        self,
        provider_id: str = "openai",
        overrides: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        self._provider_id = provider_id
        self._overrides: dict[str, _FlatPrice] = {}
        for model, prices in (overrides or {}).items():
            self._overrides[_override_key(model)] = _override_entry(model, prices)
        self._cache: dict[Any, _PriceEntry] = {}
        # max_cost() bounds over every service tier, for requests naming none (or "auto").
        self._bounds: dict[Any, _BoundEntry] = {}
        self._lock = threading.Lock()

    def set_price(
        self,
        model: str,
        *,
        input_per_mtok: float,
        output_per_mtok: float,
        cache_read_per_mtok: float | None = None,
    ) -> None:
        """Add or replace an override; it takes effect for the next call."""
        prices = {"input_per_mtok": input_per_mtok, "output_per_mtok": output_per_mtok}
        if cache_read_per_mtok is not None:
            prices["cache_read_per_mtok"] = cache_read_per_mtok
        entry = _override_entry(model, prices)
        with self._lock:
            self._overrides[_override_key(model)] = entry
            # Dated snapshots and resolved ids may map to this override too: drop every
            # cached entry (overrides change rarely; entries rebuild on next use).
            self._cache.clear()
            self._bounds.clear()

    def cost(
        self,
        model: str | None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        reasoning_tokens: int = 0,
        service_tier: str | None = None,
        input_audio_tokens: int = 0,
        output_audio_tokens: int = 0,
        cache_write_tokens: int = 0,
        provider: str | None = None,
    ) -> Cost:
        """Cost of one call; never raises (odd input gives an unknown cost).

        ``provider`` is the genai-prices provider id that served the call (see
        :func:`provider_for_url`); None finds the model by name.

        ``service_tier`` is the tier that served the call (as the response reports
        it); ``auto``, ``default`` and None mean the standard price. Audio and
        cache-write tokens are counted within ``input_tokens`` / ``output_tokens``
        (OpenAI's convention) and priced at the model's audio / cache-write rates
        where it has them, else as the text tokens they are counted in.
        """
        try:
            if provider is None:
                key = model if service_tier is None else (model, service_tier)
            else:
                key = (model, service_tier, provider)
            entry = self._cache.get(key) or self._resolve(model, service_tier, provider)
            i = input_tokens or 0
            o = output_tokens or 0
            c = cache_read_tokens or 0
            r = reasoning_tokens or 0
            if c > i or r > o or c < 0 or r < 0:
                _log.debug("inconsistent usage for %r: in=%r out=%r cached=%r reasoning=%r", model, i, o, c, r)
                return UNKNOWN_COST
            if input_audio_tokens or output_audio_tokens or cache_write_tokens:
                ia = input_audio_tokens or 0
                oa = output_audio_tokens or 0
                w = cache_write_tokens or 0
                if ia < 0 or oa < 0 or w < 0 or ia > i or oa > o or c + w > i:
                    _log.debug(
                        "inconsistent usage for %r: in=%r out=%r cached=%r audio in=%r audio out=%r cache write=%r",
                        model, i, o, c, ia, oa, w,
                    )
                    return UNKNOWN_COST
                return entry.cost_detailed(i, o, c, r, ia, oa, w)
            return entry.cost(i, o, c, r)
        except Exception:  # pricing must never break the caller's LLM call
            _log.debug("cannot price model %r", model, exc_info=True)
            return UNKNOWN_COST

    def max_cost(
        self,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        *,
        service_tier: str | None = None,
        provider: str | None = None,
    ) -> float | None:
        """Upper bound of ``cost()`` for a call using at most these tokens, or None if unknown.

        Used to reserve budget before a call, with the *requested* ``service_tier``:
        an explicit tier is bounded at that tier's prices; None or ``auto`` (which
        the API may serve at any tier, e.g. the project's default of priority) at
        the highest price over every tier the model has. Input tokens are assumed
        to cost the highest input-side rate (text, cache read or write, audio,
        ...), output tokens the highest output-side rate, tiered prices their
        highest tier, and prices scheduled to change later their highest
        scheduled rate.
        """
        try:
            if type(service_tier) is not str or service_tier == _ANY_TIER:
                bound_key = model if provider is None else (model, provider)
                entry: _BoundEntry = self._bounds.get(bound_key) or self._resolve_bound(model, provider)
            else:
                key = (model, service_tier) if provider is None else (model, service_tier, provider)
                entry = self._cache.get(key) or self._resolve(model, service_tier, provider)
            if entry.max_input is None or entry.max_output is None:
                return None
            i = input_tokens or 0
            o = output_tokens or 0
            if i < 0 or o < 0:
                _log.debug("negative token bound for %r: in=%r out=%r", model, i, o)
                return None
            return i * entry.max_input + o * entry.max_output
        except Exception:
            _log.debug("cannot bound cost of model %r", model, exc_info=True)
            return None

    def snapshot(self) -> tuple:
        """What this book prices by, as plain comparable values: provider and overrides.

        ``PriceBook.from_snapshot`` builds an equal book from it in another process (the
        exporter's writer process prices there); two snapshots compare equal exactly when
        the books would price alike, so the receiver rebuilds only after a change.
        """
        with self._lock:
            overrides = tuple(
                sorted((key, e.input, e.cache_read, e.output, e.source) for key, e in self._overrides.items())
            )
        return (self._provider_id, overrides)

    @classmethod
    def from_snapshot(cls, snapshot: tuple) -> "PriceBook":
        provider_id, overrides = snapshot
        book = cls(provider_id)
        book._overrides = {key: _FlatPrice(*rates) for key, *rates in overrides}
        return book

    def is_known(self, model: str | None, provider: str | None = None) -> bool:
        """Whether ``model`` has a price (from genai-prices or an override), at ``provider`` if given."""
        try:
            key = model if provider is None else (model, None, provider)
            entry = self._cache.get(key) or self._resolve(model, None, provider)
        except Exception:
            _log.debug("cannot resolve model %r", model, exc_info=True)
            return False
        return entry is not _UNKNOWN_ENTRY

    def _resolve(self, model: str | None, service_tier: str | None, provider: str | None = None) -> _PriceEntry:
        """Build and cache the entry for a key missing from the cache (slow path)."""
        if provider is None:
            key = model if service_tier is None else (model, service_tier)
        else:
            key = (model, service_tier, provider)
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                entry = self._build_entry(model, service_tier, provider)
                if len(self._cache) >= _MAX_CACHE_ENTRIES:
                    self._cache.clear()
                self._cache[key] = entry
            return entry

    def _resolve_bound(self, model: str | None, provider: str | None = None) -> _BoundEntry:
        """Build and cache the all-tier bound for a model missing from the bounds (slow path)."""
        key = model if provider is None else (model, provider)
        with self._lock:
            entry = self._bounds.get(key)
            if entry is None:
                entry = self._build_bound(model, provider)
                if len(self._bounds) >= _MAX_CACHE_ENTRIES:
                    self._bounds.clear()
                self._bounds[key] = entry
            return entry

    def _build_entry(self, model: str | None, service_tier: str | None, provider: str | None) -> _PriceEntry:
        found = self._lookup(model, provider)
        if not isinstance(found, tuple):
            return found
        provider, info = found
        return _compile(provider, info, _price_context(provider, info, service_tier))

    def _build_bound(self, model: str | None, provider: str | None) -> _BoundEntry:
        """The highest input and output rates of ``model`` over every service tier it has prices for."""
        found = self._lookup(model, provider)
        if not isinstance(found, tuple):
            return found  # unknown, or an override (one price for every tier)
        provider, info = found
        contexts: list[PriceContext | None] = [None]
        for tier in _priced_tiers(info):
            context = _price_context(provider, info, tier)
            if context not in contexts:
                contexts.append(context)
        entries = [_compile(provider, info, context) for context in contexts]
        if len(entries) == 1:
            return entries[0]
        return _TierBound(
            max(e.max_input for e in entries),  # type: ignore[type-var]
            max(e.max_output for e in entries),  # type: ignore[type-var]
        )

    def _lookup(self, model: str | None, provider: str | None = None) -> _PriceEntry | tuple[Provider, ModelInfo]:
        """The override or unknown entry for ``model``, else its genai-prices provider and model.

        An override prices the model at every provider (the user said what it costs)."""
        if not isinstance(model, str) or not model.strip():
            return _UNKNOWN_ENTRY
        key = _override_key(model)
        override = self._overrides.get(key)  # the exact name
        if override is not None:
            return override
        found = self._find_model(model, provider)
        if found is None:  # a name genai-prices does not know: its dated base's override, if any
            return self._overrides.get(_DATE_SUFFIX.sub("", key)) or _unknown_model(model)
        provider, info = found
        # The model genai-prices resolves the name to: an override of ``gpt-4o`` prices the
        # snapshots it resolves to ``gpt-4o``, not ``gpt-4o-2024-05-13``, listed at its own price.
        override = self._overrides.get(info.id.lower())
        if override is not None:
            return override
        return provider, info

    def _find_model(self, model: str, provider: str | None = None) -> tuple[Provider, ModelInfo] | None:
        """At ``provider`` when known (its own prices, or those it borrows, as genai-prices
        resolves them for that provider); else the configured provider first, then any
        provider genai-prices picks by model name."""
        snapshot = get_snapshot()
        if provider is not None:
            try:
                return snapshot.find_provider_model(model, None, provider, None)
            except LookupError:
                _log.debug("unknown model %r at provider %r", model, provider)
                return None
        for provider_id in (self._provider_id, None):
            try:
                return snapshot.find_provider_model(model, None, provider_id, None)
            except LookupError:
                continue
        _log.debug("unknown model %r", model)
        return None


# --- providers ---------------------------------------------------------------

# genai-prices provider ids whose OpenTelemetry GenAI name differs (gen_ai.provider.name
# well-known values); any other provider is named by its genai-prices id.
_SEMCONV_PROVIDER_NAMES = {
    "azure": "azure.ai.openai",
    "mistral": "mistral_ai",
    "x-ai": "x_ai",
    "aws": "aws.bedrock",
    "google": "gcp.gen_ai",
    "ibm": "ibm.watsonx.ai",
}
_url_providers: dict[str, str | None] = {}


def provider_for_url(url: object) -> str | None:
    """The genai-prices provider id whose API URL pattern matches ``url``, None if none does.

    The same match ``genai_prices.calc_price(..., provider_api_url=url)`` makes (the
    providers in the snapshot's order, first ``re.match`` wins), so a call is priced as
    genai-prices itself would price it. Cached per URL string (clients are few).
    """
    text = str(url)
    try:
        return _url_providers[text]
    except KeyError:
        pass
    found = None
    for provider in get_snapshot().providers:
        pattern = provider.api_pattern
        if pattern and re.match(pattern, text):
            found = provider.id
            break
    if len(_url_providers) >= _MAX_CACHE_ENTRIES:
        _url_providers.clear()
    _url_providers[text] = found
    return found


def provider_name(provider: str | None) -> str:
    """``gen_ai.provider.name`` for a genai-prices provider id (``openai`` when unknown:
    the OpenAI API, spoken by a server no pattern names)."""
    if provider is None:
        return "openai"
    return _SEMCONV_PROVIDER_NAMES.get(provider, provider)


# Model names already warned about (bounded: a proxy inventing names must not grow it forever).
_MAX_WARNED_MODELS = 256
_WARNED_NAME_CHARS = 200
_warned_models: set[str] = set()
_warned_lock = threading.Lock()


def _unknown_model(model: str) -> _UnknownPrice:
    """The unknown entry, after saying so once per model name and process.

    An unknown model costs nothing as far as budgets know, so a typo or a new model
    would otherwise pass every budget without a word. Each name is resolved once per
    book (then cached), and warned about once per process (a dated snapshot as its
    undated name); after the first
    ``_MAX_WARNED_MODELS`` names, one last line says the rest are not named.
    """
    name = model[:_WARNED_NAME_CHARS]
    key = _DATE_SUFFIX.sub("", name.lower())  # the request's model and the response's dated snapshot are one
    with _warned_lock:
        if key in _warned_models or len(_warned_models) >= _MAX_WARNED_MODELS:
            return _UNKNOWN_ENTRY
        _warned_models.add(key)
        last = len(_warned_models) == _MAX_WARNED_MODELS
    _log.warning(
        "wflo-otel: no price for model %r: its calls are recorded without a cost and count as $0 against "
        "budgets; add its price with WFLO_PRICES_FILE (or refuse such calls: unknown_model=\"refuse\")",
        name,
    )
    if last:
        _log.warning("wflo-otel: %d models without a price named; further ones are not", _MAX_WARNED_MODELS)
    return _UNKNOWN_ENTRY


def _price_context(provider: Provider, model: ModelInfo, service_tier: str | None) -> PriceContext | None:
    """The price context calc_price would apply for this tier.

    genai-prices ignores variants of a model borrowed from a fallback provider, and
    "default"/"auto" mean the standard price.
    """
    if service_tier is None or service_tier in _BASE_TIERS:
        return None
    if not any(m is model for m in provider.models):
        return None
    return {"service_tier": service_tier}


def _priced_tiers(model: ModelInfo) -> list[str]:
    """Service tiers the model has price variants for (cost() only ever sets service_tier)."""
    tiers: list[str] = []
    for variant in model.price_variants or ():
        tier = variant.when.get("service_tier")
        if isinstance(tier, str) and tier not in tiers:
            tiers.append(tier)
    return tiers


def _compile(provider: Provider, model: ModelInfo, context: PriceContext | None) -> _PriceEntry:
    """Flat entry when the price is plain and settled for good, else a calc_price entry."""
    constraints = _constraints(model, context)
    timeline = [model.get_prices(ts, context) for ts in _breakpoints(constraints, datetime.now(tz=timezone.utc))]
    current = timeline[0]
    settled = all(isinstance(c, _KNOWN_CONSTRAINTS) for c in constraints) and all(p == current for p in timeline)
    rates = _flat_rates(current) if settled else None
    if rates is not None:
        return _FlatPrice(*rates, GENAI_PRICES_SOURCE)
    return _CalcPrice(provider, model, context, _upper_rates(timeline))


def _constraints(model: ModelInfo, context: PriceContext | None) -> list[object]:
    """Constraints that can affect get_prices(..., context)."""
    found: list[object] = []
    if not isinstance(model.prices, ModelPrice):
        found.extend(cp.constraint for cp in model.prices if cp.constraint is not None)
    if context:
        for variant in model.price_variants or ():
            if variant.constraint is not None and all(context.get(k) == v for k, v in variant.when.items()):
                found.append(variant.constraint)
    return found


def _breakpoints(constraints: Iterable[object], now: datetime) -> list[datetime]:
    """Now, then every future instant at which a constraint could change the price.

    Start-date and time-of-day constraints make a model's price piecewise constant
    in time, so evaluating it at these instants enumerates every price it can still
    have: the current one and any scheduled change.
    """
    today = now.date()
    days = [today]
    times_of_day: list[time] = []
    for constraint in constraints:
        if isinstance(constraint, StartDateConstraint):
            if constraint.start_date > today:
                days.append(constraint.start_date)
        elif isinstance(constraint, TimeOfDateConstraint):
            times_of_day += [constraint.start_time, constraint.end_time]
    points = [now] + [_at(day, time(0)) for day in days[1:]]
    points += [_at(day, t) for day in days for t in times_of_day]
    return points


def _at(day: date, at: time) -> datetime:
    moment = datetime.combine(day, at)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _flat_rates(price: ModelPrice) -> tuple[float, float, float] | None:
    """(input, cache_read, output) USD per token, if only plain token prices apply.

    Prices of tool calls (web searches, ...) never apply to token usage and are
    ignored; any other priced unit (audio, images, characters, requests) or a
    tiered price needs the genai-prices calculation.
    """
    rates: dict[str, float] = {}
    for key, value in price.__dict__.items():
        if key.startswith("_") or value is None:
            continue
        unit = _PRICE_KEY_UNITS.get(key)
        if unit is None:
            return None
        if unit["dimensions"].get("family") == "tool_calls":
            continue
        if key not in _FLAT_TOKEN_KEYS or not _is_plain_decimal(value):
            return None
        rates[key] = float(value / unit["per"])
    if "input_mtok" not in rates:
        return None
    return rates["input_mtok"], rates.get("cache_read_mtok", rates["input_mtok"]), rates.get("output_mtok", 0.0)


def _is_plain_decimal(value: object) -> bool:
    return isinstance(value, Decimal) and value.is_finite() and value >= 0


def _upper_rates(prices: Iterable[ModelPrice]) -> tuple[float, float]:
    """Highest per-token (input side, output side) rates over the given prices."""
    max_input = max_output = 0.0
    for price in prices:
        max_input = max(max_input, *(_highest_rate(price, key) for key in _INPUT_SIDE_KEYS))
        max_output = max(max_output, *(_highest_rate(price, key) for key in _OUTPUT_SIDE_KEYS))
    return max_input, max_output


def _highest_rate(price: ModelPrice, key: str) -> float:
    value = price.__dict__.get(key)
    if isinstance(value, TieredPrices):
        value = max([value.base, *(tier.price for tier in value.tiers)])
    if not _is_plain_decimal(value):
        return 0.0
    return float(value / _PRICE_KEY_UNITS[key]["per"])


# --- overrides ---------------------------------------------------------------


def _override_key(model: str) -> str:
    return model.strip().lower()


def _override_entry(model: object, prices: object, where: str = "") -> _FlatPrice:
    """Validate one override; errors name the model and key so files are easy to fix."""
    prefix = f"{where}: " if where else ""
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"{prefix}model names must be non-empty strings, got {model!r}")
    if not isinstance(prices, Mapping):
        raise ValueError(f"{prefix}model {model!r}: expected a mapping of prices, got {type(prices).__name__}")
    allowed = _OVERRIDE_KEYS + _OPTIONAL_OVERRIDE_KEYS
    for key in prices:
        if key not in allowed:
            raise ValueError(f"{prefix}model {model!r}: unknown key {key!r} (allowed: {', '.join(allowed)})")
    rates: dict[str, float] = {}
    for key in allowed:
        if key not in prices or (key in _OPTIONAL_OVERRIDE_KEYS and prices[key] is None):
            if key in _OVERRIDE_KEYS:
                raise ValueError(f"{prefix}model {model!r}: missing required key {key!r}")
            continue
        rates[key] = _per_token(model, key, prices[key], prefix)
    input_rate = rates["input_per_mtok"]
    cache_read_rate = rates.get("cache_read_per_mtok", input_rate)
    return _FlatPrice(input_rate, cache_read_rate, rates["output_per_mtok"], OVERRIDE_SOURCE)


def _per_token(model: str, key: str, value: object, prefix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValueError(f"{prefix}model {model!r}: {key!r} must be a number (USD per million tokens), got {value!r}")
    per_mtok = float(value)
    if not math.isfinite(per_mtok) or per_mtok < 0:
        raise ValueError(f"{prefix}model {model!r}: {key!r} must be a finite non-negative number, got {value!r}")
    return per_mtok / 1_000_000


def load_price_file(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """Read price overrides from YAML (.yaml/.yml) or JSON (.json).

    Format: ``{model: {input_per_mtok: ..., output_per_mtok: ..., cache_read_per_mtok: ...}}``
    (USD per million tokens, cache_read optional). Raises ValueError naming the file,
    model and key on bad content; OSError if the file cannot be read.
    """
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    data = _parse_price_text(file, text)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{file}: expected a mapping of model name to prices, got {type(data).__name__}")
    result: dict[str, dict[str, float]] = {}
    for model, prices in data.items():
        _override_entry(model, prices, where=str(file))
        result[model] = {key: float(value) for key, value in prices.items() if value is not None}
    return result


def _parse_price_text(file: Path, text: str) -> object:
    suffix = file.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text) if text.strip() else None
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: invalid {suffix[1:].upper()}: {exc}") from exc
    raise ValueError(f"{file}: unsupported price file type {suffix!r} (use .yaml, .yml or .json)")


# --- process-wide instance ---------------------------------------------------

_default_book: PriceBook | None = None
_default_lock = threading.Lock()


def default_pricebook() -> PriceBook:
    """The process-wide PriceBook, created on first use with overrides from WFLO_PRICES_FILE."""
    global _default_book
    book = _default_book
    if book is None:
        with _default_lock:
            if _default_book is None:
                path = os.environ.get(PRICES_FILE_ENV)
                _default_book = PriceBook(overrides=load_price_file(path) if path else None)
            book = _default_book
    return book


def reset_default_pricebook() -> None:
    """Forget the process-wide PriceBook so the next use re-reads WFLO_PRICES_FILE."""
    global _default_book
    with _default_lock:
        _default_book = None
