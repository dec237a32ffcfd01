"""Alembic migrations for the wflo-otel schema, shipped inside the package.

``alembic`` owns every DDL change. These helpers run it programmatically (the
CLI's ``wflo-otel db upgrade`` and the exporter's auto-migration) so a wheel
can migrate without an ``alembic.ini`` on disk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

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
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_ADVISORY_LOCK_KEY})")


async def run_async(url: str, fn, *args):
    """Run ``fn(sync_connection, *args)`` in one transaction on the async engine for ``url``."""
    from wflo_otel.exporters.store import create_engine

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn, *args)
    finally:
        await engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    asyncio.run(run_async(url, upgrade_connection, revision))


def downgrade(url: str, revision: str) -> None:
    asyncio.run(run_async(url, downgrade_connection, revision))
