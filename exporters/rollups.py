"""Hourly cost rollups: what the dashboard reads instead of the step rows.

Three tables (``ROLLUPS``) hold the LLM calls, budget refusals, errors, tokens and USD of
the LLM steps: ``cost_rollup_hourly`` and ``cost_rollup_daily`` per UTC hour / day x
workflow x model x step status, ``cost_rollup_tenant_daily`` per UTC day x tenant. The store adds to
it in the transaction that inserts the steps, from exactly the rows that transaction
inserted (the store's look-up skips a span stored before), so a span delivered twice
is counted once and each rollup always equals the same SUM over ``step_executions``
(``aggregate_sql`` is that SUM; the migration uses it and a test compares both).

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
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

# Span attributes read as the tenant dimension, first present wins.
TENANT_ATTRIBUTES = ("tenant.id", "tenant", "enduser.id")
_NAME_LIMIT = 255
REFUSAL = "BudgetExceededError"

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
_DIMENSION_PG_TYPES = {"hour": "timestamptz", "day": "timestamptz"}


@dataclass(frozen=True)
class Rollup:
    """One rollup table: a time bucket (``hour`` or ``day``, UTC) and the dimensions it keeps."""

    table: str
    bucket: str
    dimensions: tuple[str, ...]

    @property
    def key_columns(self) -> tuple[str, ...]:
        return (self.bucket, *self.dimensions)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.key_columns + MEASURE_COLUMNS

    def _conflict(self) -> str:
        add = ", ".join(f"{c} = {self.table}.{c} + excluded.{c}" for c in MEASURE_COLUMNS)
        return f"ON CONFLICT ({', '.join(self.key_columns)}) DO UPDATE SET {add}"

    @property
    def pg_upsert_sql(self) -> str:
        types = [_DIMENSION_PG_TYPES.get(c, "text") for c in self.key_columns] + ["int8"] * 7 + ["float8"]
        arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
        return f"INSERT INTO {self.table} ({', '.join(self.columns)}) SELECT * FROM unnest({arrays}) {self._conflict()}"

    @property
    def sqlite_upsert_sql(self) -> str:
        marks = ", ".join("?" * len(self.columns))
        return f"INSERT INTO {self.table} ({', '.join(self.columns)}) VALUES ({marks}) {self._conflict()}"


# Hourly for short windows, daily for long ones, and the tenant apart: crossed with the
# other dimensions it would make the rollups as many rows as the steps.
HOURLY = Rollup("cost_rollup_hourly", "hour", ("workflow_id", "model", "status"))
DAILY = Rollup("cost_rollup_daily", "day", ("workflow_id", "model", "status"))
TENANT_DAILY = Rollup("cost_rollup_tenant_daily", "day", ("tenant",))
ROLLUPS = (HOURLY, DAILY, TENANT_DAILY)
# Positions of the dimensions in the full key ``rollup_rows`` computes per step.
_FULL_KEY = ("hour", "day", "workflow_id", "model", "status", "tenant")


def tenant_of(attributes: Any) -> str:
    """The tenant dimension of a step's attributes (``''`` when it names none)."""
    get = getattr(attributes, "get", None)  # a mapping (this runs per LLM step: no ABC isinstance)
    if get is None:
        return ""
    for key in TENANT_ATTRIBUTES:
        value = get(key)
        if value.__class__ is str and value:
            return value.replace("\x00", "")[:_NAME_LIMIT]
    return ""


def _pg_buckets(value: datetime) -> tuple[datetime, datetime]:
    return value.replace(minute=0, second=0, microsecond=0), value.replace(hour=0, minute=0, second=0, microsecond=0)


def _sqlite_buckets(value: str) -> tuple[str, str]:  # SQLAlchemy's storage format: "YYYY-MM-DD HH:MM:SS.ffffff"
    return value[:13] + ":00:00.000000", value[:10] + " 00:00:00.000000"


