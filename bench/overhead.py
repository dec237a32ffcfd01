"""Benchmark: per-call overhead of the wflo-otel OpenAI instrumentation.

Run: python bench/overhead.py [--rounds R] [--calls N] [--quick] [--breakdown] [--profile]

Exit status 1 when wflo's overhead exceeds TARGET_RATIO x the floor's.

The real ``openai.OpenAI`` client is used end to end (request building, retries
machinery, response parsing into pydantic models, SSE decoding), but its HTTP
transport answers from memory with canned bytes, so the only thing that differs
between an uninstrumented and an instrumented call is the instrumentation.

Method: everything runs in ONE process. For each scenario, uninstrumented (A)
and instrumented (B) rounds of N calls alternate, A B A B ...; each (A, B) pair
gives one overhead figure (B - A) / N, and the MEDIAN over pairs is reported,
so slow drift of the machine (frequency scaling, noisy neighbours) cancels.
Rounds are timed in CPU time of this process (all threads, so the batch
export thread counts) unless ``--clock wall``: on a shared machine wall time
also counts the moments another process had the CPU, which made the per-pair
spread ten times wider.
Scenarios are interleaved inside every pair index, so they all see the same
drift. All calls (A and B alike) run inside a ``wflo_otel.workflow(...,
budget_usd=1000)`` on the same TracerProvider, so the parent span, the
processors and the background export thread are identical on both sides.

Scenarios:

* ``floor`` -- a wrapt wrapper on the same ``Completions.create`` that only
  starts and ends one CLIENT span (for streams: ends it when the stream is
  exhausted, via a minimal ``wrapt.ObjectProxy``). The least any
  span-producing instrumentation pays on this TracerProvider.
* ``wflo`` -- ``OpenAIInstrumentor`` wired exactly as ``wflo_otel.configure()``
  wires it: ``BudgetSpanProcessor`` then ``BatchSpanProcessor`` over an
  exporter that drops spans (we measure the call path, not a database), metrics
  on an SDK ``MeterProvider`` with an ``InMemoryMetricReader``, budget check
  and reservation live (workflow budget 1000 USD).

Each scenario runs non-streamed and streamed (``stream=True``, all chunks
iterated; the user does not ask for usage, so wflo adds
``stream_options.include_usage`` and hides the extra usage chunk -- the canned
server honours that flag, as the real API does).

``--breakdown`` adds three variants of wflo, each without one part (SDK
metrics, metric exemplars, budget reservation), given only different
``instrument()`` arguments; wflo's overhead minus a variant's is what that
part costs in situ. ``--profile`` then runs the wflo scenario under cProfile
and prints where the instrumentation's time goes, per call (cProfile inflates
small functions several-fold: read shares, and trust ``--breakdown`` for µs).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import openai
import wrapt
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

import wflo_otel
from wflo_otel.instrumentation.openai import OpenAIInstrumentor

MODEL = "gpt-4o-mini"
TARGET_RATIO = 1.4  # wflo overhead must be <= this multiple of the floor's overhead
MESSAGES = [
    {"role": "system", "content": "You are a concise support assistant for an online bookshop."},
    {"role": "user", "content": "My order #4471 has not arrived yet. It was due on Monday. What can I do?"},
]


# --------------------------------------------------------------------------- canned HTTP


def _http_module():
    """The HTTP library the installed openai builds on: httpx2 (openai 3.x) or httpx (2.x)."""
    import openai._base_client as base

    module = getattr(base, "httpx2", None) or getattr(base, "httpx", None)
    if module is None:  # pragma: no cover - an openai we do not know
        raise RuntimeError(f"cannot tell which HTTP library openai {openai.__version__} uses")
    return module


def _completion_body() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-BENCH0123456789abcdef",
            "object": "chat.completion",
            "created": 1_750_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_0123456789",
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": (
                            "I'm sorry your order is late. Orders can take up to 3 extra business days; "
                            "if it has not arrived by Thursday, reply here and we will send a replacement."
                        ),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 48,
                "completion_tokens": 41,
                "total_tokens": 89,
                "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 8,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
        }
    ).encode()


_PIECES = ["I'm", " sorry", " your", " order", " is", " late", ".", " It", " should", " arrive", " by Thursday."]


def _sse_body(include_usage: bool) -> bytes:
    """~10 content chunks, a finish chunk, and (when asked for) the usage-only chunk."""
    base = {
        "id": "chatcmpl-BENCHSTREAM0123456789",
        "object": "chat.completion.chunk",
        "created": 1_750_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0123456789",
        "service_tier": "default",
    }

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": piece}) for piece in _PIECES]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": 48,
                    "completion_tokens": 12,
                    "total_tokens": 60,
                    "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
                },
            }
        )
    if include_usage:
        for event in events[:-1]:
            event["usage"] = None  # what the API sends on every other chunk once usage is asked for
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def make_client() -> openai.OpenAI:
    """A real OpenAI client whose transport answers from memory."""
    http = _http_module()
    completion = _completion_body()
    sse_plain, sse_usage = _sse_body(False), _sse_body(True)
    json_headers = {"content-type": "application/json"}
    sse_headers = {"content-type": "text/event-stream"}

    def handler(request):
        body = request.content
        if b'"stream":true' in body:
            sse = sse_usage if b'"include_usage":true' in body else sse_plain
            return http.Response(200, headers=sse_headers, content=sse)
        return http.Response(200, headers=json_headers, content=completion)

    http_client = http.Client(transport=http.MockTransport(handler))
    return openai.OpenAI(api_key="sk-bench", base_url="https://api.openai.com/v1", http_client=http_client, max_retries=0)


# --------------------------------------------------------------------------- telemetry setup


class DroppingExporter(SpanExporter):
    """Accepts every batch and keeps nothing: the export thread runs, no I/O happens."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclass
class Setup:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    reader: InMemoryMetricReader
    exporter: DroppingExporter
    handle: wflo_otel.Handle


def make_setup() -> Setup:
    """TracerProvider with BudgetSpanProcessor + BatchSpanProcessor(dropping), SDK metrics.

    ``configure(instrument_openai=False)`` builds the pipeline exactly as a user
    gets it; the wflo scenario then instruments with the same arguments
    ``configure()`` would pass, so it can be undone and redone between rounds.
    """
    tp = TracerProvider()
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    exporter = DroppingExporter()
    handle = wflo_otel.configure(tracer_provider=tp, meter_provider=mp, exporter=exporter, instrument_openai=False)
    return Setup(tp, mp, reader, exporter, handle)


# --------------------------------------------------------------------------- scenarios
#
# A scenario is anything with ``name``, ``instrument()`` and ``uninstrument()``.
# TODO(peers): add the official ``opentelemetry-instrumentation-openai-v2`` and
# OpenInference (``openinference-instrumentation-openai``) as scenarios here.
# They cannot share this venv (they pin/patch the openai package differently),
# so each will run this same script from its own venv with
# ``--scenarios floor,<peer>``: the floor is measured in every venv, and the
# cross-venv comparison is made on the ratio to the floor, not on raw µs.


class FloorScenario:
    """One CLIENT span per call and nothing else (streams: ended on exhaustion)."""

    name = "floor"

    def __init__(self, setup: Setup) -> None:
        self.tracer = setup.tracer_provider.get_tracer("bench.floor")

    def instrument(self) -> None:
        from openai.resources.chat.completions import Completions

        tracer = self.tracer

        def wrapper(wrapped, instance, args, kwargs):
            span = tracer.start_span(f"chat {kwargs.get('model')}", kind=SpanKind.CLIENT)
            try:
                result = wrapped(*args, **kwargs)
            except BaseException:
                span.end()
                raise
            if kwargs.get("stream") is True:
                return _FloorStream(result, span)
            span.end()
            return result

        wrapt.wrap_function_wrapper(Completions, "create", wrapper)

    def uninstrument(self) -> None:
        from openai.resources.chat.completions import Completions

        Completions.create = Completions.create.__wrapped__


