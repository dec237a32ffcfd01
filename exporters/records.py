"""A neutral span record: what the mapping needs, whatever the span came from.

The in-process exporter builds records from SDK ``ReadableSpan`` objects; the
ingest service builds the same records from OTLP. Everything downstream (the
span→row mapping, the store) sees only ``SpanRecord``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from opentelemetry.sdk.trace import ReadableSpan


@dataclass(slots=True)
class SpanRecord:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str | None
    name: str
    kind: str  # SpanKind name: INTERNAL, CLIENT, SERVER, PRODUCER, CONSUMER
    status_code: str  # UNSET, OK, ERROR
    status_message: str | None
    start_ns: int
    end_ns: int | None
    attributes: Mapping[str, Any]
    events: Sequence[Mapping[str, Any]] = field(default_factory=list)
    resource: Mapping[str, Any] = field(default_factory=dict)


def record_from_readable_span(span: ReadableSpan) -> SpanRecord:
    ctx = span.context
    parent = span.parent
    status = span.status
    return SpanRecord(
        trace_id=format(ctx.trace_id, "032x"),
        span_id=format(ctx.span_id, "016x"),
        parent_span_id=format(parent.span_id, "016x") if parent is not None and parent.span_id else None,
        name=span.name,
        kind=span.kind._name_,  # the member's name; ``.name`` is a descriptor call, this runs per span
        status_code=status.status_code._name_,
        status_message=status.description,
        start_ns=span.start_time or 0,
        end_ns=span.end_time,
        attributes=_plain_attributes(span),
        events=_events(span),
        resource=_resource_attributes(span.resource),
    )


_NO_EVENTS: tuple = ()


def _events(span: ReadableSpan) -> Sequence[Mapping[str, Any]]:
    # ``span.events`` copies the SDK's locked list even when it is empty, as it mostly is.
    raw = getattr(span, "_events", None)
    if raw is not None and not len(raw):
        return _NO_EVENTS
    return [
        {"name": e.name, "time_unix_nano": e.timestamp, "attributes": dict(e.attributes or {})} for e in span.events
    ]


def _plain_attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """The span's attributes as a plain dict, without copying when possible.

    The SDK keeps them in a plain dict inside ``BoundedAttributes``, read-only once the
    span has ended; every lookup through the public read-only proxy costs several times
    more, and the mapping does about twenty per span.
    """
    inner = getattr(getattr(span, "_attributes", None), "_dict", None)
    if type(inner) is dict:
        return inner
    return dict(span.attributes or {})


# The spans of one provider share one Resource: its attributes are made plain once.
_last_resource: tuple[Any, Mapping[str, Any]] = (None, {})


def _resource_attributes(resource: Any) -> Mapping[str, Any]:
    global _last_resource
    last, plain = _last_resource
    if resource is last:
        return plain
    if resource is None:
        return {}
    plain = dict(resource.attributes)
    _last_resource = (resource, plain)
    return plain
