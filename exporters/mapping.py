"""Span → rows: the single mapping from span records to the three tables.

Shared by the in-process exporter and the ingest service. Pure functions, no
I/O: a batch of records becomes definition, execution and step rows; the store
writes them idempotently. Execution *totals* are not computed here — the store
derives them from the step rows it holds, so a span delivered twice is counted
once.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from wflo_otel import attributes as A
from wflo_otel.genai_spans import BIGINT_LIMIT, LLM_OPERATIONS, PROVIDER, call_usage, first, is_llm_call, own_usage, service_tier
from wflo_otel.redaction import redact_exception_attributes, redact_message

from .records import SpanRecord

_log = logging.getLogger(__name__)

# What a stored value may be. A count or amount beyond these is no usage any call has
# had (2**32 tokens is ~4 billion in one call; $1e9 is a billion dollars): taken as it
# came, one such span would corrupt its execution's totals or, summed, overflow them.
TOKEN_LIMIT = 1 << 32
COST_LIMIT_USD = 1e9
# A column the mapping refused is NULL; its raw value is kept under this attribute
# ({column: raw value}), so nothing the span said is lost.
REJECTED = "wflo.storage.rejected"
_TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens")

_STEP_KINDS = frozenset({"workflow", "step", "llm", "tool", "other"})
_PROMOTED = frozenset({A.WFLO_WORKFLOW_INPUTS})  # stored in their own column, not repeated in attributes


@dataclass
class RowBatch:
    """Rows for one export batch, keyed so that repeats within a batch collapse."""

    definitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    executions: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)

    def halves(self) -> tuple["RowBatch", "RowBatch"]:
        """The steps split in two, each half with the execution and definition rows its steps need.

        For finding the one span a database refuses in a batch it otherwise takes.
        """
        ids = list(self.steps)
        middle = len(ids) // 2
        return self._subset(ids[:middle]), self._subset(ids[middle:])

    def _subset(self, step_ids: list[str]) -> "RowBatch":
        part = RowBatch()
        for step_id in step_ids:
            step = part.steps[step_id] = self.steps[step_id]
            execution_id = step["execution_id"]
            if execution_id not in part.executions:
                execution = part.executions[execution_id] = self.executions[execution_id]
                workflow = execution["workflow_id"]
                part.definitions[workflow] = self.definitions[workflow]
        return part

    def storable(self) -> "RowBatch":
        """The same rows with what a database driver cannot encode replaced.

        Lone surrogates in text (a file name decoded with ``surrogateescape``) become
        ``?``, and integers or floats a column cannot hold become NULL. Applied only
        after a batch was refused: the common path pays for no such scan.
        """
        return RowBatch(
            {key: _storable_row(row) for key, row in self.definitions.items()},
            {key: _storable_row(row) for key, row in self.executions.items()},
            {key: _storable_row(row) for key, row in self.steps.items()},
        )


_UTC = timezone.utc


def ns_to_datetime(ns: int | None) -> datetime | None:
    if not ns:
        return None
    return datetime.fromtimestamp(ns / 1e9, _UTC)  # positional tz: a third cheaper than tz=


def map_records(records: Iterable[SpanRecord], pricebook=None) -> RowBatch:
    batch = RowBatch()
    for record in records:
        try:
            _map_one(record, batch, pricebook)
        except Exception:  # one odd span must not sink its batch
            _log.exception("wflo-otel: could not map span %s", record.span_id)
    return batch


def _map_one(record: SpanRecord, batch: RowBatch, pricebook) -> None:
    attrs = record.attributes
    execution_id = attrs.get(A.WFLO_EXECUTION_ID) or record.trace_id
    if execution_id.__class__ is not str:
        execution_id = str(execution_id)
    is_root = record.parent_span_id is None or bool(attrs.get(A.WFLO_EXECUTION_ROOT))
    service_name = record.resource.get("service.name")
    workflow_name = _workflow_name(record, is_root, service_name)

    # Every row is built before any is added: a span that fails half-way must leave
    # no step behind whose execution row is missing (its foreign key would sink the batch).
    step = _step_row(record, execution_id, is_root, pricebook)
    if is_root:
        definition = _definition_row(workflow_name, attrs, step)
        execution = _root_execution_row(record, execution_id, workflow_name, service_name, step)
        batch.definitions[workflow_name] = definition
        batch.executions[execution_id] = execution
    else:  # build placeholder rows only the first time a batch sees them
        if workflow_name not in batch.definitions:
            batch.definitions[workflow_name] = _definition_row(workflow_name, {}, step)
        if execution_id not in batch.executions:
            batch.executions[execution_id] = _placeholder_execution_row(record, execution_id, workflow_name, service_name, step)
    batch.steps[step["id"]] = step


def _workflow_name(record: SpanRecord, is_root: bool, service_name: Any) -> str:
    attrs = record.attributes
    if is_root:
        name = attrs.get(A.GEN_AI_WORKFLOW_NAME) or attrs.get(A.WFLO_WORKFLOW_NAME)
        if not name:  # a call with no parent span is an execution of its service, as the budget processor names it
            name = (is_llm_call(attrs) and service_name) or record.name
    else:
        name = attrs.get(A.WFLO_WORKFLOW_NAME) or service_name or "unknown"
    if name.__class__ is not str:
        name = str(name)
    return name if len(name) <= 255 else name[:255]


def _definition_row(name: str, attrs: Mapping[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    budget = _usd(attrs.get(A.WFLO_BUDGET_USD))
    now = step["ended_at"] or step["started_at"]
    return {
        "id": name,
        "name": name,
        "description": attrs.get("wflo.workflow.description"),
        "policies": {"budget_usd": budget} if budget is not None else None,
        "created_at": now,
        "updated_at": now,
    }


def _execution_status(record: SpanRecord) -> str:
    status = record.attributes.get(A.WFLO_EXECUTION_STATUS)
    if status in (A.STATUS_COMPLETED, A.STATUS_FAILED, A.STATUS_BUDGET_EXCEEDED):
        return status
    return A.STATUS_FAILED if record.status_code == "ERROR" else A.STATUS_COMPLETED


def _root_execution_row(record: SpanRecord, execution_id: str, workflow_name: str, service_name, step: dict) -> dict:
    attrs = record.attributes
    status = _execution_status(record)
    return {
        "id": execution_id,
        "workflow_id": workflow_name,
        "status": status,
        "inputs": _json_attr(attrs.get(A.WFLO_WORKFLOW_INPUTS)),
        "error": redact_message(record.status_message or attrs.get(A.ERROR_TYPE)) if status != A.STATUS_COMPLETED else None,
        "budget_usd": _usd(attrs.get(A.WFLO_BUDGET_USD)),
        "trace_id": record.trace_id,
        "correlation_id": attrs.get(A.WFLO_CORRELATION_ID) or execution_id,
        "service_name": service_name,
        "started_at": step["started_at"],
        "ended_at": step["ended_at"],
    }


def _placeholder_execution_row(record: SpanRecord, execution_id: str, workflow_name: str, service_name, step: dict) -> dict:
    """An execution seen through a child before its root: RUNNING until the root lands."""
    return {
        "id": execution_id,
        "workflow_id": workflow_name,
        "status": A.STATUS_RUNNING,
        "inputs": None,
        "error": None,
        "budget_usd": None,
        "trace_id": record.trace_id,
        "correlation_id": execution_id,
        "service_name": service_name,
        "started_at": step["started_at"],
        "ended_at": None,
    }


def _step_kind(attrs: Mapping[str, Any], is_root: bool) -> str:
    kind = attrs.get(A.WFLO_STEP_KIND)
    if kind in _STEP_KINDS:
        return kind
    operation = attrs.get(A.GEN_AI_OPERATION_NAME)
    if operation == A.OPERATION_INVOKE_WORKFLOW:
        return "workflow"
    # Before the root check: a bare LLM call with no workflow around it (zero-code runs)
    # is its own root, and must still be a priced step counted in the execution totals.
    if operation in LLM_OPERATIONS or is_llm_call(attrs):
        return "llm"
    if is_root:
        return "workflow"
    if operation == "execute_tool" or attrs.get(A.OPENINFERENCE_SPAN_KIND) == "TOOL":
        return "tool"
    return "other"


def _step_row(record: SpanRecord, execution_id: str, is_root: bool, pricebook) -> dict[str, Any]:
    """The span's own row. This runs once per stored span: lookups are bound locally."""
    attrs = record.attributes
    get = attrs.get
    kind = _step_kind(attrs, is_root)
    # A call's usage under whichever instrumentation's names the span has it.
    usage = call_usage(attrs) if kind == "llm" else own_usage(attrs)
    request_model, response_model, input_tokens, output_tokens, cache_read, reasoning = usage
    rejected: dict[str, Any] | None = None
    if not _plausible_counts(input_tokens, output_tokens, cache_read, reasoning):
        rejected = {}
        input_tokens, output_tokens, cache_read, reasoning = (
            _bounded_count(name, value, rejected)
            for name, value in zip(_TOKEN_COLUMNS, (input_tokens, output_tokens, cache_read, reasoning))
        )
    cost, cost_source = get(A.WFLO_COST_USD), get(A.WFLO_COST_SOURCE)
    if kind == "llm" and cost is None and cost_source is None and input_tokens is not None and pricebook is not None:
        priced = pricebook.cost(
            response_model or request_model,
            input_tokens=input_tokens or 0,
            output_tokens=output_tokens or 0,
            cache_read_tokens=cache_read or 0,
            reasoning_tokens=reasoning or 0,
            service_tier=service_tier(attrs),
        )
        cost, cost_source = priced.usd, priced.source
    cost_usd = None
    if kind == "llm" and cost is not None:
        cost_usd = _usd(cost)
        if cost_usd is not None and not 0.0 <= cost_usd <= COST_LIMIT_USD:
            rejected = rejected if rejected is not None else {}
            rejected["cost_usd"] = cost_usd
            cost_usd = None
    start_ns, end_ns = record.start_ns, record.end_ns
    name = record.name
    return {
        "id": record.span_id,
        "execution_id": execution_id,
        "trace_id": record.trace_id,
        "parent_span_id": record.parent_span_id,
        "name": name if len(name) <= 512 else name[:512],
        "kind": kind,
        "status": record.status_code,
        "error_type": get(A.ERROR_TYPE),
        "provider": get(A.GEN_AI_PROVIDER_NAME) or (first(get, PROVIDER) if kind == "llm" else None),
        "operation": get(A.GEN_AI_OPERATION_NAME),
        "request_model": request_model,
        "response_model": response_model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read,
        "reasoning_tokens": reasoning,
        "cost_usd": cost_usd,
        "cost_source": cost_source,
        "started_at": ns_to_datetime(start_ns),
        "ended_at": ns_to_datetime(end_ns),
        "duration_ms": (end_ns - start_ns) / 1e6 if end_ns else None,
        "attributes": _stored_attributes(attrs, rejected),
        "events": stored_events(record.events) if record.events else None,
    }


