"""The ingest writer: coalescing, and telling a bad span from a database that is down.

A stand-in store fails on command, so each failure mode is exercised exactly:
a value the database refuses must cost only its own span, a database that is
down must cost nothing (the sender gets 503 and keeps the data).
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from wflo_otel.exporters.records import SpanRecord
from wflo_otel.ingest.writer import DATA, DOWN, BatchWriter, Unavailable, classify


def record(n: int, trace: int = 1) -> SpanRecord:
    return SpanRecord(
        trace_id=f"{trace:032x}",
        span_id=f"{n:016x}",
        parent_span_id=None if n % 5 == 0 else f"{n - n % 5:016x}",
        name=f"span {n}",
        kind="INTERNAL",
        status_code="UNSET",
        status_message=None,
        start_ns=1_700_000_000_000_000_000 + n,
        end_ns=1_700_000_000_000_000_100 + n,
        attributes={},
    )


class FakeStore:
    def __init__(self) -> None:
        self.poison: set[str] = set()
        self.down = False
        self.unknown_error = False
        self.rows: set[str] = set()
        self.transactions: list[int] = []
        self.gate: asyncio.Event | None = None

    async def migrate(self) -> None:
        if self.down:
            raise ConnectionRefusedError("no database")

    async def ping(self) -> None:
        if self.down:
            raise ConnectionRefusedError("no database")

    async def write(self, batch) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionRefusedError("no database")
        if self.poison & set(batch.steps):
            if self.unknown_error:
                raise RuntimeError("something the classifier has never seen")
            raise sqlite3.IntegrityError("refused")
        self.rows |= set(batch.steps)
        self.transactions.append(len(batch.steps))


async def started(store: FakeStore, **kwargs) -> BatchWriter:
    writer = BatchWriter(store, None, migrate=False, **kwargs)
    writer.start()
    return writer


async def test_concurrent_requests_share_a_transaction():
    store = FakeStore()
    store.gate = asyncio.Event()
    writer = await started(store)
    first = asyncio.create_task(writer.submit([record(n) for n in range(0, 10)]))
    await asyncio.sleep(0.01)  # the first transaction is in progress, held by the gate
    others = [asyncio.create_task(writer.submit([record(n) for n in range(k, k + 10)])) for k in (10, 20, 30)]
    await asyncio.sleep(0.01)
    store.gate.set()
    assert await asyncio.gather(first, *others) == [0, 0, 0, 0]
    assert store.transactions == [10, 30]  # the three that queued meanwhile went together
    await writer.close()


@pytest.mark.parametrize("unknown_error", [False, True])
async def test_a_refused_span_is_rejected_alone_and_every_other_span_lands(unknown_error):
    store = FakeStore()
    store.unknown_error = unknown_error  # settled by a probe: the database answers, so the data is bad
    store.poison = {f"{13:016x}", f"{27:016x}"}
    store.gate = asyncio.Event()
    writer = await started(store)
    jobs = [asyncio.create_task(writer.submit([record(n) for n in range(k, k + 10)])) for k in (0, 10, 20, 30)]
    await asyncio.sleep(0.01)
    store.gate.set()
    assert await asyncio.gather(*jobs) == [0, 1, 1, 0]
    assert store.rows == {f"{n:016x}" for n in range(40)} - store.poison
    assert writer.rejected_spans == 2 and writer.written_spans == 38
    await writer.close()


async def test_a_database_that_is_down_answers_unavailable_and_loses_nothing():
    store = FakeStore()
    writer = await started(store)
    store.down = True
    with pytest.raises(Unavailable) as raised:
        await writer.submit([record(n) for n in range(5)])
    assert raised.value.retry_after >= 1
    assert writer.database_down
    with pytest.raises(Unavailable):  # turned away at once during the back-off
        await writer.submit([record(n) for n in range(5, 10)])
    assert store.rows == set() and writer.rejected_spans == 0

    store.down = False
    writer._down_until = 0  # the back-off has run out
    assert await writer.submit([record(n) for n in range(10)]) == 0
    assert len(store.rows) == 10 and not writer.database_down
    await writer.close()


async def test_close_writes_what_is_queued():
    store = FakeStore()
    store.gate = asyncio.Event()
    writer = await started(store)
    jobs = [asyncio.create_task(writer.submit([record(n) for n in range(k, k + 5)])) for k in (0, 5, 10)]
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(writer.close())
    await asyncio.sleep(0.01)
    store.gate.set()
    await closing
    assert await asyncio.gather(*jobs) == [0, 0, 0]
    assert len(store.rows) == 15
    with pytest.raises(Unavailable):
        await writer.submit([record(99)])


def test_errors_are_classified_by_sqlstate_and_kind():
    class PgError(Exception):
        def __init__(self, sqlstate):
            super().__init__("quoted span data would be here")
            self.sqlstate = sqlstate

    assert classify(PgError("22001")) == DATA  # string data right truncation
    assert classify(PgError("23503")) == DATA  # foreign key violation
    assert classify(PgError("08006")) == DOWN  # connection failure
    assert classify(PgError("57P01")) == DOWN  # admin shutdown
    assert classify(PgError("53100")) == DOWN  # disk full
    assert classify(ConnectionResetError()) == DOWN
    assert classify(sqlite3.OperationalError("unable to open database file")) == DOWN
    assert classify(sqlite3.IntegrityError("NOT NULL constraint failed")) == DATA
    assert classify(RuntimeError("?")) is None  # a probe decides
