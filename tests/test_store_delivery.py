"""Delivery guarantees of the SQL exporter, under real faults, on SQLite and PostgreSQL.

Nothing lost, nothing doubled: batches delivered twice, two exporters racing on the
same executions, connections cut mid-run, the database down and back (a loopback
TCP proxy in front of PostgreSQL; a file where SQLite's folder goes), a spool left by a
previous process, a full spool, a process killed with SIGTERM mid-run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from test_store_support import (  # noqa: F401
    assert_database_holds, batches, block_folder, make_workflows, pg_url, query, unblock_folder,
)
from wflo_otel.exporters.mapping import map_records
from wflo_otel.exporters.records import record_from_readable_span
from wflo_otel.exporters.spool import Spool, decode_batch, encode_batch
from wflo_otel.exporters.sql import SQLSpanExporter
from wflo_otel.exporters.store import SpanStore, is_retryable, is_transient


def exporter_for(url: str, spool_dir: Path, **kwargs) -> SQLSpanExporter:
    kwargs.setdefault("retries", 3)
    kwargs.setdefault("backoff_s", 0.02)
    return SQLSpanExporter(url, spool_dir=spool_dir, handle_sigterm=False, **kwargs)


def test_every_batch_delivered_twice_is_stored_once_with_exact_totals(database_url, tmp_path):
    spans, expected = make_workflows(150, llm_calls=3, steps=1)
    exporter = exporter_for(database_url, tmp_path / "spool")
    try:
        for batch in batches(spans, 97, seed=1):  # children land before their roots, across batches
            assert exporter.export(batch).name == "SUCCESS"
            assert exporter.export(batch).name == "SUCCESS"
        for batch in batches(spans, 256, seed=2):  # and once more, cut differently
            assert exporter.export(batch).name == "SUCCESS"
    finally:
        exporter.shutdown()
    assert_database_holds(database_url, expected)
    assert exporter.stats()["spooled_spans"] == 0


def test_two_exporters_racing_on_the_same_executions_count_each_span_once(database_url, tmp_path):
    spans, expected = make_workflows(150, llm_calls=6, steps=1, seed=3)
    by_execution = sorted(spans, key=lambda s: (s.attributes["wflo.execution.id"], s.context.span_id))
    # Each exporter gets half of every execution's spans, in the same execution order, in
    # small batches: both write different steps of the same executions at the same moment.
    halves = [by_execution[0::2], by_execution[1::2]]
    exporters = [exporter_for(database_url, tmp_path / "spool") for _ in range(2)]
    exporters[0].migrate()
    exporters[1].migrate()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(exporter, half):
        try:
            start.wait()
            for batch in batches(half, 4, shuffle=False):
                assert exporter.export(batch).name == "SUCCESS"
            for batch in batches(half, 50, seed=len(half)):  # and all of it again, as a retry would
                assert exporter.export(batch).name == "SUCCESS"
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e, h)) for e, h in zip(exporters, halves)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for exporter in exporters:
        exporter.shutdown()
    assert not errors, errors
    assert_database_holds(database_url, expected)


def test_a_writer_that_commits_while_another_is_mid_transaction_on_the_same_execution_is_counted(database_url):
    """Writer A holds its transaction open after recomputing the totals; B writes other steps of
    the same execution meanwhile. B must wait for A and count A's steps too (PostgreSQL: the
    execution row is locked before any step is written; SQLite: BEGIN IMMEDIATE)."""
    spans, expected = make_workflows(3, llm_calls=6, steps=0, seed=16)
    ordered = sorted(spans, key=lambda s: (s.attributes["wflo.execution.id"], s.context.span_id))
    first = [s for s in ordered if s.parent is None]  # the roots land first: the executions exist
    rest = [s for s in ordered if s.parent is not None]
    half_a = map_records(record_from_readable_span(s) for s in rest[0::2])
    half_b = map_records(record_from_readable_span(s) for s in rest[1::2])

    async def run():
        a, b = SpanStore(database_url), SpanStore(database_url)
        await a.migrate()
        await a.write(map_records(record_from_readable_span(s) for s in first))
        in_window = asyncio.Event()

        async def hold_open():
            in_window.set()
            await asyncio.sleep(0.5)

        a.before_commit = hold_open
        try:
            write_a = asyncio.ensure_future(a.write(half_a))
            await in_window.wait()
            await b.write(half_b)
            await write_a
        finally:
            await a.dispose()
            await b.dispose()

    asyncio.run(run())
    assert_database_holds(database_url, expected)


def test_connections_cut_again_and_again_mid_run_lose_and_double_nothing(pg_url, tmp_path):
    """PostgreSQL only: SQLite has no server connection to cut."""
    import asyncpg

    database_url = pg_url
    spans, expected = make_workflows(2000, llm_calls=4, steps=0, seed=4)  # 10,000 spans
    assert expected.spans == 10_000
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    stop = threading.Event()
    kills = []

    def killer():
        async def loop():
            conn = await asyncpg.connect(dsn)
            try:
                while not stop.is_set():
                    killed = await conn.fetchval(
                        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                    kills.append(killed)
                    await asyncio.sleep(0.03)
            finally:
                await conn.close()

        asyncio.run(loop())

    exporter = exporter_for(database_url, tmp_path / "spool", retries=4)
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        for batch in batches(spans, 200, seed=5):
            exporter.export(batch)  # SUCCESS, or spooled: both must end in the database
    finally:
        stop.set()
        thread.join(10)
    try:
        assert exporter.force_flush(60_000), "the spool was not replayed"
    finally:
        exporter.shutdown()
    assert sum(kills) > 5, f"the test did not cut connections: {kills}"
    assert_database_holds(database_url, expected)


class TcpProxy:
    """A loopback TCP proxy we can take down (refusing and cutting connections) and bring back."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = None
        self._writers: set = set()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer))
        self._writers -= {client_writer, server_writer}

    def up(self) -> None:
        async def start():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

        self._call(start())

    def down(self) -> None:
        async def stop():
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._call(stop())

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_database_down_then_back_spools_then_replays_everything(database_url, tmp_path):
    spans, expected = make_workflows(120, llm_calls=3, steps=1, seed=6)
    parts = batches(spans, 40, seed=7)
    proxy = None
    if database_url.startswith("postgresql"):
        proxy = TcpProxy()
        host_port = database_url.split("@", 1)[1].split("/", 1)[0]
        url = database_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        bring_back = proxy.up
        take_down = proxy.down
    else:  # SQLite: the database file's folder cannot be made yet
        folder = block_folder(tmp_path / "not-yet")
        url = f"sqlite+aiosqlite:///{folder}/wflo.db"
        database_url = url
        bring_back = lambda: unblock_folder(folder)  # noqa: E731
        take_down = None
    exporter = exporter_for(url, tmp_path / "spool")
    try:
        third = len(parts) // 3
        for batch in parts[:third]:  # down from the start: spooled, and export() answers fast
            started = time.monotonic()
            assert exporter.export(batch).name == "SUCCESS"
            assert time.monotonic() - started < 5
        assert exporter.database_down
        assert len(exporter.spool.pending()) >= 1 and exporter.stats()["spooled_spans"] > 0
        bring_back()
        _wait_for(lambda: not exporter.database_down and not exporter.spool.pending())
        for batch in parts[third : 2 * third]:
            assert exporter.export(batch).name == "SUCCESS"
        if take_down is not None:  # down again mid-run, connections cut
            take_down()
            for batch in parts[2 * third :]:
                assert exporter.export(batch).name == "SUCCESS"
            assert exporter.spool.pending()
            bring_back()
        else:
            for batch in parts[2 * third :]:
                assert exporter.export(batch).name == "SUCCESS"
        assert exporter.force_flush(30_000)
        stats = exporter.stats()
    finally:
        exporter.shutdown()
        if proxy is not None:
            proxy.close()
    assert stats["replayed_spans"] == stats["spooled_spans"] > 0 and stats["lost_spans"] == 0
    assert_database_holds(database_url, expected)


