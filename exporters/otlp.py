"""OTLP → ``SpanRecord``: what the ingest service receives, in the exporter's terms.

The ingest service decodes ``ExportTraceServiceRequest`` bodies (protobuf, or the
OTLP/JSON encoding) and turns each span into the same neutral ``SpanRecord`` the
in-process exporter builds from SDK spans, so both feed the one mapping
(``mapping.map_records``).

Spans the mapping could not place are *rejected* here, never silently dropped:
a trace id that is not 16 non-zero bytes, a span id that is not 8 non-zero bytes,
or a parent span id of the wrong length. The caller reports them in the OTLP
``partial_success``.

Values are made storable on both engines on the way: NUL characters (which
PostgreSQL text and JSONB cannot hold) become U+FFFD, non-finite doubles become
the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (JSON has no such numbers),
and bytes values become base64 text.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .records import SpanRecord

__all__ = [
    "OTLPDecodeError",
    "Conversion",
    "decode_protobuf",
    "decode_json",
    "records_from_request",
    "encode_response",
]

# OTLP SpanKind enum (0 = UNSPECIFIED) → the SDK's SpanKind names used by SpanRecord.
_KINDS = ("INTERNAL", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS = ("UNSET", "OK", "ERROR")
_HEX = re.compile(r"\A[0-9a-fA-F]*\Z")
_MAX_REJECTION_DETAILS = 5


class OTLPDecodeError(ValueError):
    """The body is not an ``ExportTraceServiceRequest`` in the announced encoding."""


@dataclass(slots=True)
class Conversion:
    """The records of one request, and what was rejected (for ``partial_success``)."""

    records: list[SpanRecord] = field(default_factory=list)
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < _MAX_REJECTION_DETAILS:
            self.reasons.append(reason)

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        more = self.rejected - len(self.reasons)
        return "; ".join(self.reasons) + (f"; and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------- decoding


def decode_protobuf(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError, TypeError, RuntimeError) as exc:
        raise OTLPDecodeError(f"not a protobuf ExportTraceServiceRequest: {type(exc).__name__}") from None
    return request


def decode_json(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON: ids are hex strings (the OTLP spec); base64 ids are accepted too.

    Field names may be lowerCamelCase (the spec) or the proto names; enums may be
    numbers or names; unknown fields are ignored, as the spec requires of receivers.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise OTLPDecodeError("not valid JSON") from None
    if not isinstance(document, dict):
        raise OTLPDecodeError("an ExportTraceServiceRequest must be a JSON object")
    if b"\\ud" in body or b"\\uD" in body:  # maybe a lone surrogate escape: protobuf refuses the whole request
        document = _without_lone_surrogates(document)
    try:
        _ids_to_base64(document)
        request = ExportTraceServiceRequest()
        json_format.ParseDict(document, request, ignore_unknown_fields=True, max_recursion_depth=64)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise OTLPDecodeError(f"not an OTLP/JSON ExportTraceServiceRequest: {_short(exc)}") from None
    return request


_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    """The document with each lone surrogate (``"\\ud83d"`` alone) replaced by U+FFFD.

    JSON may escape half a UTF-16 pair, which no UTF-8 string can hold: protobuf would
    refuse the whole request (400), and a Collector drops a batch answered 400. The
    replacement is what OTEP 257 recommends for invalid text; a pair JSON escaped whole
    is one character already.
    """
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    return value


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


_ID_FIELDS = {"traceId": 16, "trace_id": 16, "spanId": 8, "span_id": 8, "parentSpanId": 8, "parent_span_id": 8}


def _ids_to_base64(document: dict) -> None:
    """Rewrite hex ids in place to the base64 that protobuf's JSON mapping expects for bytes."""
    for resource_spans in _list(document, "resourceSpans", "resource_spans"):
        for scope_spans in _list(resource_spans, "scopeSpans", "scope_spans"):
            for span in _list(scope_spans, "spans"):
                if not isinstance(span, dict):
                    continue
                _fix_ids(span)
                for link in _list(span, "links"):
                    if isinstance(link, dict):
                        _fix_ids(link)


def _list(obj: Any, *names: str) -> list:
    if not isinstance(obj, dict):
        return []
    for name in names:
        value = obj.get(name)
        if isinstance(value, list):
            return value
    return []


