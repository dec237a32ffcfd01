"""The control store: checkpoints, rollbacks and approvals written synchronously to the exporter's database.

Why synchronous, and not through the span exporter: a checkpoint must be durable when
``checkpoint()`` returns, and a decision must reach a waiting process within a second;
the span pipeline batches for seconds and may spool. So each control operation is one
short transaction of its own, committed before the call returns.

The drivers are the exporter's (aiosqlite, asyncpg); the coroutines run on a private
event loop thread (``exporters._loop.LoopThread``), so a synchronous caller waits on a
future and an ``async`` caller awaits it without blocking its own loop. One code path
serves both.

A control row can land before any span of its execution: each write first inserts the
execution (status ``RUNNING``) and its definition with ``ON CONFLICT DO NOTHING``. The
exporter sees that row as stored and upserts the root span's view over it (a ``RUNNING``
row never overwrites), adding its steps' totals, exactly as for a child span that came
before its root.

SQLite: write transactions begin with ``BEGIN IMMEDIATE`` (they take the write lock
first, waiting on the busy timeout, instead of failing when a reader's snapshot went
stale). PostgreSQL: a decision ``NOTIFY``s channel ``wflo_approvals`` in its
transaction; a waiting process ``LISTEN``s on one connection, and polls slowly as a
backstop. SQLite has no notification: a waiter polls every ``SQLITE_POLL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from wflo_otel.exporters._loop import LoopThread
from wflo_otel.exporters.schema import workflow_definitions, workflow_executions
from wflo_otel.exporters.store import create_engine, normalize_url

from .decisions import decider
from .errors import ApprovalConflict, ApprovalNotFound, ExecutionBusy
from .records import STATUS_APPROVED, STATUS_EXPIRED, STATUS_PENDING, STATUS_REJECTED, Approval, ExecutionInfo, Snapshot, utc
from .schema import (
    approval_requests,
    execution_resumes,
    rollback_actions,
    state_snapshots,
)

_log = logging.getLogger(__name__)
NOTIFY_CHANNEL = "wflo_approvals"
SQLITE_POLL_S = 0.1
PG_BACKSTOP_POLL_S = 2.0
_VERSION_RETRIES = 5
_WRITE = {"wflo_write": True}


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class ExecutionRef:
    """The execution a control row belongs to, as its placeholder row would carry it."""

    __slots__ = ("id", "workflow", "budget_usd", "trace_id", "correlation_id", "inputs")

    def __init__(
        self,
        id: str,
        workflow: str,
        *,
        budget_usd: float | None = None,
        trace_id: str | None = None,
        correlation_id: str | None = None,
        inputs: Any = None,
    ) -> None:
        self.id = id
        self.workflow = workflow
        self.budget_usd = budget_usd
        self.trace_id = trace_id
        self.correlation_id = correlation_id
        self.inputs = inputs


class ControlStore:
    """Synchronous (and awaitable) control operations on one database; see the module doc."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = normalize_url(url)
        self._loop = LoopThread("wflo-otel-controls")
        self.engine = create_engine(self.url, pool_size=3, max_overflow=5)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_manual_transactions)
            sa.event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self._migrate = migrate
        self._migrated = False
        self._ensured: set[str] = set()
        self._ensured_lock = threading.Lock()
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listener: AsyncConnection | None = None
        self._listen_lock: asyncio.Lock | None = None

    # -- running ---------------------------------------------------------------------

    def run(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``make()`` on the store's loop and wait for it (sync callers)."""
        return self._loop.run(self._ready(make))

    async def arun(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``make()`` run on the store's loop (async callers: their own loop stays free)."""
        future = asyncio.run_coroutine_threadsafe(self._ready(make), self._loop._ensure())
        return await asyncio.wrap_future(future)

    async def _ready(self, make: Callable[[], Awaitable[Any]]) -> Any:
        if self._migrate and not self._migrated:
            from wflo_otel.migrations import sqlite_migration_lock, upgrade_connection

            async with sqlite_migration_lock(self.url):
                async with self.engine.begin() as conn:
                    await conn.run_sync(upgrade_connection, "head")
            self._migrated = True
        return await make()

    def close(self) -> None:
        async def dispose() -> None:
            if self._listener is not None:
                await self._listener.close()
                self._listener = None
            await self.engine.dispose()

        try:
            self._loop.run(dispose(), timeout=10)
        except Exception as exc:  # a connection the server dropped: nothing left to close cleanly
            _log.warning("wflo-otel: closing the control store for %s: %s", _safe(self.url), exc)
        finally:
            self._loop.stop()

    # -- executions --------------------------------------------------------------------

    async def _ensure_execution(self, conn: AsyncConnection, ref: ExecutionRef) -> None:
        """Insert the execution (RUNNING) and its definition unless stored; once per process and id."""
        if ref.id in self._ensured:
            return
        at = now_utc()
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        await conn.execute(
            insert(workflow_definitions)
            .values(id=ref.workflow, name=ref.workflow, created_at=at, updated_at=at)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        await conn.execute(
            insert(workflow_executions)
            .values(
                id=ref.id,
                workflow_id=ref.workflow,
                status="RUNNING",
                inputs=ref.inputs or None,
                budget_usd=ref.budget_usd,
                trace_id=ref.trace_id,
                correlation_id=ref.correlation_id,
                started_at=at,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )

    def _remember(self, execution_id: str) -> None:
        with self._ensured_lock:
            self._ensured.add(execution_id)

    async def execution(self, execution_id: str) -> ExecutionInfo | None:
        e = workflow_executions
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(e.c.id, e.c.workflow_id, e.c.status, e.c.budget_usd, e.c.cost_total_usd, e.c.trace_id, e.c.inputs).where(
                        e.c.id == execution_id
                    )
                )
            ).first()
        if row is None:
            return None
        return ExecutionInfo(row[0], row[1], row[2], row[3], float(row[4] or 0.0), row[5], row[6])

    # -- checkpoints -------------------------------------------------------------------

    async def checkpoint(
        self, ref: ExecutionRef, name: str, state: Any, *, step_id: str | None, spent_usd: float, trace_id: str | None
    ) -> Snapshot:
        """Store the next version of the execution's state; committed when this returns."""
        s = state_snapshots
        for attempt in range(_VERSION_RETRIES):
            snapshot_id, at = new_id(), now_utc()
            try:
                async with self.engine.connect() as conn:
                    conn = await conn.execution_options(**_WRITE)
                    async with conn.begin():
                        await self._ensure_execution(conn, ref)
                        current = await conn.scalar(sa.select(sa.func.max(s.c.version)).where(s.c.execution_id == ref.id))
                        version = int(current or 0) + 1
                        await conn.execute(
                            s.insert().values(
                                id=snapshot_id,
                                execution_id=ref.id,
                                step_id=step_id,
                                name=name,
                                version=version,
                                state=state,
                                spent_usd=spent_usd,
                                trace_id=trace_id,
                                created_at=at,
                            )
                        )
            except IntegrityError:  # a concurrent checkpoint of the same execution took the version
                if attempt + 1 == _VERSION_RETRIES:
                    raise
                continue
            self._remember(ref.id)
            return Snapshot(snapshot_id, ref.id, name, version, state, spent_usd, step_id, trace_id, at)
        raise AssertionError("unreachable")

    async def snapshots(self, execution_id: str, name: str | None = None, *, latest: bool = False) -> list[Snapshot]:
        """The execution's checkpoints, oldest first (only those named ``name`` if given; only the newest with ``latest``)."""
        s = state_snapshots
        query = sa.select(s).where(s.c.execution_id == execution_id)
        if name is not None:
            query = query.where(s.c.name == name)
        query = query.order_by(s.c.version.desc()).limit(1) if latest else query.order_by(s.c.version)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_snapshot(row) for row in rows]

    async def latest_snapshot(self, execution_id: str, name: str | None = None) -> Snapshot | None:
        found = await self.snapshots(execution_id, name, latest=True)
        return found[0] if found else None

    async def resume_generation(self, execution_id: str) -> int:
        """The generation the next resume of the execution claims: the number of its resumes + 1.

        Read before the resume reads the stored spend: two resumes that read the same state
        then claim the same generation, and only one can (``claim_resume``).
        """
        r = execution_resumes
        async with self.engine.connect() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(r).where(r.c.execution_id == execution_id))
        return int(count or 0) + 1

    async def claim_resume(
        self, ref: ExecutionRef, generation: int, snapshot_id: str | None, previous_trace_id: str | None, spent_usd: float
    ) -> str:
        """Insert the resume's row as ``generation``; ``ExecutionBusy`` if another resume took it first."""
        try:
            return await self._insert(
                ref,
                execution_resumes,
                generation=generation,
                snapshot_id=snapshot_id,
                trace_id=None,  # the new root span does not exist yet: resume_started sets it
                previous_trace_id=previous_trace_id,
                spent_usd=spent_usd,
            )
        except IntegrityError:  # unique (execution_id, generation): a concurrent resume of the same state won
            raise ExecutionBusy(ref.id, generation) from None

    async def resume_started(self, resume_id: str, trace_id: str | None) -> None:
        """The claimed resume's trace, once its root span exists."""
        r = execution_resumes
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**_WRITE)
            async with conn.begin():
                await conn.execute(r.update().where(r.c.id == resume_id).values(trace_id=trace_id))

    # -- rollbacks ---------------------------------------------------------------------

    async def record_rollback(
        self, ref: ExecutionRef, *, snapshot_id: str | None, reason: str | None, initiated_by: str, status: str, details: Any
    ) -> str:
        return await self._insert(
            ref,
            rollback_actions,
            snapshot_id=snapshot_id,
            reason=reason,
            initiated_by=initiated_by,
            status=status,
            details=details,
        )

    async def rollbacks(self, execution_id: str) -> list[dict[str, Any]]:
        r = rollback_actions
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(r).where(r.c.execution_id == execution_id).order_by(r.c.created_at))).mappings().all()
        return [dict(row) for row in rows]

    async def _insert(self, ref: ExecutionRef, table: sa.Table, **values: Any) -> str:
        row_id = new_id()
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**_WRITE)
            async with conn.begin():
                await self._ensure_execution(conn, ref)
                await conn.execute(table.insert().values(**{"id": row_id, "execution_id": ref.id, "created_at": now_utc(), **values}))
        self._remember(ref.id)
        return row_id

    # -- approvals ---------------------------------------------------------------------

    async def create_approval(
        self,
        ref: ExecutionRef,
        name: str,
        *,
        kind: str = "gate",
        message: str | None = None,
        context: Any = None,
        requested_usd: float | None = None,
        timeout_s: float | None = None,
        step_id: str | None = None,
        decided_by: str | None = None,
        approved: bool | None = None,
        reason: str | None = None,
    ) -> Approval:
        """A PENDING request; or, with ``approved`` set, one decided at once (by a policy)."""
        at = now_utc()
        status = STATUS_PENDING if approved is None else (STATUS_APPROVED if approved else STATUS_REJECTED)
        values = dict(
            execution_id=ref.id,
            step_id=step_id,
            name=name,
            kind=kind,
            message=message,
            context=context,
            requested_usd=requested_usd,
            status=status,
            decided_by=decided_by,
            decided_at=at if approved is not None else None,
            reason=reason,
            timeout_s=timeout_s,
            expires_at=at + timedelta(seconds=timeout_s) if timeout_s is not None else None,
            created_at=at,
        )
        approval_id = await self._insert(ref, approval_requests, **values)
        return Approval(id=approval_id, workflow=ref.workflow, **values)

    async def approval(self, approval_id: str) -> Approval | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(approval_query().where(approval_requests.c.id == approval_id))).mappings().first()
        return approval_record(row) if row is not None else None

    async def approvals(self, status: str | None = None, *, execution_id: str | None = None, limit: int = 100) -> list[Approval]:
        a = approval_requests
        query = approval_query().order_by(a.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(a.c.status == status.upper())
        if execution_id is not None:
            query = query.where(a.c.execution_id == execution_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [approval_record(row) for row in rows]

    async def decide(self, approval_id: str, *, approved: bool, by: str, reason: str | None = None) -> Approval:
        """Decide a PENDING, unexpired request; the one conditional UPDATE makes concurrent deciders safe.

        ``ValueError`` for a blank ``by`` (``decisions.decider``);
        ``ApprovalNotFound`` for an unknown id; ``ApprovalConflict`` carrying the first
        decision when it is decided already (or expired: then it is marked EXPIRED).
        """
        by = decider(by)  # the CLI and HTTP also require a rejection's reason (check_decision)
        status = STATUS_APPROVED if approved else STATUS_REJECTED
        decided = await self._transition(approval_id, status, by=by, reason=reason, unexpired=True)
        if decided is not None:
            return decided
        current = await self.approval(approval_id)
        if current is None:
            raise ApprovalNotFound(approval_id)
        if current.status == STATUS_PENDING:  # it is past its expiry
            current = await self.expire(approval_id)
        raise ApprovalConflict(current)

    async def expire(self, approval_id: str) -> Approval:
        """Mark an overdue request EXPIRED (unless someone decided it first); returns it as stored."""
        expired = await self._transition(approval_id, STATUS_EXPIRED, by=None, reason="timed out", unexpired=False)
        if expired is not None:
            return expired
        current = await self.approval(approval_id)
        if current is None:
            raise ApprovalNotFound(approval_id)
        return current

    async def _transition(
        self, approval_id: str, status: str, *, by: str | None, reason: str | None, unexpired: bool
    ) -> Approval | None:
        """PENDING → ``status`` if still PENDING (and, with ``unexpired``, not past its expiry)."""
        a = approval_requests
        at = now_utc()
        condition = sa.and_(a.c.id == approval_id, a.c.status == STATUS_PENDING)
        if unexpired:
            condition = sa.and_(condition, sa.or_(a.c.expires_at.is_(None), a.c.expires_at > at))
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**_WRITE)
            async with conn.begin():
                result = await conn.execute(
                    a.update().where(condition).values(status=status, decided_by=by, decided_at=at, reason=reason)
                )
                if result.rowcount != 1:
                    return None
                if self.dialect == "postgresql":
                    await conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, approval_id)))
        return await self.approval(approval_id)

    async def wait_for_decision(self, approval_id: str) -> Approval:
        """Wait until the request is decided or expires (then mark it EXPIRED); returns it as stored."""
        event = asyncio.Event()
        self._waiters.setdefault(approval_id, set()).add(event)
        try:
            listening = await self._listen()
            interval = PG_BACKSTOP_POLL_S if listening else SQLITE_POLL_S
            while True:
                current = await self.approval(approval_id)
                if current is None:
                    raise ApprovalNotFound(approval_id)
                if current.status != STATUS_PENDING:
                    return current
                left = interval
                if current.expires_at is not None:
                    left = (current.expires_at - now_utc()).total_seconds()
                    if left <= 0:
                        return await self.expire(approval_id)
                try:
                    await asyncio.wait_for(event.wait(), min(left, interval))
                except asyncio.TimeoutError:
                    pass
                event.clear()
        finally:
            waiters = self._waiters.get(approval_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    self._waiters.pop(approval_id, None)

    async def _listen(self) -> bool:
        """LISTEN on the notification channel (PostgreSQL), once per store; False elsewhere."""
        if self.dialect != "postgresql":
            return False
        if self._listen_lock is None:
            self._listen_lock = asyncio.Lock()
        async with self._listen_lock:
            if self._listener is not None and not self._listener.closed:
                return True
            conn = await self.engine.connect()
            raw = await conn.get_raw_connection()
            await raw.driver_connection.add_listener(NOTIFY_CHANNEL, self._notified)
            self._listener = conn
        return True

    def _notified(self, _connection, _pid, _channel, payload: str) -> None:
        for event in self._waiters.get(payload, ()):
            event.set()


def _safe(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def approval_query() -> sa.Select:
    """Approval requests with their workflow's name (also read by the dashboard)."""
    a, e = approval_requests, workflow_executions
    return sa.select(a, e.c.workflow_id.label("workflow")).join(e, e.c.id == a.c.execution_id)


def approval_record(row) -> Approval:
    values = dict(row)
    for key in ("decided_at", "expires_at", "created_at"):
        values[key] = utc(values[key])
    return Approval(**values)


def _snapshot(row) -> Snapshot:
    values = dict(row)
    values["created_at"] = utc(values["created_at"])
    values["spent_usd"] = float(values["spent_usd"] or 0.0)
    return Snapshot(**values)


def _sqlite_manual_transactions(dbapi_connection, _record) -> None:
    """Let SQLAlchemy emit BEGIN itself (pysqlite's own would always be deferred)."""
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn) -> None:
    """Writes take the write lock at BEGIN (waiting on the busy timeout); reads begin deferred."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("wflo_write") else "BEGIN")


# -- one store per database URL ------------------------------------------------------

_stores: dict[str, ControlStore] = {}
_stores_lock = threading.Lock()


def control_store(url: str | None = None) -> ControlStore:
    """The process's store for ``url``: else the configured exporter's database, else ``$WFLO_DATABASE_URL``."""
    resolved = normalize_url(url) if url else _configured_url()
    with _stores_lock:
        store = _stores.get(resolved)
        if store is None:
            store = _stores[resolved] = ControlStore(resolved)
        return store


def _configured_url() -> str:
    from wflo_otel import configuration
    from wflo_otel.settings import database_url

    handle = configuration._handle
    exporter = getattr(handle, "exporter", None) if handle is not None else None
    url = getattr(exporter, "database_url", None)
    return normalize_url(url) if isinstance(url, str) else database_url()


# A forked child keeps its parent's stores referenced and never touches them: collecting
# them would let the driver close (or terminate) connections that are the parent's sessions.
_inherited: list[ControlStore] = []


def _forget_after_fork() -> None:
    """In a forked child: the parent's loop thread and pooled sockets are not ours; start afresh."""
    global _stores_lock
    _inherited.extend(_stores.values())
    _stores.clear()
    _stores_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(after_in_child=_forget_after_fork)


def close_stores(urls: Iterable[str] | None = None) -> None:
    """Close the stores (tests, shutdown)."""
    with _stores_lock:
        chosen = list(_stores) if urls is None else [normalize_url(u) for u in urls]
        stores = [_stores.pop(u) for u in chosen if u in _stores]
    for store in stores:
        store.close()
