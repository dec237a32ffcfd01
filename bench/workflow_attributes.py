"""Benchmark: what stamping a workflow's attributes on each of its calls adds to a call.

Run: python bench/workflow_attributes.py [--rounds R] [--calls N]

The real ``openai.OpenAI`` client with an in-memory transport (``_harness.make_client``),
instrumented as ``configure()`` does (spans dropped at export). Rounds of N calls
alternate inside ``workflow("triage", budget_usd=1000)`` (A) and inside the same workflow
with ``attributes={"tenant.id": "acme", "user.id": 17}`` (B), which the budget processor
sets on each call's span. Each (A, B) pair gives a ratio of CPU time per call; the median
is reported. A is also what a workflow without attributes pays: one ``is_llm_call``
look-up per span.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from opentelemetry.sdk.trace import TracerProvider

import wflo_otel
from _harness import DroppingExporter, call_once, make_client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()

    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=DroppingExporter(), default_service_tier="default")
    client = make_client()

    def timed_round(attributes: dict | None) -> float:
        with wflo_otel.workflow("triage", budget_usd=1000, attributes=attributes):
            started = time.process_time()
            for _ in range(args.calls):
                call_once(client)
            return (time.process_time() - started) / args.calls

    applied = {"tenant.id": "acme", "user.id": 17}
    timed_round(applied)  # warm up
    timed_round(None)
    without, with_attributes, ratios = [], [], []
    for _ in range(args.rounds):
        a = timed_round(None)
        b = timed_round(applied)
        without.append(a)
        with_attributes.append(b)
        ratios.append(b / a)
    handle.shutdown()
    print(f"workflow attributes on each call, {args.rounds} rounds x {args.calls} calls (CPU time per call, median)")
    print(f"  workflow without attributes   {statistics.median(without) * 1e6:9.1f} µs")
    print(f"  with 2 attributes stamped     {statistics.median(with_attributes) * 1e6:9.1f} µs")
    print(f"  ratio                         {statistics.median(ratios):9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
