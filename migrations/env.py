"""Alembic environment: runs on a connection handed in by wflo-otel, or on the configured URL."""

from __future__ import annotations

import asyncio

from alembic import context

from wflo_otel.exporters.schema import metadata, on_this_engine
from wflo_otel.migrations import VERSION_TABLE, run_async

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=on_this_engine(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(run_async(config.get_main_option("sqlalchemy.url"), _run))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
