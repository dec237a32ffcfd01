"""A zero-code run starts with its budgets, or does not start at all.

What an exporter does — missing, failing to import, failing to start — never takes
the budget processor and the OpenAI instrumentation down with it: the calls are
budgeted all the same and the failure is one line on stderr. A ``WFLO_*`` value the
run cannot use stops it before the application runs (exit status 2), rather than
letting it run without the budget it asked for.
"""

from __future__ import annotations

import gzip
import http.server
import threading
from importlib.metadata import entry_points

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from zero_code_runs import APP, install_fake_distribution, rows, run_instrumented

BUDGET = {"WFLO_DEFAULT_BUDGET_USD": "0.0002"}  # fits each 100-token call, never the 100,000-token one


def wflo_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("wflo-otel:")]


def assert_budgeted(result, openai_server, before: int) -> None:
    assert "answered 2" in result.stdout
    assert "big call refused: BudgetExceededError 0.0002" in result.stdout
    assert openai_server.request_count - before == 3  # the refused call never left the process


@pytest.mark.one_leg
def test_otlp_over_grpc_not_installed_still_budgets_every_call_and_says_so_in_one_line(tmp_path, openai_server):
    assert not list(entry_points(group="opentelemetry_traces_exporter", name="otlp_proto_grpc")), "premise: no gRPC exporter"
    before = openai_server.request_count
    result = run_instrumented(
        tmp_path, APP, openai_server, OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="grpc", **BUDGET
    )
    assert_budgeted(result, openai_server, before)
    (line,) = wflo_lines(result.stderr)
    assert "OTEL_TRACES_EXPORTER=otlp" in line and "'otlp_proto_grpc' is not installed" in line
    assert "budgets are enforced" in line
    assert "Traceback" not in result.stderr


class _Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps what it is sent."""

    received: list[tuple[str, str, bytes]] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append((self.path, self.headers.get("Content-Type"), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def otlp_receiver():
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.one_leg
def test_otlp_with_no_protocol_goes_over_http_when_only_the_http_exporter_is_installed(
    tmp_path, openai_server, otlp_receiver
):
    if list(entry_points(group="opentelemetry_traces_exporter", name="otlp_proto_grpc")):
        pytest.skip("the gRPC exporter is installed: otlp means gRPC, as the SDK says")
    before = openai_server.request_count
    host, port = otlp_receiver.server_address[:2]
    result = run_instrumented(
        tmp_path,
        APP,
        openai_server,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{host}:{port}",
        **BUDGET,
    )
    assert_budgeted(result, openai_server, before)
    assert not wflo_lines(result.stderr), result.stderr
    assert {(path, kind) for path, kind, _ in _Receiver.received} == {("/v1/traces", "application/x-protobuf")}
    spans = []
    for _, _, body in _Receiver.received:
        request = ExportTraceServiceRequest.FromString(body)
        spans += [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
    # the installed httpx instrumentation (opentelemetry-instrument loads it) adds one HTTP span per sent call
    http = [s for s in spans if not any(a.key == "gen_ai.operation.name" for a in s.attributes)]
    spans = [s for s in spans if s not in http]
    assert len(spans) == 4 and len(http) == 3
    refused = [s for s in spans if any(a.key == "wflo.budget.refused" for a in s.attributes)]
    assert len(refused) == 1


FAILING_EXPORTER = """
from opentelemetry.sdk.trace.export import SpanExporter


class Exporter(SpanExporter):
    def __init__(self, **kwargs):
        raise ConnectionError("backend unreachable")

    def export(self, spans):
        raise AssertionError("never built")
