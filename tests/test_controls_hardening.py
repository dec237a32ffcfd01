"""The controls under hostile input: secrets, odd policies, odd timeouts, odd states, races (issue 17 review)."""

from __future__ import annotations

import json

import pytest

import wflo_otel
from wflo_otel.redaction import redact

from controls_support import controls  # noqa: F401  (fixture)

KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123"


def test_redacting_twice_leaves_the_text_as_redacting_once():
    once = redact(f"401: Authorization: Bearer {KEY}")
    assert once == "401: Authorization: [REDACTED]"
    assert redact(once) == once
    assert redact(redact("x-api-key=abcdef123456")) == "x-api-key=[REDACTED]"


def test_a_rollbacks_reason_and_failed_compensation_errors_are_stored_redacted(controls):
    def refund(charge_id):
        raise ConnectionError(f"payment API said 401 for Authorization: Bearer {KEY} ({charge_id})")

    with pytest.raises(RuntimeError):
        with wflo_otel.workflow("booking", rollback_on="error") as wf:
            with wflo_otel.step("charge") as s:
                s.on_rollback(refund, "ch_1")
            raise RuntimeError(f"upstream echoed api_key={KEY}")
    ((reason, details),) = controls.rows("SELECT reason, details FROM rollback_actions WHERE execution_id = :e", e=wf.execution_id)
    details = details if isinstance(details, dict) else json.loads(details)
    stored = reason + json.dumps(details)
    assert KEY not in stored and "abcdefghijklmnop" not in stored
    assert reason == "RuntimeError: upstream echoed api_key=[REDACTED]"
    assert details["failed"][0]["error"] == "ConnectionError: payment API said 401 for Authorization: [REDACTED] (ch_1)"


def test_a_rollback_reason_with_a_nul_or_a_lone_surrogate_is_stored_on_both_engines(controls):
    with pytest.raises(RuntimeError):
        with wflo_otel.workflow("booking", rollback_on="error") as wf:
            with wflo_otel.step("charge") as s:
                s.on_rollback(lambda: None)
            raise RuntimeError("bad input a\x00b \ud800 end")
    ((reason,),) = controls.rows("SELECT reason FROM rollback_actions WHERE execution_id = :e", e=wf.execution_id)
    assert reason == "RuntimeError: bad input a\ufffdb \ufffd end"


@pytest.mark.parametrize("answer", ["deny", 1, 0, [], {"approve": False}])
def test_a_policy_that_returns_anything_but_true_false_or_none_is_a_type_error_and_writes_nothing(controls, answer):
    with wflo_otel.workflow("refunds") as wf:
        with pytest.raises(TypeError, match=r"policy must return True, False or None, got " + repr(answer).replace("[", r"\[").replace("{", r"\{")):
            wf.require_approval("refund", policy=lambda request: answer)
    assert controls.rows("SELECT COUNT(*) FROM approval_requests") == [(0,)]


@pytest.mark.parametrize("timeout_s", [float("inf"), 1e20, float("nan"), 0, -1])
def test_an_unbounded_approval_timeout_is_a_value_error_before_anything_is_written(controls, timeout_s):
    with pytest.raises(ValueError, match="approval_timeout_s must be a positive number of seconds up to"):
        wflo_otel.workflow("agent", on_exceed="approve", approval_timeout_s=timeout_s)
    with wflo_otel.workflow("refunds") as wf:
        with pytest.raises(ValueError, match="timeout_s must be a positive number of seconds up to"):
            wf.require_approval("refund", timeout_s=timeout_s)
    assert controls.rows("SELECT COUNT(*) FROM approval_requests") == [(0,)]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"notes": ["ok", "a\x00b"]}, r"state\['notes'\]\[1\] contains a NUL character"),
        ({"notes": "\ud800"}, r"state\['notes'\] contains a lone surrogate"),
        ({"k\x00": 1}, r"state key 'k\\x00' contains a NUL character"),
    ],
)
def test_a_nul_or_lone_surrogate_in_a_state_or_context_is_a_type_error_naming_the_path_on_both_engines(controls, bad, message):
    with wflo_otel.workflow("research") as wf:
        with pytest.raises(TypeError, match=message):
            wf.checkpoint("bad", bad)
        with pytest.raises(TypeError, match=message.replace("state", "context", 1)):
            wf.require_approval("refund", context=bad, timeout_s=1)
    assert controls.rows("SELECT COUNT(*) FROM state_snapshots") == [(0,)]
    assert controls.rows("SELECT COUNT(*) FROM approval_requests") == [(0,)]


