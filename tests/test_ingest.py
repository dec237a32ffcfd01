"""The OTLP/HTTP ingest service (``wflo-otel serve``): protocol, rows, failure answers.

Every test runs a real server on 127.0.0.1 (an ephemeral port) against a real
database — SQLite and a throw-away PostgreSQL through the ``database_url``
fixture — and talks to it over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from wflo_otel.exporters.store import create_engine
from wflo_otel.ingest import DEFAULT_HOST, DEFAULT_PORT, IngestService
from wflo_otel.ingest.synthetic import any_value, make_request, span_ids, split, to_json

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


# --------------------------------------------------------------------------- helpers


def post(service, body: bytes, *, content_type: str | None = PROTOBUF, encoding=None, headers=None, path="/v1/traces"):
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    try:
        all_headers = dict(headers or {})
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        if encoding:
            all_headers["Content-Encoding"] = encoding
        conn.request("POST", path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def get(service, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def query(url: str, sql: str, **params):
    async def run():
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(sa.text(sql), params)
                return [tuple(row) for row in result.fetchall()]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def response_of(body: bytes) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    response.ParseFromString(body)
    return response


def wait_until(predicate, timeout_s: float = 30.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


@pytest.fixture
def ingest(database_url):
    with IngestService(database_url, port=0) as service:
        yield service


# --------------------------------------------------------------------------- protocol and rows


def test_protobuf_request_lands_every_span_priced_with_execution_totals(ingest, database_url):
    request = make_request(traces=20, spans_per_trace=5, seed=11)
    status, headers, body = post(ingest, request.SerializeToString())

    assert status == 200
    assert headers["Content-Type"] == PROTOBUF
    assert not response_of(body).HasField("partial_success")
    steps = query(database_url, "SELECT id, kind, cost_usd, cost_source FROM step_executions")
    assert {row[0] for row in steps} == span_ids(request)
    llm = [row for row in steps if row[1] == "llm"]
    assert len(llm) == 20 * 3 and all(row[2] > 0 and row[3] for row in llm)
    executions = query(
        database_url,
        "SELECT e.id, e.workflow_id, e.status, e.llm_calls, e.cost_total_usd, e.service_name, "
        "(SELECT SUM(s.cost_usd) FROM step_executions s WHERE s.execution_id = e.id) FROM workflow_executions e",
    )
    assert len(executions) == 20
    for _id, workflow, status_, calls, total, service, step_sum in executions:
        assert (workflow, status_, calls, service) == ("support-agent", "COMPLETED", 3, "synthetic-agent")
        assert total == pytest.approx(step_sum)


def test_json_with_hex_ids_lands_the_same_rows_as_protobuf(database_url, tmp_path):
    request = make_request(traces=5, spans_per_trace=4, seed=12)
    columns = (
        "id, execution_id, trace_id, parent_span_id, name, kind, status, input_tokens, cost_usd, attributes, events"
    )
    with IngestService(database_url, port=0) as service:
        status, headers, body = post(service, to_json(request, hex_ids=True), content_type=JSON)
        assert status == 200
        assert headers["Content-Type"] == JSON
        assert json.loads(body) == {}
        via_json = query(database_url, f"SELECT {columns} FROM step_executions ORDER BY id")
    other = f"sqlite+aiosqlite:///{tmp_path}/protobuf.db"
    with IngestService(other, port=0) as service:
        assert post(service, request.SerializeToString())[0] == 200
        via_protobuf = query(other, f"SELECT {columns} FROM step_executions ORDER BY id")
    assert len(via_json) == 20

    def normal(rows):  # JSON columns come back as text on SQLite, objects on PostgreSQL
        return [tuple(json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v for v in row) for row in rows]

    assert normal(via_json) == normal(via_protobuf)


def test_json_with_base64_ids_is_accepted_too(ingest, database_url):
    request = make_request(traces=2, spans_per_trace=3, seed=13)
    status, _, body = post(ingest, to_json(request, hex_ids=False), content_type=JSON)
    assert status == 200, body
    assert {r[0] for r in query(database_url, "SELECT id FROM step_executions")} == span_ids(request)


def test_gzip_bodies_are_decompressed_including_multi_member_streams(ingest, database_url):
    first, second = make_request(traces=3, seed=14), make_request(traces=3, seed=15)
    assert post(ingest, gzip.compress(first.SerializeToString()), encoding="gzip")[0] == 200
    payload = second.SerializeToString()
    members = gzip.compress(payload[:100]) + gzip.compress(payload[100:])
    assert post(ingest, members, encoding="gzip")[0] == 200
    landed = {r[0] for r in query(database_url, "SELECT id FROM step_executions")}
    assert landed == span_ids(first) | span_ids(second)


def test_spans_with_invalid_ids_are_rejected_in_partial_success_and_the_rest_land(ingest, database_url):
    request = make_request(traces=3, spans_per_trace=3, seed=16)
    spans = request.resource_spans[0].scope_spans[0].spans
    good = span_ids(request) - {spans[i].span_id.hex() for i in (1, 4, 7)}
    spans[1].trace_id = b"\x00" * 16  # all-zero trace id
    spans[4].span_id = b"\x01\x02"  # wrong length
    spans[7].parent_span_id = b"\x01"  # wrong length

    status, _, body = post(ingest, request.SerializeToString())

    assert status == 200
    partial = response_of(body).partial_success
    assert partial.rejected_spans == 3
    assert "invalid trace id" in partial.error_message and "invalid span id" in partial.error_message
    assert {r[0] for r in query(database_url, "SELECT id FROM step_executions")} == good

    json_body = to_json(request)
    status, _, body = post(ingest, json_body, content_type=JSON)
    assert status == 200
    assert json.loads(body)["partialSuccess"]["rejectedSpans"] == "3"


def test_spans_of_services_without_wflo_land_as_trace_executions(ingest, database_url):
    request = make_request(traces=2, spans_per_trace=3, seed=17, service_name="billing", wflo_attributes=False)
    children = make_request(traces=1, spans_per_trace=3, seed=18, service_name="billing", wflo_attributes=False)
    # Only the children of the second service's trace: no root ever arrives.
    orphan = children.resource_spans[0].scope_spans[0].spans
    del orphan[0]

    assert post(ingest, request.SerializeToString())[0] == 200
    assert post(ingest, children.SerializeToString())[0] == 200

    rows = query(
        database_url, "SELECT id, trace_id, workflow_id, status, service_name FROM workflow_executions ORDER BY status"
    )
    traces = {rs.spans[0].trace_id.hex() for rs in request.resource_spans[0].scope_spans}
    completed = [r for r in rows if r[3] == "COMPLETED"]
    assert len(completed) == 2
    for execution_id, trace_id, workflow, _, service in completed:
        assert execution_id == trace_id  # the trace is the execution
        assert (workflow, service) == ("support-agent", "billing")  # the root span's name
    (running,) = [r for r in rows if r[3] == "RUNNING"]
    assert running[2] == "billing"  # no root seen: the service name
    assert traces  # (request built with one scope)


def test_attribute_values_of_every_otlp_type_are_stored(ingest, database_url):
    request = make_request(traces=1, spans_per_trace=2, seed=19)
    span = request.resource_spans[0].scope_spans[0].spans[1]
    extra = {
        "list.of.strings": ["a", "b"],
        "list.mixed": [1, "x", True, 2.5],
        "map": {"k": "v", "n": 3, "nested": {"deep": [1, 2]}},
        "raw.bytes": b"\x00\x01binary",
        "not.a.number": float("nan"),
        "infinite": float("inf"),
        "nul.char": "before\x00after",
    }
    for key, value in extra.items():
        kv = span.attributes.add(key=key)
        kv.value.CopyFrom(any_value(value))
    empty = span.attributes.add(key="empty.value")  # an AnyValue with nothing set
    assert empty.key

    assert post(ingest, request.SerializeToString())[0] == 200

    (raw,) = query(database_url, "SELECT attributes FROM step_executions WHERE id = :id", id=span.span_id.hex())[0]
    attributes = json.loads(raw) if isinstance(raw, str) else raw
    assert attributes["list.of.strings"] == ["a", "b"]
    assert attributes["list.mixed"] == [1, "x", True, 2.5]
    assert attributes["map"] == {"k": "v", "n": 3, "nested": {"deep": [1, 2]}}
    assert base64.b64decode(attributes["raw.bytes"]) == b"\x00\x01binary"
    assert attributes["not.a.number"] == "NaN" and attributes["infinite"] == "Infinity"
    assert attributes["nul.char"] == "before\ufffdafter"
    assert attributes["empty.value"] is None
    (events,) = query(database_url, "SELECT events FROM step_executions WHERE id = :id", id=span.span_id.hex())[0]
    events = json.loads(events) if isinstance(events, str) else events
    assert events[0]["name"] == "gen_ai.choice" and events[0]["attributes"] == {"index": 0, "finish_reason": "stop"}


def test_a_duplicated_request_is_counted_once(ingest, database_url):
    request = make_request(traces=4, seed=20)
    for part in split(request, 7) + split(request, 3):
        assert post(ingest, part.SerializeToString())[0] == 200
    assert query(database_url, "SELECT COUNT(*) FROM step_executions") == [(20,)]
    assert query(database_url, "SELECT SUM(llm_calls) FROM workflow_executions") == [(12,)]


# --------------------------------------------------------------------------- error answers


@pytest.fixture
def sqlite_ingest(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/errors.db"
    with IngestService(url, port=0, max_body_bytes=256 * 1024) as service:
        yield service


def test_undecodable_bodies_get_400_with_a_status_body(sqlite_ingest):
    for body, content_type, encoding in (
        (b"\x0a\xff\xff\xff\x0fno", PROTOBUF, None),  # a length running past the end
        (b"{not json", JSON, None),
        (b'{"resourceSpans": "nope"}', JSON, None),
        (b"[1, 2]", JSON, None),
        (b"not gzip at all", PROTOBUF, "gzip"),
        (gzip.compress(make_request(traces=2).SerializeToString())[:-12], PROTOBUF, "gzip"),  # truncated
    ):
        status, headers, response = post(sqlite_ingest, body, content_type=content_type, encoding=encoding)
        assert status == 400, (body[:20], response)
        assert headers["Content-Type"] == content_type
        if content_type == JSON:
            assert json.loads(response)["code"] == 3
        else:
            assert response[:2] == b"\x08\x03"  # google.rpc.Status{code: INVALID_ARGUMENT, …}


def test_other_content_types_and_encodings_get_415(sqlite_ingest):
    body = make_request(traces=1).SerializeToString()
    assert post(sqlite_ingest, body, content_type="text/plain")[0] == 415
    assert post(sqlite_ingest, body, content_type=None)[0] == 415
    assert post(sqlite_ingest, body, encoding="br")[0] == 415
    assert post(sqlite_ingest, body, content_type="application/x-protobuf; charset=binary")[0] == 200


def test_bodies_over_the_limit_get_413_counted_after_decompression(sqlite_ingest):
    limit = sqlite_ingest.max_body_bytes
    assert post(sqlite_ingest, b"\x00" * (limit + 1))[0] == 413
    bomb = gzip.compress(b"\x00" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < limit
    status, headers, _ = post(sqlite_ingest, bomb, encoding="gzip")
    assert status == 413
    assert headers.get("Connection") == "close"
    # …and the service is still there for well-formed data.
    assert post(sqlite_ingest, make_request(traces=1).SerializeToString())[0] == 200
    assert get(sqlite_ingest, "/health")[0] == 200


def test_wrong_methods_and_paths(sqlite_ingest):
    assert get(sqlite_ingest, "/v1/traces")[0] == 405
    assert post(sqlite_ingest, b"", path="/v1/metrics")[0] == 404
    status, body = get(sqlite_ingest, "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_a_configured_token_is_required_as_a_bearer_header(tmp_path):
    body = make_request(traces=1).SerializeToString()
    with IngestService(f"sqlite:///{tmp_path}/t.db", port=0, token="s3cret") as service:
        status, headers, _ = post(service, body)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert post(service, body, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert post(service, body, headers={"Authorization": "Basic s3cret"})[0] == 401
        assert post(service, body, headers={"Authorization": "Bearer s3cret"})[0] == 200


def test_a_full_queue_answers_429_with_retry_after_and_the_queued_spans_land(tmp_path):
    path = tmp_path / "busy.db"
    url = f"sqlite+aiosqlite:///{path}"
    first, second = make_request(traces=2, seed=21), make_request(traces=2, seed=22)
    with IngestService(url, port=0, max_pending_spans=5) as service:
        blocker = sqlite3.connect(path, timeout=30)
        blocker.execute("BEGIN EXCLUSIVE")  # the writer now waits for the database
        answers = []
        sender = threading.Thread(target=lambda: answers.append(post(service, first.SerializeToString())))
        sender.start()
        assert wait_until(lambda: json.loads(get(service, "/health")[1])["pending_spans"] >= 10)

        status, headers, _ = post(service, second.SerializeToString())
        assert status == 429
        assert int(headers["Retry-After"]) >= 1

        blocker.rollback()
        blocker.close()
        sender.join(60)
        assert answers[0][0] == 200
        assert post(service, second.SerializeToString())[0] == 200
    assert {r[0] for r in query(url, "SELECT id FROM step_executions")} == span_ids(first) | span_ids(second)


# --------------------------------------------------------------------------- database down


class TcpProxy:
    """A loopback TCP relay that can be cut, to take a database away and bring it back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> "TcpProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for s in connections:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_database_that_goes_down_gets_503_with_retry_after_then_everything_lands(database_url):
    from sqlalchemy.engine import make_url

    real = make_url(database_url)
    proxy = TcpProxy(real.port or 5432).start()
    via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    before, during = make_request(traces=3, seed=23), make_request(traces=3, seed=24)
    with IngestService(via_proxy, port=0) as service:
        assert post(service, before.SerializeToString())[0] == 200

        proxy.cut()
        status, headers, body = post(service, during.SerializeToString())
        assert status == 503, body
        retry_after = int(headers["Retry-After"])
        assert retry_after >= 1
        assert get(service, "/health")[0] == 503
        # While the back-off runs, answers come at once, still 503.
        assert post(service, during.SerializeToString())[0] == 503

        proxy.start()
        # The sender retries, as an OTLP exporter does after Retry-After.
        assert wait_until(lambda: post(service, during.SerializeToString())[0] == 200, timeout_s=60, interval_s=0.5)
        assert get(service, "/health")[0] == 200
    proxy.cut()
    landed = {r[0] for r in query(database_url, "SELECT id FROM step_executions")}
    assert landed == span_ids(before) | span_ids(during)


