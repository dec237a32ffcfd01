"""Storage that bad numbers, deep JSON, secrets in errors and a refusing database cannot break.

Issue 14 items 6-10 and issue 15's refused database, lock file and view types, on both
engines (a SQLite file and a throw-away PostgreSQL database). A database that is "down"
or refuses is a database name that does not exist (PostgreSQL) or a folder a file holds
the name of (SQLite): the machine's PostgreSQL is never stopped.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import wflo_otel
from conftest import PG_ADMIN_URL
from test_store_support import block_folder, query, unblock_folder
from wflo_otel import migrations
from wflo_otel.exporters.mapping import COST_LIMIT_USD, REJECTED, TOKEN_LIMIT, map_records
from wflo_otel.exporters.records import SpanRecord
from wflo_otel.exporters.sql import SQLSpanExporter
from wflo_otel.exporters.store import TOTAL_TOKENS_LIMIT, SpanStore
from wflo_otel.redaction import MESSAGE_LIMIT, redact, redact_message

# ----------------------------------------------------------------- spans


class Spans:
    """Real SDK spans of one execution: a workflow root and LLM calls with the usage given."""

    def __init__(self) -> None:
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("storage-hardening")
        self.execution_id = uuid.uuid4().hex
        self.common = {"wflo.execution.id": self.execution_id, "wflo.workflow.name": "hardening"}

    def root(self, **attributes):
        attrs = {"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": "hardening", **self.common}
        self.tracer.start_span("invoke_workflow hardening", attributes={**attrs, **attributes}).end()
        return self.take()

    def call(self, input_tokens=100, output_tokens=10, cost=0.001, **extra):
        attrs = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
            "wflo.cost.usd": cost,
            "wflo.cost.source": "test",
            **self.common,
            **extra,
        }
        parent = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(1, 2, False, trace.TraceFlags(trace.TraceFlags.SAMPLED))))
        self.tracer.start_span("chat gpt-4o-mini", context=parent, kind=SpanKind.CLIENT, attributes=attrs).end()
        return self.take()

    def take(self):
        spans = list(self.memory.get_finished_spans())
        self.memory.clear()
        return spans


def exporter_for(url, tmp_path, **kwargs) -> SQLSpanExporter:
    return SQLSpanExporter(url, spool_dir=tmp_path / "spool", handle_sigterm=False, **kwargs)


def execution_totals(url, execution_id):
    return query(
        url,
        "SELECT cost_total_usd, input_tokens, output_tokens, llm_calls FROM workflow_executions WHERE id = :id",
        id=execution_id,
    )[0]


def execute(url, sql, **params):
    """One statement, committed."""
    import asyncio

    import sqlalchemy as sa

    asyncio.run(migrations.run_async(url, lambda conn: conn.execute(sa.text(sql), params)))


def stored_json(value):
    return json.loads(value) if isinstance(value, str) else value


def llm_rows(url, execution_id):
    return query(
        url,
        "SELECT input_tokens, output_tokens, cost_usd, attributes FROM step_executions"
        " WHERE execution_id = :id AND kind = 'llm' ORDER BY started_at",
        id=execution_id,
    )


# ----------------------------------------------------------------- numbers (items 6, 7)


def test_a_huge_token_count_is_stored_as_null_and_later_calls_of_its_execution_still_land(database_url, tmp_path):
    spans = Spans()
    exporter = exporter_for(database_url, tmp_path)
    try:
        assert exporter.export(spans.root()).name == "SUCCESS"
        assert exporter.export(spans.call(input_tokens=2**63 - 1)).name == "SUCCESS"
        for _ in range(3):  # each in its own batch: each adds to the stored execution's totals
            assert exporter.export(spans.call(input_tokens=100, output_tokens=10, cost=0.001)).name == "SUCCESS"
        assert exporter.failed_spans == 0
    finally:
        exporter.shutdown()
    rows = llm_rows(database_url, spans.execution_id)
    assert len(rows) == 4
    huge = stored_json(rows[0][3])
    assert rows[0][0] is None and huge[REJECTED] == {"input_tokens": 2**63 - 1}
    assert huge["gen_ai.usage.input_tokens"] == 2**63 - 1  # the span's own attribute, as it came
    cost, input_tokens, output_tokens, calls = execution_totals(database_url, spans.execution_id)
    assert (input_tokens, output_tokens, calls) == (300, 40, 4) and cost == pytest.approx(0.004)


def test_negative_tokens_and_costs_are_stored_as_null_and_never_subtract_from_totals(database_url, tmp_path):
    spans = Spans()
    exporter = exporter_for(database_url, tmp_path)
    try:
        batch = spans.root() + spans.call(input_tokens=-5, output_tokens=-7, cost=-1e308) + spans.call()
        assert exporter.export(batch).name == "SUCCESS"
        assert exporter.export(spans.call(cost=COST_LIMIT_USD * 10)).name == "SUCCESS"
    finally:
        exporter.shutdown()
    rows = llm_rows(database_url, spans.execution_id)
    negative = next(r for r in rows if r[0] is None)
    assert negative[:3] == (None, None, None)
    rejected = stored_json(negative[3])[REJECTED]  # (jsonb keeps -1e308 as an exact numeric)
    assert rejected["input_tokens"] == -5 and rejected["output_tokens"] == -7 and float(rejected["cost_usd"]) == -1e308
    implausible = next(r for r in rows if r[2] is None and r[0] == 100)
    assert stored_json(implausible[3])[REJECTED] == {"cost_usd": COST_LIMIT_USD * 10}
    cost, input_tokens, output_tokens, calls = execution_totals(database_url, spans.execution_id)
    assert cost == pytest.approx(0.001) and (input_tokens, output_tokens, calls) == (200, 20, 3)


# The README's query for values the mapping refused (runs unchanged on both engines).
REJECTED_VALUES_SQL = """
SELECT execution_id, name, attributes
FROM step_executions
WHERE CAST(attributes AS TEXT) LIKE '%wflo.storage.rejected%'
""".strip()


def test_the_documented_query_finds_the_values_the_mapping_refused(database_url, tmp_path):
    spans = Spans()
    exporter = exporter_for(database_url, tmp_path)
    try:
        assert exporter.export(spans.root() + spans.call(input_tokens=-1) + spans.call()).name == "SUCCESS"
    finally:
        exporter.shutdown()
    ((execution_id, name, attributes),) = query(database_url, REJECTED_VALUES_SQL)
    assert execution_id == spans.execution_id and name == "chat gpt-4o-mini"
    assert stored_json(attributes)[REJECTED] == {"input_tokens": -1}


def test_execution_totals_saturate_instead_of_overflowing(database_url, tmp_path):
    spans = Spans()
    exporter = exporter_for(database_url, tmp_path)
    try:
        assert exporter.export(spans.root() + spans.call()).name == "SUCCESS"
        execute(  # an execution whose total is already near the top
            database_url,
            "UPDATE workflow_executions SET input_tokens = :near WHERE id = :id",
            near=TOTAL_TOKENS_LIMIT - 10,
            id=spans.execution_id,
        )
        assert exporter.export(spans.call(input_tokens=TOKEN_LIMIT)).name == "SUCCESS"
        assert exporter.export(spans.call(input_tokens=TOKEN_LIMIT)).name == "SUCCESS"
        assert exporter.failed_spans == 0
    finally:
        exporter.shutdown()
    assert execution_totals(database_url, spans.execution_id)[1] == TOTAL_TOKENS_LIMIT
    assert len(llm_rows(database_url, spans.execution_id)) == 3


def test_the_ingest_path_maps_bad_numbers_as_the_exporter_does():
    """One mapping: the ingest service's records (from OTLP) go through the same bounds."""
    record = SpanRecord(
        "1" * 32, "2" * 16, "3" * 16, "chat m", "CLIENT", "UNSET", None, 1, 2,
        {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "-3", "gen_ai.usage.output_tokens": 2**40},
    )
    (step,) = map_records([record]).steps.values()
    assert step["input_tokens"] is None and step["output_tokens"] is None
    assert step["attributes"][REJECTED] == {"input_tokens": -3, "output_tokens": 2**40}
    assert REJECTED not in record.attributes  # the span's own dict is not changed


