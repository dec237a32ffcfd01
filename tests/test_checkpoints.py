"""Checkpoints and resume: durable when checkpoint() returns, versioned, resumable after a SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider

import wflo_otel
from wflo_otel import BudgetExceededError, ExecutionNotFound
from wflo_otel.cli import main
from wflo_otel.controls.store import close_stores

from controls_support import controls  # noqa: F401  (fixture)

APP = Path(__file__).parent / "apps" / "controls_app.py"
MESSAGES = [{"role": "user", "content": "Research this, please."}]


def test_a_checkpoint_is_committed_when_it_returns_and_versioned_per_execution(controls):
    with wflo_otel.workflow("research") as wf:
        with wflo_otel.step("gather") as step:
            first = wf.checkpoint("after-gather", {"items": [1, 2], "why": None})
            # Another connection sees the row before the workflow (or any span) ends.
            stored = controls.rows("SELECT version, name, step_id FROM state_snapshots WHERE execution_id = :e", e=wf.execution_id)
            assert stored == [(1, "after-gather", format(step.span.get_span_context().span_id, "016x"))]
        second = wf.checkpoint("after-analysis", {"items": [1, 2, 3]})
        assert (first.version, second.version) == (1, 2)
        assert [s.name for s in wf.checkpoints()] == ["after-gather", "after-analysis"]
        assert wf.restore() == {"items": [1, 2, 3]} and wf.restore("after-gather") == {"items": [1, 2], "why": None}
    (gather,) = controls.spans("gather")
    (event,) = [e for e in gather.events if e.name == "wflo.checkpoint"]
    assert event.attributes["wflo.checkpoint.id"] == first.id and event.attributes["wflo.checkpoint.version"] == 1


def test_a_state_that_is_not_json_names_the_key_path_and_writes_nothing(controls):
    with wflo_otel.workflow("research") as wf:
        with pytest.raises(TypeError, match=r"state\['found'\]\[1\]\['when'\] is a datetime"):
            wf.checkpoint("bad", {"found": [1, {"when": datetime(2026, 1, 1)}]})
        with pytest.raises(TypeError, match=r"state\['ratio'\] is nan"):
            wf.checkpoint("bad", {"ratio": float("nan")})
        with pytest.raises(TypeError, match=r"state has a key 3 of type int"):
            wf.checkpoint("bad", {3: "x"})
        execution_id = wf.execution_id
    assert controls.rows("SELECT COUNT(*) FROM state_snapshots") == [(0,)]
    assert controls.rows("SELECT COUNT(*) FROM workflow_executions WHERE id = :e", e=execution_id) == [(0,)]


def test_the_checkpoint_decorator_saves_what_the_function_returns_sync_and_async(controls):
    @wflo_otel.checkpoint("plan")
    def plan(topic):
        return {"topic": topic, "steps": 3}

    @wflo_otel.checkpoint("draft")
    async def draft(words):
        return {"words": words}

    async def body():
        async with wflo_otel.workflow("writer") as wf:
            assert plan("otel") == {"topic": "otel", "steps": 3}
            assert await draft(120) == {"words": 120}
            return wf.checkpoints()

    snapshots = asyncio.run(body())
    assert [(s.name, s.version, s.state) for s in snapshots] == [
        ("plan", 1, {"topic": "otel", "steps": 3}),
        ("draft", 2, {"words": 120}),
    ]
    with pytest.raises(RuntimeError, match="needs an enclosing wflo_otel.workflow"):
        plan("outside")


def test_a_checkpoint_row_lands_before_the_spans_and_the_exporter_upserts_over_it(database_url, client):
    handle = wflo_otel.configure(database_url, tracer_provider=TracerProvider())  # batched: spans come later
    try:
        with wflo_otel.workflow("research", budget_usd=1.0) as wf:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
            wf.checkpoint("after-call", {"ok": True})
            early = handle_rows(database_url, "SELECT status FROM workflow_executions WHERE id = :e", e=wf.execution_id)
        handle.force_flush()
        (row,) = handle_rows(
            database_url, "SELECT status, cost_total_usd, llm_calls, budget_usd FROM workflow_executions WHERE id = :e", e=wf.execution_id
        )
    finally:
        handle.shutdown()
        close_stores()
    assert early == [("RUNNING",)]
    assert row[0] == "COMPLETED" and row[1] == pytest.approx(wf.spent_usd) and row[2] == 1 and row[3] == 1.0


def handle_rows(url, sql, **params):
    from wflo_otel.cli import fetch

    return asyncio.run(fetch(url, sql, params))[1]


def test_resuming_an_unknown_execution_is_a_clear_error_and_writes_nothing(controls):
    with pytest.raises(ExecutionNotFound, match="no workflow execution with id 'nope'"):
        with wflo_otel.workflow("research", resume="nope"):
            pytest.fail("the body must not run")
    assert controls.rows("SELECT COUNT(*) FROM workflow_executions") == [(0,)]
    assert controls.spans() == []
    with pytest.raises(ValueError, match="resume= continues"):
        wflo_otel.workflow("research", resume="a", execution_id="b")


def test_a_resume_links_the_old_trace_restores_the_state_and_remembers_the_spend(controls, client):
    with pytest.raises(RuntimeError):
        with wflo_otel.workflow("research", budget_usd=0.5) as first:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
            snapshot = first.checkpoint("after-step-1", {"done": ["step-1"]})
            raise RuntimeError("crash")
    spent = first.spent_usd
    assert spent > 0
    with wflo_otel.workflow("research", resume=first.execution_id) as resumed:
        assert resumed.execution_id == first.execution_id
        assert resumed.restored == {"done": ["step-1"]}
        assert resumed.spent_usd == pytest.approx(spent) and resumed.budget_usd == 0.5
        assert [s.version for s in resumed.checkpoints()] == [1]
    old, new = controls.spans("invoke_workflow")
    assert new.context.trace_id != old.context.trace_id
    (link,) = new.links
    assert format(link.context.trace_id, "032x") == snapshot.trace_id == format(old.context.trace_id, "032x")
    assert new.attributes["wflo.resume.snapshot_id"] == snapshot.id
    assert controls.rows("SELECT execution_id, resumes FROM executions_resumed") == [(first.execution_id, 1)]


@pytest.mark.one_leg
def test_a_sigkilled_run_resumes_from_its_checkpoint_without_spending_its_budget_twice(database_url, openai_server, monkeypatch):
    """Steps 1-2 spend S and checkpoint; step 3 is SIGKILLed. The resumed run sees step 2's
    state and repeats nothing, and its budget (the worst case W of the next call plus S/2)
    refuses that call: it would fit only if the spend before the crash were forgotten."""
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="k", max_retries=0)
    execution_id = uuid.uuid4().hex
    env = {**os.environ, "OPENAI_BASE_URL": openai_server.base_url}
    proc = subprocess.Popen(
        [sys.executable, str(APP), "crash", database_url, execution_id, "1.0"], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("IN-STEP-3"), line
        spent_before_crash = float(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    monkeypatch.setenv("WFLO_DATABASE_URL", database_url)
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False)
    try:
        with pytest.raises(BudgetExceededError) as probe:  # what the next call reserves, nothing sent
            with wflo_otel.workflow("probe", budget_usd=0.0):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
        worst_case = probe.value.requested_usd
        assert spent_before_crash > 0 and worst_case > 0
        sent_before = openai_server.request_count
        with pytest.raises(BudgetExceededError) as refused:
            with wflo_otel.workflow("research", resume=execution_id, budget_usd=worst_case + spent_before_crash / 2) as wf:
                state = wf.restored
                assert state == {"done": ["step-1", "step-2"], "findings": {"count": 2}}
                assert wf.spent_usd == pytest.approx(spent_before_crash)
                with wflo_otel.step("step-3"):
                    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
        assert refused.value.refused
        assert openai_server.request_count == sent_before, "steps 1-2 are not repeated and step 3 is refused"
    finally:
        handle.shutdown()
        close_stores()


def test_the_checkpoints_command_lists_an_executions_snapshots(controls, capsys):
    with wflo_otel.workflow("research") as wf:
        wf.checkpoint("one", {"a": 1})
        wf.checkpoint("two", {"b": "x" * 200})
    close_stores()
    assert main(["--database-url", controls.url, "checkpoints", wf.execution_id]) == 0
    out = capsys.readouterr().out
    assert "one" in out and '{"a": 1}' in out and "two" in out and "…" in out
    assert main(["--database-url", controls.url, "checkpoints", "unknown-id"]) == 1
    assert "has no checkpoints" in capsys.readouterr().err


def test_a_forked_child_checkpoints_on_its_own_loop_and_connections(controls):
    with wflo_otel.workflow("parent") as wf:
        wf.checkpoint("before-fork", {"a": 1})
    pid = os.fork()
    if pid == 0:  # the parent's loop thread does not exist here: the child must not wait on it
        code = 1
        signal.alarm(20)  # a child waiting on its parent's loop would hang: die instead
        try:
            with wflo_otel.workflow("child") as child:
                child.checkpoint("in-child", {"b": 2})
                code = 0 if [s.name for s in child.checkpoints()] == ["in-child"] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with wflo_otel.workflow("parent") as wf:  # and the parent's own connections still work
        wf.checkpoint("after-fork", {"c": 3})
    names = controls.rows("SELECT name FROM state_snapshots ORDER BY created_at")
    assert names == [("before-fork",), ("in-child",), ("after-fork",)]


CONTROL_TABLES = {"state_snapshots", "rollback_actions", "approval_requests", "execution_resumes"}
CONTROL_VIEWS = {"pending_approvals", "approval_latency", "executions_resumed", "rollback_outcomes"}


def test_the_control_migration_downgrades_and_upgrades_again(database_url):
    import sqlalchemy as sa
    from alembic.script import ScriptDirectory

    from wflo_otel import migrations

    def names(conn):
        inspector = sa.inspect(conn)
        return set(inspector.get_table_names()), set(inspector.get_view_names())

    before = ScriptDirectory.from_config(migrations.alembic_config()).get_revision("0005_controls").down_revision
    migrations.upgrade(database_url)
    tables, views = asyncio.run(migrations.run_async(database_url, names))
    assert CONTROL_TABLES <= tables and CONTROL_VIEWS <= views
    migrations.downgrade(database_url, before)
    tables, views = asyncio.run(migrations.run_async(database_url, names))
    assert not (CONTROL_TABLES & tables) and not (CONTROL_VIEWS & views) and "workflow_executions" in tables
    migrations.upgrade(database_url)
    assert CONTROL_TABLES <= asyncio.run(migrations.run_async(database_url, names))[0]
