"""GenAI client metrics (OpenTelemetry metrics API, so any reader or exporter works).

``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration`` follow the
GenAI semantic conventions, bucket boundaries included; the ``wflo.*`` counters
add what a cost dashboard needs: calls, tokens by type, USD, budget refusals.

Why the counters are observable: every SDK measurement costs several
microseconds (attribute cleaning, hashing, exemplar sampling), and a call would
otherwise pay for nine of them. The counters are summed here in a dict (a
fraction of a microsecond per call) and reported when a reader collects, so a
call pays for three measurements: its duration and its two token counts.
"""

from __future__ import annotations

import threading
import weakref
from typing import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from . import attributes as A

# Semantic-convention advisory bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

# Positions in a series' running totals.
_CALLS_OK, _CALLS_ERROR, _INPUT, _OUTPUT, _CACHE_READ, _REASONING, _COST = range(7)
_TOKEN_TYPES = (("input", _INPUT), ("output", _OUTPUT), ("cache_read", _CACHE_READ), ("reasoning", _REASONING))


class GenAIMetrics:
    """The instruments, created once per meter provider: use :meth:`for_provider`.

    A meter provider keeps the first callbacks registered under an observable
    instrument's name and ignores later ones, so a second instance on the same
    provider would count calls nobody observes.
    """

    _instances: "weakref.WeakKeyDictionary[metrics.MeterProvider, GenAIMetrics]" = weakref.WeakKeyDictionary()
    _instances_lock = threading.Lock()

    @classmethod
    def for_provider(cls, meter_provider: metrics.MeterProvider | None = None) -> "GenAIMetrics":
        """The instance of ``meter_provider`` (default: the global one), shared by every caller.

        Re-instrumenting, ``configure()`` after ``shutdown()`` and ``track_llm_call`` beside
        the OpenAI instrumentation all count into the same counters.
        """
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        with cls._instances_lock:
            instance = cls._instances.get(provider)
            if instance is None:
                instance = cls._instances[provider] = cls(provider)
            return instance

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        from . import __version__

        meter = metrics.get_meter("wflo_otel", __version__, meter_provider=meter_provider)
        self._lock = threading.Lock()
        self._totals: dict[tuple, list[float]] = {}
        self._series: dict[tuple, tuple[list[float], dict, dict]] = {}
        self._budget_events: dict[tuple[str, str], int] = {}
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        meter.create_observable_counter(
            "wflo.llm.calls", [self._observe_calls], unit="{call}", description="LLM calls by model and status"
        )
        meter.create_observable_counter(
            "wflo.llm.tokens", [self._observe_tokens], unit="{token}", description="Tokens by type"
        )
        meter.create_observable_counter(
            "wflo.llm.cost", [self._observe_cost], unit="USD", description="Cost of LLM calls in USD"
        )
        meter.create_observable_counter(
            "wflo.budget.events",
            [self._observe_budget_events],
            unit="{event}",
            description="Budget refusals (before sending) and overruns",
        )

    # -- the call path ---------------------------------------------------------------

    def record_call(
        self,
        attributes: dict,
        duration_s: float,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_read_tokens: int | None,
        reasoning_tokens: int | None,
        cost_usd: float | None,
        error_type: str | None,
    ) -> None:
        key = tuple(attributes.items())
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key, attributes)
        totals, input_attrs, output_attrs = series
        if error_type is None:
            self.duration.record(duration_s, attributes)
        else:
            self.duration.record(duration_s, {**attributes, A.ERROR_TYPE: error_type})
        if input_tokens is not None:
            self.token_usage.record(input_tokens, input_attrs)
        if output_tokens is not None:
            self.token_usage.record(output_tokens, output_attrs)
        with self._lock:
            totals[_CALLS_ERROR if error_type else _CALLS_OK] += 1
            totals[_INPUT] += input_tokens or 0
            totals[_OUTPUT] += output_tokens or 0
            totals[_CACHE_READ] += cache_read_tokens or 0
            totals[_REASONING] += reasoning_tokens or 0
            totals[_COST] += cost_usd or 0.0

    def _new_series(self, key: tuple, attributes: dict) -> tuple[list[float], dict, dict]:
        """Running totals and the token-type attribute sets of one series, built once."""
        with self._lock:
            series = self._series.get(key)
            if series is None:
                totals = self._totals[key] = [0, 0, 0, 0, 0, 0, 0.0]
                series = self._series[key] = (
                    totals,
                    {**attributes, A.GEN_AI_TOKEN_TYPE: "input"},
                    {**attributes, A.GEN_AI_TOKEN_TYPE: "output"},
                )
            return series

    def record_budget_event(self, workflow: str, kind: str) -> None:
        with self._lock:
            key = (workflow, kind)
            self._budget_events[key] = self._budget_events.get(key, 0) + 1

    # -- collection -----------------------------------------------------------------

    def _snapshot(self) -> list[tuple[tuple, list[float]]]:
        with self._lock:
            return [(key, list(totals)) for key, totals in self._totals.items()]

    def _observe_calls(self, options: CallbackOptions) -> Iterable[Observation]:
        for key, totals in self._snapshot():
            attrs = dict(key)
            if totals[_CALLS_OK]:
                yield Observation(totals[_CALLS_OK], {**attrs, "wflo.call.status": "ok"})
            if totals[_CALLS_ERROR]:
                yield Observation(totals[_CALLS_ERROR], {**attrs, "wflo.call.status": "error"})

    def _observe_tokens(self, options: CallbackOptions) -> Iterable[Observation]:
        for key, totals in self._snapshot():
            attrs = dict(key)
            for token_type, index in _TOKEN_TYPES:
                if totals[index]:
                    yield Observation(totals[index], {**attrs, A.GEN_AI_TOKEN_TYPE: token_type})

    def _observe_cost(self, options: CallbackOptions) -> Iterable[Observation]:
        for key, totals in self._snapshot():
            if totals[_COST]:
                yield Observation(totals[_COST], dict(key))

    def _observe_budget_events(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            events = list(self._budget_events.items())
        for (workflow, kind), count in events:
            yield Observation(count, {A.GEN_AI_WORKFLOW_NAME: workflow, "wflo.budget.event": kind})
