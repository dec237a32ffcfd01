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
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from . import budget as _budget
from .settings import ENV_DEFAULT_BUDGET, ENV_DEFAULT_OUTPUT_TOKENS, env_float, env_int, pricebook_for

_log = logging.getLogger(__name__)

_OPENAI_INSTRUMENTOR = "wflo_otel.instrumentation.openai:OpenAIInstrumentor"

_lock = threading.Lock()
_pricebook: Any = None


def pricebook() -> Any:
    """The price book of this zero-code run (``$WFLO_PRICES_FILE`` overrides applied), built once."""
    global _pricebook
    with _lock:
        if _pricebook is None:
            _pricebook = pricebook_for()
        return _pricebook


def _env_or_none(read, name: str):
    """A zero-code run must not crash the application over a malformed variable: log and ignore it."""
    try:
        return read(name)
    except ValueError as exc:
        _log.error("wflo-otel: %s; ignored", exc)
        return None


def new_budget_processor() -> _budget.BudgetSpanProcessor:
    """A budget processor configured from the environment (``WFLO_DEFAULT_BUDGET_USD``)."""
    processor = _budget.BudgetSpanProcessor(default_budget_usd=_env_or_none(env_float, ENV_DEFAULT_BUDGET), pricebook=pricebook())
    processor.limits = env_limits()
    return processor


def env_limits():
    """The spend limits of ``$WFLO_LIMITS_FILE`` (None without one).

    A file that is wrong must not leave the run without its limits: the error is logged
    and the run gets a limit of $0 that refuses every LLM call (fail closed), as a limit
    whose database is down does.
    """
    from .limits import LimitEngine, SpendLimit
    from .limits_config import build_engine, resolve

    try:
        limits, alerts = resolve(None, None)
        return build_engine(limits, alerts, None) if limits else None
    except ValueError as exc:
        _log.error("wflo-otel: %s; every LLM call is refused until the limits file is fixed", exc)
        return LimitEngine([SpendLimit("invalid-limits-file", 0.0, "run")])


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
    """The SDK's standard configuration plus the budget processor, ahead of the exporters."""

    def _configure(self, **kwargs: Any) -> None:
        processor = new_budget_processor()
        accepted = _initialize_parameters()
        if "span_processors" in accepted:
            kwargs["span_processors"] = [processor, *(kwargs.get("span_processors") or ())]
        if "exporter_args_map" in accepted and not kwargs.get("exporter_args_map"):
            from .exporters.sql import SQLSpanExporter

            kwargs["exporter_args_map"] = {SQLSpanExporter: {"pricebook": pricebook()}}
        super()._configure(**kwargs)
        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider) and not has_processor(provider, processor):
            install_first(provider, processor)
        _budget.set_active_processor(processor)


def _initialize_parameters() -> frozenset[str]:
    try:
        from opentelemetry.sdk._configuration import _initialize_components

        return frozenset(inspect.signature(_initialize_components).parameters)
    except (ImportError, TypeError, ValueError):  # pragma: no cover - other SDK layouts
        return frozenset()


class WfloDistro(BaseDistro):
    """Defaults for zero-code runs: export to SQL, configure with ``WfloConfigurator``."""

    def _configure(self, **kwargs: Any) -> None:
        os.environ.setdefault("OTEL_TRACES_EXPORTER", "wflo")
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
            output_tokens = _env_or_none(env_int, ENV_DEFAULT_OUTPUT_TOKENS)
            if output_tokens:
                kwargs.setdefault("default_output_tokens", output_tokens)
        super().load_instrumentor(entry_point, **kwargs)


def ensure_budget_processor() -> None:
    """Post-instrument hook: a budget processor on the global SDK provider, whoever configured it."""
    if _budget.active_processor() is not None:
        return
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return  # no SDK configured (tracing disabled): nothing to budget
    processor = new_budget_processor()
    install_first(provider, processor)
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
