"""Collector pipelines: ``otel-collector.yaml`` is consistent, and a real collector hop works.

The end-to-end test runs the ``rotel`` OTLP collector (a Rust binary shipped in
the ``rotel`` wheel, a test dependency) between an app instrumented with
wflo-otel — exporting with the OTel SDK's OTLP/HTTP exporter — and
``wflo-otel serve``, on both database engines. It is skipped only where the
binary cannot run, and never under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

import wflo_otel
from wflo_otel.exporters.store import create_engine
from wflo_otel.ingest import DEFAULT_HOST, DEFAULT_PORT, IngestService

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "otel-collector.yaml"
IN_CI = os.environ.get("CI", "").lower() == "true"
SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_every_pipeline_references_defined_components(config):
    defined = {section: set((config.get(section) or {}).keys()) for section in SECTIONS}
    pipelines = config["service"]["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    for name, pipeline in pipelines.items():
        assert pipeline.get("receivers") and pipeline.get("exporters"), name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                # A connector may stand as a receiver or an exporter.
                assert component in defined[kind] | defined["connectors"], f"{name}: {kind} {component} undefined"
    for extension in config["service"].get("extensions", []):
        assert extension in defined["extensions"], extension
    # Every defined component is used somewhere.
    used = {c for p in pipelines.values() for k in ("receivers", "processors", "exporters") for c in p.get(k, [])}
    used |= set(config["service"].get("extensions", []))
    for section in ("receivers", "processors", "exporters", "extensions"):
        assert defined[section] <= used, f"unused {section}: {defined[section] - used}"


def test_traces_go_through_memory_limiter_and_batch_to_the_ingest_service_default_endpoint(config):
    traces = config["service"]["pipelines"]["traces"]
    assert traces["processors"][0].split("/")[0] == "memory_limiter"  # first, as the Collector docs ask
    assert any(p.split("/")[0] == "batch" for p in traces["processors"])
    (exporter_name,) = traces["exporters"]
    assert exporter_name.split("/")[0] == "otlphttp"
    exporter = config["exporters"][exporter_name]
    assert exporter["endpoint"].rstrip("/") == f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
    assert exporter.get("encoding", "proto") == "proto"
    assert exporter["retry_on_failure"]["enabled"] is True
    queue = exporter["sending_queue"]
    assert queue["enabled"] is True
    storage = queue["storage"]
    assert storage.split("/")[0] == "file_storage" and storage in config["service"]["extensions"]
    assert config["extensions"][storage]["directory"]


def test_the_receivers_take_otlp_grpc_and_http_without_the_ingest_port(config):
    protocols = config["receivers"]["otlp"]["protocols"]
    assert {"grpc", "http"} <= set(protocols)
    ports = {int(protocols[p]["endpoint"].rsplit(":", 1)[1]) for p in ("grpc", "http")}
    assert DEFAULT_PORT not in ports  # on one host, the ingest service owns 4318
    assert 4317 in ports


def test_metrics_go_to_a_prometheus_endpoint(config):
    metrics = config["service"]["pipelines"]["metrics"]
    assert metrics["processors"][0].split("/")[0] == "memory_limiter"
    (exporter,) = metrics["exporters"]
    assert exporter.split("/")[0] == "prometheus"
    assert config["exporters"][exporter]["endpoint"]


# --------------------------------------------------------------------------- a real collector hop


def _rotel_binary() -> Path:
    try:
        import rotel
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"the rotel collector is a test dependency and must be installed under CI: {exc}")
        pytest.skip(f"rotel is not installed: {exc}")
    binary = Path(rotel.__file__).parent / "rotel-agent"
    try:
        subprocess.run([str(binary), "--version"], check=True, capture_output=True, timeout=30, env=_rotel_env())
    except (OSError, subprocess.SubprocessError) as exc:
        if IN_CI:
            pytest.fail(f"the rotel collector binary cannot run here: {exc}")
        pytest.skip(f"the rotel collector binary cannot run here: {exc}")
    return binary


def query(url: str, sql: str) -> list[tuple]:
    async def run():
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in (await conn.execute(sa.text(sql))).fetchall()]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _rotel_env() -> dict[str, str]:
    """The agent embeds the Python it was built for: let it find this interpreter's libpython."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p]
    return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(paths)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rotel exited with {process.returncode}: {process.stdout.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"rotel did not listen on {port}")


def test_spans_of_an_instrumented_app_land_through_a_collector(database_url, tmp_path, openai_server):
    import openai
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    binary = _rotel_binary()
    with IngestService(database_url, port=0) as ingest:
        grpc_port, http_port = _free_port(), _free_port()
        collector = subprocess.Popen(
            [
                str(binary), "start",
                "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
                "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
                "--exporter", "otlp",
                "--otlp-exporter-protocol", "http",
                "--otlp-exporter-endpoint", ingest.url,
                "--otlp-exporter-compression", "gzip",
                "--batch-timeout", "100ms",
                "--pid-file", str(tmp_path / "rotel.pid"),
                "--log-file", str(tmp_path / "rotel.log"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_rotel_env(),
        )  # fmt: skip
        try:
            _wait_for_port(http_port, collector)
            provider = TracerProvider(resource=Resource.create({"service.name": "collector-app"}))
            exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces")
            handle = wflo_otel.configure(tracer_provider=provider, exporter=exporter)
            try:
                client = openai.OpenAI(base_url=openai_server.base_url, api_key="k", max_retries=0)
                for ticket in range(5):
                    with wflo_otel.workflow("support-agent", budget_usd=1.0, inputs={"ticket": ticket}):
                        with wflo_otel.step("retrieve"):
                            pass
                        for _ in range(2):
                            client.chat.completions.create(
                                model="gpt-4o-mini", messages=[{"role": "user", "content": f"t{ticket}"}], max_tokens=50
                            )
                assert handle.force_flush()
            finally:
                handle.shutdown()

            def landed():
                return query(database_url, "SELECT COUNT(*) FROM step_executions")[0][0] >= 20

            deadline = time.monotonic() + 60
            while not landed() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            collector.terminate()
            collector.communicate(timeout=30)

    executions = query(
        database_url,
        "SELECT workflow_id, status, llm_calls, cost_total_usd, service_name, inputs FROM workflow_executions",
    )
    assert len(executions) == 5
    for workflow, status, calls, cost, service, inputs in executions:
        assert (workflow, status, calls, service) == ("support-agent", "COMPLETED", 2, "collector-app")
        assert cost > 0 and inputs
    kinds = query(database_url, "SELECT kind, COUNT(*), SUM(cost_usd) FROM step_executions GROUP BY kind ORDER BY kind")
    assert [(k, n) for k, n, _ in kinds] == [("llm", 10), ("step", 5), ("workflow", 5)]
    assert kinds[0][2] == pytest.approx(sum(row[3] for row in executions))
