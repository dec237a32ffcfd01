"""The span store: writes mapped rows to SQLite or PostgreSQL, one transaction per batch.

Idempotent by construction: steps are inserted with ``ON CONFLICT DO NOTHING`` on
their span id, and execution totals are *recomputed* from the step rows of every
execution the batch touched, so a duplicate delivery changes nothing. On
PostgreSQL the execution rows are upserted first, which locks them, so two
writers racing on one execution serialise and the later one sums both.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .mapping import RowBatch
from .schema import step_executions, workflow_definitions, workflow_executions

_log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./wflo.db"
# Rows per INSERT statement: keeps bind parameters under SQLite's 32,766 limit.
_CHUNK = 500


def normalize_url(url: str) -> str:
    """Accept plain ``sqlite://`` / ``postgresql://`` URLs and pick the async drivers."""
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def create_engine(url: str) -> AsyncEngine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _insert(dialect: str):
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _chunks(rows: list[dict[str, Any]]):
    for i in range(0, len(rows), _CHUNK):
        yield rows[i : i + _CHUNK]


class SpanStore:
    """Async writer for mapped batches; owns its engine."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = create_engine(self.url)
        self.dialect = self.engine.dialect.name

    async def migrate(self) -> None:
        """Bring the schema to the latest alembic revision (safe to call from many processes)."""
        from wflo_otel.migrations import upgrade_connection

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade_connection, "head")

    async def write(self, batch: RowBatch) -> None:
        if not batch.steps and not batch.executions:
            return
        async with self.engine.begin() as conn:
            await self._write(conn, batch)

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def _write(self, conn: AsyncConnection, batch: RowBatch) -> None:
        insert = _insert(self.dialect)
        await self._upsert_definitions(conn, insert, batch)
        await self._upsert_executions(conn, insert, batch)
        steps = list(batch.steps.values())
        for chunk in _chunks(steps):
            await conn.execute(insert(step_executions).values(chunk).on_conflict_do_nothing(index_elements=["id"]))
        await self._recompute_totals(conn, sorted(batch.executions))

    async def _upsert_definitions(self, conn: AsyncConnection, insert, batch: RowBatch) -> None:
        rows = sorted(batch.definitions.values(), key=lambda r: r["id"])
        with_policy = [r for r in rows if r["policies"] is not None]
        without = [r for r in rows if r["policies"] is None]
        if without:
            await conn.execute(insert(workflow_definitions).values(without).on_conflict_do_nothing(index_elements=["id"]))
        if with_policy:
            stmt = insert(workflow_definitions).values(with_policy)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["id"],
                    set_={"policies": stmt.excluded.policies, "updated_at": stmt.excluded.updated_at},
                )
            )

    async def _upsert_executions(self, conn: AsyncConnection, insert, batch: RowBatch) -> None:
        rows = sorted(batch.executions.values(), key=lambda r: r["id"])
        finals = [r for r in rows if r["status"] != "RUNNING"]
        placeholders = [r for r in rows if r["status"] == "RUNNING"]
        t = workflow_executions
        if placeholders:
            stmt = insert(t).values(placeholders)
            # A no-op update rather than DO NOTHING: it takes the row lock (see module doc).
            await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"trace_id": t.c.trace_id}))
        if finals:
            stmt = insert(t).values(finals)
            ex = stmt.excluded
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["id"],
                    set_={
                        "workflow_id": ex.workflow_id,
                        "status": ex.status,
                        "inputs": ex.inputs,
                        "error": ex.error,
                        "budget_usd": ex.budget_usd,
                        "trace_id": ex.trace_id,
                        "correlation_id": ex.correlation_id,
                        "service_name": sa.func.coalesce(ex.service_name, t.c.service_name),
                        "started_at": ex.started_at,
                        "ended_at": ex.ended_at,
                    },
                )
            )

    async def _recompute_totals(self, conn: AsyncConnection, execution_ids: list[str]) -> None:
        if not execution_ids:
            return
        s, t = step_executions, workflow_executions
        llm = sa.and_(s.c.execution_id == t.c.id, s.c.kind == "llm")
        # A call refused by the budget was never sent: it is a step, not an LLM call.
        sent = sa.and_(llm, sa.func.coalesce(s.c.error_type, "") != "BudgetExceededError")

        def total(expr):
            return sa.select(sa.func.coalesce(sa.func.sum(expr), 0)).where(llm).scalar_subquery()

        values = {
            "cost_total_usd": total(s.c.cost_usd),
            "input_tokens": total(s.c.input_tokens),
            "output_tokens": total(s.c.output_tokens),
            "llm_calls": sa.select(sa.func.count()).where(sent).scalar_subquery(),
        }
        for i in range(0, len(execution_ids), _CHUNK):
            ids = execution_ids[i : i + _CHUNK]
            await conn.execute(sa.update(t).where(t.c.id.in_(ids)).values(values))
