"""Every number the dashboard shows, computed here and only here.

The pages, the JSON API (``/api/...``) and ``wflo-otel report --html`` all call these
functions, so what a page shows is what its JSON says is what this SQL returns. Anything
over a time window reads the rollup tables (``exporters/rollups.py``), never the steps:
a window of two days or less reads ``cost_rollup_hourly`` (hourly buckets), a longer one
``cost_rollup_daily`` (daily buckets), tenants ``cost_rollup_tenant_daily``. Windows are
whole UTC days (``today`` is since midnight UTC), so every rollup answers them exactly.
The executions list reads ``workflow_executions`` inside the window (its ``started_at``
index), its attribute filter probing each execution's steps (the ``execution_id`` index),
and one execution reads its steps (the ``execution_id`` index).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..exporters.schema import (
    WORKFLOW_SPAN,
    cost_rollup_daily,
    cost_rollup_hourly,
    cost_rollup_tenant_daily,
    step_executions,
    workflow_executions,
)

WINDOWS = {"today": 1, "7d": 7, "30d": 30}
DIMENSIONS = ("model", "workflow", "tenant")
TOP = 10
SERIES_KEYS = 8  # series beyond these are summed as OTHER
PAGE_SIZE = 50
MAX_PAGE = 1_000_000  # past it, 400: a bigger page is no real page, and its OFFSET could overflow
SORTS = {
    "started": workflow_executions.c.started_at,
    "cost": workflow_executions.c.cost_total_usd,
    "calls": workflow_executions.c.llm_calls,
    "tokens": workflow_executions.c.input_tokens + workflow_executions.c.output_tokens,
}
STATUSES = ("COMPLETED", "FAILED", "BUDGET_EXCEEDED", "RUNNING")
# Tables of capabilities built apart (spend limits, controls): a page each when they exist.
LIMIT_TABLE_PREFIXES = ("spend_limit", "limit_period")
CONTROL_TABLES = ("state_snapshots", "approval_requests", "rollback_actions")


class BadRequest(ValueError):
    """A query parameter the dashboard cannot read (answered 400, shown on the page)."""


@dataclass(frozen=True)
class Window:
    """Whole UTC days ``[start, end)``; ``name`` is ``today``, ``7d``, ``30d`` or ``custom``."""

    name: str
    start: datetime
    end: datetime

    @property
    def hourly(self) -> bool:
        return self.end - self.start <= timedelta(days=2)

    @property
    def label(self) -> str:
        last = (self.end - timedelta(days=1)).date()
        first = self.start.date()
        return first.isoformat() if first == last else f"{first.isoformat()} to {last.isoformat()}"

    def params(self) -> dict[str, str]:
        if self.name == "custom":
            return {"window": "custom", "from": self.start.date().isoformat(), "to": (self.end - timedelta(days=1)).date().isoformat()}
        return {"window": self.name}


def window_from(params: Mapping[str, str], *, today: date | None = None) -> Window:
    """The window a request names (``window=today|7d|30d`` or ``window=custom&from=&to=``); 7 days by default."""
    today = today or datetime.now(timezone.utc).date()
    name = params.get("window") or "7d"
    if name in WINDOWS:
        end = _midnight(today + timedelta(days=1))
        return Window(name, end - timedelta(days=WINDOWS[name]), end)
    if name != "custom":
        raise BadRequest(f"unknown window {name!r}: today, 7d, 30d or custom")
    try:
        first = date.fromisoformat(params.get("from") or "")
        last = date.fromisoformat(params.get("to") or params.get("from") or "")
    except ValueError:
        raise BadRequest("a custom window needs from= and to= as YYYY-MM-DD") from None
    if last < first:
        first, last = last, first
    if (last - first).days > 366:
        raise BadRequest("a custom window is at most 366 days")
    if last >= date.max:  # the window ends the day after its last: past the calendar
        raise BadRequest(f"a custom window must end before {date.max.isoformat()}")
    return Window("custom", _midnight(first), _midnight(last + timedelta(days=1)))


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


def _utc(value: Any) -> Any:
    """Timestamps as aware UTC (SQLite gives them back naive)."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


# --------------------------------------------------------------------------- overview


@dataclass
class Totals:
    cost_usd: float = 0.0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    refusals: int = 0
    errors: int = 0