"""


def run_budgeted_with_exporter(tmp_path, openai_server, module: str, source: str, exporters: str) -> str:
    """Run APP with the fake exporter package ``module`` (entry point named after it, minus
    ``_exporter``) and ``OTEL_TRACES_EXPORTER=exporters``; assert it was budgeted; return the one wflo-otel line."""
    site = tmp_path / "site"
    name = module.removesuffix("_exporter")
    install_fake_distribution(site, module, source, f"[opentelemetry_traces_exporter]\n{name} = {module}:Exporter\n")
    before = openai_server.request_count
    result = run_instrumented(tmp_path, APP, openai_server, OTEL_TRACES_EXPORTER=exporters, PYTHONPATH=str(site), **BUDGET)
    assert_budgeted(result, openai_server, before)
    (line,) = wflo_lines(result.stderr)
    return line


@pytest.mark.one_leg
def test_an_exporter_that_fails_to_start_leaves_budgets_and_instrumentation_running(tmp_path, openai_server):
    line = run_budgeted_with_exporter(tmp_path, openai_server, "failing_exporter", FAILING_EXPORTER, "failing")
    assert "ConnectionError: backend unreachable" in line and "budgets are enforced" in line


BROKEN_EXPORTER_PACKAGE = "import no_such_dependency_of_this_exporter\n"


@pytest.mark.one_leg
def test_an_exporter_that_fails_to_import_is_left_out_and_the_others_still_export(tmp_path, openai_server):
    line = run_budgeted_with_exporter(tmp_path, openai_server, "broken_exporter", BROKEN_EXPORTER_PACKAGE, "broken,wflo")
    assert "OTEL_TRACES_EXPORTER=broken" in line and "ModuleNotFoundError" in line
    # wflo still exported: the four calls (and the HTTP spans of the three sent, from the httpx instrumentation)
    assert rows(tmp_path / "wflo.db", "SELECT kind, COUNT(*) FROM step_executions GROUP BY kind ORDER BY kind") == [
        ("llm", 4),
        ("other", 3),
    ]


@pytest.mark.one_leg
@pytest.mark.parametrize(
    "variable, value, said",
    [
        ("WFLO_DEFAULT_BUDGET_USD", "0.50$", "must be a number"),
        ("WFLO_DEFAULT_BUDGET_USD", "-1", "finite number of USD >= 0"),
        ("WFLO_DEFAULT_BUDGET_USD", "nan", "finite number of USD >= 0"),
        ("WFLO_DEFAULT_OUTPUT_TOKENS", "4k", "must be a number"),
        ("WFLO_PRICES_FILE", "no-such-prices.yaml", "cannot read 'no-such-prices.yaml'"),
    ],
)
def test_a_setting_the_run_cannot_use_stops_it_with_exit_2_before_the_app_runs(
    tmp_path, openai_server, variable, value, said
):
    before = openai_server.request_count
    result = run_instrumented(tmp_path, APP, openai_server, check=False, **{variable: value})
    assert result.returncode == 2
    assert result.stdout == "" and openai_server.request_count == before  # the application never ran
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"wflo-otel: {variable}") and said in line


@pytest.mark.one_leg
def test_a_prices_file_with_bad_content_stops_the_run_with_exit_2_naming_the_entry(tmp_path, openai_server):
    (tmp_path / "prices.yaml").write_text("house-model-7b:\n  input_per_mtok: cheap\n  output_per_mtok: 1\n")
    result = run_instrumented(tmp_path, APP, openai_server, check=False, WFLO_PRICES_FILE="prices.yaml")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("wflo-otel: WFLO_PRICES_FILE: prices.yaml") and "house-model-7b" in line


BROKEN_INSTRUMENTOR = """
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor


class BrokenInstrumentor(BaseInstrumentor):
    def instrumentation_dependencies(self):
        return []

    def _instrument(self, **kwargs):
        raise RuntimeError("a bug in another package")

    def _uninstrument(self, **kwargs):
        pass
"""


@pytest.mark.one_leg
def test_another_instrumentation_that_fails_does_not_stop_the_openai_one_from_loading(tmp_path, openai_server):
    site = tmp_path / "site"  # first on sys.path: its entry point is loaded before wflo-otel's
    install_fake_distribution(
        site, "broken_instrumentor", BROKEN_INSTRUMENTOR, "[opentelemetry_instrumentor]\nbroken = broken_instrumentor:BrokenInstrumentor\n"
    )
    before = openai_server.request_count
    result = run_instrumented(tmp_path, APP, openai_server, OTEL_TRACES_EXPORTER="wflo", PYTHONPATH=str(site), **BUDGET)
    assert_budgeted(result, openai_server, before)
    (line,) = wflo_lines(result.stderr)
    assert "instrumentation 'broken' failed (RuntimeError: a bug in another package)" in line