def _stored_attributes(attrs: Mapping[str, Any], rejected: dict[str, Any] | None) -> Mapping[str, Any]:
    """The span's attributes as stored: as the span has them (JSON encodes tuples as arrays),
    without a promoted attribute (the workflow inputs, in their own column), with a note of
    the values the mapping refused. The span's own dict is never changed (the SDK's)."""
    if A.WFLO_WORKFLOW_INPUTS in attrs:
        attrs = {k: v for k, v in attrs.items() if k not in _PROMOTED}
    if rejected:
        attrs = {**attrs, REJECTED: rejected}
    return attrs


def _plausible_counts(*counts: int | None) -> bool:
    """All None or within [0, TOKEN_LIMIT]: the common case, tested without a call per count."""
    for count in counts:
        if count is not None and not 0 <= count <= TOKEN_LIMIT:
            return False
    return True


def _bounded_count(column: str, count: int | None, rejected: dict[str, Any]) -> int | None:
    """``count``, or None (noted in ``rejected``) when negative or implausibly large.

    A negative count would subtract from the execution's totals (the budget processor
    already treats such usage as none); a huge one would overflow them.
    """
    if count is None or 0 <= count <= TOKEN_LIMIT:
        return count
    rejected[column] = count
    return None


def stored_events(events: Any) -> list[dict[str, Any]]:
    """The span's events as stored: an exception's message and stack trace redacted.

    Whatever instrumentation recorded them (the ingest service stores other processes'
    spans), a bearer token or API key echoed by a server's error must not reach storage.
    """
    out = []
    for event in events:
        attrs = event.get("attributes") if isinstance(event, Mapping) else None
        if attrs and event.get("name") == "exception":
            event = {**event, "attributes": redact_exception_attributes(attrs)}
        out.append(event)
    return out


def _usd(value: Any) -> float | None:
    """An amount in USD, or None when the span's value is not a finite number.

    A NaN would poison every total it joins (and SQLite refuses it in a NOT NULL column).
    """
    if value is None:
        return None
    if value.__class__ is not float:
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
    return value if math.isfinite(value) else None


def _json_attr(value: Any) -> Any:
    """A JSON attribute (the workflow inputs) as the value it encodes.

    Text that is no JSON, or JSON nested deeper than the parser's recursion limit (50,000
    nested lists), is kept as the text it is (``{"value": text}``): the span is stored,
    not refused.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return {"value": value}
    return value


def _storable_row(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _storable_column(value) for key, value in row.items()}


def _storable_column(value: Any) -> Any:
    if value.__class__ is int and not -BIGINT_LIMIT <= value < BIGINT_LIMIT:
        return None
    if value.__class__ is float and not math.isfinite(value):
        return None
    return _storable(value)


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, Mapping):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(item) for item in value]
    return value