@dataclass
class Overview:
    window: Window
    by: str
    bucket: str  # "hour" or "day"
    totals: Totals
    buckets: list[datetime]
    series: dict[str, list[float]]  # key -> cost per bucket, in the order of ``buckets``
    top_workflows: list[dict[str, Any]]
    top_models: list[dict[str, Any]]
    top_tenants: list[dict[str, Any]]
    limits: list[dict[str, Any]] = field(default_factory=list)  # the most used current periods of the spend limits
    limits_total: int = 0  # current periods in all (the Limits page lists them)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["window"] = {"name": self.window.name, "start": self.window.start.isoformat(), "end": self.window.end.isoformat()}
        data["buckets"] = [b.isoformat() for b in self.buckets]
        return data


def _rollup_for(window: Window, by: str) -> tuple[sa.Table, sa.Column, str]:
    """(table, its bucket column, "hour"/"day") answering ``window`` grouped ``by``."""
    if by == "tenant":
        return cost_rollup_tenant_daily, cost_rollup_tenant_daily.c.day, "day"
    if window.hourly:
        return cost_rollup_hourly, cost_rollup_hourly.c.hour, "hour"
    return cost_rollup_daily, cost_rollup_daily.c.day, "day"


def _dimension(table: sa.Table, by: str) -> sa.Column:
    return table.c["workflow_id" if by == "workflow" else by]


async def overview(conn: AsyncConnection, window: Window, by: str = "model") -> Overview:
    """Spend, calls, tokens, refusals and errors in ``window``; cost over time stacked ``by``; the tops."""
    if by not in DIMENSIONS:
        raise BadRequest(f"unknown grouping {by!r}: {', '.join(DIMENSIONS)}")
    totals, tops = await _breakdown(conn, window)
    tops["tenant"] = await top(conn, window, "tenant")
    buckets, series = await _series(conn, window, by, [r["name"] for r in tops[by][:SERIES_KEYS]])
    return Overview(
        window=window,
        by=by,
        bucket=_rollup_for(window, by)[2],
        totals=totals,
        buckets=buckets,
        series=series,
        top_workflows=tops["workflow"],
        top_models=tops["model"],
        top_tenants=tops["tenant"],
        **await _overview_limits(conn),
    )


async def _overview_limits(conn: AsyncConnection) -> dict[str, Any]:
    """The most used current periods of the spend limits, where spend limits exist."""
    if "spend_limit_periods" not in await existing_tables(conn):
        return {}
    periods, total = await current_limit_periods(conn, most_used=True, limit=OVERVIEW_LIMITS)
    return {"limits": periods, "limits_total": total}


_MEASURES = ("cost_usd", "calls", "input_tokens", "output_tokens", "refusals", "errors")


async def _breakdown(conn: AsyncConnection, window: Window) -> tuple[Totals, dict[str, list[dict[str, Any]]]]:
    """The window's totals and its top workflows and models, from one query grouped by (workflow, model).

    A few hundred rows at most (workflows x models), summed again here: one scan of the rollup
    instead of one per figure.
    """
    table, bucket_col, _ = _rollup_for(window, "model")
    c = table.c
    rows = await conn.execute(
        sa.select(c.workflow_id, c.model, *(sa.func.sum(c[m]) for m in _MEASURES))
        .where(bucket_col >= window.start, bucket_col < window.end)
        .group_by(c.workflow_id, c.model)
    )
    totals = [0.0, 0, 0, 0, 0, 0]
    by: dict[str, dict[str, list]] = {"workflow": {}, "model": {}}
    for workflow, model, *values in rows:
        for kind, name in (("workflow", workflow), ("model", model)):
            acc = by[kind].setdefault(name, [0.0, 0, 0, 0, 0, 0])
            for i, value in enumerate(values):
                acc[i] += value
        for i, value in enumerate(values):
            totals[i] += value
    tops = {
        kind: [_top_row(name, acc) for name, acc in sorted(names.items(), key=lambda item: (-item[1][0], item[0]))[:TOP]]
        for kind, names in by.items()
    }
    return Totals(float(totals[0]), *(int(v) for v in totals[1:])), tops


def _top_row(name: str, acc: list) -> dict[str, Any]:
    cost, calls, inp, out, refusals, errors = acc
    return {"name": name, "cost_usd": float(cost), "calls": int(calls), "tokens": int(inp + out), "refusals": int(refusals), "errors": int(errors)}