def _set_status(controls, execution_id, status):
    import sqlalchemy as sa

    async def update(store):
        async with store.engine.begin() as conn:  # what the exporter writes when the root span lands
            await conn.execute(sa.text("UPDATE workflow_executions SET status = :s WHERE id = :e"), {"s": status, "e": execution_id})

    controls.run(update)


def test_resuming_another_workflows_execution_or_a_completed_one_is_refused_and_writes_nothing(controls):
    with pytest.raises(RuntimeError):
        with wflo_otel.workflow("research") as first:
            first.checkpoint("half", {"done": 1})
            raise RuntimeError("crash")
    before = controls.rows("SELECT COUNT(*) FROM execution_resumes"), controls.rows("SELECT COUNT(*) FROM workflow_executions")
    with pytest.raises(ValueError, match=rf"execution {first.execution_id} is of workflow 'research', not 'billing'"):
        with wflo_otel.workflow("billing", resume=first.execution_id):
            pytest.fail("the body must not run")
    _set_status(controls, first.execution_id, "COMPLETED")
    with pytest.raises(ValueError, match=rf"execution {first.execution_id} of workflow 'research' is COMPLETED"):
        with wflo_otel.workflow("research", resume=first.execution_id):
            pytest.fail("the body must not run")
    after = controls.rows("SELECT COUNT(*) FROM execution_resumes"), controls.rows("SELECT COUNT(*) FROM workflow_executions")
    assert after == before == ([(0,)], [(1,)])
    assert [s.name for s in controls.spans("invoke_workflow")] == ["invoke_workflow research"]
    _set_status(controls, first.execution_id, "FAILED")
    with wflo_otel.workflow("research", resume=first.execution_id) as resumed:
        assert resumed.restored == {"done": 1}


MESSAGES = [{"role": "user", "content": "Once more, please."}]


def test_auto_approve_below_is_a_cumulative_allowance_not_a_per_raise_threshold(controls, client, openai_server):
    from wflo_otel import BudgetExceededError

    with wflo_otel.workflow("probe", budget_usd=0.000001, on_exceed="approve", auto_approve_below_usd=1.0) as probe:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
    ((one_raise,),) = controls.rows("SELECT requested_usd FROM approval_requests WHERE execution_id = :e", e=probe.execution_id)
    allowance = one_raise * 2.5  # each raise is below it; three together are not
    sent = openai_server.request_count
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow(
            "agent", budget_usd=0.000001, on_exceed="approve", auto_approve_below_usd=allowance, approval_timeout_s=0.3
        ) as wf:
            for _ in range(20):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
    assert caught.value.refused
    rows = controls.rows(
        "SELECT status, decided_by, requested_usd FROM approval_requests WHERE execution_id = :e ORDER BY created_at", e=wf.execution_id
    )
    by_policy = [usd for status, by, usd in rows if by == "policy"]
    assert sum(by_policy) < allowance and len(by_policy) >= 1
    assert rows[-1][0] == "EXPIRED" and rows[-1][1] is None  # past the allowance a person was asked; nobody answered
    assert openai_server.request_count - sent == len(by_policy)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.01, "0.05", True])
def test_auto_approve_below_must_be_a_finite_non_negative_number(bad):
    with pytest.raises(ValueError, match="auto_approve_below_usd must be a finite, non-negative number"):
        wflo_otel.workflow("agent", on_exceed="approve", auto_approve_below_usd=bad)


BLANK_NAMES = ["   ", "\u200b\u200b", "\u200b \ufeff\u2060", "\t\n"]