# ----------------------------------------------------------------- deep JSON (item 8)


def test_deeply_nested_workflow_inputs_are_stored_as_text_not_refused(database_url, tmp_path):
    spans = Spans()
    deep = "[" * 50_000 + "]" * 50_000
    exporter = exporter_for(database_url, tmp_path)
    try:
        assert exporter.export(spans.root(**{"wflo.workflow.inputs": deep}) + spans.call()).name == "SUCCESS"
        assert exporter.failed_spans == 0
    finally:
        exporter.shutdown()
    ((inputs, calls),) = query(
        database_url, "SELECT inputs, llm_calls FROM workflow_executions WHERE id = :id", id=spans.execution_id
    )
    assert stored_json(inputs) == {"value": deep} and calls == 1


async def test_an_attribute_nested_deeper_than_the_encoder_is_stored_as_text(database_url):
    """What an OTLP request's nested arrays can decode to: only that attribute becomes text."""
    nested: list = []
    for _ in range(50_000):
        nested = [nested]
    record = SpanRecord(
        "4" * 32, "5" * 16, None, "root", "INTERNAL", "UNSET", None, 1, 2, {"deep": nested, "kept": "yes"}
    )
    store = SpanStore(database_url)
    try:
        await store.migrate()
        await store.write(map_records([record]))
    finally:
        await store.dispose()
    from wflo_otel.cli import fetch

    (attributes,) = (await fetch(database_url, "SELECT attributes FROM step_executions"))[1][0]
    stored = stored_json(attributes)
    assert stored["kept"] == "yes" and isinstance(stored["deep"], str)


