"""``configure()``: one call that wires wflo-otel into OpenTelemetry.

It adds the budget processor and a batch processor with the SQL exporter to a
TracerProvider (the caller's, the global SDK one, or a new one it installs) and
instruments the OpenAI client. Idempotent: a second call returns the same
handle. Every keyword also has an environment variable (DESIGN.md).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

from .budget import (
    active_processor,
    DEFAULT_SCOPE_TTL_S,
    ON_EXCEED_RAISE,
    UNKNOWN_MODEL_ALLOW,
    BudgetSpanProcessor,
    set_active_processor,
)
from .pricing import PriceBook
from .sampling import keep_budgets_when_sampled_out
from .settings import ENV_DEFAULT_BUDGET, ENV_DEFAULT_OUTPUT_TOKENS, env_float, env_int, pricebook_for

_log = logging.getLogger(__name__)

class ProcessorSlot(SpanProcessor):
    """The one span processor wflo-otel adds to a TracerProvider.

    A provider cannot drop a processor, so ``configure()`` fills this slot and
    ``Handle.shutdown()`` empties it: configure → shutdown → configure in one
    process leaves exactly one budget processor and one exporter on the provider.
    """

    def __init__(self) -> None:
        self.processors: Sequence[SpanProcessor] = ()

    def on_start(self, span, parent_context=None) -> None:
        for processor in self.processors:
            processor.on_start(span, parent_context=parent_context)

    def _on_ending(self, span) -> None:
        for processor in self.processors:
            processor._on_ending(span)

    def on_end(self, span) -> None:
        for processor in self.processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        processors, self.processors = self.processors, ()
        for processor in processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all([processor.force_flush(timeout_millis) for processor in self.processors])


_slots: "weakref.WeakKeyDictionary[TracerProvider, ProcessorSlot]" = weakref.WeakKeyDictionary()


def _slot_of(provider: TracerProvider) -> ProcessorSlot:
    slot = _slots.get(provider)
    if slot is None:
        slot = _slots[provider] = ProcessorSlot()
        provider.add_span_processor(slot)
    return slot


@dataclass
class Handle:
    """What ``configure()`` set up; ``shutdown()`` flushes and undoes it."""

    tracer_provider: TracerProvider
    budget_processor: BudgetSpanProcessor
    exporter: SpanExporter | None
    span_processor: SpanProcessor | None
    pricebook: PriceBook
    instrumentor: Any
    slot: ProcessorSlot
    owns_budget: bool = True  # False when it adopted the zero-code distro's processor
    meter_provider: Any = None  # what configure() was given; None: the global one

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Every span ended so far is exported (in the database, for the SQL exporter).

        A handle adopted from a zero-code run owns no processor: it flushes the
        provider, whose processors the distro installed.
        """
        if not self.owns_budget:
            return self.tracer_provider.force_flush(timeout_millis)
        return self.slot.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush every span, uninstrument, and forget this configuration.

        The TracerProvider itself is left running (it may be the process-global one,
        which cannot be replaced); only wflo-otel's processors are removed from it.
        """
        global _handle
        try:
            self.force_flush()
        finally:
            if self.instrumentor is not None:
                self.instrumentor.uninstrument()
            self.slot.shutdown()
            if self.owns_budget:
                set_active_processor(None)
                engine, self.budget_processor.limits = self.budget_processor.limits, None
                if engine is not None:
                    engine.close()  # report the spend, give back the unused leases
            with _lock:
                if _handle is self:
                    _handle = None


_lock = threading.Lock()
_handle: Handle | None = None


def current_handle() -> Handle | None:
    return _handle


def configure(
    database_url: str | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: Any = None,
    exporter: SpanExporter | bool | None = True,
    batch: bool = True,
    default_budget_usd: float | None = None,
    on_exceed: str = ON_EXCEED_RAISE,
    unknown_model: str = UNKNOWN_MODEL_ALLOW,
    scope_ttl_s: float = DEFAULT_SCOPE_TTL_S,
    propagate_budget: bool = True,
    prices_file: str | None = None,
    default_output_tokens: int | None = None,
    default_service_tier: str | None = None,
    learn_service_tier: bool | None = None,
    service_name: str | None = None,
    instrument_openai: bool = True,
    http_spans: bool | None = None,
    limits: Sequence[Any] | None = None,
    alerts: Any = None,
) -> Handle:
    """Set up tracing, budgets, export to SQL and OpenAI instrumentation; return the handle.

    ``exporter``: True for the SQL exporter on ``database_url`` (or ``$WFLO_DATABASE_URL``,
    default ``./wflo.db``), a ``SpanExporter`` of your own, or False for none (budgets only).
    ``batch=False`` exports each span as it ends (handy in scripts and tests).
    ``propagate_budget`` installs the W3C baggage propagator that carries the budget
    scope to downstream services (unless ``OTEL_PROPAGATORS`` is set).
    The provider's sampler is wrapped so a trace it drops is still recorded, and so
    budgeted, though not exported (``wflo_otel.sampling``).
    ``default_service_tier`` (or ``$WFLO_DEFAULT_SERVICE_TIER``): the tier OpenAI serves
    your project's requests that name none, so their reservation is at its prices
    instead of the model's most expensive tier's. ``learn_service_tier`` (or
    ``$WFLO_LEARN_SERVICE_TIER``, default on): otherwise learn it from responses
    (docs/providers.md); False reserves at the dearest tier, the strict cap.
    ``http_spans`` (or ``$WFLO_HTTP_SPANS``): a span per HTTP attempt under each LLM call.
    ``limits`` (``wflo_otel.SpendLimit``, else ``$WFLO_LIMITS_FILE``): spend limits per key
    and period, shared by every process through ``database_url``'s database;
    ``alerts`` (``wflo_otel.Alerts``): where their thresholds are reported
    (docs/spend-limits.md).
    """
    from .limits_config import apply_limits, resolve

    limits, alerts = resolve(limits, alerts)  # a bad limit fails here, before anything is set up
    global _handle
    with _lock:
        if _handle is not None:
            engine = _handle.budget_processor.limits
            _handle.budget_processor.limits = apply_limits(engine, limits, alerts, database_url, meter_provider=meter_provider)
            return _handle
        if tracer_provider is None:
            adopted = _adopt_zero_code_setup()
            if adopted is not None:
                _apply_policies(adopted.budget_processor, default_budget_usd, on_exceed, unknown_model, scope_ttl_s)
                _warn_ignored(
                    database_url=database_url is not None,
                    meter_provider=meter_provider is not None,
                    exporter=exporter is not True,
                    batch=batch is not True,
                    propagate_budget=propagate_budget is not True,
                    prices_file=prices_file is not None,
                    default_output_tokens=default_output_tokens is not None,
                    default_service_tier=default_service_tier is not None,
                    learn_service_tier=learn_service_tier is not None,
                    service_name=service_name is not None,
                    instrument_openai=instrument_openai is not True,
                    http_spans=http_spans is not None,
                )
                processor = adopted.budget_processor  # $WFLO_LIMITS_FILE's limits, plus these
                processor.limits = apply_limits(processor.limits, limits, alerts, database_url, meter_provider=meter_provider)
                _handle = adopted
                return adopted
        pricebook = pricebook_for(prices_file)
        budget = BudgetSpanProcessor(
            default_budget_usd=default_budget_usd if default_budget_usd is not None else env_float(ENV_DEFAULT_BUDGET),
            default_on_exceed=on_exceed,
            default_unknown_model=unknown_model,
            scope_ttl_s=scope_ttl_s,
            pricebook=pricebook,
        )
        budget.limits = apply_limits(None, limits, alerts, database_url, meter_provider=meter_provider)
        provider = _provider(tracer_provider, service_name)
        keep_budgets_when_sampled_out(provider)  # a trace the sampler drops is still budgeted
        span_exporter = _exporter(exporter, database_url, pricebook)
        span_processor = None
        if span_exporter is not None:
            span_processor = sql_batch_processor(span_exporter) if batch else SimpleSpanProcessor(span_exporter)
        slot = _slot_of(provider)
        # The budget processor first: it stamps attributes the exporter reads.
        slot.processors = (budget,) if span_processor is None else (budget, span_processor)
        set_active_processor(budget)
        if propagate_budget:
            _install_propagator()
        instrumentor = None
        if instrument_openai:
            instrumentor = _instrument_openai(
                provider, meter_provider, pricebook, budget, default_output_tokens, default_service_tier, http_spans,
                learn_service_tier,
            )
        _handle = Handle(
            provider, budget, span_exporter, span_processor, pricebook, instrumentor, slot, meter_provider=meter_provider
        )
        return _handle


# The SDK's batch defaults (queue 2,048, batches of 512) drop spans when a SQL exporter
# sees 5,000 spans/s for a minute; a deeper queue and larger transactions keep it ahead
# (bench/export.py --sustained). OTEL_BSP_* variables still win.
SQL_BSP_DEFAULTS = {"OTEL_BSP_MAX_QUEUE_SIZE": 32768, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 2048}


class SQLBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's ``BatchSpanProcessor`` whose ``force_flush`` also flushes the exporter.

    The SDK's hands the queued spans to ``export()`` and returns; with the child-process
    writer the last batch may still be being committed then, and ``force_flush`` is the
    moment an application expects its spans to be in the database.
    """

    def __init__(self, exporter: SpanExporter, **kwargs) -> None:
        super().__init__(exporter, **kwargs)
        self._exporter = exporter

    def force_flush(self, timeout_millis: int | None = None) -> bool:
        flushed = super().force_flush(timeout_millis)
        if timeout_millis is None:
            return self._exporter.force_flush() and flushed
        return self._exporter.force_flush(timeout_millis) and flushed


