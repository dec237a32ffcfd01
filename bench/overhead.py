"""Benchmark: per-call overhead of the wflo-otel OpenAI instrumentation.

Run: python bench/overhead.py [--rounds R] [--calls N] [--quick] [--breakdown] [--profile] [--peers [LIST]]

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

``--peers`` then measures other OpenAI instrumentations (the official
``opentelemetry-instrumentation-openai-v2``, OpenInference, OpenLLMetry), each
installed on first use into its own venv under ``/tmp/wflo-bench-peers``, each
against a floor measured in its own process, and prints one combined table
with ratios to the floor and to wflo: see ``peers.py`` for the method.
The canned client, the floor and the A/B loop live in ``_harness.py``, shared
with the peers' runner (``_peer_runner.py``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _harness / peers beside this file

import openai
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

import _harness as _h
import wflo_otel
from _harness import CLOCKS, MODES, DroppingExporter, FloorScenario, Result, _http_module, make_client
from wflo_otel.instrumentation.openai import OpenAIInstrumentor

TARGET_RATIO = 1.4  # wflo overhead must be <= this multiple of the floor's overhead

# --------------------------------------------------------------------------- telemetry setup


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
# The floor (``_harness.FloorScenario``) is shared with the peers' runner. Peers
# (``--peers``) run in their own venvs: see ``peers.py`` and ``_peer_runner.py``.


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
            "http_spans": False,
        }

    def instrument(self) -> None:
        OpenAIInstrumentor().instrument(**self.instrument_kwargs())

    def uninstrument(self) -> None:
        OpenAIInstrumentor().uninstrument()


class _UsageHidingStream(_h._FloorStream):
    def __next__(self):
        while True:
            chunk = super().__next__()
            if chunk.choices or getattr(chunk, "usage", None) is None:
                return chunk


class FloorUsageScenario(_h.FloorScenario):
    """The floor, plus what wflo does on streams for cost: ask for the usage chunk and hide it.

    Run with ``--peers`` only: its stream overhead minus the floor's is what the
    SDK's parsing of that extra chunk costs (peers do not ask for it).
    """

    name = "floor+usage"
    request_usage = True
    stream_proxy = _UsageHidingStream

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup.tracer_provider)


# Span attributes wflo's LLM span gets when the request goes out; the rest come with the response.
_REQUEST_KEYS = ("gen_ai.operation.name", "gen_ai.provider.name", "server.", "gen_ai.request.")


def _wflo_span_attributes(setup: Setup, client: openai.OpenAI) -> dict[bool, tuple[dict, dict]]:
    """By ``stream``: (request, response) attributes of the span wflo makes for the benchmark's call.

    Captured on a TracerProvider of its own, so the measured provider keeps exactly
    its processors. That provider has no budget processor: the attributes it adds
    to every span (the floor's too) are not part of this.
    """
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(
        **{**WfloScenario(setup).instrument_kwargs(), "tracer_provider": provider, "meter_provider": NoOpMeterProvider()}
    )
    captured = {}
    try:
        for mode, fn in MODES.items():
            memory.clear()
            fn(client)
            (span,) = memory.get_finished_spans()
            attrs = dict(span.attributes)
            request = {k: v for k, v in attrs.items() if k.startswith(_REQUEST_KEYS)}
            captured[mode == "stream"] = (request, {k: v for k, v in attrs.items() if k not in request})
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    return captured


class SemconvFloorScenario(_h.FloorScenario):
    """The floor, carrying what the GenAI conventions and the issue ask of every call, and nothing else.

    Its span gets exactly the attributes wflo's span gets (copied from one wflo
    span: the request's at start, the response's in one ``set_attributes`` at the
    end), and each call records the two semantic-convention histograms (duration,
    input and output token usage) on an SDK meter of the same MeterProvider. No
    reading of the response, no pricing, no budget: values are constants. What it
    costs over the floor is what the SDK charges for that data, which no
    conforming instrumentation avoids; wflo minus this is what wflo's own code costs.
    """

    name = "floor+semconv"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup.tracer_provider)
        self.setup = setup
        meter = setup.meter_provider.get_meter("bench.floor")
        self.duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
        self.tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
        self.captured: dict[bool, tuple[dict, dict]] | None = None
        self.at_end: dict[bool, tuple[dict, dict, dict, dict, int, int]] = {}

    def span_attributes(self) -> dict[bool, dict | None]:
        if self.captured is None:
            self.captured = _wflo_span_attributes(self.setup, make_client())
            for stream, (request, response) in self.captured.items():
                base = {k: request[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model")}
                base["gen_ai.response.model"] = response["gen_ai.response.model"]
                self.at_end[stream] = (
                    response,
                    base,
                    {**base, "gen_ai.token.type": "input"},
                    {**base, "gen_ai.token.type": "output"},
                    response["gen_ai.usage.input_tokens"],
                    response["gen_ai.usage.output_tokens"],
                )
        return {stream: request for stream, (request, _response) in self.captured.items()}

    def ender(self, span: Any, stream: bool) -> Callable[[], None]:
        response, base, input_set, output_set, input_tokens, output_tokens = self.at_end[stream]
        duration, tokens = self.duration, self.tokens

        def end() -> None:
            span.set_attributes(response)
            duration.record((time.time_ns() - span.start_time) / 1e9, base)
            tokens.record(input_tokens, input_set)
            tokens.record(output_tokens, output_set)
            span.end()

        return end


# Breakdown variants (--breakdown): the wflo scenario minus one part, by instrument()
# arguments only, so "wflo - variant" is what that part costs in situ.


class WfloHttpSpansScenario(WfloScenario):
    """wflo with a span per HTTP attempt under each call (``http_spans=True``); ``wflo`` has them off."""

    name = "wflo+http"

    def instrument_kwargs(self) -> dict[str, Any]:
        return {**super().instrument_kwargs(), "http_spans": True}


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
    "floor": lambda setup: FloorScenario(setup.tracer_provider),
    "wflo": WfloScenario,
    "wflo+http": WfloHttpSpansScenario,
    "-metrics": WfloNoMetricsScenario,
    "-exemplar": WfloNoExemplarsScenario,
    "-budget": WfloNoBudgetScenario,
    "floor+usage": FloorUsageScenario,
    "floor+semconv": SemconvFloorScenario,
}
BREAKDOWN = ("floor", "floor+semconv", "wflo", "-metrics", "-exemplar", "-budget")


# --------------------------------------------------------------------------- calls and rounds


clock: Any = CLOCKS["process"]()


def timed_round(client: openai.OpenAI, fn: Callable[[openai.OpenAI], None], calls: int) -> float:
    """Cost per call (``clock.unit``) of ``calls`` calls inside one budgeted workflow."""
    return _h.timed_round(client, fn, calls, clock, lambda: wflo_otel.workflow("bench-overhead", budget_usd=1000))


def run(client: openai.OpenAI, scenarios: list[Any], rounds: int, calls: int, warmup: int) -> dict[tuple[str, str], Result]:
    return _h.run(client, scenarios, rounds, calls, warmup, timed_round)


def report(results: dict[tuple[str, str], Result], scenarios: list[Any], rounds: int, calls: int) -> bool:
    u = clock.unit
    print(f"openai {openai.__version__} on {_http_module().__name__}; python {sys.version.split()[0]}; {clock.name}")
    print(f"{rounds} A/B pairs x {calls} calls per round; median of per-pair differences (IQR in brackets)\n")
    w = max([10] + [len(s.name) + 1 for s in scenarios])
    header = f"{'mode':<8}{'scenario':<{w}}{'baseline ' + u:>16}{'overhead ' + u:>16}{'IQR ' + u:>20}{'x floor':>9}"
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
            print(f"{mode:<8}{scenario.name:<{w}}{r.base_us:>16.1f}{r.overhead_us:>16.1f}   [{lo:>7.1f}, {hi:>7.1f}]{shown}")
            if scenario.name == "wflo" and floor is not None:
                ok = ok and ratio is not None and ratio <= TARGET_RATIO
    print()
    for mode in MODES:
        if ("floor", mode) in results and ("wflo", mode) in results:
            floor_us = results[("floor", mode)].overhead_us
            if floor_us <= 0:
                print(f"{mode}: the floor's overhead measured {floor_us:.1f} {u}: noise, no ratio (try --clock instructions)")
                continue
            ratio = results[("wflo", mode)].overhead_us / floor_us
            verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
            print(f"{mode}: wflo/floor overhead = {ratio:.2f}x (target <= {TARGET_RATIO}x: {verdict})")
            if ("floor+semconv", mode) in results:
                semconv = results[("floor+semconv", mode)].overhead_us
                print(
                    f"{mode}: floor+semconv/floor = {semconv / floor_us:.2f}x; wflo - floor+semconv = "
                    f"{results[('wflo', mode)].overhead_us - semconv:.1f} {u} (wflo's own code)"
                )
    for mode in MODES:
        if ("wflo", mode) in results and ("wflo+http", mode) in results:
            off, on = results[("wflo", mode)], results[("wflo+http", mode)]
            print(
                f"{mode}: HTTP attempt spans cost {on.overhead_us - off.overhead_us:.1f} {u}/call; instrumented call "
                f"with them / without = {(on.base_us + on.overhead_us) / (off.base_us + off.overhead_us):.2f}x; "
                f"overhead with / without = {on.overhead_us / off.overhead_us:.2f}x"
            )
    parts = [s.name for s in scenarios if s.name.startswith("-")]
    if parts and any(("wflo", mode) in results for mode in MODES):
        print(f"\nwhat each part of wflo costs in situ (wflo overhead minus the variant's, {u}/call):")
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


def _rerun_under_callgrind() -> int:
    """This same command under callgrind (``--clock instructions``); peers' runs get their own."""
    import shutil
    import subprocess

    import peers

    if shutil.which("valgrind") is None:
        print("--clock instructions needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    command, env = _h.callgrind_command([sys.executable, *sys.argv], peers.CALLGRIND_DIR)
    return subprocess.run(command, env=env).returncode


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
        "taking the CPU); wall: perf_counter; instructions: instructions counted by valgrind's callgrind "
        "(the run is repeated under it, ~50x slower: use few rounds, e.g. --rounds 3 --calls 20)",
    )
    parser.add_argument("--top", type=int, default=25, help="rows of profile output")
    parser.add_argument(
        "--peers",
        nargs="?",
        const="default",
        metavar="LIST",
        help="then measure other OpenAI instrumentations, each in its own venv (see peers.py), and print one "
        "combined table; LIST is comma-separated of otel-v2, openinference, openllmetry, otel-v2-alias "
        "(default: the first three)",
    )
    parser.add_argument(
        "--peer-content",
        choices=("default", "off"),
        default="default",
        help="peers' message-content capture: as they ship (default) or switched off by their env settings",
    )
    parser.add_argument(
        "--peer-procs", type=int, default=None, help="process pairs for a peer that cannot be uninstrumented (default 6)"
    )
    args = parser.parse_args()
    rounds, calls = (5, 100) if args.quick else (args.rounds, args.calls)
    if args.clock == "instructions" and not os.environ.get(_h.CALLGRIND_OUT_ENV):
        return _rerun_under_callgrind()
    global clock
    clock = CLOCKS[args.clock]()
    peer_keys: list[str] = []
    if args.peers:
        import peers

        peer_keys = list(peers.DEFAULT_PEERS) if args.peers == "default" else args.peers.split(",")
        unknown = [key for key in peer_keys if key not in peers.PEERS]
        if unknown:
            parser.error(f"unknown peer(s) {unknown}; known: {list(peers.PEERS)}")
        if args.profile_only:
            parser.error("--peers needs the measured run, not --profile-only")

    setup = make_setup()
    try:
        client = make_client()
        names = BREAKDOWN if args.breakdown else tuple(args.scenarios.split(","))
        if peer_keys and "floor+usage" not in names:
            names = (*names, "floor+usage")  # prices the usage chunk wflo asks for on streams
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
            if peer_keys:
                if not {("floor", "call"), ("wflo", "call")} <= results.keys():
                    parser.error("--peers needs the floor and wflo scenarios")
                procs = args.peer_procs or (3 if args.quick else 6)
                sys.stdout.flush()
                outcomes = peers.run_peers(
                    peer_keys, rounds, calls, min(calls, 100), args.clock, args.peer_content, procs
                )
                peers.report(results, outcomes, rounds, calls, procs, clock.unit)
                print(f"(whole run {time.perf_counter() - started:.0f} s)")
        if args.profile or args.profile_only:
            for mode in MODES:
                profile(client, WfloScenario(setup), mode, 500 if args.quick else 2000, args.top)
        return 0 if ok else 1
    finally:
        setup.handle.shutdown()


if __name__ == "__main__":
    sys.exit(main())