async def top(conn: AsyncConnection, window: Window, by: str, limit: int = TOP) -> list[dict[str, Any]]:
    """The ``limit`` dearest workflows / models / tenants in ``window`` (cost, calls, tokens, refusals, errors)."""
    table, bucket_col, _ = _rollup_for(window, by)
    key = _dimension(table, by)
    c = table.c
    cost = sa.func.sum(c.cost_usd)
    rows = await conn.execute(
        sa.select(key, cost, *(sa.func.sum(c[m]) for m in _MEASURES[1:]))
        .where(bucket_col >= window.start, bucket_col < window.end)
        .group_by(key)
        .order_by(cost.desc(), key)
        .limit(limit)
    )
    return [_top_row(r[0], list(r[1:])) for r in rows]


OTHER = "(other)"


async def _series(
    conn: AsyncConnection, window: Window, by: str, keys: list[str]
) -> tuple[list[datetime], dict[str, list[float]]]:
    """Every bucket of ``window`` and the cost per bucket of each of ``keys``, the rest summed as ``OTHER``.

    Grouped in SQL down to at most (buckets x (keys + 1)) rows, whatever the number of tenants.
    """
    table, bucket_col, bucket = _rollup_for(window, by)
    key = _dimension(table, by)
    # NULL stands for "any other key" (no key is NULL: the rollup's keys are NOT NULL).
    series_key = sa.case((key.in_(keys), key), else_=sa.null()) if keys else sa.null()
    rows = (
        await conn.execute(
            sa.select(bucket_col, series_key, sa.func.sum(table.c.cost_usd))
            .where(bucket_col >= window.start, bucket_col < window.end)
            .group_by(bucket_col, *([series_key] if keys else []))  # PostgreSQL refuses GROUP BY NULL
        )
    ).all()
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    buckets = []
    at = window.start
    while at < window.end:
        buckets.append(at)
        at += step
    index = {b: i for i, b in enumerate(buckets)}
    series = {name: [0.0] * len(buckets) for name in keys}
    for when, name, cost in rows:
        i = index.get(_utc(when))
        if i is not None:
            series.setdefault(OTHER if name is None else name, [0.0] * len(buckets))[i] += float(cost)
    return buckets, series


# --------------------------------------------------------------------------- executions


@dataclass
class ExecutionFilter:
    window: Window
    workflow: str | None = None
    status: str | None = None
    sort: str = "started"
    descending: bool = True
    page: int = 1
    attribute: tuple[str, str] | None = None  # (key, value): the execution's root or workflow span carries it

    def params(self, **changes: Any) -> dict[str, str]:
        """The query parameters of this filter with ``changes`` (for links: sort, page)."""
        attr = f"{self.attribute[0]}={self.attribute[1]}" if self.attribute else None
        values = {**self.window.params(), "workflow": self.workflow, "status": self.status, "attr": attr, "sort": self.sort,
                  "order": "desc" if self.descending else "asc", "page": str(self.page)}
        values.update({k: (str(v) if v is not None else None) for k, v in changes.items()})
        return {k: v for k, v in values.items() if v}


def execution_filter(params: Mapping[str, str]) -> ExecutionFilter:
    sort = params.get("sort") or "started"
    if sort not in SORTS:
        raise BadRequest(f"unknown sort {sort!r}: {', '.join(SORTS)}")
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"unknown status {status!r}: {', '.join(STATUSES)}")
    try:
        page = max(1, int(params.get("page") or 1))
    except ValueError:
        raise BadRequest("page must be a number") from None
    if page > MAX_PAGE:  # its OFFSET would overflow the database's integer (a 500)
        raise BadRequest(f"page must be at most {MAX_PAGE}")
    return ExecutionFilter(
        window=window_from(params),
        workflow=params.get("workflow") or None,
        status=status,
        sort=sort,
        descending=(params.get("order") or "desc") != "asc",
        page=page,
        attribute=attribute_filter(params.get("attr") or ""),
    )


MAX_ATTRIBUTE_KEY = 255
MAX_ATTRIBUTE_VALUE = 1_000


def attribute_filter(text: str) -> tuple[str, str] | None:
    """``KEY=VALUE`` (``tenant.id=acme``) as a (key, value) pair; ``None`` for an empty filter.

    The key names a span attribute as stored (a JSON object key); quotes and backslashes
    are refused because SQLite's JSON path cannot carry them.
    """
    if not text.strip():
        return None
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BadRequest("attr must be KEY=VALUE, e.g. tenant.id=acme")
    if len(key) > MAX_ATTRIBUTE_KEY or len(value) > MAX_ATTRIBUTE_VALUE:
        raise BadRequest(f"attr: a key of at most {MAX_ATTRIBUTE_KEY} and a value of at most {MAX_ATTRIBUTE_VALUE} characters")
    if any(c in key for c in '"\\') or any(ord(c) < 32 for c in key + value):
        raise BadRequest("attr: no quotes or backslashes in the key, and no control characters")
    return key, value


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INT64 = range(-(2**63), 2**63)


