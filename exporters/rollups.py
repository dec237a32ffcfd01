"""Hourly cost rollups: what the dashboard reads instead of the step rows.

``cost_rollup_hourly`` holds, per UTC hour x workflow x model x step status x tenant, the
LLM calls, budget refusals, errors, tokens and USD of the LLM steps. The store adds to
it in the transaction that inserts the steps, from exactly the rows that transaction
inserted (the store's look-up skips a span stored before), so a span delivered twice
is counted once and the rollup always equals the same SUM over ``step_executions``
(``backfill_sql`` is that SUM; the migration uses it and a test compares both).

The measures follow the execution totals: only ``kind = 'llm'`` steps count; a call the
budget refused (``error_type = 'BudgetExceededError'``) is a refusal, not a call; an
``ERROR`` step that is not a refusal is an error. The model is the response model, else
the request model, else ``''``; the tenant is the first of ``TENANT_ATTRIBUTES`` the
step carries as a non-empty string, else ``''``. The workflow is the one the step's
execution has in the database when the step is written (for a placeholder execution,
the workflow its first span named; the SDK stamps it on every span of an execution).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

# Span attributes read as the tenant dimension, first present wins.
TENANT_ATTRIBUTES = ("tenant.id", "tenant", "enduser.id")
_NAME_LIMIT = 255
REFUSAL = "BudgetExceededError"

KEY_COLUMNS = ("hour", "workflow_id", "model", "status", "tenant")
MEASURE_COLUMNS = (
    "calls",
    "refusals",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "reasoning_tokens",
    "cost_usd",
)
COLUMNS = KEY_COLUMNS + MEASURE_COLUMNS
_PG_TYPES = ("timestamptz", "text", "text", "text", "text") + ("int8",) * 7 + ("float8",)

_ADD = ", ".join(f"{c} = cost_rollup_hourly.{c} + excluded.{c}" for c in MEASURE_COLUMNS)
_CONFLICT = f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {_ADD}"
PG_UPSERT_SQL = (
    f"INSERT INTO cost_rollup_hourly ({', '.join(COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{t}[]" for i, t in enumerate(_PG_TYPES, 1))
    + f") {_CONFLICT}"
)
SQLITE_UPSERT_SQL = (
    f"INSERT INTO cost_rollup_hourly ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) {_CONFLICT}"
)


def tenant_of(attributes: Any) -> str:
    """The tenant dimension of a step's attributes (``''`` when it names none)."""
    if not isinstance(attributes, Mapping):
        return ""
    for key in TENANT_ATTRIBUTES:
        value = attributes.get(key)
        if value.__class__ is str and value:
            return value.replace("\x00", "")[:_NAME_LIMIT]
    return ""


def _pg_hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _sqlite_hour(value: str) -> str:  # SQLAlchemy's storage format: "YYYY-MM-DD HH:MM:SS.ffffff"
    return value[:13] + ":00:00.000000"


def rollup_rows(
    steps: Sequence[tuple],
    positions: Mapping[str, int],
    workflow_of: Mapping[str, str],
    tenant_for: Callable[[str], str],
    *,
    sqlite: bool,
) -> list[tuple]:
    """The rollup rows (``COLUMNS``, sorted by key) that ``steps`` (driver tuples just inserted) add.

    ``positions`` maps step column names to tuple positions; ``workflow_of`` gives the
    workflow of each execution; ``tenant_for`` the tenant of a step id. Sorted, so
    concurrent writers lock the rows they share in the same order.
    """
    p = positions
    i_id, i_exec, i_kind, i_status, i_error = p["id"], p["execution_id"], p["kind"], p["status"], p["error_type"]
    i_resp, i_req, i_start, i_cost = p["response_model"], p["request_model"], p["started_at"], p["cost_usd"]
    i_in, i_out, i_cache, i_reason = p["input_tokens"], p["output_tokens"], p["cache_read_tokens"], p["reasoning_tokens"]
    hour = _sqlite_hour if sqlite else _pg_hour
    sums: dict[tuple, list] = {}
    for row in steps:
        if row[i_kind] != "llm":
            continue
        model = row[i_resp] if row[i_resp] is not None else (row[i_req] if row[i_req] is not None else "")
        key = (hour(row[i_start]), workflow_of[row[i_exec]], model, row[i_status], tenant_for(row[i_id]))
        acc = sums.get(key)
        if acc is None:
            acc = sums[key] = [0, 0, 0, 0, 0, 0, 0, 0.0]
        if row[i_error] == REFUSAL:
            acc[1] += 1
        else:
            acc[0] += 1
            if row[i_status] == "ERROR":
                acc[2] += 1
        acc[3] += row[i_in] or 0
        acc[4] += row[i_out] or 0
        acc[5] += row[i_cache] or 0
        acc[6] += row[i_reason] or 0
        acc[7] += row[i_cost] or 0.0
    return [(*key, *sums[key]) for key in sorted(sums)]


def _tenant_sql(dialect: str) -> str:
    parts = []
    for key in TENANT_ATTRIBUTES:
        if dialect == "postgresql":
            parts.append(
                f"CASE WHEN jsonb_typeof(s.attributes -> '{key}') = 'string' "
                f"THEN NULLIF(left(s.attributes ->> '{key}', {_NAME_LIMIT}), '') END"
            )
        else:
            path = f"'$.\"{key}\"'"
            parts.append(
                f"CASE WHEN json_type(s.attributes, {path}) = 'text' "
                f"THEN NULLIF(substr(json_extract(s.attributes, {path}), 1, {_NAME_LIMIT}), '') END"
            )
    return f"COALESCE({', '.join(parts)}, '')"


def aggregate_sql(dialect: str) -> str:
    """``SELECT`` of the rollup rows computed from ``step_executions`` (the rollup's definition)."""
    if dialect == "postgresql":
        hour = "date_trunc('hour', s.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    else:
        hour = "strftime('%Y-%m-%d %H:00:00.000000', s.started_at)"
    refused = f"COALESCE(s.error_type, '') = '{REFUSAL}'"
    return f"""
SELECT {hour} AS hour, e.workflow_id, COALESCE(s.response_model, s.request_model, '') AS model,
       s.status, {_tenant_sql(dialect)} AS tenant,
       SUM(CASE WHEN {refused} THEN 0 ELSE 1 END) AS calls,
       SUM(CASE WHEN {refused} THEN 1 ELSE 0 END) AS refusals,
       SUM(CASE WHEN s.status = 'ERROR' AND NOT ({refused}) THEN 1 ELSE 0 END) AS errors,
       COALESCE(SUM(s.input_tokens), 0) AS input_tokens,
       COALESCE(SUM(s.output_tokens), 0) AS output_tokens,
       COALESCE(SUM(s.cache_read_tokens), 0) AS cache_read_tokens,
       COALESCE(SUM(s.reasoning_tokens), 0) AS reasoning_tokens,
       COALESCE(SUM(s.cost_usd), 0) AS cost_usd
FROM step_executions s JOIN workflow_executions e ON e.id = s.execution_id
WHERE s.kind = 'llm'
GROUP BY 1, 2, 3, 4, 5"""


def backfill_sql(dialect: str) -> str:
    """Fill an empty ``cost_rollup_hourly`` from the steps already stored."""
    return f"INSERT INTO cost_rollup_hourly ({', '.join(COLUMNS)}){aggregate_sql(dialect)}"