def test_a_spool_left_by_an_earlier_process_is_replayed_when_the_next_exporter_starts(tmp_path):
    spans, expected = make_workflows(30, seed=8)
    folder = block_folder(tmp_path / "db")
    url = f"sqlite+aiosqlite:///{folder}/wflo.db"
    first = exporter_for(url, tmp_path / "spool")
    for batch in batches(spans, 25, seed=9):
        first.export(batch)
    first.shutdown()
    assert len(Spool.for_database(url, tmp_path / "spool").pending()) == len(batches(spans, 25))

    unblock_folder(folder)
    second = exporter_for(url, tmp_path / "spool")  # replays in the background from the start
    try:
        _wait_for(lambda: not second.spool.pending())
    finally:
        second.shutdown()
    assert_database_holds(url, expected)


def test_a_full_spool_refuses_the_batch_and_says_so_loudly(tmp_path, caplog):
    spans, _ = make_workflows(20, seed=12)
    url = f"sqlite+aiosqlite:///{block_folder(tmp_path / 'missing')}/wflo.db"
    exporter = exporter_for(url, tmp_path / "spool", spool_max_mb=0.02)  # ~20 KB
    try:
        with caplog.at_level(logging.ERROR, logger="wflo_otel.exporters.spool"):
            results = [exporter.export(batch).name for batch in batches(spans, 10)]
    finally:
        exporter.shutdown()
    assert results[0] == "SUCCESS" and "FAILURE" in results
    assert exporter.lost_spans > 0
    assert any("SPOOL FULL" in r.getMessage() and "LOST" in r.getMessage() for r in caplog.records)
    assert exporter.spool.size_bytes() <= 0.02 * 1024 * 1024


