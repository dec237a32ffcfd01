"""Zero-code runs: the OpenTelemetry distro and configurator of wflo-otel.

``opentelemetry-instrument python app.py`` finds these through entry points:

* ``opentelemetry_distro: wflo`` → ``WfloDistro``: makes ``wflo`` the default traces
  exporter (``OTEL_TRACES_EXPORTER``, so spans land in ``./wflo.db`` or
  ``$WFLO_DATABASE_URL``), asks for the ``wflo`` configurator, and hands the OpenAI
  instrumentor the price book and budget processor of the run.
* ``opentelemetry_configurator: wflo`` → ``WfloConfigurator``: the SDK's standard
  configuration (every ``OTEL_*`` variable), plus a ``BudgetSpanProcessor``
  registered *before* the exporting processor — with ``WFLO_DEFAULT_BUDGET_USD``
  as the budget of every local root span — made the active one
  (``wflo_otel.budget.set_active_processor``), which the OpenAI instrumentation
  consults at call time.
* ``opentelemetry_post_instrument: wflo`` → ``ensure_budget_processor``: when
  another distro's configurator won (``opentelemetry-distro`` installed too, or
  ``OTEL_PYTHON_CONFIGURATOR`` naming another), it puts the budget processor in
  front of that SDK's processors all the same.

A zero-code run is budgeted or does not start (docs/zero-code.md): ``WFLO_*``
values it cannot use end it with exit status 2 before the application runs; an
exporter that cannot be loaded or started is left out with one line
(``sdk_exporters``); a sampler's dropped traces are still budgeted (``sampling``).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from . import budget as _budget
from .sampling import keep_budgets_when_sampled_out
from .sdk_exporters import choose_otlp_protocol, only_usable_exporters
from .settings import ENV_DEFAULT_BUDGET, ENV_DEFAULT_OUTPUT_TOKENS, ENV_PRICES_FILE, env_float, pricebook_for

_log = logging.getLogger(__name__)

_OPENAI_INSTRUMENTOR = "wflo_otel.instrumentation.openai:OpenAIInstrumentor"

_lock = threading.Lock()
_settings: "ZeroCodeSettings | None" = None

# What a zero-code run's application sees when its budget settings cannot be read:
# no application at all, rather than one that runs without the budget it asked for.
EXIT_MISCONFIGURED = 2


@dataclass(frozen=True)
class ZeroCodeSettings:
    """The ``WFLO_*`` settings of a zero-code run, read and checked once."""

    default_budget_usd: float | None
    default_output_tokens: int | None
    pricebook: Any
    limits: tuple = ()  # WFLO_LIMITS_FILE's spend limits
    alerts: Any = None


def _read_settings() -> ZeroCodeSettings:
    """Raises ValueError naming the variable whose value cannot be used."""
    budget = env_float(ENV_DEFAULT_BUDGET)
    if budget is not None and not 0 <= budget < math.inf:
        raise ValueError(f"{ENV_DEFAULT_BUDGET} must be a finite number of USD >= 0, got {os.environ[ENV_DEFAULT_BUDGET]!r}")
    output_tokens = env_float(ENV_DEFAULT_OUTPUT_TOKENS)
    if output_tokens is not None and not (1 <= output_tokens < math.inf and output_tokens == int(output_tokens)):
        raise ValueError(
            f"{ENV_DEFAULT_OUTPUT_TOKENS} must be a whole number of tokens >= 1, "
            f"got {os.environ[ENV_DEFAULT_OUTPUT_TOKENS]!r}"
        )
    try:
        book = pricebook_for()
    except OSError as exc:
        raise ValueError(f"{ENV_PRICES_FILE}: cannot read {os.environ.get(ENV_PRICES_FILE)!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{ENV_PRICES_FILE}: {exc}") from exc
    from .limits_config import resolve

    limits, alerts = resolve(None, None)  # ValueError naming WFLO_LIMITS_FILE: never a run without its limits
    return ZeroCodeSettings(budget, int(output_tokens) if output_tokens is not None else None, book, tuple(limits), alerts)


def settings() -> ZeroCodeSettings:
    """The run's settings; a value that cannot be used ends the process (exit status 2, one line).

    Called by whichever of the distro, the configurator and the post-instrument hook
    runs first. ``os._exit``: a ``SystemExit`` raised while ``sitecustomize`` is being
    imported is a fatal interpreter error with a traceback, and nothing of the
    application has run yet that would need its exit handlers.
    """
    global _settings
    with _lock:
        if _settings is None:
            try:
                _settings = _read_settings()
            except ValueError as exc:
                sys.stdout.flush()
                sys.stderr.write(f"wflo-otel: {exc}; not starting the application without the budget it asked for\n")
                sys.stderr.flush()
                os._exit(EXIT_MISCONFIGURED)
        return _settings


def pricebook() -> Any:
    """The price book of this zero-code run (``$WFLO_PRICES_FILE`` overrides applied), built once."""
    return settings().pricebook


def new_budget_processor() -> _budget.BudgetSpanProcessor:
    """A budget processor configured from the environment (``WFLO_DEFAULT_BUDGET_USD``)."""
    config = settings()
    processor = _budget.BudgetSpanProcessor(default_budget_usd=config.default_budget_usd, pricebook=config.pricebook)
    if config.limits:  # $WFLO_LIMITS_FILE
        from .limits_config import build_engine

        processor.limits = build_engine(config.limits, config.alerts, None)
    return processor


def install_first(provider: TracerProvider, processor: SpanProcessor) -> None:
    """Register ``processor`` on ``provider`` ahead of the processors already there.

    The SDK only appends; the budget processor must see each span before an
    exporting processor does, so it goes to the front of the provider's
    multi-processor (a private but long-stable attribute; appended if it moves).
    """
    multi = getattr(provider, "_active_span_processor", None)
    processors = getattr(multi, "_span_processors", None)
    lock = getattr(multi, "_lock", None)
    if isinstance(processors, tuple) and lock is not None:
        with lock:
            multi._span_processors = (processor,) + tuple(p for p in multi._span_processors if p is not processor)
        return
    _log.warning("wflo-otel: cannot put the budget processor first on %r; appending it", provider)
    provider.add_span_processor(processor)


def has_processor(provider: Any, processor: SpanProcessor) -> bool:
    multi = getattr(provider, "_active_span_processor", None)
    return any(p is processor for p in getattr(multi, "_span_processors", ()) or ())


class WfloConfigurator(_OTelSDKConfigurator):
    """The SDK's standard configuration plus the budget processor, ahead of the exporters.

    Nothing the SDK's configuration does can leave the run without budgets: an
    exporter that cannot be loaded is left out (one line on stderr), and if the SDK
    still fails half-way the budget processor goes on whatever provider there is.
    """

    def _configure(self, **kwargs: Any) -> None:
        processor = new_budget_processor()
        choose_otlp_protocol()  # again: another distro may have been the one that ran
        accepted = _initialize_parameters()
        if "span_processors" in accepted:
            kwargs["span_processors"] = [processor, *(kwargs.get("span_processors") or ())]
        if "exporter_args_map" in accepted and not kwargs.get("exporter_args_map"):
            from .exporters.sql import SQLSpanExporter

            kwargs["exporter_args_map"] = {SQLSpanExporter: {"pricebook": pricebook()}}
        try:
            with only_usable_exporters():
                super()._configure(**kwargs)
        except Exception as exc:
            _log.error(
                "wflo-otel: OpenTelemetry configuration failed (%s: %s); budgets are enforced, "
                "spans may not be exported",
                type(exc).__name__,
                exc,
            )
        provider = _sdk_provider()
        if not has_processor(provider, processor):
            install_first(provider, processor)
        keep_budgets_when_sampled_out(provider)
        _budget.set_active_processor(processor)


def _sdk_provider() -> TracerProvider:
    """The global SDK provider; a bare one (resource from ``OTEL_*``) when configuration set none."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        return provider
    trace.set_tracer_provider(TracerProvider(resource=Resource.create()))
    return trace.get_tracer_provider()  # type: ignore[return-value]


