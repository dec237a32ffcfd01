"""SQLite WAL checkpoints run off the write path, on their own thread (exporters/checkpoint.py)."""

from __future__ import annotations

import shutil
import sqlite3
import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from wflo_otel.exporters.checkpoint import BACKSTOP_PAGES, WalCheckpointer, database_path
from wflo_otel.exporters.sql import SQLSpanExporter


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _rows_in_main_file_alone(path, table: str, tmp_path) -> int:
    """Count ``table`` in a copy of the database file without its write-ahead log."""
    copy = tmp_path / "main-file-only.db"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.DatabaseError:  # copied mid-checkpoint, or the table is not there yet
        return -1
    finally:
        conn.close()


def _wal_database(path, rows: int) -> sqlite3.Connection:
    """A WAL database whose committed rows are still only in the log (automatic checkpoints off)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO t (body) VALUES (?)", [("x" * 200,) for _ in range(rows)])
    return conn


def test_a_kick_copies_committed_rows_from_the_log_into_the_database_file(tmp_path):
    path = tmp_path / "w.db"
    writer = _wal_database(path, 500)
    assert _rows_in_main_file_alone(path, "t", tmp_path) == -1  # the table is in the log only

    checkpointer = WalCheckpointer(str(path))
    try:
        checkpointer.kick()
        assert _wait_for(lambda: checkpointer.checkpoints >= 1)
        assert _rows_in_main_file_alone(path, "t", tmp_path) == 500
    finally:
        checkpointer.close()
        writer.close()


def test_a_checkpoint_does_not_block_the_writer_or_create_a_missing_file(tmp_path):
    missing = tmp_path / "not-there.db"
    checkpointer = WalCheckpointer(str(missing))
    try:
        checkpointer.kick()
        time.sleep(0.2)
        assert not missing.exists()  # mode=rw: nothing created
        assert checkpointer.checkpoints == 0

        writer = _wal_database(missing, 10)  # the file appears; the next kick checkpoints it
        writer.execute("BEGIN IMMEDIATE")  # a writer mid-transaction: PASSIVE neither waits nor fails it
        writer.execute("INSERT INTO t (body) VALUES ('y')")
        checkpointer.kick()
        assert _wait_for(lambda: checkpointer.checkpoints >= 1)
        writer.execute("COMMIT")
        assert writer.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 11
        writer.close()
    finally:
        checkpointer.close()


def test_close_stops_the_thread_and_later_kicks_start_nothing(tmp_path):
    path = tmp_path / "w.db"
    _wal_database(path, 1).close()
    checkpointer = WalCheckpointer(str(path))
    checkpointer.kick()
    assert _wait_for(lambda: checkpointer.checkpoints >= 1)
    thread = checkpointer._thread
    checkpointer.close()
    assert not thread.is_alive()
    checkpointer.kick()
    assert checkpointer._thread is thread and not thread.is_alive()


def test_in_memory_and_uri_databases_get_no_checkpointer():
    assert database_path("sqlite+aiosqlite://") is None
    assert database_path("sqlite+aiosqlite:///:memory:") is None
    assert database_path("sqlite+aiosqlite:///file:x.db?mode=memory&uri=true") is None
    assert database_path("sqlite+aiosqlite:////data/wflo.db") == "/data/wflo.db"
    assert database_path("sqlite+aiosqlite:///./wflo.db") == "./wflo.db"


def test_exported_spans_reach_the_database_file_without_waiting_for_the_writer_to_checkpoint(tmp_path):
    path = tmp_path / "spans.db"
    exporter = SQLSpanExporter(f"sqlite:///{path}", spool_dir=False, handle_sigterm=False)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    try:
        for i in range(20):
            with tracer.start_as_current_span(f"step {i}"):
                pass
        checkpointer = exporter.store._checkpointer
        assert checkpointer is not None
        # Far below SQLite's own threshold: only the background checkpoints put the rows there.
        assert _wait_for(lambda: _rows_in_main_file_alone(path, "step_executions", tmp_path) == 20)
    finally:
        provider.shutdown()
    assert not checkpointer._thread.is_alive()  # shutdown() disposes the store, which stops it


def test_the_writer_keeps_its_own_checkpoint_as_a_backstop(tmp_path):
    import asyncio

    from wflo_otel.exporters.store import SpanStore

    async def autocheckpoint() -> int:
        store = SpanStore(f"sqlite:///{tmp_path / 'b.db'}")
        try:
            async with store.engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                async with driver.execute("PRAGMA wal_autocheckpoint") as cursor:
                    return (await cursor.fetchone())[0]
        finally:
            await store.dispose()

    assert asyncio.run(autocheckpoint()) == BACKSTOP_PAGES


def test_a_kick_after_the_thread_is_gone_starts_a_new_one(tmp_path):
    """As in a forked worker, where the parent's thread does not exist."""
    import threading

    path = tmp_path / "w.db"
    writer = _wal_database(path, 50)
    checkpointer = WalCheckpointer(str(path))
    try:
        gone = threading.Thread(target=lambda: None)
        gone.start()
        gone.join()
        checkpointer._thread = gone
        checkpointer.kick()
        assert checkpointer._thread is not gone and checkpointer._thread.is_alive()
        assert _wait_for(lambda: checkpointer.checkpoints >= 1)
        assert _rows_in_main_file_alone(path, "t", tmp_path) == 50
    finally:
        checkpointer.close()
        writer.close()


def test_a_kick_that_cannot_start_its_thread_does_not_raise(tmp_path, monkeypatch):
    """At interpreter exit no thread can start: the commit that kicked must not look failed."""
    import threading

    def refuse(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    checkpointer = WalCheckpointer(str(tmp_path / "w.db"))
    monkeypatch.setattr(threading.Thread, "start", refuse)
    checkpointer.kick()
    assert checkpointer._thread is None
