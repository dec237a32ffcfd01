"""Getting to the database: the URLs people write, databases not there yet, processes starting together.

Real components only: PostgreSQL on 127.0.0.1 through asyncpg, SQLite files, real
processes. A ``postgresql://`` URL written for libpq (psql, psycopg) must connect
through asyncpg; a database or role created after the application started must
receive the spans spooled meanwhile; a SQLite file's missing folder is made; and
processes that start together on a fresh SQLite file all migrate it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
import uuid

from alembic.script import ScriptDirectory

from conftest import _create_pg_database, _drop_pg_database, _pg_admin, _pg_dsn
from test_store_support import assert_database_holds, make_workflows, pg_url, query  # noqa: F401
from wflo_otel import migrations
from wflo_otel.cli import main
from wflo_otel.exporters.sql import SQLSpanExporter
from wflo_otel.exporters.store import SpanStore, asyncpg_connect_args, create_engine, is_transient


def exporter_for(url: str, spool_dir, **kwargs) -> SQLSpanExporter:
    kwargs.setdefault("retries", 2)
    kwargs.setdefault("backoff_s", 0.02)
    return SQLSpanExporter(url, spool_dir=spool_dir, handle_sigterm=False, **kwargs)


def libpq_url(asyncpg_url: str, query_string: str) -> str:
    """The URL as psql or psycopg users write it: ``postgresql://`` with libpq's query parameters."""
    return asyncpg_url.replace("postgresql+asyncpg://", "postgresql://", 1) + "?" + query_string


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _pg_fetch(url: str, sql: str):
    """Rows of ``sql`` on a plain asyncpg connection (not through wflo-otel)."""
    import asyncpg

    async def run():
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=5)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(run())


# --------------------------------------------------------------------------- libpq URLs


def test_a_libpq_url_with_sslmode_application_name_and_connect_timeout_exports_every_span(pg_url, tmp_path):
    url = libpq_url(pg_url, "sslmode=disable&application_name=wflo-test&connect_timeout=5")
    spans, expected = make_workflows(10, seed=31)
    exporter = exporter_for(url, tmp_path / "spool")
    try:
        assert exporter.export(spans).name == "SUCCESS"
        assert exporter.stats()["exported_spans"] == len(spans) and not exporter.database_down
        database = pg_url.rsplit("/", 1)[1]
        names = _pg_fetch(pg_url, f"SELECT application_name FROM pg_stat_activity WHERE datname = '{database}'")
        assert ("wflo-test",) in names  # the exporter's pooled connection, named as the URL says
    finally:
        exporter.shutdown()
    assert exporter.stats()["spooled_spans"] == exporter.stats()["failed_spans"] == 0
    assert_database_holds(pg_url, expected)


def test_db_upgrade_migrates_through_a_libpq_url(pg_url, capsys):
    url = libpq_url(pg_url, "sslmode=prefer&connect_timeout=5&application_name=wflo-migrate")
    assert main(["--database-url", url, "db", "upgrade"]) == 0
    assert query(pg_url, "SELECT COUNT(*) FROM workflow_executions") == [(0,)]


