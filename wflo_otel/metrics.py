"""GenAI client metrics (OpenTelemetry metrics API, so any reader or exporter works).

``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration`` follow the
GenAI semantic conventions, bucket boundaries included; the ``wflo.*`` counters
add what a cost dashboard needs: calls, tokens by type, USD, budget refusals.
"""

from __future__ import annotations

from opentelemetry import metrics

from . import attributes as A

# Semantic-convention advisory bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


class GenAIMetrics:
    """The instruments, created once per meter provider."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        from . import __version__

        meter = metrics.get_meter("wflo_otel", __version__, meter_provider=meter_provider)
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
        self.calls = meter.create_counter("wflo.llm.calls", unit="{call}", description="LLM calls by model and status")
        self.tokens = meter.create_counter("wflo.llm.tokens", unit="{token}", description="Tokens by type")
        self.cost = meter.create_counter("wflo.llm.cost", unit="USD", description="Cost of LLM calls in USD")
        self.budget_events = meter.create_counter(
            "wflo.budget.events", unit="{event}", description="Budget refusals (before sending) and overruns"
        )

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
        self.duration.record(duration_s, attributes if error_type is None else {**attributes, A.ERROR_TYPE: error_type})
        self.calls.add(1, {**attributes, "wflo.call.status": "error" if error_type else "ok"})
        if input_tokens is not None:
            self.token_usage.record(input_tokens, {**attributes, A.GEN_AI_TOKEN_TYPE: "input"})
            self.tokens.add(input_tokens, {**attributes, A.GEN_AI_TOKEN_TYPE: "input"})
        if output_tokens is not None:
            self.token_usage.record(output_tokens, {**attributes, A.GEN_AI_TOKEN_TYPE: "output"})
            self.tokens.add(output_tokens, {**attributes, A.GEN_AI_TOKEN_TYPE: "output"})
        if cache_read_tokens:
            self.tokens.add(cache_read_tokens, {**attributes, A.GEN_AI_TOKEN_TYPE: "cache_read"})
        if reasoning_tokens:
            self.tokens.add(reasoning_tokens, {**attributes, A.GEN_AI_TOKEN_TYPE: "reasoning"})
        if cost_usd:
            self.cost.add(cost_usd, attributes)

    def record_budget_event(self, workflow: str, kind: str) -> None:
        self.budget_events.add(1, {A.GEN_AI_WORKFLOW_NAME: workflow, "wflo.budget.event": kind})
