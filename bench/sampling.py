"""What keeping budgets under sampling costs: a trace the sampler drops, recorded or not.

A dropped trace used to be non-recording spans (cheap, and unbudgeted). With
``BudgetKeepingSampler`` it is recorded but not sampled (budgeted, not exported).
This prints, per trace of a root span and one LLM-call-shaped child, the µs of:

* ``drop``            — the sampler's DROP as the SDK does it (no budget: the old behaviour)
* ``drop, budgeted``  — the same sampler wrapped: RECORD_ONLY through the budget processor
* ``sampled``         — ALWAYS_ON, for scale (recorded, budgeted, handed to a no-op exporter)
* ``sampled, wrapped``— ALWAYS_ON wrapped: what the wrapper adds to traces that are sampled

Rounds of the four modes alternate; medians are reported, with ratios.

    .venv/bin/python bench/sampling.py [--traces 5000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import SpanKind, set_span_in_context

from wflo_otel.budget import BudgetSpanProcessor
from wflo_otel.sampling import BudgetKeepingSampler

CALL = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini", "gen_ai.provider.name": "openai"}


class NoOpExporter(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


def tracer_for(sampler):
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BudgetSpanProcessor(default_budget_usd=1.0))
    provider.add_span_processor(SimpleSpanProcessor(NoOpExporter()))
    return provider.get_tracer("bench")


def run(tracer, traces: int) -> float:
    """µs per trace."""
    started = time.perf_counter()
    for _ in range(traces):
        root = tracer.start_span("job")
        tracer.start_span("chat gpt-4o-mini", context=set_span_in_context(root), kind=SpanKind.CLIENT, attributes=CALL).end()
        root.end()
    return (time.perf_counter() - started) / traces * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    modes = {
        "drop": tracer_for(ALWAYS_OFF),
        "drop, budgeted": tracer_for(BudgetKeepingSampler(ALWAYS_OFF)),
        "sampled": tracer_for(ALWAYS_ON),
        "sampled, wrapped": tracer_for(BudgetKeepingSampler(ALWAYS_ON)),
    }
    for tracer in modes.values():  # warm up
        run(tracer, args.traces // 10)
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, tracer in modes.items():
            times[name].append(run(tracer, args.traces))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.rounds} rounds x {args.traces} traces (root + one LLM-call span), median µs per trace")
    for name, value in median.items():
        print(f"  {name:<18} {value:8.2f}")
    print(f"dropped trace, budgeted / unbudgeted: {median['drop, budgeted'] / median['drop']:.2f}x")
    print(f"dropped trace, budgeted / sampled:    {median['drop, budgeted'] / median['sampled']:.2f}x")
    print(f"sampled trace, wrapped / plain:       {median['sampled, wrapped'] / median['sampled']:.2f}x")


if __name__ == "__main__":
    main()
