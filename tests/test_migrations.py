"""Alembic owns the DDL: upgrade and downgrade work on both engines and match the Core schema."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.script import ScriptDirectory
from alembic.migration import MigrationContext

from wflo_otel import migrations
from wflo_otel.cli import fetch, main
from wflo_otel.exporters.schema import metadata, on_this_engine

TABLES = {"workflow_definitions", "workflow_executions", "step_executions"}


def _tables(url: str) -> set[str]:
    def names(conn):
        import sqlalchemy as sa

        return set(sa.inspect(conn).get_table_names())

    return asyncio.run(migrations.run_async(url, names))


def test_upgrade_then_downgrade_round_trips(database_url, capsys):
    assert main(["--database-url", database_url, "db", "upgrade"]) == 0
    assert TABLES <= _tables(database_url)
    main(["--database-url", database_url, "db", "current"])
    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    assert head in capsys.readouterr().out
    assert main(["--database-url", database_url, "db", "downgrade", "base"]) == 0
    assert not (TABLES & _tables(database_url))
    migrations.upgrade(database_url)  # and up again
    assert TABLES <= _tables(database_url)


def test_migrated_schema_matches_the_core_tables(database_url):
    migrations.upgrade(database_url)

    def diff(conn):
        opts = {"compare_type": True, "include_object": on_this_engine(conn.dialect.name)}  # as migrations/env.py has it
        context = MigrationContext.configure(conn, opts=opts)
        return compare_metadata(context, metadata)

    differences = [d for d in asyncio.run(migrations.run_async(database_url, diff)) if "wflo_alembic_version" not in repr(d)]
    assert differences == []


def test_indexes_exist_for_documented_filters(database_url):
    migrations.upgrade(database_url)

    def indexes(conn):
        import sqlalchemy as sa

        inspector = sa.inspect(conn)
        return {ix["name"] for table in TABLES for ix in inspector.get_indexes(table)}

    found = asyncio.run(migrations.run_async(database_url, indexes))
    assert {"ix_workflow_executions_workflow_id", "ix_step_executions_execution_id"} <= found


def test_console_script_upgrades_the_database(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    out = subprocess.run(
        [sys.executable, "-m", "wflo_otel.cli", "--database-url", url, "db", "upgrade"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "head" in out.stdout
    columns, rows = asyncio.run(fetch(url, "SELECT COUNT(*) FROM workflow_executions"))
    assert rows == [(0,)]