def test_spans_the_database_refuses_are_rejected_alone(ingest, database_url):
    request = make_request(traces=4, spans_per_trace=3, seed=25)
    spans = request.resource_spans[0].scope_spans[0].spans
    # An execution id longer than the column, set on one span: only that span can fail.
    poisoned = spans[4]
    kv = poisoned.attributes.add(key="wflo.execution.id")
    kv.value.string_value = "x" * 500
    status, _, body = post(ingest, request.SerializeToString())
    assert status == 200
    landed = {r[0] for r in query(database_url, "SELECT id FROM step_executions")}
    rejected = response_of(body).partial_success.rejected_spans
    # The store may truncate the id rather than refuse it; either way nothing else is lost.
    assert landed | ({poisoned.span_id.hex()} if rejected else set()) == span_ids(request)
    assert rejected in (0, 1)


# --------------------------------------------------------------------------- lifecycle


def test_shutdown_drains_in_flight_batches(tmp_path):
    path = tmp_path / "drain.db"
    url = f"sqlite+aiosqlite:///{path}"
    request = make_request(traces=5, seed=26)
    service = IngestService(url, port=0).run_in_thread()
    blocker = sqlite3.connect(path, timeout=30)
    blocker.execute("BEGIN EXCLUSIVE")
    answers = []
    sender = threading.Thread(target=lambda: answers.append(post(service, request.SerializeToString())))
    sender.start()
    assert wait_until(lambda: json.loads(get(service, "/health")[1])["pending_spans"] > 0)

    stopper = threading.Thread(target=service.stop_thread)
    stopper.start()
    assert wait_until(lambda: service._closing)  # stopping: no new requests…
    blocker.rollback()
    blocker.close()
    stopper.join(60)
    sender.join(60)

    assert answers and answers[0][0] == 200  # …but the one in flight was written and answered
    assert {r[0] for r in query(url, "SELECT id FROM step_executions")} == span_ids(request)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", service.port), timeout=2)