def _typed_candidates(value: str) -> list[str | int | float | bool]:
    """What ``value`` may stand for in a span attribute: the string itself; the number it
    spells, in JSON's spelling only (``17``, ``-0.5``, ``1e3``; not ``017`` nor ``1_7``);
    the boolean ``true`` / ``false``. Each matches only a stored value of its own JSON type,
    on both engines alike (arrays and objects match nothing).
    """
    candidates: list[str | int | float | bool] = [value]
    if value in ("true", "false"):
        candidates.append(value == "true")
    elif _JSON_NUMBER.fullmatch(value):
        number = float(value)
        if number == number and abs(number) != float("inf"):
            whole = "." not in value and "e" not in value.lower() and int(value) in _INT64
            candidates.append(int(value) if whole else number)
    return candidates


# The attribute filter on PostgreSQL, in up to three steps (``_attribute_clause``):
# 1. the first PROBE_FIRST executions of the window in page order (after the pages skipped)
#    are probed: a value common in the window has a page among them;
# 2. else the GIN index is asked for up to SPARSE_ROOTS + 1 roots with the value: a rare
#    value's executions are then read by id;
# 3. else (common overall, rare in the window) every execution of the window is probed.
PROBE_FIRST = 500
MAX_PROBED = 20_000  # past this many skipped + probed rows, step 1 is skipped
SPARSE_ROOTS = 5_000  # executions, not spans


