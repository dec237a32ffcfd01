"""The exporter's child-process writer (``writer="process"``): same rows, faults contained."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from test_store_support import assert_database_holds, batches, make_workflows, query  # noqa: F401
from wflo_otel.exporters.process_store import ProcessStore, RemoteStoreError, WriterGone
from wflo_otel.exporters.sql import SQLSpanExporter
from wflo_otel.exporters.store import is_transient


def process_exporter(url: str, spool_dir: Path, **kwargs) -> SQLSpanExporter:
    kwargs.setdefault("retries", 2)
    kwargs.setdefault("backoff_s", 0.02)
    return SQLSpanExporter(url, spool_dir=spool_dir, handle_sigterm=False, writer="process", **kwargs)


def test_the_child_writer_lands_every_span_once_with_exact_totals(database_url, tmp_path):
    spans, expected = make_workflows(60, llm_calls=3, steps=1, seed=21)
    exporter = process_exporter(database_url, tmp_path / "spool")
    try:
        child = exporter.store.pid
        assert child is not None and child != os.getpid()
        for batch in batches(spans, 64, seed=4):  # children before roots, across batches
            assert exporter.export(batch).name == "SUCCESS"
        assert exporter.export(spans[:50]).name == "SUCCESS"  # delivered twice: counted once
    finally:
        exporter.shutdown()
    assert_database_holds(database_url, expected)
    assert exporter.stats()["spooled_spans"] == 0
    _wait_gone(child)  # shutdown closed its pipe: the child exited


def test_export_hands_a_batch_over_and_force_flush_waits_for_its_commit(database_url, tmp_path):
    spans, expected = make_workflows(20, llm_calls=2, steps=1, seed=25)
    exporter = process_exporter(database_url, tmp_path / "spool")
    try:
        assert exporter.export(spans).name == "SUCCESS"  # the child now writes while we go on
        assert exporter.force_flush()
        assert exporter.stats()["exported_spans"] == len(spans)
        assert_database_holds(database_url, expected)  # committed before force_flush returned
    finally:
        exporter.shutdown()


def test_the_application_process_hands_spans_over_without_mapping_them(database_url, tmp_path, monkeypatch):
    from wflo_otel.exporters import sql

    def not_here(*args, **kwargs):
        raise AssertionError("mapped in the application's process")

    spans, expected = make_workflows(12, llm_calls=2, steps=1, seed=26)
    exporter = process_exporter(database_url, tmp_path / "spool")
    try:
        monkeypatch.setattr(sql, "map_records", not_here)  # the child maps: it has its own module
        for batch in batches(spans, 20, seed=5):
            assert exporter.export(batch).name == "SUCCESS"
        assert exporter.force_flush()
    finally:
        exporter.shutdown()
    assert_database_holds(database_url, expected)
    assert exporter.stats()["spooled_spans"] == 0


def test_configure_force_flush_means_the_spans_are_in_the_database(database_url, monkeypatch):
    import wflo_otel
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setenv("WFLO_EXPORT_WRITER", "process")
    handle = wflo_otel.configure(database_url, tracer_provider=TracerProvider())  # the batch processor
    try:
        with wflo_otel.workflow("flushed", budget_usd=1.0):
            with wflo_otel.step("one"):
                pass
        assert handle.tracer_provider.force_flush()
        assert query(database_url, "SELECT COUNT(*) FROM step_executions") == [(2,)]
    finally:
        handle.shutdown()


def _unpriced_llm_spans(model: str, count: int) -> list:
    """CLIENT spans as another GenAI instrumentation makes them: usage, no ``wflo.cost.usd``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("another-instrumentation")
    for _ in range(count):
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": 1_000_000,
            "gen_ai.usage.output_tokens": 0,
        }
        tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes).end()
    return list(memory.get_finished_spans())


