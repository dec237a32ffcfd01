"""SQLite WAL checkpoints off the write path.

In WAL mode, SQLite's automatic checkpoint (copying the write-ahead log back into
the database file, with an fsync of each) runs inside the ``COMMIT`` that takes
the log past 1,000 pages, on the writing connection. For the exporter that was
about 4.5 µs of every span's ~30 µs (``bench/export.py``, SQLite): the export
waited for it, with the SDK's queue filling behind.

``WalCheckpointer`` runs that copy on its own connection and thread instead: the
store calls ``kick()`` after each commit, and the thread runs a ``PASSIVE``
checkpoint, which never waits for or blocks the writer. The ``sqlite3`` module
releases the GIL while it runs. The writer's own automatic checkpoint stays as a
backstop at a higher threshold (``BACKSTOP_PAGES``), so the log stays bounded
even if this thread falls behind or dies.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from urllib.parse import quote

from .forking import FORK_GUARD

_log = logging.getLogger(__name__)

# The writer's automatic checkpoint when a WalCheckpointer runs beside it (SQLite's
# default is 1,000 pages): reached only when the background checkpoints fall behind.
BACKSTOP_PAGES = 10_000


class WalCheckpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on ``path`` from a daemon thread, when kicked.

    Kicks coalesce: a kick that arrives while a checkpoint runs causes one more
    afterwards, never a queue of them. Failures are logged and the connection is
    opened again on the next kick; nothing here raises into the writer.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.checkpoints = 0  # completed runs, for tests and benchmarks
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        """Ask for a checkpoint soon (after a commit). Never blocks."""
        thread = self._thread
        if thread is None or not thread.is_alive():  # first kick, or a forked process (threads do not fork)
            with self._lock:
                if self._stop:
                    return
                if self._thread is thread:
                    started = threading.Thread(target=self._run, name="wflo-otel-sqlite-checkpoint", daemon=True)
                    try:
                        started.start()
                    except RuntimeError:  # the interpreter is exiting: the writer's backstop remains
                        return
                    self._thread = started
        self._wake.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, after the checkpoint it is running (if any)."""
        with self._lock:
            self._stop = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stop:
                    return
                try:
                    with FORK_GUARD.busy():  # a fork mid-checkpoint would leave SQLite's mutexes locked in the child
                        if connection is None:
                            connection = _connect(self.path)
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except Exception as exc:  # a locked or vanished file: try again on the next kick
                    _log.debug("wflo-otel: checkpoint of %s failed: %s", self.path, exc)
                    if connection is not None:
                        _close_quietly(connection)
                        connection = None
        finally:
            if connection is not None:
                _close_quietly(connection)


def _connect(path: str) -> sqlite3.Connection:
    # mode=rw: a database file removed meanwhile is not created again, empty, by a checkpoint.
    uri = f"file:{quote(path)}?mode=rw"
    connection = sqlite3.connect(uri, uri=True, timeout=1.0, isolation_level=None, check_same_thread=False)
    # A checkpoint syncs the log before copying and the database after (synchronous=NORMAL,
    # as the writer's connections).
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _close_quietly(connection: sqlite3.Connection) -> None:
    try:
        connection.close()
    except Exception:  # pragma: no cover - closing a broken connection
        pass


def database_path(url: str) -> str | None:
    """The file of a ``sqlite`` SQLAlchemy URL; ``None`` for in-memory and URI databases."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:") or parsed.query.get("uri"):
        return None
    return database