# ----------------------------------------------------------------- secrets in errors (item 9)

KEY = "sk-proj-" + "A1b2C3d4" * 6
PROMPT = "my secret prompt about project nightingale"


class EchoingServer:
    """An OpenAI-compatible server whose 401 echoes the Authorization header and the request body."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
                message = f"Invalid credentials: Authorization: {self.headers.get('Authorization')} for request {body}"
                payload = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}})
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("capture", [False, True], ids=["capture-off", "capture-on"])
def test_a_401_echoing_the_key_and_prompt_stores_neither_key_nor_prompt(database_url, monkeypatch, capture):
    import openai

    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true" if capture else "false")
    handle = wflo_otel.configure(database_url, tracer_provider=TracerProvider(), batch=False)
    try:
        with EchoingServer() as base_url:
            client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                with wflo_otel.workflow("echo"):
                    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
        handle.force_flush()
    finally:
        handle.shutdown()
    stored = json.dumps(query(database_url, "SELECT status, error_type, events FROM step_executions"), default=str)
    stored += json.dumps(query(database_url, "SELECT error FROM workflow_executions"), default=str)
    assert "AuthenticationError" in stored
    assert KEY not in stored and KEY[:20] not in stored
    if not capture:  # the status and the error's identifiers stay, the body does not
        assert "Error code: 401 (type=invalid_request_error, code=invalid_api_key)" in stored
        assert "nightingale" not in stored
    else:  # the user asked for content: the body is kept, its key still redacted
        assert "nightingale" in stored and "Authorization: [REDACTED]" in stored


def test_redaction_covers_bearer_tokens_keys_and_header_echoes_and_truncates():
    text = (
        f'Authorization: Bearer {KEY} {{"api-key": "abc123secret", "x-api-key": "zzz999"}} '
        "gsk_ABCDEFGH12345678 AIzaSyA1234567890abcdefghijklmn Bearer eyJhbGciOi.payload.sig"
    )
    out = redact(text)
    for secret in (KEY, "abc123secret", "zzz999", "gsk_ABCDEFGH12345678", "AIzaSyA1234567890", "eyJhbGciOi"):
        assert secret not in out
    assert out.count("[REDACTED]") == 6
    long = redact_message("x" * 50_000)
    assert len(long) == MESSAGE_LIMIT and long.endswith("[truncated]")
    assert redact("no secret here: 42 tokens") == "no secret here: 42 tokens"


# ----------------------------------------------------------------- recovery (item 10, issue 15)


def _unreachable(engine, tmp_path):
    """(URL of a database that refuses or is away, a function that makes it answer)."""
    if engine == "sqlite":
        folder = block_folder(tmp_path / "volume")
        return f"sqlite+aiosqlite:///{folder}/wflo.db", lambda: unblock_folder(folder)
    from conftest import _drop_pg_database, _pg_admin, _pg_dsn
    import asyncio

    name = f"wflo_test_missing_{uuid.uuid4().hex[:10]}"

    def create():
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
        _created.append(lambda: _drop_pg_database(name))

    return _pg_dsn(name).replace("postgresql://", "postgresql+asyncpg://", 1), create


_created: list = []


@pytest.fixture
def cleanup():
    yield
    while _created:
        _created.pop()()


@pytest.mark.parametrize("via", ["force_flush", "shutdown"])
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_flush_and_shutdown_replay_at_once_when_the_database_answers_again(engine, via, tmp_path, cleanup):
    url, make_it_answer = _unreachable(engine, tmp_path)
    spans = Spans()
    exporter = exporter_for(url, tmp_path)
    try:
        assert exporter.export(spans.root() + spans.call()).name == "SUCCESS"  # spooled
        assert exporter.database_down and exporter.spooled_spans == 2
        exporter._next_probe = time.monotonic() + 60  # the replayer's back-off is far away
        make_it_answer()
        started = time.monotonic()
        if via == "force_flush":
            assert exporter.force_flush(20_000) is True
        else:
            exporter.shutdown(20_000)
        assert time.monotonic() - started < 10
        assert exporter.replayed_spans == 2 and not exporter.spool.pending()
    finally:
        exporter.shutdown()
    assert execution_totals(url, spans.execution_id)[3] == 1


@pytest.mark.parametrize("refusal", ["no-such-database", "no-such-role"])
def test_a_refusing_database_spools_at_once_and_flush_and_shutdown_return_in_seconds(refusal, tmp_path, caplog):
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    if refusal == "no-such-database":
        url = f"{base}/wflo_test_missing_{uuid.uuid4().hex[:10]}"
    else:  # SQLSTATE 28000: the role does not exist
        url = base.replace("//postgres@", f"//nobody_{uuid.uuid4().hex[:8]}@", 1) + "/postgres"
    try:  # the server must be there for this test to mean anything
        query(PG_ADMIN_URL, "SELECT 1")
    except Exception as exc:  # pragma: no cover - no server
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    spans = Spans()
    exporter = exporter_for(url, tmp_path, retries=3, backoff_s=1.0)
    caplog.set_level(logging.WARNING, logger="wflo_otel.exporters.sql")
    started = time.monotonic()
    try:
        assert exporter.export(spans.root() + spans.call()).name == "SUCCESS"
        assert exporter.spooled_spans == 2
        assert time.monotonic() - started < 3  # no retries with back-off: 1 + 2 + 4 s before
        assert exporter.force_flush(30_000) is False
        exporter.shutdown(30_000)
    finally:
        exporter.shutdown()
    assert time.monotonic() - started < 8
    exit_lines = [r.getMessage() for r in caplog.records if "stay spooled" in r.getMessage()]
    assert len(exit_lines) == 1
    assert str(exporter.spool.directory) in exit_lines[0] and "wflo-otel spool replay --database-url" in exit_lines[0]
    assert ("3D000" in exit_lines[0] or "does not exist" in exit_lines[0])


@pytest.mark.one_leg
def test_a_script_with_a_mistyped_database_name_exits_in_seconds_saying_where_its_spans_went(tmp_path):
    try:
        query(PG_ADMIN_URL, "SELECT 1")
    except Exception as exc:  # pragma: no cover - no server
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/does_not_exist_{uuid.uuid4().hex[:8]}"
    script = tmp_path / "app.py"
    script.write_text(
        "import sys, wflo_otel\n"
        "handle = wflo_otel.configure(sys.argv[1])\n"
        "with wflo_otel.workflow('typo'):\n"
        "    with wflo_otel.step('s'):\n"
        "        pass\n"
        "handle.shutdown()\n"
    )
    env = {**os.environ, "WFLO_SPOOL_DIR": str(tmp_path / "spool")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(script), url], capture_output=True, text=True, timeout=60, env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 15, (elapsed, result.stderr)  # ~60 s before (flush 26 s + shutdown 30 s)
    lines = [line for line in result.stderr.splitlines() if "stay spooled" in line]
    assert len(lines) == 1 and str(tmp_path / "spool") in lines[0] and "spool replay" in lines[0]


# ----------------------------------------------------------------- schema (issue 15)


def test_report_views_give_the_same_python_types_on_both_engines(database_url, tmp_path):
    spans = Spans()
    exporter = exporter_for(database_url, tmp_path)
    try:
        assert exporter.export(spans.root() + spans.call(**{"gen_ai.usage.cache_read.input_tokens": 5})).name == "SUCCESS"
    finally:
        exporter.shutdown()
    workflow = query(database_url, "SELECT executions, llm_calls, input_tokens, output_tokens, cost_usd, avg_cost_usd FROM cost_per_workflow")[0]
    per_model = query(database_url, "SELECT calls, input_tokens, cached_tokens, output_tokens, cost_usd FROM cost_per_model_per_day")[0]
    assert [type(v) for v in workflow] == [int, int, int, int, float, float]
    assert [type(v) for v in per_model] == [int, int, int, int, float]
    execution = query(database_url, "SELECT cost_total_usd, input_tokens, llm_calls FROM workflow_executions")[0]
    assert [type(v) for v in execution] == [float, int, int]
    if database_url.startswith("postgresql"):  # what revision 0003_view_types changed
        migrations.downgrade(database_url, "0002")
        assert type(query(database_url, "SELECT input_tokens FROM cost_per_workflow")[0][0]) is Decimal
        migrations.upgrade(database_url)
        assert type(query(database_url, "SELECT input_tokens FROM cost_per_workflow")[0][0]) is int


def test_migrating_a_sqlite_file_leaves_no_lock_file_beside_it(tmp_path):
    url = f"sqlite:///{tmp_path}/wflo.db"
    migrations.upgrade(url)
    migrations.downgrade(url, "0002")
    migrations.upgrade(url)
    assert sorted(p.name for p in tmp_path.iterdir() if "lock" in p.name) == []


@pytest.mark.one_leg
def test_concurrent_migrations_of_one_sqlite_file_still_serialise(tmp_path):
    """Removing the lock file must not let two processes migrate at once."""
    url = f"sqlite:///{tmp_path}/wflo.db"
    code = "import sys; from wflo_otel import migrations; migrations.upgrade(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert query(url, "SELECT version_num FROM wflo_alembic_version") == [(migrations.head_revision(),)]
    assert not list(tmp_path.glob("*.migrate.lock"))
