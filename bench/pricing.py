"""Benchmark: PriceBook.cost (compiled fast path) vs genai_prices.calc_price.

Run: python bench/pricing.py [--iterations N] [--repeat R]

Both sides price the same usage for the same model string. calc_price gets a
pre-built Usage (its cheapest use), so the speed-up shown is conservative. Each
figure is the best of R timing runs of N calls, in microseconds per call.
"""

from __future__ import annotations

import argparse
import timeit

from genai_prices import Usage, calc_price

from wflo_otel.pricing import PriceBook

MODELS = ("gpt-4o-mini", "gpt-4o", "o3-mini", "gpt-4.1", "gpt-4o-mini-2024-07-18")
INPUT, OUTPUT, CACHED, REASONING = 1_200, 350, 400, 100
TARGET_SPEEDUP = 50.0


def per_call_us(func: object, iterations: int, repeat: int) -> float:
    """Best-of-repeat wall time per call, in microseconds."""
    return min(timeit.repeat(func, number=iterations, repeat=repeat)) / iterations * 1e6  # type: ignore[arg-type]


def bench_model(book: PriceBook, model: str, iterations: int, repeat: int) -> tuple[float, float]:
    usage = Usage(input_tokens=INPUT, output_tokens=OUTPUT, cache_read_tokens=CACHED, output_reasoning_tokens=REASONING)
    ours = book.cost(model, INPUT, OUTPUT, CACHED, REASONING)
    reference = float(calc_price(usage, model, provider_id="openai").total_price)
    assert ours.usd is not None and abs(ours.usd - reference) <= 1e-9 * reference, (model, ours, reference)

    fast = per_call_us(lambda: book.cost(model, INPUT, OUTPUT, CACHED, REASONING), iterations, repeat)
    slow_iterations = max(iterations // 50, 100)
    slow = per_call_us(lambda: calc_price(usage, model, provider_id="openai"), slow_iterations, repeat)
    return fast, slow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000, help="PriceBook.cost calls per timing run")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs per figure (best is kept)")
    args = parser.parse_args()

    book = PriceBook()
    print(f"usage: input={INPUT} (cached {CACHED}), output={OUTPUT} (reasoning {REASONING})")
    print(f"{'model':<26}{'PriceBook.cost':>16}{'calc_price':>14}{'speed-up':>11}")
    worst = float("inf")
    for model in MODELS:
        fast, slow = bench_model(book, model, args.iterations, args.repeat)
        worst = min(worst, slow / fast)
        print(f"{model:<26}{fast:>13.3f} µs{slow:>11.2f} µs{slow / fast:>10.0f}x")
    verdict = "met" if worst >= TARGET_SPEEDUP else "MISSED"
    print(f"lowest speed-up {worst:.0f}x (target {TARGET_SPEEDUP:.0f}x: {verdict})")


if __name__ == "__main__":
    main()