class _FloorStream(wrapt.ObjectProxy):
    def __init__(self, stream: Any, span: Any) -> None:
        super().__init__(stream)
        self._self_span = span

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.__wrapped__.__next__()
        except StopIteration:
            self._self_span.end()
            raise


class WfloScenario:
    """``OpenAIInstrumentor`` with the arguments ``configure()`` passes."""

    name = "wflo"

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def instrument_kwargs(self) -> dict[str, Any]:
        handle = self.setup.handle
        return {
            "tracer_provider": handle.tracer_provider,
            "meter_provider": self.setup.meter_provider,
            "pricebook": handle.pricebook,
            "budget_processor": handle.budget_processor,
        }

    def instrument(self) -> None:
        OpenAIInstrumentor().instrument(**self.instrument_kwargs())

    def uninstrument(self) -> None:
        OpenAIInstrumentor().uninstrument()


# Breakdown variants (--breakdown): the wflo scenario minus one part, by instrument()
# arguments only, so "wflo - variant" is what that part costs in situ.


class WfloNoMetricsScenario(WfloScenario):
    """wflo with a no-op MeterProvider: spans, parsing, pricing and budget only."""

    name = "-metrics"

    def instrument_kwargs(self) -> dict[str, Any]:
        return {**super().instrument_kwargs(), "meter_provider": NoOpMeterProvider()}


class WfloNoExemplarsScenario(WfloScenario):
    """wflo with SDK metrics whose exemplar filter is off (the default is trace-based)."""

    name = "-exemplar"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.meter_provider = MeterProvider(
            metric_readers=[InMemoryMetricReader()], exemplar_filter=AlwaysOffExemplarFilter()
        )

    def instrument_kwargs(self) -> dict[str, Any]:
        return {**super().instrument_kwargs(), "meter_provider": self.meter_provider}


class WfloNoBudgetScenario(WfloScenario):
    """wflo whose budget processor sees no scopes: no worst-case estimate, reservation or settlement."""

    name = "-budget"

    def instrument_kwargs(self) -> dict[str, Any]:
        from wflo_otel.budget import BudgetSpanProcessor

        # Not registered on the provider, so it maps no span to a scope.
        return {**super().instrument_kwargs(), "budget_processor": BudgetSpanProcessor()}


SCENARIOS: dict[str, Callable[[Setup], Any]] = {
    "floor": FloorScenario,
    "wflo": WfloScenario,
    "-metrics": WfloNoMetricsScenario,
    "-exemplar": WfloNoExemplarsScenario,
    "-budget": WfloNoBudgetScenario,
}
BREAKDOWN = ("floor", "wflo", "-metrics", "-exemplar", "-budget")


# --------------------------------------------------------------------------- calls and rounds


def call_once(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=256, temperature=0.2)
    assert response.choices[0].finish_reason == "stop"


def stream_once(client: openai.OpenAI) -> None:
    chunks = 0
    for _ in client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=256, stream=True):
        chunks += 1
    assert chunks == len(_PIECES) + 2, chunks  # role chunk + pieces + finish chunk; usage chunk hidden


MODES: dict[str, Callable[[openai.OpenAI], None]] = {"call": call_once, "stream": stream_once}


