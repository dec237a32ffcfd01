"""The ingest service's write path: coalesce concurrent requests into transactions.

Every accepted request becomes a *job* (its span records and a future). One
writer task takes whatever jobs are queued — up to ``max_batch_spans`` spans —
maps them with the shared mapping (``mapping.map_records``) and writes them with
``SpanStore.write`` in one transaction. While a transaction runs, new requests
queue up and go together in the next one, so the transaction size follows the
load with no timer. A request is answered only once its spans are committed.

Failures are told apart, because they call for opposite answers:

* contention (a PostgreSQL deadlock, serialization failure or lock timeout) is
  retried at once, a few times;
* the database is *down* (connection refused or lost, disk full, …): every waiting
  request gets ``Unavailable`` (HTTP 503 with ``Retry-After``) and new requests are
  turned away until a back-off window has passed — nothing is dropped, the sender
  keeps its data and retries;
* the *data* is bad (a value one engine refuses): the requests of the group are
  written one by one, their rows made storable (``RowBatch.storable``: what no
  driver can encode replaced, as the exporter does), and within a failing request
  the records are bisected, so only the spans the database refuses are rejected
  (reported in the OTLP ``partial_success``) and every other span lands.

An error of a kind not recognised is settled by probing the database with
``SELECT 1``: if that fails the database is down, else the data is at fault.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import sqlalchemy as sa

from ..exporters.mapping import map_records
from ..exporters.records import SpanRecord
from ..exporters.store import SpanStore

_log = logging.getLogger("wflo_otel.ingest")

DOWN, DATA, CONTENTION = "down", "data", "contention"
_CONTENTION_RETRIES = 5
_MAX_ISOLATION_WRITES = 256  # per request; past it, failing subsets are rejected whole


class Unavailable(Exception):
    """The database cannot take writes now (HTTP 503); retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, reason: str = "database unavailable") -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.reason = reason


class Overloaded(Exception):
    """Too much is queued already (HTTP 429)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("ingest queue full")
        self.retry_after = retry_after


@dataclass(eq=False)
class _Job:
    records: Sequence[SpanRecord]
    future: asyncio.Future
    spans: int = field(init=False)

    def __post_init__(self) -> None:
        self.spans = len(self.records)


def describe(exc: BaseException) -> str:
    """An error's kind without its message: driver messages can quote span data."""
    parts = [type(exc).__name__]
    for inner in _chain(exc)[1:]:
        name = type(inner).__name__
        if name not in parts:
            parts.append(name)
    code = _sqlstate(exc)
    return "/".join(parts[:3]) + (f" (SQLSTATE {code})" if code else "")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is s for s in seen) or len(seen) > 10:
            continue
        seen.append(current)
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return seen


def _sqlstate(exc: BaseException) -> str | None:
    for inner in _chain(exc):
        code = getattr(inner, "sqlstate", None) or getattr(inner, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def classify(exc: BaseException) -> str | None:
    """``CONTENTION``, ``DOWN``, ``DATA``, or None when only a probe can tell."""
    code = _sqlstate(exc)
    if code:
        klass = code[:2]
        if code in ("40001", "40P01", "55P03"):
            return CONTENTION
        if klass in ("22", "23"):  # data exception, integrity constraint violation
            return DATA
        if klass in ("08", "53", "57", "58", "XX", "40", "55"):
            return DOWN
        return None
    chain = _chain(exc)
    for inner in chain:
        if isinstance(inner, sqlite3.OperationalError):
            # locked (past the busy timeout), unable to open, disk I/O error, disk full, …
            return DOWN
        if isinstance(inner, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)):
            return DATA
        if isinstance(inner, (ConnectionError, TimeoutError, asyncio.TimeoutError, OSError)):
            return DOWN
    for inner in chain:
        module = type(inner).__module__ or ""
        if module.startswith("asyncpg") and isinstance(inner, ValueError):
            return DATA  # asyncpg.exceptions.DataError: a value of the wrong type for its column
        if module.startswith("asyncpg") and type(inner).__name__ in (
            "ConnectionDoesNotExistError",
            "InterfaceError",
            "InternalClientError",
            "ConnectionFailureError",
        ):
            return DOWN
        if isinstance(inner, (TypeError, ValueError, OverflowError, UnicodeError)):
            return DATA
    return None