def test_the_service_binds_loopback_on_the_otlp_http_port_by_default():
    service = IngestService("sqlite:///unused.db")
    assert (service.host, service.port) == ("127.0.0.1", 4318) == (DEFAULT_HOST, DEFAULT_PORT)


def test_wflo_otel_serve_runs_until_sigterm(tmp_path):
    exe = Path(sys.executable).parent / "wflo-otel"
    env = {**os.environ, "WFLO_INGEST_TOKEN": "tok"}
    process = subprocess.Popen(
        [str(exe), "--database-url", f"sqlite:///{tmp_path}/cli.db", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, process.stderr.read() if process.poll() is not None else line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

        class Target:
            pass

        target = Target()
        target.port = port
        body = make_request(traces=2, seed=27).SerializeToString()
        assert post(target, body)[0] == 401  # the token came from WFLO_INGEST_TOKEN
        assert post(target, body, headers={"Authorization": "Bearer tok"})[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert sqlite3.connect(tmp_path / "cli.db").execute("SELECT COUNT(*) FROM step_executions").fetchone() == (10,)


def test_payload_content_never_reaches_the_log(tmp_path, caplog):
    secret = "TOP-SECRET-PROMPT-TEXT"
    request = make_request(traces=2, spans_per_trace=3, seed=28)
    spans = request.resource_spans[0].scope_spans[0].spans
    for span in spans:
        span.attributes.add(key="gen_ai.prompt", value=any_value(secret))
    # Values that make the mapping or the database fail, quoting them in their messages.
    spans[0].attributes.add(key="wflo.budget.usd", value=any_value(secret))
    spans[4].attributes.add(key="wflo.execution.id", value=any_value(secret * 20))
    bad_json = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 7, "traceId": secret}]}]}]})
    caplog.set_level(logging.DEBUG)
    with IngestService(f"sqlite:///{tmp_path}/log.db", port=0) as service:
        post(service, request.SerializeToString())
        post(service, bad_json.encode(), content_type=JSON)
        post(service, secret.encode(), content_type=PROTOBUF)
    assert caplog.records  # the service did log something…
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in (record.exc_text or "")
        if record.exc_info and record.exc_info[1] is not None:
            assert secret not in str(record.exc_info[1])


def test_an_empty_request_is_a_success(sqlite_ingest):
    assert post(sqlite_ingest, b"")[0] == 200
    assert post(sqlite_ingest, b"{}", content_type=JSON)[0] == 200
    assert post(sqlite_ingest, ExportTraceServiceRequest().SerializeToString())[0] == 200


def test_a_lone_surrogate_escape_in_json_is_replaced_and_its_request_lands(ingest, database_url):
    """A Collector drops a batch answered 400: one half UTF-16 pair must not cost the whole request."""
    request = make_request(traces=2, spans_per_trace=3, seed=29)
    document = json.loads(to_json(request))
    first = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    first["name"] = "report-\ud83d.pdf"  # json.dumps writes the lone half as the escape \\ud83d
    body = json.dumps(document).encode()
    assert b"\\ud83d" in body
    status, _, _ = post(ingest, body, content_type=JSON)
    assert status == 200
    names = {row[0] for row in query(database_url, "SELECT name FROM step_executions")}
    assert "report-\ufffd.pdf" in names and len(query(database_url, "SELECT id FROM step_executions")) == 6