_INVALID_ID = base64.b64encode(b"\x00").decode("ascii")  # one byte: no valid id has that length


def _fix_ids(obj: dict) -> None:
    for name, size in _ID_FIELDS.items():
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            continue  # absent, empty, or of a wrong type that json_format reports
        if len(value) == 2 * size and _HEX.match(value):
            obj[name] = base64.b64encode(binascii.unhexlify(value)).decode("ascii")
            continue
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            # Neither hex nor base64: an invalid id, so the span is rejected (partial success),
            # not the whole request.
            obj[name] = _INVALID_ID


# --------------------------------------------------------------------------- conversion


def records_from_request(request: ExportTraceServiceRequest) -> Conversion:
    """Every span of the request as a ``SpanRecord``; invalid ones are counted as rejected."""
    out = Conversion()
    records = out.records
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                trace_id = span.trace_id
                span_id = span.span_id
                parent = span.parent_span_id
                if len(trace_id) != 16 or not any(trace_id):
                    out.reject(f"span {span_id.hex() or '(empty)'}: invalid trace id")
                    continue
                if len(span_id) != 8 or not any(span_id):
                    out.reject(f"span {span_id.hex() or '(empty)'}: invalid span id")
                    continue
                if parent and (len(parent) != 8 or not any(parent)):
                    out.reject(f"span {span_id.hex()}: invalid parent span id")
                    continue
                status = span.status
                kind = span.kind
                code = status.code
                records.append(
                    SpanRecord(
                        trace_id=trace_id.hex(),
                        span_id=span_id.hex(),
                        parent_span_id=parent.hex() if parent else None,
                        name=_text(span.name),
                        kind=_KINDS[kind] if 0 <= kind < 6 else "INTERNAL",
                        status_code=_STATUS[code] if 0 <= code < 3 else "UNSET",
                        status_message=_text(status.message) or None,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano or None,
                        attributes=_attributes(span.attributes),
                        events=[
                            {
                                "name": _text(event.name),
                                "time_unix_nano": event.time_unix_nano,
                                "attributes": _attributes(event.attributes),
                            }
                            for event in span.events
                        ],
                        resource=resource,
                    )
                )
    return out


def span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def _attributes(key_values: Iterable) -> dict[str, Any]:
    # The hot loop of the ingest path: strings and ints (most attributes) inline.
    out: dict[str, Any] = {}
    for kv in key_values:
        key = kv.key
        if "\x00" in key:
            key = key.replace("\x00", "\ufffd")
        value = kv.value
        which = value.WhichOneof("value")
        if which == "string_value":
            text = value.string_value
            out[key] = text.replace("\x00", "\ufffd") if "\x00" in text else text
        elif which == "int_value":
            out[key] = value.int_value
        else:
            out[key] = _value(value, which)
    return out


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _value(any_value, which: str | None = None) -> Any:
    if which is None:
        which = any_value.WhichOneof("value")
    if which == "string_value":
        return _text(any_value.string_value)
    if which == "int_value":
        return any_value.int_value
    if which == "double_value":
        number = any_value.double_value
        if math.isfinite(number):
            return number
        return "NaN" if number != number else ("Infinity" if number > 0 else "-Infinity")
    if which == "bool_value":
        return any_value.bool_value
    if which == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if which == "kvlist_value":
        return _attributes(any_value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(any_value.bytes_value).decode("ascii")
    return None


# --------------------------------------------------------------------------- responses


def encode_response(rejected: int, error_message: str, *, as_json: bool) -> bytes:
    """An ``ExportTraceServiceResponse``; ``partial_success`` only when something was rejected."""
    response = ExportTraceServiceResponse()
    if rejected or error_message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = error_message
    if as_json:
        return json_format.MessageToJson(response, indent=None).encode("utf-8")
    return response.SerializeToString()


def encode_status(code: int, message: str, *, as_json: bool) -> bytes:
    """A ``google.rpc.Status`` body, as the OTLP spec wants on 4xx/5xx answers.

    Encoded by hand (field 1 ``code`` varint, field 2 ``message`` string) so the
    service needs no googleapis protos.
    """
    if as_json:
        return json.dumps({"code": code, "message": message}).encode("utf-8")
    text = message.encode("utf-8")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