def sql_batch_processor(exporter: SpanExporter) -> BatchSpanProcessor:
    """A BatchSpanProcessor sized for a database exporter (see SQL_BSP_DEFAULTS)."""
    keywords = {"OTEL_BSP_MAX_QUEUE_SIZE": "max_queue_size", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "max_export_batch_size"}
    kwargs = {keywords[name]: value for name, value in SQL_BSP_DEFAULTS.items() if not os.environ.get(name)}
    return SQLBatchSpanProcessor(exporter, **kwargs)


def _apply_policies(
    budget: BudgetSpanProcessor, default_budget_usd: float | None, on_exceed: str, unknown_model: str, scope_ttl_s: float
) -> None:
    """configure()'s budget policies, on the processor a zero-code run installed."""
    if default_budget_usd is not None:
        budget.default_budget_usd = default_budget_usd
    if on_exceed != ON_EXCEED_RAISE:
        budget.default_on_exceed = on_exceed
    if unknown_model != UNKNOWN_MODEL_ALLOW:
        budget.default_unknown_model = unknown_model
    if scope_ttl_s != DEFAULT_SCOPE_TTL_S:
        budget.scope_ttl_s = scope_ttl_s


def _warn_ignored(**given: bool) -> None:
    """Say which configure() arguments a zero-code run's setup cannot take, rather than drop them silently."""
    ignored = [name for name, was_given in given.items() if was_given]
    if ignored:
        _log.warning(
            "wflo-otel: configure() inside opentelemetry-instrument adopts the zero-code setup; "
            "ignored: %s (set them through the WFLO_* / OTEL_* environment variables instead)",
            ", ".join(ignored),
        )