def _pg_hour_key(value: datetime) -> tuple:
    return (value.year, value.month, value.day, value.hour)


def _sqlite_hour_key(value: str) -> str:
    return value[:13]


def rollup_rows(
    steps: Sequence[tuple],
    positions: Mapping[str, int],
    workflow_of: Mapping[str, str],
    tenant_for: Callable[[str], str],
    *,
    sqlite: bool,
) -> dict[Rollup, list[tuple]]:
    """Per rollup, the rows (its ``columns``, sorted by key) that ``steps`` (driver tuples just inserted) add.

    ``positions`` maps step column names to tuple positions; ``workflow_of`` gives the
    workflow of each execution; ``tenant_for`` the tenant of a step id. Sorted, so
    concurrent writers lock the rows they share in the same order.
    """
    p = positions
    i_id, i_exec, i_kind, i_status, i_error = p["id"], p["execution_id"], p["kind"], p["status"], p["error_type"]
    i_resp, i_req, i_start, i_cost = p["response_model"], p["request_model"], p["started_at"], p["cost_usd"]
    i_in, i_out, i_cache, i_reason = p["input_tokens"], p["output_tokens"], p["cache_read_tokens"], p["reasoning_tokens"]
    buckets, hour_key = (_sqlite_buckets, _sqlite_hour_key) if sqlite else (_pg_buckets, _pg_hour_key)
    bucket_of: dict[Any, tuple] = {}  # the (hour, day) of each hour seen: a batch spans a few
    sums: dict[tuple, list] = {}
    for row in steps:
        if row[i_kind] != "llm":
            continue
        model = row[i_resp] if row[i_resp] is not None else (row[i_req] if row[i_req] is not None else "")
        started = row[i_start]
        hour = hour_key(started)
        bucket = bucket_of.get(hour)
        if bucket is None:
            bucket = bucket_of[hour] = buckets(started)
        key = (*bucket, workflow_of[row[i_exec]], model, row[i_status], tenant_for(row[i_id]))
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
    return {rollup: _project(sums, rollup) for rollup in ROLLUPS}


def _project(sums: dict[tuple, list], rollup: Rollup) -> list[tuple]:
    """``sums`` (by full key) summed again by the rollup's own key."""
    picks = [_FULL_KEY.index(c) for c in rollup.key_columns]
    out: dict[tuple, list] = {}
    for key, measures in sums.items():
        own = tuple(key[i] for i in picks)
        acc = out.get(own)
        if acc is None:
            out[own] = list(measures)
        else:
            for j, value in enumerate(measures):
                acc[j] += value
    return [(*key, *out[key]) for key in sorted(out)]


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


def _bucket_sql(bucket: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"date_trunc('{bucket}', s.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    return "strftime('%Y-%m-%d %H:00:00.000000', s.started_at)" if bucket == "hour" else "strftime('%Y-%m-%d 00:00:00.000000', s.started_at)"


def aggregate_sql(rollup: Rollup, dialect: str) -> str:
    """``SELECT`` of ``rollup``'s rows computed from ``step_executions`` (the rollup's definition)."""
    expressions = {
        rollup.bucket: _bucket_sql(rollup.bucket, dialect),
        "workflow_id": "e.workflow_id",
        "model": "COALESCE(s.response_model, s.request_model, '')",
        "status": "s.status",
        "tenant": _tenant_sql(dialect),
    }
    keys = ", ".join(f"{expressions[c]} AS {c}" for c in rollup.key_columns)
    groups = ", ".join(str(i) for i in range(1, len(rollup.key_columns) + 1))
    refused = f"COALESCE(s.error_type, '') = '{REFUSAL}'"
    return f"""
SELECT {keys},
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
GROUP BY {groups}"""


def backfill_sql(rollup: Rollup, dialect: str) -> str:
    """Fill an empty rollup table from the steps already stored."""
    return f"INSERT INTO {rollup.table} ({', '.join(rollup.columns)}){aggregate_sql(rollup, dialect)}"