async def _attribute_clause(conn: AsyncConnection, query: sa.Select, key: str, value: str, skip: int) -> sa.ColumnElement[bool]:
    """Executions whose root or workflow span carries ``key`` equal to ``value`` (as a string,
    or as the number it spells) — where ``workflow(attributes=...)`` and a manual root span
    put them — as a condition on ``query`` (the page's query, ordered, before its limit).

    SQLite probes each execution of the window (its roots, by the ``execution_id`` index).
    PostgreSQL has the partial GIN index ``ix_step_executions_workflow_attributes`` for a
    JSONB containment (``@>``), but its planner cannot tell a rare value from one every
    execution has (``@>`` has no statistics: a prepared statement's generic plan walked
    290,000 executions for a value none had, 1.8 s at 10M steps; the index path for a value
    all have costs 0.1 s), so the steps above decide from what they find.
    """
    s, e = step_executions, workflow_executions
    match = attribute_match(conn.dialect.name, key, value)

    def carried_by_roots_of(execution_id: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        return sa.exists().where(s.c.execution_id == execution_id, sa.text(WORKFLOW_SPAN), match)

    probe = carried_by_roots_of(e.c.id)
    if conn.dialect.name != "postgresql":
        return probe
    from sqlalchemy.dialects.postgresql import ARRAY

    def among(ids: list[str]) -> sa.ColumnElement[bool]:
        return e.c.id == sa.any_(sa.bindparam("attribute_ids", ids, type_=ARRAY(sa.String)))

    if skip + PROBE_FIRST <= MAX_PROBED:
        prefix = query.with_only_columns(e.c.id).limit(skip + PROBE_FIRST).subquery()
        rows = (await conn.execute(sa.select(prefix.c.id, carried_by_roots_of(prefix.c.id)))).all()
        hits = [ident for ident, found in rows if found]
        if len(hits) > skip + PAGE_SIZE or len(rows) < skip + PROBE_FIRST:
            return among(hits)  # this page and the next one's first, or the whole window
    # DISTINCT: an execution's root and nested workflow spans may all carry the value.
    roots = sa.select(s.c.execution_id).where(sa.text(WORKFLOW_SPAN), match).distinct().limit(SPARSE_ROOTS + 1)
    ids = [row[0] for row in await conn.execute(roots)]
    return among(ids) if len(ids) <= SPARSE_ROOTS else probe


def attribute_match(dialect: str, key: str, value: str) -> sa.ColumnElement[bool]:
    """A step's attributes hold ``key`` with ``value`` as a string, or as the number or boolean
    it spells (``_typed_candidates``): JSONB containment on PostgreSQL, ``json_type`` and
    ``json_extract`` on SQLite, so a string never equals a number and ``1`` never ``true``."""
    s = step_executions
    candidates = _typed_candidates(value)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        return sa.or_(*(s.c.attributes.op("@>")(sa.cast(sa.literal(json.dumps({key: c}), sa.Text), JSONB)) for c in candidates))
    path = f'$."{key}"'
    found, kind = sa.func.json_extract(s.c.attributes, path), sa.func.json_type(s.c.attributes, path)
    matches = []
    for c in candidates:
        if isinstance(c, bool):
            matches.append(kind == ("true" if c else "false"))
        elif isinstance(c, str):
            matches.append(sa.and_(kind == "text", found == sa.literal(c)))
        else:
            matches.append(sa.and_(kind.in_(("integer", "real")), found == sa.literal(c)))
    return sa.or_(*matches)


_EXECUTION_COLUMNS = (
    "id", "workflow_id", "status", "budget_usd", "cost_total_usd", "input_tokens", "output_tokens",
    "llm_calls", "started_at", "ended_at", "error",
)


def _execution_dict(row: Any) -> dict[str, Any]:
    data = {name: _utc(value) for name, value in zip(_EXECUTION_COLUMNS, row)}
    started, ended = data["started_at"], data["ended_at"]
    data["duration_ms"] = (ended - started).total_seconds() * 1000 if started and ended else None
    return data


async def executions(conn: AsyncConnection, flt: ExecutionFilter) -> tuple[list[dict[str, Any]], bool]:
    """One page of executions started in the filter's window, and whether another page follows."""
    e = workflow_executions
    order = SORTS[flt.sort]
    query = (
        sa.select(*(e.c[name] for name in _EXECUTION_COLUMNS))
        .where(e.c.started_at >= flt.window.start, e.c.started_at < flt.window.end)
        .order_by(order.desc() if flt.descending else order.asc(), e.c.id.desc() if flt.descending else e.c.id.asc())
    )
    if flt.workflow:
        query = query.where(e.c.workflow_id == flt.workflow)
    if flt.status:
        query = query.where(e.c.status == flt.status)
    skip = (flt.page - 1) * PAGE_SIZE
    if flt.attribute:
        query = query.where(await _attribute_clause(conn, query, *flt.attribute, skip=skip))
    rows = [_execution_dict(r) for r in await conn.execute(query.limit(PAGE_SIZE + 1).offset(skip))]
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


async def workflow_names(conn: AsyncConnection) -> list[str]:
    from ..exporters.schema import workflow_definitions as d

    return [r[0] for r in await conn.execute(sa.select(d.c.id).order_by(d.c.id).limit(500))]


_STEP_COLUMNS = (
    "id", "parent_span_id", "name", "kind", "status", "error_type", "request_model", "response_model",
    "input_tokens", "output_tokens", "cost_usd", "started_at", "ended_at", "duration_ms",
)


async def execution(conn: AsyncConnection, execution_id: str) -> dict[str, Any] | None:
    """One execution with its steps in start order (and its control rows where those tables exist)."""
    e, s = workflow_executions, step_executions
    row = (await conn.execute(sa.select(*(e.c[n] for n in _EXECUTION_COLUMNS)).where(e.c.id == execution_id))).first()
    if row is None:
        return None
    data = _execution_dict(row)
    steps = await conn.execute(
        sa.select(*(s.c[n] for n in _STEP_COLUMNS)).where(s.c.execution_id == execution_id).order_by(s.c.started_at, s.c.id)
    )
    data["steps"] = [{n: _utc(v) for n, v in zip(_STEP_COLUMNS, r)} for r in steps]
    data["controls"] = {}
    for table in sorted(set(CONTROL_TABLES) & await existing_tables(conn)):
        columns, rows = await table_rows(conn, table, where_execution=execution_id)
        data["controls"][table] = [dict(zip(columns, r)) for r in rows]
    return data


# --------------------------------------------------------------------------- limits

# What ``wflo-otel limits`` shows, from the same view (``spend_per_limit``, migration 0004).
_LIMIT_COLUMNS = (
    "limit_name", "limit_key", "per", "period_start", "period_end", "limit_usd", "spent_usd", "leased_usd",
    "remaining_usd", "alerted_threshold",
)


LIMITS_SHOWN = 1000  # the Limits page (a row per limit and key: per-tenant limits make many)
OVERVIEW_LIMITS = 8  # the Overview: the most used current periods


async def current_limit_periods(
    conn: AsyncConnection, now: datetime | None = None, *, most_used: bool = False, limit: int = LIMITS_SHOWN
) -> tuple[list[dict[str, Any]], int]:
    """Each spend limit's current period per key, and how many there are in all.

    Spent, limit, leased, remaining, the highest alert threshold fired, resets at
    (``period_end``): one read of ``spend_per_limit`` with ``period_end > now`` (indexed),
    the rows ``wflo-otel limits`` shows. By limit and key; with ``most_used``, the largest
    share of their limit spent first (the Overview's few). ``spent_usd`` is what the
    processes reported; ``leased_usd`` is held by running processes and not spent yet.
    """
    from ..limits_store import timestamp_param

    at = timestamp_param(now or datetime.now(timezone.utc), conn.dialect.name == "sqlite")
    order = (
        "CASE WHEN limit_usd > 0 THEN spent_usd / limit_usd END DESC NULLS LAST, limit_name, limit_key"
        if most_used
        else "limit_name, limit_key"
    )
    rows = (
        await conn.execute(
            sa.text(
                f"SELECT {', '.join(_LIMIT_COLUMNS)}, COUNT(*) OVER () FROM spend_per_limit"
                f" WHERE period_end > :now ORDER BY {order} LIMIT :limit"
            ),
            {"now": at, "limit": limit},
        )
    ).all()
    periods = [{name: _utc(_parse_ts(name, value)) for name, value in zip(_LIMIT_COLUMNS, row)} for row in rows]
    return periods, (rows[0][-1] if rows else 0)


def _parse_ts(name: str, value: Any) -> Any:
    """A view hands SQLite's timestamps back as text (no column type): read them as datetimes."""
    if name in ("period_start", "period_end") and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


# --------------------------------------------------------------------------- approvals

DECIDED_SHOWN = 50


async def approvals(conn: AsyncConnection, *, pending: bool, limit: int = 100) -> list[Any]:
    """Pending requests (oldest first: the longest waiting on top) or decided ones (latest decision first).

    The controls' own query and record (``controls.store.approval_query``): the page shows
    what the CLI and ``/v1/approvals`` return.
    """
    from ..controls.records import STATUS_PENDING
    from ..controls.schema import approval_requests as a
    from ..controls.store import approval_query, approval_record

    if pending:
        where, order = a.c.status == STATUS_PENDING, (a.c.created_at, a.c.id)
    else:
        where, order = a.c.status != STATUS_PENDING, (a.c.decided_at.desc(), a.c.id)
    # The page's ids first, then their workflows. Joined before the LIMIT, the page took 83 ms
    # (p50) at 10,000 decided requests over 125,000 executions; this way 15 ms (bench/dashboard.py).
    ids = sa.select(a.c.id).where(where).order_by(*order).limit(limit)
    query = approval_query().where(a.c.id.in_(ids)).order_by(*order)
    return [approval_record(row) for row in (await conn.execute(query)).mappings()]


# --------------------------------------------------------------------------- hooks


async def existing_tables(conn: AsyncConnection) -> set[str]:
    """The tables of the database (one catalog query: this runs for every page's navigation)."""
    if conn.dialect.name == "postgresql":
        sql = "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = current_schema()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    return {row[0] for row in await conn.execute(sa.text(sql))}


async def optional_pages(conn: AsyncConnection) -> dict[str, list[str]]:
    """The pages of capabilities built apart, with their tables, when those tables exist."""
    tables = await existing_tables(conn)
    pages = {}
    limits = sorted(t for t in tables if t.startswith(LIMIT_TABLE_PREFIXES))
    if limits:
        pages["limits"] = limits
    if "approval_requests" in tables:
        pages["approvals"] = ["approval_requests"]
    return pages


async def table_rows(
    conn: AsyncConnection, table: str, *, where_execution: str | None = None, limit: int = 200
) -> tuple[list[str], list[tuple]]:
    """Rows of a table the dashboard knows only by name (newest first when it has ``created_at``).

    The controls' tables are known by their definitions; any other is reflected (several
    catalog queries: ~30 ms each on PostgreSQL, too slow for every execution page).
    """
    from ..controls import schema as controls_schema

    reflected = controls_schema.metadata.tables.get(table)
    if reflected is None:
        reflected = sa.Table(table, sa.MetaData())
        await conn.run_sync(lambda sync: sa.inspect(sync).reflect_table(reflected, None))
    query = sa.select(reflected).limit(limit)
    if where_execution is not None and "execution_id" in reflected.c:
        query = query.where(reflected.c.execution_id == where_execution)
    if "created_at" in reflected.c:
        query = query.order_by(reflected.c.created_at.desc() if where_execution is None else reflected.c.created_at)
    result = await conn.execute(query)
    return list(result.keys()), [tuple(r) for r in result]