def _adopt_zero_code_setup() -> Handle | None:
    """Under ``opentelemetry-instrument`` the distro already installed budgets and the exporter.

    configure() then hands back that setup instead of adding a second budget processor
    and a second exporter to the global provider.
    """
    budget = active_processor()
    provider = trace.get_tracer_provider()
    if budget is None or not isinstance(provider, TracerProvider):
        return None
    from .distro import has_processor, pricebook

    if not has_processor(provider, budget):
        return None
    return Handle(provider, budget, None, None, pricebook(), None, ProcessorSlot(), owns_budget=False)


def _install_propagator() -> None:
    """tracecontext + wflo baggage, unless the user chose propagators explicitly."""
    if os.environ.get("OTEL_PROPAGATORS"):
        return
    from opentelemetry import propagate
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from .propagation import WfloBaggagePropagator

    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), WfloBaggagePropagator()]))


def _provider(tracer_provider: TracerProvider | None, service_name: str | None) -> TracerProvider:
    if tracer_provider is not None:
        return tracer_provider
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    resource = Resource.create({"service.name": service_name} if service_name else {})
    provider = TracerProvider(resource=resource)
    trace.set_tracer_provider(provider)
    return provider


def _exporter(exporter: SpanExporter | bool | None, database_url: str | None, pricebook: PriceBook):
    if exporter is False or exporter is None:
        return None
    if exporter is True:
        from .exporters.sql import SQLSpanExporter

        return SQLSpanExporter(database_url, pricebook=pricebook)
    return exporter


def _instrument_openai(
    provider, meter_provider, pricebook, budget, default_output_tokens, default_service_tier=None, http_spans=None,
    learn_service_tier=None,
):
    try:
        import openai  # noqa: F401
    except ImportError:
        _log.info("wflo-otel: openai is not installed; nothing to instrument")
        return None
    from .instrumentation.openai import OpenAIInstrumentor

    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(
        tracer_provider=provider,
        meter_provider=meter_provider,
        pricebook=pricebook,
        budget_processor=budget,
        default_output_tokens=default_output_tokens or env_int(ENV_DEFAULT_OUTPUT_TOKENS),
        default_service_tier=default_service_tier,
        http_spans=http_spans,
        learn_service_tier=learn_service_tier,
    )
    return instrumentor


def tracer_provider() -> Any:
    """The provider wflo-otel's own spans (workflows, steps) go to."""
    handle = _handle
    return handle.tracer_provider if handle is not None else trace.get_tracer_provider()