def _pending_request(controls, timeout_s=600):
    with wflo_otel.workflow("refunds") as wf:
        ref = wf._ref()
    return controls.run(lambda s: s.create_approval(ref, "send-refund", message="Refund $420", timeout_s=timeout_s))


def test_the_cli_and_the_http_routes_refuse_the_same_blank_names_and_reasons_and_change_nothing(controls, capsys):
    from wflo_otel.cli import main
    from wflo_otel.controls.store import close_stores
    from wflo_otel.ingest import IngestService

    from test_approvals import _http

    request = _pending_request(controls)
    close_stores()
    url = ["--database-url", controls.url]
    for name in BLANK_NAMES:
        assert main([*url, "approvals", "approve", request.id, "--by", name]) == 1
        assert "non-blank name" in capsys.readouterr().err
    for reason in BLANK_NAMES:
        assert main([*url, "approvals", "reject", request.id, "--by", "bob", "--reason", reason]) == 1
        assert "non-blank reason" in capsys.readouterr().err
    with IngestService(controls.url, port=0, token="s3cret") as service:
        path = f"/v1/approvals/{request.id}"
        for name in BLANK_NAMES:
            status, body = _http(service, "POST", path + "/approve", {"by": name})
            assert status == 400 and "non-blank name" in body["error"]
        for reason in BLANK_NAMES:
            status, body = _http(service, "POST", path + "/reject", {"by": "bob", "reason": reason})
            assert status == 400 and "non-blank reason" in body["error"]
        assert controls.rows("SELECT status FROM approval_requests") == [("PENDING",)]
        status, body = _http(service, "POST", path + "/approve", {"by": "\u200b alice \ufeff"})
        assert status == 200 and body["decided_by"] == "alice"


def test_a_deeply_nested_decision_body_is_a_400_not_a_500(controls):
    from wflo_otel.ingest import IngestService

    from test_approvals import _http

    request = _pending_request(controls)
    deep = '{"by": ' + "[" * 25000 + "]" * 25000 + "}"
    with IngestService(controls.url, port=0, token="s3cret") as service:
        import urllib.error
        import urllib.request

        call = urllib.request.Request(service.url + f"/v1/approvals/{request.id}/approve", method="POST", data=deep.encode())
        call.add_header("Authorization", "Bearer s3cret")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(call, timeout=10)
        assert caught.value.code == 400 and "not JSON" in json.loads(caught.value.read())["error"]
        assert _http(service, "GET", f"/v1/approvals/{request.id}")[1]["status"] == "PENDING"


def test_approvals_list_with_a_limit_below_one_is_a_usage_error(controls, capsys):
    from wflo_otel.cli import main

    for limit in ("-1", "0"):
        with pytest.raises(SystemExit) as caught:
            main(["--database-url", controls.url, "approvals", "list", "--limit", limit])
        assert caught.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_the_conflict_on_an_expired_request_does_not_name_a_decider(controls):
    import time

    from wflo_otel import ApprovalConflict

    request = _pending_request(controls, timeout_s=0.05)
    time.sleep(0.1)
    with pytest.raises(ApprovalConflict) as caught:
        controls.run(lambda s: s.decide(request.id, approved=True, by="alice"))
    assert caught.value.approval.status == "EXPIRED"
    assert "by None" not in str(caught.value) and str(caught.value).startswith(f"approval {request.id} is already EXPIRED (at ")


def _crashed_run(controls, client, name="research", budget_usd=0.5):
    with pytest.raises(RuntimeError):
        with wflo_otel.workflow(name, budget_usd=budget_usd) as first:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
            first.checkpoint("half", {"done": 1})
            raise RuntimeError("crash")
    return first


