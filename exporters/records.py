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
    return record_from_fields(span_fields(span))


# What ``span_fields`` returns: the span's data as plain values, in SpanRecord's field
# order, with the ids still integers (formatting them is left to ``record_from_fields``).
SpanFields = tuple


def span_fields(span: ReadableSpan) -> SpanFields:
    """The least work that frees a span's data from the SDK objects: a tuple of plain values.

    The writer process (``process_store``) receives these and builds the records and
    rows there, off the application's GIL; building and pickling the tuple costs a third
    of mapping the span and pickling its rows (~7 against ~22 µs). The attribute and
    resource dicts are shared, not copied (the SDK no longer changes them once the span
    has ended).
    """
    ctx = span.context
    parent = span.parent
    status = span.status
    return (
        ctx.trace_id,
        ctx.span_id,
        parent.span_id if parent is not None else None,
        span.name,
        span.kind._name_,  # the member's name; ``.name`` is a descriptor call, this runs per span
        status.status_code._name_,
        status.description,
        span.start_time or 0,
        span.end_time,
        _plain_attributes(span),
        _events(span),
        _resource_attributes(span.resource),
    )


def record_from_fields(fields: SpanFields) -> SpanRecord:
    parent_id = fields[2]  # indexed, not star-unpacked: that builds a list for every span
    return SpanRecord(
        format(fields[0], "032x"),
        format(fields[1], "016x"),
        format(parent_id, "016x") if parent_id else None,
        *fields[3:],
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
