"""What the OpenTelemetry SDK itself charges for the data the GenAI conventions ask of each call.

Run: python bench/sdk_costs.py [--number 50000] [--repeat 5]

Side by side, in one process, best of ``--repeat`` timings of ``--number`` operations:

* ``span``: start and end one SDK span (what ``bench/overhead.py``'s floor adds per call);
* ``span + attributes``: the same span carrying the attributes a wflo chat span carries
  (the request's at start, the response's in one ``set_attributes``);
* ``histogram record``: one ``Histogram.record`` with the seven attributes of
  ``gen_ai.client.token.usage``, into an SDK ``MeterProvider`` with an in-memory reader,
  outside and inside a sampled span (the default trace-based exemplar filter then keeps
  an exemplar);
* ``a call's metrics``: the three records every call makes (duration, input and output
  token usage), inside a span.

Ratios are to ``span``. No wflo code runs here: this is the price any instrumentation pays on
the SDK for the same data, and why issue 5's "at most 1.4x the floor" is out of reach for an
instrumentation that records the GenAI metrics (see the README, *Performance overhead*).
"""

from __future__ import annotations

import argparse
import timeit

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from wflo_otel.metrics import DURATION_BUCKETS, TOKEN_BUCKETS

REQUEST = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.request.max_tokens": 256,
    "gen_ai.request.temperature": 0.2,
    "server.address": "api.openai.com",
    "server.port": 443,
}
RESPONSE = {
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": "chatcmpl-0123456789abcdef",
    "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.usage.input_tokens": 1234,
    "gen_ai.usage.output_tokens": 345,
    "gen_ai.usage.cache_read.input_tokens": 128,
    "gen_ai.usage.reasoning.output_tokens": 0,
    "wflo.cost.usd": 0.000392,
    "wflo.cost.source": "genai-prices",
}
METRIC = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "server.address": "api.openai.com",
    "server.port": 443,
}
INPUT = {**METRIC, "gen_ai.token.type": "input"}
OUTPUT = {**METRIC, "gen_ai.token.type": "output"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    tracer = TracerProvider().get_tracer("bench")
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    tokens = meter.create_histogram(
        "gen_ai.client.token.usage", unit="{token}", explicit_bucket_boundaries_advisory=TOKEN_BUCKETS
    )
    duration = meter.create_histogram(
        "gen_ai.client.operation.duration", unit="s", explicit_bucket_boundaries_advisory=DURATION_BUCKETS
    )

    def span() -> None:
        tracer.start_span("chat gpt-4o-mini", kind=SpanKind.CLIENT).end()

    def span_with_attributes() -> None:
        s = tracer.start_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes=REQUEST)
        s.set_attributes(RESPONSE)
        s.end()

    def record() -> None:
        tokens.record(1234, INPUT)

    def calls_metrics() -> None:
        duration.record(0.42, METRIC)
        tokens.record(1234, INPUT)
        tokens.record(345, OUTPUT)

    def best_us(fn) -> float:
        return min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number * 1e6

    rows = [("span (start + end)", best_us(span)), ("span + attributes", best_us(span_with_attributes))]
    rows.append(("histogram record, no span", best_us(record)))
    with tracer.start_as_current_span("parent"):
        rows.append(("histogram record, in a span", best_us(record)))
        rows.append(("a call's metrics (3 records), in a span", best_us(calls_metrics)))

    base = rows[0][1]
    print(f"{'operation':<42} {'µs':>7} {'x span':>7}")
    for name, us in rows:
        print(f"{name:<42} {us:7.2f} {us / base:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
