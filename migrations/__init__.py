"""Alembic migrations for the wflo-otel schema, shipped inside the package.

``alembic`` owns every DDL change. These helpers run it programmatically (the
CLI's ``wflo-otel db upgrade`` and the exporter's auto-migration) so a wheel
can migrate without an ``alembic.ini`` on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from alembic import command
from alembic.config import Config

try:
    import fcntl
except ImportError:  # Windows: SQLite migrations are not serialised across processes
    fcntl = None

VERSION_TABLE = "wflo_alembic_version"
# Serialises concurrent migrations of one PostgreSQL database (any constant works).
_PG_ADVISORY_LOCK_KEY = 0x77F10_07E1


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_connection(connection, revision: str = "head") -> None:
    """Run ``alembic upgrade`` on an open (sync-facade) connection, inside its transaction."""
    _lock(connection)
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def downgrade_connection(connection, revision: str) -> None:
    _lock(connection)
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


def current_revision(connection) -> str | None:
    from alembic.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _lock(connection) -> None:
    """Serialise migrations of one PostgreSQL database; SQLite's is ``sqlite_migration_lock``."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_ADVISORY_LOCK_KEY})")


@contextlib.asynccontextmanager
async def sqlite_migration_lock(url: str):
    """Hold an exclusive ``flock`` on ``<database>.migrate.lock`` while migrating a SQLite file.

    SQLite has no advisory lock, and its driver runs DDL outside a transaction: two
    processes starting on a fresh file both found no schema, and the later one failed
    on "table ... already exists". Held around the whole transaction (taken before it
    begins, released after it commits), so the next process sees the schema at head.
    The lock is polled, so the event loop is not blocked and a cancelled wait leaves
    nothing behind; a process that dies releases it. No-op for other databases, for
    in-memory and ``file:`` URI ones, where ``fcntl`` is missing (Windows), and when
    the lock file cannot be opened (the migration then runs as it did before).

    The file is removed when the migration is done, so none is left beside the
    database: the holder unlinks it while still holding the lock, and a waiter that
    then gets the lock checks that the path still names the file it locked, else
    starts over on the new one (two processes can never hold locks on two files).
    """
    path = _lock_path(url)
    fd = await _acquire(path) if path is not None else None
    if fd is None:
        yield
        return
    try:
        yield
    finally:
        try:
            os.unlink(path)  # held: nobody else holds a lock on this file
        except OSError:
            pass
        os.close(fd)  # releases the lock


def _lock_path(url: str) -> str | None:
    from wflo_otel.exporters.checkpoint import database_path

    if fcntl is None or not url.startswith("sqlite"):
        return None
    path = database_path(url)
    return os.path.abspath(path) + ".migrate.lock" if path is not None else None


async def _acquire(path: str) -> int | None:
    """An fd holding the lock on the file ``path`` names now, or None when it cannot be opened."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            while not _try_flock(fd):
                await asyncio.sleep(0.02)
            if _still_named(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed it meanwhile: lock the one that path names now


def _still_named(fd: int, path: str) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def run_async(url: str, fn, *args):
    """Run ``fn(sync_connection, *args)`` in one transaction on the async engine for ``url``.

    Under the SQLite migration lock: ``fn`` migrates (``wflo-otel db upgrade``, the alembic
    command line) or reads the schema, which then is never caught half-migrated.
    """
    from wflo_otel.exporters.store import create_engine

    engine = create_engine(url)
    try:
        async with sqlite_migration_lock(url):
            async with engine.begin() as conn:
                return await conn.run_sync(fn, *args)
    finally:
        await engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    asyncio.run(run_async(url, upgrade_connection, revision))


def downgrade(url: str, revision: str) -> None:
    asyncio.run(run_async(url, downgrade_connection, revision))


def head_revision() -> str:
    """The revision ``upgrade(url)`` brings a database to (from the scripts, not hard-coded)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