def test_the_child_prices_with_the_exporters_prices_and_follows_their_changes(database_url, tmp_path):
    from wflo_otel.pricing import PriceBook

    book = PriceBook(overrides={"in-house-llm": {"input_per_mtok": 2.0, "output_per_mtok": 8.0}})
    exporter = process_exporter(database_url, tmp_path / "spool", pricebook=book)
    try:
        assert exporter.export(_unpriced_llm_spans("in-house-llm", 3)).name == "SUCCESS"
        book.set_price("in-house-llm", input_per_mtok=5.0, output_per_mtok=8.0)  # between two batches
        assert exporter.export(_unpriced_llm_spans("in-house-llm", 2)).name == "SUCCESS"
        assert exporter.force_flush()
    finally:
        exporter.shutdown()
    rows = query(database_url, "SELECT cost_usd, cost_source FROM step_executions ORDER BY cost_usd")
    assert [(round(cost, 6), source) for cost, source in rows] == [(2.0, "override")] * 3 + [(5.0, "override")] * 2


def test_a_killed_child_is_replaced_and_its_batch_is_written(database_url, tmp_path):
    spans, expected = make_workflows(30, llm_calls=2, steps=1, seed=22)
    first, second = spans[: len(spans) // 2], spans[len(spans) // 2 :]
    exporter = process_exporter(database_url, tmp_path / "spool")
    try:
        assert exporter.export(first).name == "SUCCESS"
        killed = exporter.store.pid
        os.kill(killed, signal.SIGKILL)
        _wait_gone(killed)
        assert exporter.export(second).name == "SUCCESS"  # the retry starts a new child
        assert exporter.store.pid not in (None, killed) and exporter.store.restarts == 1
    finally:
        exporter.shutdown()
    assert_database_holds(database_url, expected)
    assert exporter.stats()["spooled_spans"] == 0


def test_the_child_ignores_signals_meant_for_the_application(database_url, tmp_path):
    spans, expected = make_workflows(10, seed=23)
    exporter = process_exporter(database_url, tmp_path / "spool")
    try:
        child = exporter.store.pid
        exporter.migrate()  # the child is up and serving
        os.kill(child, signal.SIGINT)  # Ctrl-C reaches the whole process group
        os.kill(child, signal.SIGTERM)  # so may a service manager's stop
        time.sleep(0.2)
        assert exporter.export(spans).name == "SUCCESS"  # the application flushes through it
        assert exporter.store.pid == child and exporter.store.restarts == 0
    finally:
        exporter.shutdown()
    assert_database_holds(database_url, expected)


def test_an_unreachable_database_in_the_child_spools_as_it_does_in_process(tmp_path):
    spans, _ = make_workflows(5, seed=24)
    exporter = process_exporter(
        "postgresql://postgres@127.0.0.1:1/nowhere", tmp_path / "spool", retries=1, timeout_s=20
    )
    try:
        assert exporter.export(spans).name == "SUCCESS"
        stats = exporter.stats()
        assert stats["spooled_spans"] == len(spans) and stats["exported_spans"] == 0
        assert exporter.database_down
    finally:
        exporter.shutdown(timeout_millis=2000)


def test_errors_from_the_child_keep_what_the_retry_rules_need():
    assert is_transient(RemoteStoreError("AdminShutdownError", "terminating", "57P01"))
    assert not is_transient(RemoteStoreError("NotNullViolationError", "null value", "23502"))
    assert is_transient(WriterGone("the writer process died"))


def test_a_forked_application_process_gets_its_own_child(tmp_path):
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    url = f"sqlite+aiosqlite:///{tmp_path / 'fork.db'}"
    store = ProcessStore(url, timeout_s=30)
    try:
        store._call("migrate")
        parent_child = store.pid
        pid = os.fork()
        if pid == 0:  # the forked worker: must not talk on its parent's pipe
            code = 1
            try:
                if store.pid is None:
                    store._call("ping")
                    code = 0 if store.pid not in (None, parent_child) else 2
            finally:
                store.close()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        store._call("ping")  # the parent's own child is untouched
        assert store.pid == parent_child
    finally:
        store.close()


def test_an_unknown_writer_is_refused_with_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("WFLO_EXPORT_WRITER", "fiber")
    with pytest.raises(ValueError, match="thread, process"):
        SQLSpanExporter(f"sqlite:///{tmp_path / 'x.db'}", spool_dir=False, handle_sigterm=False)


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # our own child: reap it if the store has not yet
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still alive")
