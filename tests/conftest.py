"""Shared fixtures: databases on both engines, the local OpenAI server, a configured wflo-otel.

PostgreSQL tests create a throw-away database on 127.0.0.1:5432 (or
``$WFLO_TEST_PG_URL``) and drop it. Without a server they skip with the reason,
except under ``CI=true`` where they fail: CI must prove both engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

import pytest

import wflo_otel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from wflo_otel.demo.server import FakeOpenAIServer

PG_ADMIN_URL = os.environ.get("WFLO_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"
# `make test` runs the suite twice (openai 2.x on the oldest Python, then 3.x). Tests
# marked `one_leg` prove nothing that depends on the openai line (multi-process caps,
# the browser, long soaks), so the openai-2 leg (WFLO_TEST_LEG=openai2) skips them.
TEST_LEG = os.environ.get("WFLO_TEST_LEG", "")


# Whole modules that never depend on the openai line (the store, ingest, migrations, the CLI,
# the dashboard, the controls). The openai-2 leg still imports them, so Python 3.10 compiles
# every module they load, but runs their tests once, in the main leg.
ONE_LEG_MODULES = {
    "test_cli_errors",
    "test_collector",
    "test_controls_hardening",
    "test_checkpoints",
    "test_approvals",
    "test_dashboard",
    "test_dashboard_controls",
    "test_documented_sql",
    "test_grafana_dashboard",
    "test_ingest_bad_input",
    "test_ingest_hostile",
    "test_ingest_scale",
    "test_ingest_writer",
    "test_migrations",
    "test_process_writer",
    "test_rollback",
    "test_rollups",
    "test_sqlite_checkpoint",
    "test_store_connections",
    "test_store_delivery",
    "test_store_reports",
}


def pytest_collection_modifyitems(config, items):
    if TEST_LEG != "openai2":
        return
    skip = pytest.mark.skip(reason="one_leg: runs in the main leg only (openai-independent)")
    for item in items:
        if "one_leg" in item.keywords or item.module.__name__.rpartition(".")[2] in ONE_LEG_MODULES:
            item.add_marker(skip)


def _pg_dsn(dbname: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{dbname}"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _create_pg_database() -> str:
    name = f"wflo_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server here
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    return name


def _drop_pg_database(name: str) -> None:
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def throwaway_database(engine: str, directory, filename: str = "wflo.db"):
    """A fresh, empty database on ``engine`` as a wflo-otel URL; a PostgreSQL one is dropped after."""
    if engine == "sqlite":
        yield f"sqlite+aiosqlite:///{directory}/{filename}"
        return
    name = _create_pg_database()
    try:
        yield _pg_dsn(name).replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        _drop_pg_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database on each engine, as a wflo-otel URL."""
    with throwaway_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def openai_server():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="session")
def max_output_server():
    with FakeOpenAIServer(mode="max_output") as server:
        yield server


@pytest.fixture
def client(openai_server):
    import openai

    return openai.OpenAI(base_url=openai_server.base_url, api_key="test-key", max_retries=0)


@pytest.fixture
async def async_client(openai_server):
    import openai

    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="test-key", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


class Telemetry:
    """A configured wflo-otel whose spans and metrics land in memory."""

    def __init__(self, handle, spans: InMemorySpanExporter, metrics: InMemoryMetricReader) -> None:
        self.handle = handle
        self.exporter = spans
        self.metric_reader = metrics

    def spans(self, name_prefix: str | None = None):
        spans = self.exporter.get_finished_spans()
        return [s for s in spans if name_prefix is None or s.name.startswith(name_prefix)]

    def llm_spans(self):
        """The LLM call spans (CLIENT spans carrying a GenAI operation)."""
        from opentelemetry.trace import SpanKind

        return [
            s
            for s in self.exporter.get_finished_spans()
            if s.kind is SpanKind.CLIENT and "gen_ai.operation.name" in s.attributes
        ]

    def metric_points(self, name: str):
        data = self.metric_reader.get_metrics_data()
        points = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def telemetry():
    """configure() with an in-memory exporter; undone after the test."""
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    handle = wflo_otel.configure(
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(metric_readers=[reader]),
        exporter=spans,
        batch=False,
    )
    try:
        yield Telemetry(handle, spans, reader)
    finally:
        handle.shutdown()


@pytest.fixture
def sql_telemetry(database_url):
    """configure() exporting to a real database on each engine; undone after the test."""
    handle = wflo_otel.configure(database_url, tracer_provider=TracerProvider(), batch=False)
    try:
        yield handle
    finally:
        handle.shutdown()