CLOCKS = {"process": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def timed_round(client: openai.OpenAI, fn: Callable[[openai.OpenAI], None], calls: int) -> float:
    """µs per call for ``calls`` calls inside one budgeted workflow."""
    gc.collect()
    with wflo_otel.workflow("bench-overhead", budget_usd=1000):
        start = clock()
        for _ in range(calls):
            fn(client)
        elapsed = clock() - start
    return elapsed / calls * 1e6


@dataclass
class Result:
    baseline: list[float]
    instrumented: list[float]

    @property
    def base_us(self) -> float:
        return statistics.median(self.baseline)

    @property
    def overhead_us(self) -> float:
        return statistics.median(b - a for a, b in zip(self.baseline, self.instrumented))

    @property
    def spread_us(self) -> tuple[float, float]:
        """Interquartile range of the per-pair overheads."""
        diffs = sorted(b - a for a, b in zip(self.baseline, self.instrumented))
        q = statistics.quantiles(diffs, n=4) if len(diffs) >= 2 else [diffs[0]] * 3
        return q[0], q[2]


def run(client: openai.OpenAI, scenarios: list[Any], rounds: int, calls: int, warmup: int) -> dict[tuple[str, str], Result]:
    results = {(s.name, m): Result([], []) for s in scenarios for m in MODES}
    # Warm-up: imports, pydantic validators, price resolution caches, instrument creation.
    for scenario in scenarios:
        for fn in MODES.values():
            timed_round(client, fn, warmup)
            scenario.instrument()
            timed_round(client, fn, warmup)
            scenario.uninstrument()
    for _ in range(rounds):
        for scenario in scenarios:
            for mode, fn in MODES.items():
                result = results[(scenario.name, mode)]
                result.baseline.append(timed_round(client, fn, calls))  # A
                scenario.instrument()
                try:
                    result.instrumented.append(timed_round(client, fn, calls))  # B
                finally:
                    scenario.uninstrument()
    return results


def report(results: dict[tuple[str, str], Result], scenarios: list[Any], rounds: int, calls: int) -> bool:
    clock_name = "process CPU time" if clock is time.process_time else "wall time"
    print(f"openai {openai.__version__} on {_http_module().__name__}; python {sys.version.split()[0]}; {clock_name}")
    print(f"{rounds} A/B pairs x {calls} calls per round; median of per-pair differences (IQR in brackets)\n")
    header = f"{'mode':<8}{'scenario':<10}{'baseline µs':>13}{'overhead µs':>13}{'IQR µs':>18}{'x floor':>9}"
    print(header)
    print("-" * len(header))
    ok = True
    for mode in MODES:
        floor = results.get(("floor", mode))
        for scenario in scenarios:
            r = results[(scenario.name, mode)]
            lo, hi = r.spread_us
            ratio = r.overhead_us / floor.overhead_us if floor and floor.overhead_us > 0 else None
            shown = f"{ratio:>8.2f}x" if ratio is not None else f"{'-':>9}"
            print(f"{mode:<8}{scenario.name:<10}{r.base_us:>13.1f}{r.overhead_us:>13.1f}   [{lo:>6.1f}, {hi:>6.1f}]{shown}")
            if scenario.name == "wflo" and floor is not None:
                ok = ok and ratio is not None and ratio <= TARGET_RATIO
    print()
    for mode in MODES:
        if ("floor", mode) in results and ("wflo", mode) in results:
            ratio = results[("wflo", mode)].overhead_us / results[("floor", mode)].overhead_us
            verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
            print(f"{mode}: wflo/floor overhead = {ratio:.2f}x (target <= {TARGET_RATIO}x: {verdict})")
    parts = [s.name for s in scenarios if s.name.startswith("-")]
    if parts and any(("wflo", mode) in results for mode in MODES):
        print("\nwhat each part of wflo costs in situ (wflo overhead minus the variant's, µs/call):")
        for mode in MODES:
            wflo = results[("wflo", mode)].overhead_us
            costs = ", ".join(f"{name[1:]} {wflo - results[(name, mode)].overhead_us:.1f}" for name in parts)
            print(f"  {mode}: {costs}")
    return ok


# --------------------------------------------------------------------------- profile


def profile(client: openai.OpenAI, scenario: Any, mode: str, calls: int, top: int) -> None:
    """cProfile the instrumented calls; print per-call times of the instrumentation's functions.

    Absolute figures are inflated by cProfile's own per-function cost (which hits
    the instrumentation's many small calls hardest); read them as shares.
    """
    fn = MODES[mode]
    scenario.instrument()
    try:
        timed_round(client, fn, 50)
        profiler = cProfile.Profile()
        with wflo_otel.workflow("bench-profile", budget_usd=1000):
            profiler.enable()
            for _ in range(calls):
                fn(client)
            profiler.disable()
    finally:
        scenario.uninstrument()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    ours = ("wflo_otel", "opentelemetry", "wrapt")
    rows = []
    for (path, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if any(f"/{pkg}/" in path or f"/{pkg}." in path for pkg in ours):
            short = path.split("site-packages/")[-1].split("/main/")[-1]
            rows.append((ct / calls * 1e6, tt / calls * 1e6, nc / calls, f"{short}:{line}({func})"))
    total = sum(tt for (_p, _l, _f), (_cc, _nc, tt, _ct, _c) in stats.stats.items()) / calls * 1e6  # type: ignore[attr-defined]
    print(f"\ncProfile: {scenario.name} / {mode}, {calls} calls, {total:.1f} µs/call under the profiler (all code)")
    print("instrumentation-side functions (wflo_otel, opentelemetry, wrapt), by cumulative time:")
    print(f"{'cum µs':>8}{'self µs':>9}{'calls':>7}  function")
    for cum, self_, n, name in sorted(rows, reverse=True)[:top]:
        print(f"{cum:>8.2f}{self_:>9.2f}{n:>7.1f}  {name}")
    print("by self time:")
    for cum, self_, n, name in sorted(rows, key=lambda r: r[1], reverse=True)[:top]:
        print(f"{cum:>8.2f}{self_:>9.2f}{n:>7.1f}  {name}")


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="A/B pairs per scenario and mode (default 20)")
    parser.add_argument("--calls", type=int, default=300, help="calls per round (default 300)")
    parser.add_argument("--quick", action="store_true", help="5 pairs x 100 calls: a smoke run, noisy figures")
    parser.add_argument(
        "--scenarios", default="floor,wflo", help=f"comma-separated, of {','.join(SCENARIOS)} (default floor,wflo)"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also run wflo minus metrics / exemplars / budget, to price each part in situ "
        "(5 scenarios: pair with --rounds 10 --calls 150 to stay near 2 minutes)",
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile the wflo scenario")
    parser.add_argument("--profile-only", action="store_true", help="only cProfile the wflo scenario")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="process",
        help="process: CPU time of this process, all threads (default; immune to other processes "
        "taking the CPU); wall: perf_counter",
    )
    parser.add_argument("--top", type=int, default=25, help="rows of profile output")
    args = parser.parse_args()
    rounds, calls = (5, 100) if args.quick else (args.rounds, args.calls)
    global clock
    clock = CLOCKS[args.clock]

    setup = make_setup()
    try:
        client = make_client()
        names = BREAKDOWN if args.breakdown else tuple(args.scenarios.split(","))
        unknown = [name for name in names if name not in SCENARIOS]
        if unknown:
            parser.error(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
        scenarios = [SCENARIOS[name](setup) for name in names]
        ok = True
        if not args.profile_only:
            started = time.perf_counter()
            results = run(client, scenarios, rounds, calls, warmup=min(calls, 100))
            ok = report(results, scenarios, rounds, calls)
            print(f"({time.perf_counter() - started:.0f} s; {setup.exporter.spans} spans exported and dropped)")
        if args.profile or args.profile_only:
            for mode in MODES:
                profile(client, WfloScenario(setup), mode, 500 if args.quick else 2000, args.top)
        return 0 if ok else 1
    finally:
        setup.handle.shutdown()


if __name__ == "__main__":
    sys.exit(main())
