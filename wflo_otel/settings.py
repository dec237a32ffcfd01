"""The ``WFLO_*`` environment settings, read the same way by ``configure()`` and the zero-code distro."""

from __future__ import annotations

import logging
import os

from .pricing import PriceBook, default_pricebook, load_price_file

ENV_DATABASE_URL = "WFLO_DATABASE_URL"
ENV_DEFAULT_BUDGET = "WFLO_DEFAULT_BUDGET_USD"
ENV_PRICES_FILE = "WFLO_PRICES_FILE"
ENV_DEFAULT_OUTPUT_TOKENS = "WFLO_DEFAULT_OUTPUT_TOKENS"
ENV_DEFAULT_SERVICE_TIER = "WFLO_DEFAULT_SERVICE_TIER"

_log = logging.getLogger(__name__)


def database_url(explicit: str | None = None) -> str:
    """Where spans are written: ``explicit``, else ``$WFLO_DATABASE_URL``, else ``./wflo.db`` (async driver URL)."""
    from .exporters.store import DEFAULT_DATABASE_URL, normalize_url

    return normalize_url(explicit or os.environ.get(ENV_DATABASE_URL) or DEFAULT_DATABASE_URL)


def env_float(name: str) -> float | None:
    """A number from the environment; None when unset; ValueError naming the variable when malformed."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def env_int(name: str) -> int | None:
    value = env_float(name)
    return int(value) if value is not None else None


def default_service_tier(explicit: str | None = None) -> str | None:
    """The tier OpenAI serves this project's requests that name none: ``explicit``, else
    ``$WFLO_DEFAULT_SERVICE_TIER``, else None (unknown: reserve at the model's dearest tier)."""
    tier = explicit or os.environ.get(ENV_DEFAULT_SERVICE_TIER, "").strip()
    return tier if tier and tier != "auto" else None


ENV_LEARN_SERVICE_TIER = "WFLO_LEARN_SERVICE_TIER"


def learn_service_tier(explicit: bool | None = None) -> bool:
    """Learn the project's tier from responses (``explicit``, else ``$WFLO_LEARN_SERVICE_TIER``, else on).

    A value that is neither true nor false turns learning off, with a warning: off is
    the strict cap (reserve at the dearest tier), never the looser one.
    """
    if explicit is not None:
        return bool(explicit)
    raw = os.environ.get(ENV_LEARN_SERVICE_TIER, "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw not in ("0", "false", "no", "off"):
        _log.warning("wflo-otel: %s=%r is not true or false; not learning service tiers", ENV_LEARN_SERVICE_TIER, raw)
    return False


def pricebook_for(prices_file: str | None = None) -> PriceBook:
    """The bundled prices, with the overrides of ``prices_file`` (or ``$WFLO_PRICES_FILE``) applied."""
    path = prices_file or os.environ.get(ENV_PRICES_FILE)
    return PriceBook(overrides=load_price_file(path)) if path else default_pricebook()