class BatchWriter:
    """Queue of jobs and the single task that commits them (see the module doc)."""

    def __init__(
        self,
        store: SpanStore,
        pricebook: Any = None,
        *,
        max_batch_spans: int = 5000,
        max_pending_spans: int = 100_000,
        migrate: bool = True,
        max_backoff_s: float = 30.0,
        concurrency: int | None = None,
    ) -> None:
        self.store = store
        # Transactions in flight: PostgreSQL takes several (mapping the next batch overlaps the
        # database writing this one); SQLite has one writer anyway.
        self.concurrency = concurrency or (1 if getattr(store, "dialect", "sqlite") == "sqlite" else 2)
        self.pricebook = pricebook
        self.max_batch_spans = max_batch_spans
        self.max_pending_spans = max_pending_spans
        self.max_backoff_s = max_backoff_s
        self._needs_migration = migrate
        self._queue: collections.deque[_Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._down_until = 0.0
        self._backoff_s = 0.0
        self.pending_spans = 0
        # counters (for /health and the benchmark)
        self.written_spans = 0
        self.rejected_spans = 0
        self.transactions = 0
        self.last_error: str | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="wflo-ingest-writer")

    async def close(self) -> None:
        """Write everything queued, then stop (the HTTP server has stopped taking requests)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    # -- state ---------------------------------------------------------------------

    @property
    def database_down(self) -> bool:
        return time.monotonic() < self._down_until

    def retry_after(self) -> int:
        return max(1, math.ceil(self._down_until - time.monotonic()))

    def check_capacity(self) -> None:
        """Raise ``Unavailable`` or ``Overloaded`` instead of queuing more."""
        if self.database_down:
            raise Unavailable(self.retry_after())
        if self.pending_spans >= self.max_pending_spans:
            # Roughly how long the queue takes to drain at a modest pace, at least 1 s.
            raise Overloaded(max(1, min(30, self.pending_spans // 20_000)))

    # -- the job API ---------------------------------------------------------------

    async def submit(self, records: Sequence[SpanRecord]) -> int:
        """Queue records; return how many were rejected once the rest are committed."""
        if self._closing or self._task is None:
            raise Unavailable(1, "shutting down")
        self.check_capacity()
        job = _Job(records, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self.pending_spans += job.spans
        self._wakeup.set()
        return await asyncio.shield(job.future)

    # -- the writer task -----------------------------------------------------------

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task] = set()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await slots.acquire()  # meanwhile more jobs queue up: the next group is larger
                if not self._queue:
                    slots.release()
                    break
                task = asyncio.get_running_loop().create_task(self._process(self._take(), slots))
                running.add(task)
                task.add_done_callback(running.discard)
            if self._closing and not self._queue:
                if running:
                    await asyncio.gather(*list(running))
                if not self._queue:
                    return

    async def _process(self, group: list[_Job], slots: asyncio.Semaphore) -> None:
        try:
            await self._write_group(group)
        except Exception as exc:  # never let the writer die; answer the jobs
            _log.error("wflo-otel ingest: writer error %s", describe(exc))
            self._fail(group, Unavailable(1, "internal error"))
        finally:
            self.pending_spans -= sum(job.spans for job in group)
            slots.release()
            if self._queue:
                self._wakeup.set()

    def _take(self) -> list[_Job]:
        group = [self._queue.popleft()]
        spans = group[0].spans
        while self._queue and spans + self._queue[0].spans <= self.max_batch_spans:
            job = self._queue.popleft()
            group.append(job)
            spans += job.spans
        return group

    @staticmethod
    def _fail(jobs: Sequence[_Job], exc: Exception) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)

    async def _write_group(self, group: list[_Job]) -> None:
        if self.database_down:  # failed meanwhile: do not hammer a database that is down
            self._fail(group, Unavailable(self.retry_after()))
            return
        records = group[0].records if len(group) == 1 else [r for job in group for r in job.records]
        batch = map_records(records, self.pricebook)
        outcome = await self._try_write(batch)
        if outcome is None:
            for job in group:
                rejected = sum(1 for r in job.records if r.span_id not in batch.steps)  # the mapping's
                self.rejected_spans += rejected
                self._settle(job, rejected)
            return
        if outcome == DOWN:
            self._fail(group, Unavailable(self.retry_after()))
            # Everything still queued would meet the same database: answer it now.
            queued = list(self._queue)
            self._queue.clear()
            self.pending_spans -= sum(job.spans for job in queued)
            self._fail(queued, Unavailable(self.retry_after()))
            return
        # DATA: find the culprits, request by request, then span by span.
        for job in group:
            if job.future.done():
                continue
            try:
                rejected = await self._isolate(job.records, [_MAX_ISOLATION_WRITES])
            except Unavailable as exc:
                self._fail([job], exc)
            else:
                self._settle(job, rejected)

    def _settle(self, job: _Job, rejected: int) -> None:
        self.written_spans += job.spans - rejected
        if not job.future.done():
            job.future.set_result(rejected)

    async def _isolate(self, records: Sequence[SpanRecord], budget: list[int]) -> int:
        """Write ``records`` made storable, splitting on data errors; return how many were rejected."""
        batch = map_records(records, self.pricebook).storable()
        budget[0] -= 1
        outcome = await self._try_write(batch)
        if outcome is None:
            unmapped = sum(1 for r in records if r.span_id not in batch.steps)
            self.rejected_spans += unmapped
            return unmapped
        if outcome == DOWN:
            raise Unavailable(self.retry_after())
        if len(records) == 1 or budget[0] <= 0:
            self.rejected_spans += len(records)
            _log.warning("wflo-otel ingest: the database refused %d span(s): %s", len(records), self.last_error)
            return len(records)
        middle = len(records) // 2
        return await self._isolate(records[:middle], budget) + await self._isolate(records[middle:], budget)

    async def _try_write(self, batch) -> str | None:
        """Write one transaction; None on success, else ``DOWN`` or ``DATA``."""
        for attempt in range(_CONTENTION_RETRIES + 1):
            try:
                if self._needs_migration:
                    await self.store.migrate()
                    self._needs_migration = False
                await self.store.write(batch)
            except Exception as exc:
                self.last_error = describe(exc)
                kind = classify(exc)
                if kind is None:
                    kind = DATA if await self._probe() else DOWN
                if kind == CONTENTION and attempt < _CONTENTION_RETRIES:
                    await asyncio.sleep(0.02 * (attempt + 1))
                    continue
                if kind == CONTENTION or kind == DOWN or self._needs_migration:
                    self._mark_down()
                    return DOWN
                return DATA
            self.transactions += 1
            self._mark_up()
            return None
        return DOWN  # pragma: no cover

    async def _probe(self) -> bool:
        async def select_one() -> None:
            ping = getattr(self.store, "ping", None)
            if ping is not None:
                await ping()
                return
            async with self.store.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

        try:
            await asyncio.wait_for(select_one(), 5)
            return True
        except Exception:
            return False

    def _mark_down(self) -> None:
        self._backoff_s = min(self.max_backoff_s, max(1.0, self._backoff_s * 2))
        self._down_until = time.monotonic() + self._backoff_s
        _log.warning(
            "wflo-otel ingest: database unavailable (%s); answering 503 for %.0fs", self.last_error, self._backoff_s
        )

    def _mark_up(self) -> None:
        if self._backoff_s:
            _log.info("wflo-otel ingest: database available again")
        self._backoff_s = 0.0
        self._down_until = 0.0
