"""Zero-code runs: ``OTEL_TRACES_EXPORTER=wflo opentelemetry-instrument python app.py``.

The app only imports ``openai`` and calls the local OpenAI-compatible server.
Everything else comes from entry points: the ``wflo`` distro and configurator
(budget processor ahead of the exporter, ``WFLO_DEFAULT_BUDGET_USD``), the
OpenAI instrumentor, and the ``wflo`` traces exporter writing ``./wflo.db``.
Each run is a subprocess in a temporary working directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zero_code_runs import APP, install_fake_distribution, rows, run_instrumented

PROCESSORS = """
from opentelemetry import trace
import openai  # noqa: F401  (what the app would do)

provider = trace.get_tracer_provider()
print([type(p).__name__ for p in provider._active_span_processor._span_processors])
"""


def test_opentelemetry_instrument_lands_executions_and_llm_calls_in_wflo_db(tmp_path, openai_server):
    before = openai_server.request_count
    # Attempt spans asked for, while opentelemetry-instrument also loads the installed httpx
    # instrumentation: each call still has exactly one HTTP span under it (theirs), not two.
    result = run_instrumented(tmp_path, APP, openai_server, OTEL_TRACES_EXPORTER="wflo", WFLO_HTTP_SPANS="true")

    assert "answered 2" in result.stdout and "big call sent" in result.stdout  # no budget: nothing refused
    assert openai_server.request_count - before == 4
    db = tmp_path / "wflo.db"  # the default database, in the working directory
    executions = rows(db, "SELECT id, trace_id, workflow_id, status, service_name FROM workflow_executions")
    assert len(executions) == 4  # each call is a trace of its own, and so an execution of the service
    for execution_id, trace_id, workflow, status, service in executions:
        assert (execution_id, workflow, status, service) == (trace_id, "zero-code-app", "COMPLETED", "zero-code-app")
    steps = rows(
        db,
        "SELECT request_model, response_model, input_tokens, output_tokens, attributes FROM step_executions"
        " WHERE kind = 'llm'",
    )
    attempts = rows(
        db,
        "SELECT http.name FROM step_executions http JOIN step_executions llm ON http.parent_span_id = llm.id"
        " WHERE http.kind = 'other' AND llm.kind = 'llm'",
    )
    assert attempts == [("POST",)] * 4
    assert rows(db, "SELECT COUNT(*) FROM step_executions") == [(8,)]
    assert len(steps) == 4
    for request_model, response_model, input_tokens, output_tokens, attributes in steps:
        assert request_model == "gpt-4o-mini" and response_model.startswith("gpt-4o-mini")
        assert input_tokens > 0 and output_tokens > 0
        attributes = json.loads(attributes)
        assert attributes["wflo.cost.usd"] > 0  # priced by the instrumentation
        assert attributes["wflo.cost.source"].startswith("genai-prices")


def test_zero_code_llm_calls_are_priced_llm_steps_and_counted_in_execution_totals(tmp_path, openai_server):
    run_instrumented(tmp_path, APP, openai_server, OTEL_TRACES_EXPORTER="wflo")
    db = tmp_path / "wflo.db"
    steps = rows(db, "SELECT kind, cost_usd FROM step_executions WHERE kind <> 'other'")  # not HTTP spans
    assert steps and all(kind == "llm" and cost > 0 for kind, cost in steps)
    totals = rows(db, "SELECT llm_calls, cost_total_usd FROM workflow_executions")
    assert all(calls == 1 and cost > 0 for calls, cost in totals)


def test_default_budget_caps_every_trace_and_refuses_before_sending(tmp_path, openai_server):
    before = openai_server.request_count
    # Each 100-token call fits $0.0002 on its own (about $0.00006 worst case for gpt-4o-mini),
    # three of them would not fit one budget: the cap is per trace, not per process.
    result = run_instrumented(
        tmp_path, APP, openai_server, OTEL_TRACES_EXPORTER="wflo", WFLO_DEFAULT_BUDGET_USD="0.0002"
    )

    assert "answered 2" in result.stdout
    assert "big call refused: BudgetExceededError 0.0002" in result.stdout
    assert openai_server.request_count - before == 3  # the refused call never left the process
    db = tmp_path / "wflo.db"
    budgets = rows(db, "SELECT budget_usd FROM workflow_executions")
    assert len(budgets) == 4 and all(b == pytest.approx(0.0002) for (b,) in budgets)
    (refused,) = rows(db, "SELECT error_type FROM step_executions WHERE error_type IS NOT NULL")
    assert refused == ("BudgetExceededError",)


def test_the_budget_processor_runs_ahead_of_the_exporting_processor(tmp_path, openai_server):
    result = run_instrumented(tmp_path, PROCESSORS, openai_server, OTEL_TRACES_EXPORTER="wflo")
    assert result.stdout.strip() == "['BudgetSpanProcessor', 'BatchSpanProcessor']"


OTHER_DISTRO = """
import os

from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _OTelSDKConfigurator


class OtherDistro(BaseDistro):  # what opentelemetry-distro does
    def _configure(self, **kwargs):
        os.environ.setdefault("OTEL_TRACES_EXPORTER", "otlp")


class OtherConfigurator(_OTelSDKConfigurator):
    pass