def test_two_resumes_that_read_the_same_state_cannot_both_start(controls, client, monkeypatch):
    """Both resumes read the stored spend before either claims: one runs, the other is ExecutionBusy."""
    import asyncio
    import threading

    from wflo_otel import ExecutionBusy
    from wflo_otel.controls.store import ControlStore

    first = _crashed_run(controls, client)
    original = ControlStore.latest_snapshot
    arrived: list[asyncio.Event] = []

    async def both_read_before_either_claims(self, execution_id, name=None):
        found = await original(self, execution_id, name)
        if name is None:  # the resume's read of the stored state
            event = asyncio.Event()
            arrived.append(event)
            if len(arrived) == 2:
                for e in arrived:
                    e.set()
            await asyncio.wait_for(event.wait(), 5)
        return found

    monkeypatch.setattr(ControlStore, "latest_snapshot", both_read_before_either_claims)
    outcomes: list[object] = []

    def resume():
        try:
            with wflo_otel.workflow("research", resume=first.execution_id) as wf:
                outcomes.append(wf.spent_usd)
        except ExecutionBusy as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    (busy,) = [o for o in outcomes if isinstance(o, ExecutionBusy)]
    assert len(outcomes) == 2 and f"execution {first.execution_id} is being resumed by another process" in str(busy)
    assert controls.rows("SELECT generation FROM execution_resumes WHERE execution_id = :e", e=first.execution_id) == [(1,)]
    assert len(controls.spans("invoke_workflow")) == 2  # the crashed run and the one resume that started

    monkeypatch.setattr(ControlStore, "latest_snapshot", original)
    with wflo_otel.workflow("research", resume=first.execution_id):  # later, a resume of the new state: the next generation
        pass
    rows = controls.rows("SELECT generation, trace_id FROM execution_resumes WHERE execution_id = :e ORDER BY generation", e=first.execution_id)
    assert [g for g, _ in rows] == [1, 2] and all(t for _, t in rows)


def test_the_migration_numbers_the_resumes_already_stored_and_round_trips(database_url):
    import asyncio
    from datetime import datetime, timezone

    import sqlalchemy as sa
    from alembic.script import ScriptDirectory

    from wflo_otel import migrations

    script = ScriptDirectory.from_config(migrations.alembic_config())
    before = script.get_revision("0007_resume_generation").down_revision
    migrations.upgrade(database_url, before)

    def seed(conn):
        day = lambda n: datetime(2026, 1, n, tzinfo=timezone.utc)  # noqa: E731
        conn.execute(sa.text("INSERT INTO workflow_definitions (id, name, created_at, updated_at) VALUES ('w', 'w', :t, :t)"), {"t": day(1)})
        conn.execute(sa.text("INSERT INTO workflow_executions (id, workflow_id, status, started_at) VALUES ('e', 'w', 'FAILED', :t)"), {"t": day(1)})
        for row_id, n in (("b", 2), ("a", 3)):  # made in the order b, a
            conn.execute(sa.text("INSERT INTO execution_resumes (id, execution_id, spent_usd, created_at) VALUES (:i, 'e', 0, :t)"), {"i": row_id, "t": day(n)})

    def generations(conn):
        return conn.execute(sa.text("SELECT id, generation FROM execution_resumes ORDER BY id")).all()

    asyncio.run(migrations.run_async(database_url, seed))
    migrations.upgrade(database_url)
    assert [tuple(r) for r in asyncio.run(migrations.run_async(database_url, generations))] == [("a", 2), ("b", 1)]
    migrations.downgrade(database_url, before)
    migrations.upgrade(database_url)


def test_a_nul_in_a_checkpoint_name_or_an_approval_message_is_a_type_error_on_both_engines(controls):
    with wflo_otel.workflow("research") as wf:
        with pytest.raises(TypeError, match="the checkpoint's name contains a NUL character"):
            wf.checkpoint("half\x00", {"done": 1})
        with pytest.raises(TypeError, match="the approval's message contains a NUL character"):
            wf.require_approval("refund", message="Refund\x00 $420", timeout_s=1)
        with pytest.raises(TypeError, match="the approval's name contains a lone surrogate"):
            wf.require_approval("refund\udc80", timeout_s=1)
    assert controls.rows("SELECT COUNT(*) FROM state_snapshots") == [(0,)]
    assert controls.rows("SELECT COUNT(*) FROM approval_requests") == [(0,)]