def _initialize_parameters() -> frozenset[str]:
    try:
        from opentelemetry.sdk._configuration import _initialize_components

        return frozenset(inspect.signature(_initialize_components).parameters)
    except (ImportError, TypeError, ValueError):  # pragma: no cover - other SDK layouts
        return frozenset()


class WfloDistro(BaseDistro):
    """Defaults for zero-code runs: export to SQL, configure with ``WfloConfigurator``."""

    def _configure(self, **kwargs: Any) -> None:
        settings()  # a malformed WFLO_* value stops the run here, before anything else
        os.environ.setdefault("OTEL_TRACES_EXPORTER", "wflo")
        choose_otlp_protocol()
        if os.environ["OTEL_TRACES_EXPORTER"].strip() == "wflo":
            from .configuration import SQL_BSP_DEFAULTS

            for name, value in SQL_BSP_DEFAULTS.items():  # batch sizes for a database exporter
                os.environ.setdefault(name, str(value))
        # Ours, not another distro's configurator that would leave budgets out.
        os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", "wflo")

    def load_instrumentor(self, entry_point, **kwargs: Any) -> None:
        value = getattr(entry_point, "value", None)
        if getattr(entry_point, "name", None) == "openai" and value != _OPENAI_INSTRUMENTOR:
            # openai-v2 and OpenLLMetry register under the same name as ours, so
            # OTEL_PYTHON_DISABLED_INSTRUMENTATIONS cannot tell them apart; both at once
            # would make two spans of every call, charged and counted twice.
            _log.warning(
                "wflo-otel: not loading %s: wflo-otel instruments the OpenAI client itself "
                "(two instrumentations would count every call twice)",
                value,
            )
            return
        if value == _OPENAI_INSTRUMENTOR:
            kwargs.setdefault("pricebook", pricebook())
            processor = _budget.active_processor()
            if processor is not None:
                kwargs.setdefault("budget_processor", processor)
            output_tokens = settings().default_output_tokens
            if output_tokens:
                kwargs.setdefault("default_output_tokens", output_tokens)
            super().load_instrumentor(entry_point, **kwargs)
            return
        try:
            super().load_instrumentor(entry_point, **kwargs)
        except ImportError:
            raise  # the loader skips a library that is not installed, as it should
        except Exception as exc:
            if type(exc).__name__ == "DependencyConflictError":
                raise  # the loader says which version it wanted and carries on
            # The loader re-raises anything else and stops loading: the OpenAI
            # instrumentation, and so every budget, would be lost to another package's bug.
            _log.error(
                "wflo-otel: instrumentation %r failed (%s: %s); carrying on without it",
                getattr(entry_point, "name", value),
                type(exc).__name__,
                exc,
            )


def ensure_budget_processor() -> None:
    """Post-instrument hook: a budget processor on the global SDK provider, whoever configured it."""
    if _budget.active_processor() is not None:
        return
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return  # no SDK configured (tracing disabled): nothing to budget
    processor = new_budget_processor()
    install_first(provider, processor)
    keep_budgets_when_sampled_out(provider)
    _budget.set_active_processor(processor)
    _log.debug("wflo-otel: budget processor added to a provider configured by another distro")


__all__ = [
    "WfloConfigurator",
    "WfloDistro",
    "ensure_budget_processor",
    "install_first",
    "new_budget_processor",
    "pricebook",
]