"""


def _install_other_distro(site: Path) -> None:
    """A stand-in for opentelemetry-distro: its own distro and configurator entry points."""
    install_fake_distribution(
        site,
        "other_distro",
        OTHER_DISTRO,
        "[opentelemetry_distro]\nother = other_distro:OtherDistro\n\n"
        "[opentelemetry_configurator]\nother = other_distro:OtherConfigurator\n",
    )


def test_budgets_hold_when_another_distro_configures_the_sdk(tmp_path, openai_server):
    _install_other_distro(tmp_path / "site")
    env = dict(
        PYTHONPATH=str(tmp_path / "site"),
        OTEL_PYTHON_DISTRO="other",
        OTEL_PYTHON_CONFIGURATOR="other",
        OTEL_TRACES_EXPORTER="wflo",
        WFLO_DEFAULT_BUDGET_USD="0.0002",
    )
    result = run_instrumented(tmp_path, APP, openai_server, **env)
    assert "big call refused: BudgetExceededError" in result.stdout
    assert len(rows(tmp_path / "wflo.db", "SELECT id FROM workflow_executions")) == 4

    order = run_instrumented(tmp_path, PROCESSORS, openai_server, **env)
    assert order.stdout.strip() == "['BudgetSpanProcessor', 'BatchSpanProcessor']"


def test_configure_under_the_distro_adopts_its_budget_processor(tmp_path):
    """opentelemetry-instrument already installed budgets: configure() must not add a second set."""
    code = """
import wflo_otel
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from wflo_otel import budget, distro

provider = TracerProvider()
trace.set_tracer_provider(provider)
processor = distro.new_budget_processor()
distro.install_first(provider, processor)
budget.set_active_processor(processor)

handle = wflo_otel.configure()
assert handle.budget_processor is processor
assert len(provider._active_span_processor._span_processors) == 1, provider._active_span_processor._span_processors
handle.shutdown()
assert budget.active_processor() is processor, "the distro's processor stays active"
print("adopted")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "adopted" in result.stdout


PROPAGATING_APP = APP + """
from opentelemetry import propagate

print("propagators:", [type(p).__name__ for p in getattr(propagate.get_global_textmap(), "_propagators", [])])
"""


def test_otel_propagators_naming_wflo_baggage_starts_the_app_and_installs_it(tmp_path, openai_server):
    """What the README tells users with OTEL_PROPAGATORS set; it once was a circular import at start-up."""
    result = run_instrumented(
        tmp_path, PROPAGATING_APP, openai_server, OTEL_TRACES_EXPORTER="wflo", OTEL_PROPAGATORS="tracecontext,wflo_baggage"
    )
    assert "answered 2" in result.stdout
    assert "propagators: ['TraceContextTextMapPropagator', 'WfloBaggagePropagator']" in result.stdout
    assert len(rows(tmp_path / "wflo.db", "SELECT id FROM workflow_executions")) == 4


CONFIGURE_INSIDE = """
import os
import sqlite3

import openai
import wflo_otel
from opentelemetry import trace

handle = wflo_otel.configure("sqlite:///elsewhere.db", default_budget_usd=0.000001, unknown_model="refuse")
client = openai.OpenAI(base_url=os.environ["FAKE_OPENAI_URL"], api_key="test-key", max_retries=0)
tracer = trace.get_tracer("app")
for model in ("gpt-4o-mini", "house-model-7b"):
    with tracer.start_as_current_span("job"):
        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=10)
            print(model, "sent")
        except wflo_otel.BudgetExceededError as exc:
            print(model, "refused", "unknown price" if exc.unknown_price else "over budget")
assert handle.force_flush()
print("rows after force_flush:", sqlite3.connect("wflo.db").execute("SELECT COUNT(*) FROM step_executions").fetchone()[0])
"""


def test_configure_inside_a_zero_code_run_applies_its_policies_flushes_and_names_what_it_ignores(tmp_path, openai_server):
    result = run_instrumented(tmp_path, CONFIGURE_INSIDE, openai_server, OTEL_TRACES_EXPORTER="wflo")
    assert "gpt-4o-mini refused over budget" in result.stdout
    assert "house-model-7b refused unknown price" in result.stdout
    assert "rows after force_flush: 4" in result.stdout  # two roots, two refused calls: before the process exits
    assert "ignored: database_url" in result.stderr
    assert not (tmp_path / "elsewhere.db").exists()


OTHER_OPENAI_INSTRUMENTOR = """
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor


class OtherOpenAIInstrumentor(BaseInstrumentor):  # what openai-v2 or OpenLLMetry register
    def instrumentation_dependencies(self):
        return ["openai >= 1.0"]

    def _instrument(self, **kwargs):
        print("other openai instrumentation loaded", flush=True)

    def _uninstrument(self, **kwargs):
        pass
"""


def test_a_second_openai_instrumentation_is_not_loaded_beside_ours(tmp_path, openai_server):
    site = tmp_path / "site"
    install_fake_distribution(
        site, "other_openai", OTHER_OPENAI_INSTRUMENTOR, "[opentelemetry_instrumentor]\nopenai = other_openai:OtherOpenAIInstrumentor\n"
    )
    result = run_instrumented(tmp_path, APP, openai_server, OTEL_TRACES_EXPORTER="wflo", PYTHONPATH=str(site))
    assert "other openai instrumentation loaded" not in result.stdout
    assert "not loading other_openai:OtherOpenAIInstrumentor" in result.stderr
    assert rows(tmp_path / "wflo.db", "SELECT COUNT(*) FROM step_executions WHERE kind = 'llm'") == [(4,)]
