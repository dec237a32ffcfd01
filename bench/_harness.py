"""The wflo-free half of ``overhead.py``: canned HTTP, the floor, calls and the A/B loop.

Imported by ``overhead.py`` (main venv) and by ``_peer_runner.py``, which runs in
each peer's own virtual environment where ``wflo_otel`` is not installed. So
this module imports only ``openai``, ``wrapt`` and the OpenTelemetry SDK.
"""

from __future__ import annotations

import functools
import gc
import glob
import json
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import openai
import wrapt
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

MODEL = "gpt-4o-mini"
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


def make_client(on_request: Callable[[Any], None] | None = None) -> openai.OpenAI:
    """A real OpenAI client whose transport answers from memory.

    ``on_request`` (checks only, never in timed rounds) sees every request first.
    """
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

    if on_request is not None:
        plain_handler = handler

        def handler(request):  # noqa: F811 - the inspecting variant
            on_request(request)
            return plain_handler(request)

    http_client = http.Client(transport=http.MockTransport(handler))
    return openai.OpenAI(api_key="sk-bench", base_url="https://api.openai.com/v1", http_client=http_client, max_retries=0)


# --------------------------------------------------------------------------- telemetry


class DroppingExporter(SpanExporter):
    """Accepts every batch and keeps nothing: the export thread runs, no I/O happens."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


# --------------------------------------------------------------------------- the floor


class _FloorStream(wrapt.ObjectProxy):
    """Ends the call (``end()``) when the stream is exhausted."""

    def __init__(self, stream: Any, end: Callable[[], None]) -> None:
        super().__init__(stream)
        self._self_end = end

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.__wrapped__.__next__()
        except StopIteration:
            self._self_end()
            raise


class FloorScenario:
    """One CLIENT span per call and nothing else (streams: ended on exhaustion).

    Variants change what the span carries and what ending a call does through
    ``span_attributes`` and ``ender``, both resolved once per ``instrument()``.
    """

    name = "floor"

    stream_proxy: type = _FloorStream
    request_usage = False  # ask streams for the usage chunk (and hide it), as wflo does

    def __init__(self, tracer_provider: Any) -> None:
        self.tracer = tracer_provider.get_tracer("bench.floor")

    def span_attributes(self) -> dict[bool, dict[str, Any] | None]:
        """Start attributes by ``stream``: none for the floor."""
        return {False: None, True: None}

    def ender(self, span: Any, stream: bool) -> Callable[[], None]:
        """What ends a call once its response (or its stream) is done: for the floor, only the span."""
        return span.end

    def instrument(self) -> None:
        from openai.resources.chat.completions import Completions

        tracer, proxy, request_usage = self.tracer, self.stream_proxy, self.request_usage
        start_attributes, ender = self.span_attributes(), self.ender

        def wrapper(wrapped, instance, args, kwargs):
            stream = kwargs.get("stream") is True
            if request_usage and stream and not (kwargs.get("stream_options") or {}).get("include_usage"):
                kwargs["stream_options"] = {**(kwargs.get("stream_options") or {}), "include_usage": True}
            span = tracer.start_span(
                f"chat {kwargs.get('model')}", kind=SpanKind.CLIENT, attributes=start_attributes[stream]
            )
            try:
                result = wrapped(*args, **kwargs)
            except BaseException:
                span.end()
                raise
            end = ender(span, stream)
            if stream:
                return proxy(result, end)
            end()
            return result

        wrapt.wrap_function_wrapper(Completions, "create", wrapper)

    def uninstrument(self) -> None:
        from openai.resources.chat.completions import Completions

        Completions.create = Completions.create.__wrapped__


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

class TimerClock:
    """Microseconds per call by a timer: process CPU time (all threads) or wall time."""

    unit = "µs"

    def __init__(self, name: str, timer: Callable[[], float]) -> None:
        self.name, self._timer = name, timer

    def per_call(self, body: Callable[[], None], calls: int) -> float:
        start = self._timer()
        body()
        return (self._timer() - start) / calls * 1e6


# Set (to callgrind's output file) in a process that ``callgrind_command`` started.
CALLGRIND_OUT_ENV = "WFLO_BENCH_CALLGRIND_OUT"


class InstructionClock:
    """Instructions per call, counted by valgrind's callgrind: the same count on every run.

    Why: on a shared VM the timers' per-pair spread was wider than the overhead
    being measured; an instruction count does not depend on what else the machine
    does. The process must run under ``callgrind_command``: collection is off
    except inside ``functools.reduce`` (``--toggle-collect``), and callgrind writes
    the counts when reduce returns (``--dump-after``), so each measured body runs
    as the one step of a two-item reduce, and its count is read from the newest dump.
    Instructions are not time (a cache miss costs more than an add), but the ratios
    the targets are stated in come out the same on any machine.
    """

    name = "instructions"
    unit = "instr"

    def __init__(self) -> None:
        self._out = os.environ.get(CALLGRIND_OUT_ENV)

    def per_call(self, body: Callable[[], None], calls: int) -> float:
        if not self._out:
            raise RuntimeError("--clock instructions: not running under callgrind (use callgrind_command)")
        functools.reduce(lambda _a, _b: body(), (0, 0))
        # Dumps are numbered <out>.1, <out>.2, ...; each read is deleted, so only new ones remain.
        fresh = [path for path in glob.glob(f"{self._out}.*") if path.rsplit(".", 1)[1].isdigit()]
        if len(fresh) != 1:  # a reduce inside the body toggled collection off and on again
            raise RuntimeError(f"expected one callgrind dump for the measured block, found {len(fresh)}")
        with open(fresh[0]) as dump:
            total = next(int(line.split()[1]) for line in dump if line.startswith("totals:"))
        os.unlink(fresh[0])
        return total / calls


def callgrind_command(
    argv: list[str], out_dir: str, env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """``argv`` run under callgrind, counting only what ``InstructionClock`` measures.

    PYTHONHASHSEED is fixed so dict and set layouts, hence the counts, repeat.
    Valgrind's own messages go to ``<out>.log``, leaving the program's stderr its own.
    """
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, f"callgrind.{os.getpid()}.{time.monotonic_ns()}")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=functools_reduce",
        "--dump-after=functools_reduce",
        f"--callgrind-out-file={out}",
        f"--log-file={out}.log",
        *argv,
    ]
    return command, {**(os.environ if env is None else env), CALLGRIND_OUT_ENV: out, "PYTHONHASHSEED": "0"}


CLOCKS: dict[str, Callable[[], Any]] = {
    "process": lambda: TimerClock("process CPU time", time.process_time),
    "wall": lambda: TimerClock("wall time", time.perf_counter),
    "instructions": InstructionClock,
}


def timed_round(
    client: openai.OpenAI,
    fn: Callable[[openai.OpenAI], None],
    calls: int,
    clock: Any,
    context: Callable[[], ContextManager[Any]] = nullcontext,
) -> float:
    """Cost per call (``clock.unit``) of ``calls`` calls inside one ``context()`` (e.g. a budgeted workflow)."""

    def body() -> None:
        for _ in range(calls):
            fn(client)

    gc.collect()
    with context():
        return clock.per_call(body, calls)


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


RoundFn = Callable[[openai.OpenAI, Callable[[openai.OpenAI], None], int], float]


def run(
    client: openai.OpenAI, scenarios: list[Any], rounds: int, calls: int, warmup: int, round_fn: RoundFn
) -> dict[tuple[str, str], Result]:
    """A B A B ... rounds per scenario and mode, scenarios interleaved within each pair index."""
    results = {(s.name, m): Result([], []) for s in scenarios for m in MODES}
    # Warm-up: imports, pydantic validators, price resolution caches, instrument creation.
    for scenario in scenarios:
        for fn in MODES.values():
            round_fn(client, fn, warmup)
            scenario.instrument()
            round_fn(client, fn, warmup)
            scenario.uninstrument()
    for _ in range(rounds):
        for scenario in scenarios:
            for mode, fn in MODES.items():
                result = results[(scenario.name, mode)]
                result.baseline.append(round_fn(client, fn, calls))  # A
                scenario.instrument()
                try:
                    result.instrumented.append(round_fn(client, fn, calls))  # B
                finally:
                    scenario.uninstrument()
    return results
