"""Bounded memory of the budget machinery: N sequential workflows leave the ledger empty.

Each workflow opens a budget scope, a step and one priced, budget-checked LLM
call (``@track_llm_call`` returning an OpenAI-shaped usage dict, so no HTTP is
involved and only our machinery is measured). RSS is read from /proc after a
warm-up and at the end.

    python bench/budget_memory.py            # 1,000,000 workflows
    python bench/budget_memory.py --n 100000
"""

from __future__ import annotations

import argparse
import gc
import time

from opentelemetry.sdk.trace import TracerProvider

import wflo_otel


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@wflo_otel.track_llm_call(model="gpt-4o-mini")
def call(prompt: str, max_tokens: int = 64):
    return {"id": "x", "model": "gpt-4o-mini", "usage": {"prompt_tokens": 120, "completion_tokens": 60}}


def run(n: int) -> None:
    for i in range(n):
        with wflo_otel.workflow("bench", budget_usd=1.0):
            with wflo_otel.step("s"):
                call("hello")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False, propagate_budget=False)
    processor = handle.budget_processor
    warmup = min(20_000, args.n // 10)
    run(warmup)
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    run(args.n)
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss_mb()
    print(f"workflows            {args.n:>12,}")
    print(f"ledger open entries  {processor.open_spans:>12}")
    print(f"RSS after warm-up    {before:>12.1f} MB")
    print(f"RSS at the end       {after:>12.1f} MB")
    print(f"RSS growth           {after - before:>12.1f} MB  (target < 20 MB)")
    print(f"per workflow         {elapsed / args.n * 1e6:>12.1f} µs  (workflow + step + priced LLM span)")
    handle.shutdown()


if __name__ == "__main__":
    main()