def test_a_batch_the_database_refuses_for_good_is_kept_in_failed_not_retried_forever(database_url, tmp_path):
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext

    good, expected = make_workflows(5, seed=13)
    bad = ReadableSpan(name="no start time", context=SpanContext(0xABC, 0xDEF, is_remote=False), start_time=None)
    exporter = exporter_for(database_url, tmp_path / "spool")
    try:
        assert exporter.export([bad]).name == "FAILURE"  # a NOT NULL violation: no retry helps
        assert exporter.export(good).name == "SUCCESS"  # and the database is not marked down
        assert not exporter.database_down
    finally:
        exporter.shutdown()
    failed = list(exporter.spool.failed_directory.glob("*.json"))
    assert len(failed) == 1 and exporter.failed_spans == 1
    assert decode_batch(failed[0].read_bytes()).steps  # the rows are kept, readable
    assert_database_holds(database_url, expected)


def test_one_span_the_database_refuses_is_kept_alone_and_the_rest_of_its_batch_lands(database_url, tmp_path):
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext

    good, expected = make_workflows(40, seed=17)
    bad = ReadableSpan(name="no start time", context=SpanContext(0xABC, 0xDEF, is_remote=False), start_time=None)
    exporter = exporter_for(database_url, tmp_path / "spool")
    try:
        batch = good[: len(good) // 2] + [bad] + good[len(good) // 2 :]
        assert exporter.export(batch).name == "FAILURE"  # one span refused for good
        assert not exporter.database_down
    finally:
        exporter.shutdown()
    (failed,) = exporter.spool.failed_directory.glob("*.json")
    assert list(decode_batch(failed.read_bytes()).steps) == [format(0xDEF, "016x")]
    assert exporter.failed_spans == 1 and exporter.exported_spans == len(good)
    assert_database_holds(database_url, expected)


def test_a_forked_worker_exports_through_its_own_loop_and_connections(database_url, tmp_path):
    """gunicorn --preload / Celery prefork: the exporter was in use before the fork."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    spans, expected = make_workflows(4, seed=19)
    exporter = exporter_for(database_url, tmp_path / "spool", timeout_s=10)
    try:
        assert exporter.export(spans[: len(spans) // 2]).name == "SUCCESS"  # the loop and the pool are in use
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                started = time.monotonic()
                result = exporter.export(spans[len(spans) // 2 :])
                quick = time.monotonic() - started < 8
                code = 0 if result.name == "SUCCESS" and quick and exporter.stats()["spooled_spans"] == 0 else 2
                exporter.shutdown()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the forked worker could not export"
        assert exporter.export(spans[: len(spans) // 2]).name == "SUCCESS"  # the parent's own still work
    finally:
        exporter.shutdown()
    assert_database_holds(database_url, expected)


def test_a_fork_waits_for_a_database_section_in_flight_and_then_lets_it_go_on():
    """SQLite's mutexes must not be held by a thread that the child will not have."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    from wflo_otel.exporters.forking import FORK_GUARD

    entered, ended_at = threading.Event(), []

    def section():
        with FORK_GUARD.busy():
            entered.set()
            time.sleep(0.3)
            ended_at.append(time.monotonic())

    writer = threading.Thread(target=section)
    writer.start()
    entered.wait()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    forked_at = time.monotonic()
    os.waitpid(pid, 0)
    writer.join()
    assert ended_at and forked_at >= ended_at[0]
    with FORK_GUARD.busy():  # and sections run again after the fork
        pass


def test_a_database_that_accepts_connections_but_never_answers_blocks_one_export_not_every_one(tmp_path):
    """What pgbouncer in front of a dead backend looks like: the SDK's queue must keep moving."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in iter(int, 1)], daemon=True).start()
    url = f"postgresql://wflo@127.0.0.1:{listener.getsockname()[1]}/silent"
    spans, _ = make_workflows(3, seed=23)
    exporter = SQLSpanExporter(
        url, store=SpanStore(url, connect_timeout_s=1.0), spool_dir=tmp_path / "spool", handle_sigterm=False,
        retries=3, backoff_s=0.02,
    )
    try:
        started = time.monotonic()
        assert exporter.export(spans).name == "SUCCESS"  # spooled, after one connect timeout
        first = time.monotonic() - started
        later = []
        for _ in range(5):
            started = time.monotonic()
            assert exporter.export(spans).name == "SUCCESS"
            later.append(time.monotonic() - started)
        assert first < 3.0, f"the timeout was retried: {first:.1f}s"
        assert max(later) < 0.5, f"exports kept probing the silent database: {later}"
        assert exporter.stats()["spooled_spans"] == 6 * len(spans) and exporter.database_down
    finally:
        exporter.shutdown(timeout_millis=500)
        listener.close()


def _odd_spans():
    """A workflow whose spans carry values no database driver takes as they are."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import set_span_in_context

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("odd")
    root = tracer.start_span("nightly", attributes={"wflo.budget.usd": "unlimited"})
    inside = set_span_in_context(root)
    tracer.start_span("report-\udcff.pdf", context=inside, attributes={"file": "x\udcff"}).end()  # os.fsdecode of b"\xff"
    tracer.start_span("chat gpt-4o-mini", context=inside, attributes={
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 2**63, "gen_ai.usage.output_tokens": 7, "wflo.cost.usd": float("nan"),
    }).end()
    tracer.start_span("chat gpt-4o-mini", context=inside, attributes={
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5, "wflo.cost.usd": 0.25,
    }).end()
    root.end()
    return memory.get_finished_spans()


def test_values_no_driver_can_encode_are_stored_as_near_as_they_can_be_in_one_batch(database_url, tmp_path):
    spans = _odd_spans()
    exporter = exporter_for(database_url, tmp_path / "spool")
    try:
        assert exporter.export(spans).name == "SUCCESS"
    finally:
        exporter.shutdown()
    assert exporter.failed_spans == 0 and exporter.exported_spans == 4
    names = sorted(r[0] for r in query(database_url, "SELECT name FROM step_executions"))
    assert names == ["chat gpt-4o-mini", "chat gpt-4o-mini", "nightly", "report-?.pdf"]
    ((status, budget, cost, input_tokens, output_tokens, calls),) = query(
        database_url,
        "SELECT status, budget_usd, cost_total_usd, input_tokens, output_tokens, llm_calls FROM workflow_executions",
    )
    # the budget is not a number, the NaN cost and the count beyond BIGINT are unknown: none poisons a total
    assert (status, budget, cost, input_tokens, output_tokens, calls) == ("COMPLETED", None, 0.25, 10, 12, 2)


def test_deadlocks_and_serialization_failures_are_retried(database_url, monkeypatch):
    import wflo_otel.exporters.store as store_module

    spans, expected = make_workflows(4, seed=14)
    batch = map_records(record_from_readable_span(s) for s in spans)

    class Deadlock(Exception):
        sqlstate = "40P01"

    real = store_module.SpanStore._write_once
    calls = []

    async def flaky(self, b):
        calls.append(1)
        if len(calls) <= 2:
            raise Deadlock("deadlock detected")
        return await real(self, b)

    monkeypatch.setattr(store_module.SpanStore, "_write_once", flaky)

    async def run():
        store = SpanStore(database_url)
        try:
            await store.migrate()
            await store.write(batch)
            return store.retried_transactions
        finally:
            await store.dispose()

    assert asyncio.run(run()) == 2
    assert_database_holds(database_url, expected)


def test_errors_are_told_apart_as_transient_or_not():
    class PgError(Exception):
        def __init__(self, sqlstate):
            self.sqlstate = sqlstate

    assert is_transient(ConnectionRefusedError()) and is_transient(TimeoutError())
    assert is_transient(PgError("57P01")) and is_transient(PgError("08006")) and is_transient(PgError("40001"))
    assert not is_transient(PgError("23502")) and not is_transient(PgError("22P02"))
    assert is_transient(Exception("database is locked"))
    # A lost race on a span id is run again by the store, but is no sign of a database away.
    assert is_retryable(PgError("23505")) and is_retryable(PgError("40P01"))
    assert not is_transient(PgError("23505")) and not is_retryable(PgError("23502"))


def test_spooled_batches_round_trip_and_are_replayed_oldest_first(tmp_path):
    spans, _ = make_workflows(6, seed=15)
    spool = Spool.for_database("sqlite:///x.db", tmp_path)
    written = []
    for i, part in enumerate(batches(spans, 5, shuffle=False)):
        batch = map_records(record_from_readable_span(s) for s in part)
        if i == 0:
            next(iter(batch.steps.values()))["attributes"]["odd"] = float("nan")
        written.append((spool.append(batch), batch))
    assert spool.pending() == [path for path, _ in written]
    for path, batch in written:
        again = spool.read(path)
        assert set(again.steps) == set(batch.steps) and set(again.executions) == set(batch.executions)
        step = next(iter(batch.steps))
        assert again.steps[step]["started_at"] == batch.steps[step]["started_at"]
    assert decode_batch(encode_batch(written[1][1])).definitions == written[1][1].definitions
    # A folder per database, so one database's spool is never replayed into another.
    assert Spool.for_database("sqlite:///y.db", tmp_path).directory != spool.directory
    assert Spool.for_database("postgresql://u:secret@h/db", tmp_path).directory == (
        Spool.for_database("postgresql://u:other@h/db", tmp_path).directory
    )


CHILD = textwrap.dedent(
    """
    import sys, time
    import wflo_otel
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind

    handle = wflo_otel.configure(sys.argv[1], tracer_provider=TracerProvider(), instrument_openai=False)
    tracer = handle.tracer_provider.get_tracer("child")
    i = 0
    while True:
        with wflo_otel.workflow("sigterm", inputs={"i": i}) as wf:
            with wflo_otel.step("prepare"):
                pass
            for _ in range(2):
                with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10,
                    "wflo.cost.usd": 0.001}):
                    pass
        print("done", wf.execution_id, flush=True)
        i += 1
        time.sleep(0.002)
    """
)


def test_sigterm_mid_run_flushes_every_ended_span_before_the_process_exits(database_url, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, WFLO_SPOOL_DIR=str(tmp_path / "spool"))
    child = subprocess.Popen(
        [sys.executable, str(script), database_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    done = []
    try:
        while len(done) < 60:  # the batch processor holds these in memory (5 s schedule delay)
            line = child.stdout.readline()
            assert line, child.stderr.read()
            done.append(line.split()[1])
        child.send_signal(signal.SIGTERM)
        rest, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    done += [line.split()[1] for line in rest.splitlines() if line.startswith("done")]
    assert child.returncode == 128 + signal.SIGTERM, err  # exited through SystemExit, not killed
    rows = dict(
        (r[0], r[1:])
        for r in query(
            database_url,
            "SELECT e.id, e.status, e.llm_calls, e.cost_total_usd,"
            " (SELECT COUNT(*) FROM step_executions s WHERE s.execution_id = e.id) FROM workflow_executions e",
        )
    )
    missing = [d for d in done if d not in rows]
    assert not missing, f"{len(missing)} of {len(done)} finished executions were lost"
    for execution_id in done:
        status, calls, cost, steps = rows[execution_id]
        assert (status, calls, steps) == ("COMPLETED", 2, 4) and cost == pytest.approx(0.002)