def test_libpq_options_and_asyncpg_native_parameters_reach_the_server_and_the_rest_are_named_and_ignored(
    pg_url, caplog
):
    url = libpq_url(
        pg_url,
        "options=-c%20statement_timeout%3D4321&fallback_application_name=wflo-fallback"
        "&target_session_attrs=read-write&gssencmode=disable&keepalives=1",
    )

    async def settings():
        store = SpanStore(url)
        try:
            async with store.engine.connect() as conn:
                result = await conn.exec_driver_sql(
                    "SELECT current_setting('statement_timeout'), application_name"
                    " FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                )
                return tuple(result.one())
        finally:
            await store.dispose()

    with caplog.at_level(logging.WARNING, logger="wflo_otel.exporters.store"):
        assert asyncio.run(settings()) == ("4321ms", "wflo-fallback")
    (warning,) = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert "gssencmode" in warning and "keepalives" in warning and "target_session_attrs" not in warning


def test_libpq_parameters_become_the_asyncpg_connect_arguments_that_mean_the_same():
    url, args = asyncpg_connect_args(
        "postgresql+asyncpg://u:p@db.example:5433/wflo?sslmode=verify-full&sslrootcert=/etc/ca.pem"
        "&connect_timeout=7&application_name=svc&prepared_statement_cache_size=0"
    )
    assert dict(url.query) == {"ssl": "verify-full", "prepared_statement_cache_size": "0"}
    assert (url.host, url.port, url.database, url.password) == ("db.example", 5433, "wflo", "p")
    assert args == {
        "timeout": 7.0,
        "server_settings": {"application_name": "svc"},
        "dsn": "postgresql://?sslrootcert=%2Fetc%2Fca.pem",  # asyncpg reads the TLS files from a DSN only
    }
    # an explicit asyncpg ``ssl`` wins; libpq's "no timeout" keeps the engine's own
    url, args = asyncpg_connect_args("postgresql+asyncpg://h/d?ssl=require&sslmode=disable&connect_timeout=0")
    assert dict(url.query) == {"ssl": "require"} and args == {}


def test_a_type_error_is_never_transient_even_when_its_text_says_timeout():
    # What asyncpg raised for ?connect_timeout=5: taken for an outage, its batches were spooled forever.
    assert not is_transient(TypeError("connect() got an unexpected keyword argument 'connect_timeout'"))
    assert not is_transient(TypeError("connection closed"))


# --------------------------------------------------------------------------- databases not there yet


def _fresh_database_name() -> str:
    """A name no database has (skips like conftest without a server)."""
    name = _create_pg_database()
    _drop_pg_database(name)
    return name


def test_spans_for_a_database_not_created_yet_are_spooled_and_land_once_it_is_created(tmp_path):
    name = _fresh_database_name()
    url = _pg_dsn(name).replace("postgresql://", "postgresql+asyncpg://", 1)
    spans, expected = make_workflows(12, seed=32)
    exporter = exporter_for(url, tmp_path / "spool")
    try:
        assert exporter.export(spans[:20]).name == "SUCCESS"  # SQLSTATE 3D000: spooled, not failed
        assert exporter.database_down and exporter.spool.pending()
        assert exporter.stats()["failed_spans"] == 0
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
        _wait_for(lambda: not exporter.database_down and not exporter.spool.pending())
        assert exporter.export(spans[20:]).name == "SUCCESS"
        stats = exporter.stats()
        assert_database_holds(url, expected)
    finally:
        exporter.shutdown()
        _drop_pg_database(name)
    assert stats["replayed_spans"] == stats["spooled_spans"] == 20 and stats["failed_spans"] == 0


def test_spans_for_a_role_not_created_yet_are_spooled_and_land_once_it_can_log_in(tmp_path):
    name = _create_pg_database()
    role = f"wflo_role_{uuid.uuid4().hex[:10]}"
    url = _pg_dsn(name).replace("postgresql://", "postgresql+asyncpg://", 1).replace("postgres@", f"{role}@", 1)
    assert role in url
    spans, expected = make_workflows(8, seed=33)
    exporter = exporter_for(url, tmp_path / "spool")
    try:
        assert exporter.export(spans).name == "SUCCESS"  # SQLSTATE 28000: spooled, not failed
        assert exporter.database_down and exporter.stats()["failed_spans"] == 0
        asyncio.run(_pg_admin(f'CREATE ROLE "{role}" LOGIN'))
        asyncio.run(_pg_admin(f'ALTER DATABASE "{name}" OWNER TO "{role}"'))  # may create tables in public
        _wait_for(lambda: not exporter.database_down and not exporter.spool.pending())
        stats = exporter.stats()
        assert_database_holds(url, expected)
    finally:
        exporter.shutdown()
        _drop_pg_database(name)
        asyncio.run(_pg_admin(f'DROP ROLE IF EXISTS "{role}"'))
    assert stats["replayed_spans"] == len(spans) and stats["failed_spans"] == 0


# --------------------------------------------------------------------------- SQLite files


def test_a_sqlite_file_in_folders_not_made_yet_gets_them_and_its_rows_but_a_uri_database_gets_none(tmp_path):
    url = f"sqlite:///{tmp_path}/missing/sub/wflo.db"
    spans, expected = make_workflows(6, seed=34)
    exporter = exporter_for(url, tmp_path / "spool")
    try:
        assert exporter.export(spans).name == "SUCCESS"
        assert not exporter.database_down and exporter.stats()["spooled_spans"] == 0
    finally:
        exporter.shutdown()
    assert (tmp_path / "missing" / "sub" / "wflo.db").is_file()
    assert_database_holds(url, expected)
    # a file: URI may open a database read-only, and an in-memory one has no folder: nothing is made
    for other in (f"sqlite+aiosqlite:///file:{tmp_path}/ro/sub/wflo.db?mode=ro&uri=true", "sqlite+aiosqlite:///:memory:"):
        asyncio.run(create_engine(other).dispose())
    assert not (tmp_path / "ro").exists()


def _migrate_in_rounds(directory: str, rounds: int, barrier, errors, through_cli: bool) -> None:
    """One process: at each round, with the others, migrate a fresh SQLite file (spawned; module level)."""
    for round_ in range(rounds):
        url = f"sqlite+aiosqlite:///{directory}/round{round_}.db"
        barrier.wait(timeout=60)
        try:
            if through_cli:  # wflo-otel db upgrade
                migrations.upgrade(url)
            else:  # the exporter's and the ingest service's auto-migration
                asyncio.run(_store_migrate(url))
        except Exception as exc:
            errors.put(f"round {round_}: {type(exc).__name__}: {exc}"[:300])


async def _store_migrate(url: str) -> None:
    store = SpanStore(url)
    try:
        await store.migrate()
    finally:
        await store.dispose()


def test_processes_starting_together_on_a_fresh_sqlite_file_all_migrate_it(tmp_path):
    processes, rounds = 4, 5
    context = multiprocessing.get_context("spawn")
    barrier, errors = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_migrate_in_rounds, args=(str(tmp_path), rounds, barrier, errors, k % 2 == 0))
        for k in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, f"{len(failures)} of {processes * rounds} migrations failed, e.g. {failures[:3]}"
    assert [w.exitcode for w in workers] == [0] * processes
    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    for round_ in range(rounds):
        url = f"sqlite+aiosqlite:///{tmp_path}/round{round_}.db"
        assert asyncio.run(migrations.run_async(url, migrations.current_revision)) == head
