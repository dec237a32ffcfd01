"""Fixtures of the control tests: wflo-otel configured on a real database of each engine."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import wflo_otel
from wflo_otel.controls.store import close_stores, control_store


class Controls:
    """A configured wflo-otel whose spans land in memory and whose controls land in ``url``."""

    def __init__(self, url: str, handle, spans: InMemorySpanExporter) -> None:
        self.url = url
        self.handle = handle
        self.exporter = spans

    @property
    def store(self):
        return control_store(self.url)

    def run(self, fn):
        """``fn(store)`` on the control store, waited for."""
        store = self.store
        return store.run(lambda: fn(store))

    def spans(self, prefix: str = ""):
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(prefix)]

    def rows(self, sql: str, **params):
        import asyncio

        from wflo_otel.cli import fetch

        return asyncio.run(fetch(self.url, sql, params))[1]


@pytest.fixture
def controls(database_url, monkeypatch):
    from wflo_otel import migrations

    migrations.upgrade(database_url)
    monkeypatch.setenv("WFLO_DATABASE_URL", database_url)
    spans = InMemorySpanExporter()
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=spans, batch=False)
    try:
        yield Controls(database_url, handle, spans)
    finally:
        handle.shutdown()
        close_stores()
