"""Synthetic OTLP trace traffic: deterministic requests for tests, benchmarks and smoke checks.

``make_request(traces=100, spans_per_trace=5, seed=1)`` builds an
``ExportTraceServiceRequest`` whose traces look like LLM workflows: a root
workflow span, then LLM call spans (GenAI attributes with token usage, no cost:
the mapping prices them) and one tool span per trace when there is room.
``seed`` fixes every id, so two calls with the same arguments give the same spans.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = ["make_request", "split", "to_json", "any_value", "span_ids"]

_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")


def any_value(value: Any) -> AnyValue:
    out = AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, (list, tuple)):
        out.array_value.values.extend(any_value(v) for v in value)
    elif isinstance(value, dict):
        out.kvlist_value.values.extend(KeyValue(key=k, value=any_value(v)) for k, v in value.items())
    else:
        out.string_value = str(value)
    return out


def _attrs(target, attributes: dict[str, Any]) -> None:
    target.extend(KeyValue(key=k, value=any_value(v)) for k, v in attributes.items())


def make_request(
    traces: int = 100,
    spans_per_trace: int = 5,
    *,
    seed: int = 1,
    service_name: str = "synthetic-agent",
    workflow: str = "support-agent",
    wflo_attributes: bool = True,
    start_ns: int | None = None,
) -> ExportTraceServiceRequest:
    """``traces`` traces of ``spans_per_trace`` spans each (one resource, one scope)."""
    rng = random.Random(seed)
    base = start_ns if start_ns is not None else 1_760_000_000_000_000_000 + seed * 1_000_000_000
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _attrs(resource_spans.resource.attributes, {"service.name": service_name, "telemetry.sdk.language": "python"})
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "wflo_otel.synthetic"
    for t in range(traces):
        trace_id = rng.getrandbits(128).to_bytes(16, "big")
        root_id = rng.getrandbits(64).to_bytes(8, "big")
        start = base + t * 10_000_000
        root = scope_spans.spans.add(
            trace_id=trace_id,
            span_id=root_id,
            name=workflow,
            kind=1,
            start_time_unix_nano=start,
            end_time_unix_nano=start + 9_000_000,
        )
        if wflo_attributes:
            _attrs(
                root.attributes,
                {
                    "gen_ai.operation.name": "invoke_workflow",
                    "gen_ai.workflow.name": workflow,
                    "wflo.budget.usd": 0.5,
                    "wflo.execution.status": "COMPLETED",
                },
            )
        for i in range(1, spans_per_trace):
            span_id = rng.getrandbits(64).to_bytes(8, "big")
            child_start = start + i * 1_000_000
            if i == spans_per_trace - 1 and spans_per_trace > 2:
                child = scope_spans.spans.add(
                    trace_id=trace_id,
                    span_id=span_id,
                    parent_span_id=root_id,
                    name="execute_tool lookup",
                    kind=1,
                    start_time_unix_nano=child_start,
                    end_time_unix_nano=child_start + 500_000,
                )
                _attrs(child.attributes, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"})
                continue
            model = _MODELS[(t + i) % len(_MODELS)]
            child = scope_spans.spans.add(
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=root_id,
                name=f"chat {model}",
                kind=3,
                start_time_unix_nano=child_start,
                end_time_unix_nano=child_start + 800_000,
            )
            _attrs(
                child.attributes,
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": model,
                    "gen_ai.response.model": model,
                    "gen_ai.response.finish_reasons": ["stop"],
                    "gen_ai.usage.input_tokens": 100 + rng.randrange(400),
                    "gen_ai.usage.output_tokens": 20 + rng.randrange(200),
                    "server.address": "api.openai.com",
                    "server.port": 443,
                },
            )
            event = child.events.add(name="gen_ai.choice", time_unix_nano=child_start + 700_000)
            _attrs(event.attributes, {"index": 0, "finish_reason": "stop"})
    return request


def split(request: ExportTraceServiceRequest, spans_per_request: int) -> list[ExportTraceServiceRequest]:
    """The spans of ``request`` cut into requests of at most ``spans_per_request`` spans."""
    out: list[ExportTraceServiceRequest] = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            spans = list(scope_spans.spans)
            for i in range(0, len(spans), spans_per_request):
                part = ExportTraceServiceRequest()
                rs = part.resource_spans.add()
                rs.resource.CopyFrom(resource_spans.resource)
                ss = rs.scope_spans.add()
                ss.scope.CopyFrom(scope_spans.scope)
                ss.spans.extend(spans[i : i + spans_per_request])
                out.append(part)
    return out


def span_ids(request: ExportTraceServiceRequest) -> set[str]:
    return {span.span_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans}


def to_json(request: ExportTraceServiceRequest, *, hex_ids: bool = True) -> bytes:
    """The OTLP/JSON encoding: lowerCamelCase, enums as numbers, ids in hex (or base64)."""
    from google.protobuf import json_format

    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    if hex_ids:
        for resource_spans in document.get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                for span in scope_spans.get("spans", []):
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in span:
                            span[key] = _b64_to_hex(span[key])
    return json.dumps(document).encode("utf-8")


def _b64_to_hex(value: str) -> str:
    import base64

    return base64.b64decode(value).hex()


def now_ns() -> int:
    return time.time_ns()


def chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
