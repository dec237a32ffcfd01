"""Runs inside one peer's own venv (spawned by ``peers.py``); prints ONE JSON line on stdout.

    python _peer_runner.py --peer NAME --method check|inprocess|baseline|instrumented [...]

* ``check``: import the peer, instrument it, make one call and one stream, and
  describe what it did (spans, attributes, metric names, whether it captured
  message content, whether it asked for a usage chunk on the stream), then
  uninstrument and tell whether that really restored the client.
* ``inprocess``: the same A/B rounds as ``overhead.py`` (``_harness.run``) for
  the floor and the peer, in this one process.
* ``baseline`` / ``instrumented``: for a peer that cannot be uninstrumented.
  ``baseline`` runs the floor's A/B rounds (its A rounds are this process's
  uninstrumented baseline); ``instrumented`` instruments the peer once at
  start and times plain rounds. ``peers.py`` alternates the two kinds of
  process and takes the median of the pair differences.

Telemetry here: an SDK TracerProvider with a BatchSpanProcessor over an exporter
that drops spans, an SDK MeterProvider with an InMemoryMetricReader (both also
set as the global providers), every round inside one parent span. wflo_otel is
not installed in these venvs, so this imports only ``_harness`` and the peer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from importlib import metadata
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# name -> (distribution, module, class, instrument() takes a meter_provider)
PEERS: dict[str, tuple[str, str, str, bool]] = {
    "otel-v2": ("opentelemetry-instrumentation-openai-v2", "opentelemetry.instrumentation.openai_v2", "OpenAIInstrumentor", True),
    "openinference": ("openinference-instrumentation-openai", "openinference.instrumentation.openai", "OpenAIInstrumentor", False),
    "openllmetry": ("opentelemetry-instrumentation-openai", "opentelemetry.instrumentation.openai", "OpenAIInstrumentor", True),
}

# --content off: switch message-content capture off where a peer captures it by default.
CONTENT_OFF_ENV = {
    "openinference": {
        "OPENINFERENCE_HIDE_INPUTS": "true",
        "OPENINFERENCE_HIDE_OUTPUTS": "true",
        "OPENINFERENCE_HIDE_INPUT_MESSAGES": "true",
        "OPENINFERENCE_HIDE_OUTPUT_MESSAGES": "true",
    },
    "openllmetry": {"TRACELOOP_TRACE_CONTENT": "false"},
    "otel-v2": {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "false"},
}
CONTENT_MARKER = "order #4471"  # from the user message; found in an attribute = content captured


def versions(dist: str) -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in (dist, "openai", "opentelemetry-sdk", "wrapt"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", required=True, choices=sorted(PEERS))
    parser.add_argument("--method", required=True, choices=("check", "inprocess", "baseline", "instrumented"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clock", choices=("process", "wall", "instructions"), default="process")
    parser.add_argument("--content", choices=("default", "off"), default="default")
    parser.add_argument(
        "--alias-httpx",
        action="store_true",
        help="call httpx2.alias_httpx() first, for a peer that imports httpx while openai 3 uses httpx2",
    )
    args = parser.parse_args()
    dist, module_name, class_name, takes_meter = PEERS[args.peer]
    base = {"peer": args.peer, "method": args.method, "versions": versions(dist), "content": args.content}
    if args.content == "off":
        os.environ.update(CONTENT_OFF_ENV.get(args.peer, {}))

    try:
        if args.alias_httpx:
            import httpx2

            httpx2.alias_httpx()
        import _harness as h
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        module = __import__(module_name, fromlist=[class_name])
        instrumentor_cls = getattr(module, class_name)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, never hidden
        emit({**base, "ok": False, "reason": f"import failed: {type(exc).__name__}: {exc}"})
        return 0

    base["http"] = h._http_module().__name__
    tp = TracerProvider()
    exporter = h.DroppingExporter()
    tp.add_span_processor(BatchSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    trace.set_tracer_provider(tp)
    metrics.set_meter_provider(mp)
    kwargs: dict[str, Any] = {"tracer_provider": tp}
    if takes_meter:
        kwargs["meter_provider"] = mp

    class Peer:
        name = args.peer

        def instrument(self) -> None:
            instrumentor_cls().instrument(**kwargs)

        def uninstrument(self) -> None:
            instrumentor_cls().uninstrument()

    peer = Peer()
    parent = tp.get_tracer("bench.parent")
    clock = h.CLOCKS[args.clock]()

    def round_fn(client, fn, calls):
        return h.timed_round(client, fn, calls, clock, lambda: parent.start_as_current_span("bench-overhead"))

    try:
        if args.method == "check":
            emit({**base, **check(h, peer, tp, reader)})
            return 0
        client = h.make_client()
        started = time.perf_counter()
        if args.method == "inprocess":
            results = h.run(client, [h.FloorScenario(tp), peer], args.rounds, args.calls, args.warmup, round_fn)
            payload = {
                "results": {
                    f"{name}/{mode}": {"baseline": r.baseline, "instrumented": r.instrumented}
                    for (name, mode), r in results.items()
                }
            }
        elif args.method == "baseline":
            results = h.run(client, [h.FloorScenario(tp)], args.rounds, args.calls, args.warmup, round_fn)
            payload = {
                "results": {
                    f"floor/{mode}": {"baseline": r.baseline, "instrumented": r.instrumented}
                    for (_name, mode), r in results.items()
                }
            }
        else:  # instrumented: on for the whole process, never undone
            peer.instrument()
            for fn in h.MODES.values():
                round_fn(client, fn, args.warmup)
                round_fn(client, fn, args.warmup)
            rounds: dict[str, list[float]] = {mode: [] for mode in h.MODES}
            for _ in range(args.rounds):
                for mode, fn in h.MODES.items():
                    rounds[mode].append(round_fn(client, fn, args.calls))
            payload = {"rounds": rounds}
        tp.force_flush()
        emit({**base, "ok": True, **payload, "spans": exporter.spans, "seconds": time.perf_counter() - started})
    except Exception as exc:  # noqa: BLE001
        emit({**base, "ok": False, "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    finally:
        tp.shutdown()
    return 0


def _is_usage(key: str) -> bool:
    """gen_ai.usage.* (OTel, OpenLLMetry), llm.token_count.* (OpenInference); not max_tokens."""
    return "usage" in key or "token_count" in key


def check(h: Any, peer: Any, tp: Any, reader: Any) -> dict[str, Any]:
    """One call and one stream, instrumented, recorded; then uninstrumented."""
    import openai
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from openai.resources.chat.completions import Completions

    recorded = InMemorySpanExporter()
    tp.add_span_processor(SimpleSpanProcessor(recorded))
    bodies: list[bytes] = []
    client = h.make_client(on_request=lambda request: bodies.append(request.content))
    originals = (Completions.create, openai.OpenAI.request)

    peer.instrument()
    patched = (Completions.create is not originals[0]) or (openai.OpenAI.request is not originals[1])
    h.call_once(client)
    h.stream_once(client)
    spans = recorded.get_finished_spans()
    data = reader.get_metrics_data()
    metric_names = sorted(
        {m.name for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics for m in sm.metrics}
    )
    stream_body = next((b for b in bodies if b'"stream":true' in b), b"")
    out = {
        "patched": patched,
        "spans_per_call": len(spans) / 2,
        "span_names": sorted({s.name for s in spans}),
        "span_kinds": sorted({s.kind.name for s in spans}),
        "attributes": [len(s.attributes or {}) for s in spans],
        "content_captured": any(CONTENT_MARKER in str(v) for s in spans for v in (s.attributes or {}).values()),
        "stream_usage_requested": b'"include_usage":true' in stream_body,
        # token usage on the stream's span (spans end in call order: the stream's is last)
        "stream_tokens": bool(spans) and any(_is_usage(key) for key in (spans[-1].attributes or {})),
        "metrics": metric_names,
    }
    peer.uninstrument()
    recorded.clear()
    h.call_once(client)
    restored = Completions.create is originals[0] and openai.OpenAI.request is originals[1]
    out["uninstrument_ok"] = restored and not recorded.get_finished_spans()
    out["ok"] = bool(patched and spans)
    if not out["ok"]:
        out["reason"] = "instrument() produced no span with this openai (dependency check refused it?)"
    return out


if __name__ == "__main__":
    sys.exit(main())
