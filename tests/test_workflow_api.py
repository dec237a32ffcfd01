"""The public workflow API: context managers, decorators, execute(), and input validation."""

from __future__ import annotations

import json

import pytest
from opentelemetry.trace import StatusCode

import wflo_otel


def test_workflow_is_a_context_manager_with_ids_and_inputs(telemetry):
    with wflo_otel.workflow("triage", inputs={"ticket": 7}, execution_id="exec-1", correlation_id="corr-9") as wf:
        assert wf.execution_id == "exec-1" and wf.correlation_id == "corr-9"
    (span,) = telemetry.spans()
    assert span.name == "invoke_workflow triage"
    assert span.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert span.attributes["gen_ai.workflow.name"] == "triage"
    assert span.attributes["wflo.execution.id"] == "exec-1"
    assert span.attributes["wflo.correlation_id"] == "corr-9"
    assert json.loads(span.attributes["wflo.workflow.inputs"]) == {"ticket": 7}
    assert span.attributes["wflo.execution.status"] == "COMPLETED"


def test_correlation_id_defaults_to_the_execution_id(telemetry):
    with wflo_otel.workflow("w") as wf:
        pass
    assert wf.correlation_id == wf.execution_id and len(wf.execution_id) == 32


def test_decorator_makes_each_call_an_execution_with_kwargs_as_inputs(telemetry):
    @wflo_otel.workflow("summarize", budget_usd=0.10)
    def summarize(topic: str, depth: int = 1) -> str:
        return f"{topic}:{depth}"

    assert summarize("otel", depth=2) == "otel:2"
    assert summarize(topic="sql") == "sql:1"
    first, second = telemetry.spans()
    assert json.loads(first.attributes["wflo.workflow.inputs"]) == {"topic": "otel", "depth": 2}
    assert json.loads(second.attributes["wflo.workflow.inputs"]) == {"topic": "sql"}
    assert first.attributes["wflo.execution.id"] != second.attributes["wflo.execution.id"]
    assert first.attributes["wflo.budget.usd"] == 0.10


async def test_async_decorator_and_async_with(telemetry):
    @wflo_otel.workflow("async-flow")
    async def flow(x: int) -> int:
        async with wflo_otel.step("inner"):
            return x + 1

    assert await flow(1) == 2
    spans = {s.name: s for s in telemetry.spans()}
    assert spans["inner"].parent.span_id == spans["invoke_workflow async-flow"].context.span_id


def test_step_decorator_and_kind(telemetry):
    @wflo_otel.step("lookup", kind="tool")
    def lookup(key):
        return key * 2

    with wflo_otel.workflow("w"):
        assert lookup(21) == 42
    spans = {s.name: s for s in telemetry.spans()}
    assert spans["lookup"].attributes["wflo.step.kind"] == "tool"
    assert spans["lookup"].attributes["wflo.workflow.name"] == "w"


def test_failure_marks_the_workflow_failed_and_reraises(telemetry):
    with pytest.raises(KeyError):
        with wflo_otel.workflow("broken"):
            raise KeyError("missing")
    (span,) = telemetry.spans()
    assert span.attributes["wflo.execution.status"] == "FAILED"
    assert span.attributes["error.type"] == "KeyError"
    assert span.status.status_code is StatusCode.ERROR


async def test_execute_calls_fn_with_inputs_inside_a_workflow(telemetry):
    def plain(topic):
        return topic.upper()

    @wflo_otel.workflow("decorated")
    async def decorated(topic):
        return topic[::-1]

    assert await wflo_otel.execute(plain, {"topic": "abc"}) == "ABC"
    assert await wflo_otel.execute(decorated, {"topic": "abc"}) == "cba"
    names = [s.name for s in telemetry.spans()]
    assert names == ["invoke_workflow plain", "invoke_workflow decorated"]


def test_nested_workflow_is_a_scope_of_the_same_execution(telemetry):
    with wflo_otel.workflow("outer") as outer:
        with wflo_otel.workflow("inner", budget_usd=1.0) as inner:
            pass
    assert inner.execution_id == outer.execution_id
    inner_span = [s for s in telemetry.spans() if s.name == "invoke_workflow inner"][0]
    assert inner_span.attributes["wflo.execution.id"] == outer.execution_id


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget_usd": -1}, "budget_usd"),
        ({"budget_usd": "ten"}, "budget_usd"),
        ({"on_exceed": "explode"}, "on_exceed"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        wflo_otel.workflow("w", **kwargs)


def test_empty_names_are_rejected():
    with pytest.raises(ValueError):
        wflo_otel.workflow("")
    with pytest.raises(ValueError):
        wflo_otel.step("")


def test_configure_is_idempotent(telemetry):
    assert wflo_otel.configure() is telemetry.handle


def test_configure_shutdown_configure_leaves_one_set_of_processors():
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    for _ in range(3):
        handle = wflo_otel.configure(tracer_provider=provider, exporter=False)
        handle.shutdown()
    handle = wflo_otel.configure(tracer_provider=provider, exporter=False)
    try:
        processors = provider._active_span_processor._span_processors
        assert len(processors) == 1
        assert processors[0].processors == (handle.budget_processor,)
    finally:
        handle.shutdown()
    assert processors[0].processors == ()
