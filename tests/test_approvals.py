"""Approval gates: durable requests, decisions from the CLI, HTTP or another process, one winner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import wflo_otel
from wflo_otel import ApprovalConflict, ApprovalExpired, ApprovalNotFound, ApprovalRejected, BudgetExceededError
from wflo_otel.cli import main
from wflo_otel.controls.store import ControlStore, close_stores
from wflo_otel.ingest import IngestService

from controls_support import controls  # noqa: F401  (fixture)

APP = Path(__file__).parent / "apps" / "controls_app.py"
MESSAGES = [{"role": "user", "content": "Refund it, please."}]


def _pending(controls, timeout_s: float = 10.0):
    """The first pending request, once there is one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = controls.run(lambda s: s.approvals("PENDING"))
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("no pending approval request appeared")


def _decide_when_pending(controls, **decision):
    def decide():
        request = _pending(controls)
        controls.run(lambda s: s.decide(request.id, **decision))

    thread = threading.Thread(target=decide)
    thread.start()
    return thread


def test_an_approved_request_returns_who_decided_when_and_why_and_the_wait_is_a_span(controls):
    with wflo_otel.workflow("refunds") as wf:
        decider = _decide_when_pending(controls, approved=True, by="alice", reason="known customer")
        decision = wf.require_approval("send-refund", message="Refund $420", context={"amount": 420}, timeout_s=30)
        decider.join()
    assert (decision.status, decision.decided_by, decision.comment) == ("APPROVED", "alice", "known customer")
    assert decision.decided_at is not None and decision.context == {"amount": 420}
    (span,) = controls.spans("approval send-refund")
    assert span.attributes["wflo.approval.status"] == "APPROVED" and span.attributes["wflo.approval.decided_by"] == "alice"
    assert span.attributes["wflo.approval.id"] == decision.id
    ((step_id,),) = controls.rows("SELECT step_id FROM approval_requests WHERE id = :i", i=decision.id)
    assert step_id == format(span.context.span_id, "016x")
    ((workflow, name, decided, approved),) = controls.rows("SELECT workflow, name, decided, approved FROM approval_latency")
    assert (workflow, name, decided, approved) == ("refunds", "send-refund", 1, 1)


def test_a_rejection_raises_with_who_and_why_and_rollback_on_error_catches_it(controls):
    undone = []
    with pytest.raises(ApprovalRejected) as caught:
        with wflo_otel.workflow("refunds", rollback_on="error") as wf:
            with wflo_otel.step("prepare") as s:
                s.on_rollback(undone.append, "prepared")
            decider = _decide_when_pending(controls, approved=False, by="bob", reason="amount too high")
            try:
                wf.require_approval("send-refund", message="Refund $4200")
            finally:
                decider.join()
    assert caught.value.decided_by == "bob" and caught.value.reason == "amount too high"
    assert undone == ["prepared"]
    (span,) = controls.spans("approval send-refund")
    assert span.attributes["wflo.approval.status"] == "REJECTED" and not span.status.is_ok


def test_an_expired_request_raises_and_cannot_be_approved_afterwards(controls):
    with wflo_otel.workflow("refunds") as wf:
        started = time.monotonic()
        with pytest.raises(ApprovalExpired) as caught:
            wf.require_approval("send-refund", timeout_s=0.3)
        assert 0.3 <= time.monotonic() - started < 5.0  # not the default timeout; slack for a loaded CI machine
    approval = caught.value.approval
    assert controls.rows("SELECT status FROM approval_requests WHERE id = :i", i=approval.id) == [("EXPIRED",)]
    with pytest.raises(ApprovalConflict) as conflict:
        controls.run(lambda s: s.decide(approval.id, approved=True, by="late"))
    assert conflict.value.approval.status == "EXPIRED"


def test_a_request_past_its_expiry_that_nobody_waits_for_is_expired_by_a_late_decision(controls):
    with wflo_otel.workflow("refunds") as wf:
        ref = wf._ref()
    request = controls.run(lambda s: s.create_approval(ref, "gate", timeout_s=0.05))
    time.sleep(0.1)
    with pytest.raises(ApprovalConflict, match="already EXPIRED"):
        controls.run(lambda s: s.decide(request.id, approved=True, by="late"))
    with pytest.raises(ApprovalNotFound):
        controls.run(lambda s: s.decide("no-such-id", approved=True, by="x"))


def test_two_concurrent_approvers_one_wins_and_the_other_gets_the_first_decision(controls):
    with wflo_otel.workflow("refunds") as wf:
        ref = wf._ref()
    request = controls.run(lambda s: s.create_approval(ref, "gate", timeout_s=60))
    stores = [ControlStore(controls.url, migrate=False) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes = {}

    def decide(index):
        store = stores[index]
        barrier.wait()
        try:
            outcomes[index] = store.run(lambda: store.decide(request.id, approved=index == 0, by=f"approver-{index}"))
        except ApprovalConflict as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for store in stores:
            store.close()
    winners = [o for o in outcomes.values() if not isinstance(o, Exception)]
    losers = [o for o in outcomes.values() if isinstance(o, ApprovalConflict)]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].approval.decided_by == winners[0].decided_by and losers[0].approval.status == winners[0].status
    stored = controls.rows("SELECT status, decided_by FROM approval_requests WHERE id = :i", i=request.id)
    assert stored == [(winners[0].status, winners[0].decided_by)]


def test_a_policy_decides_without_waiting_and_is_recorded_as_the_policy(controls):
    with wflo_otel.workflow("refunds") as wf:
        small = wf.require_approval("refund", context={"amount": 5}, policy=lambda r: True if r["context"]["amount"] < 10 else None)
        assert (small.status, small.decided_by) == ("APPROVED", "policy")
        with pytest.raises(ApprovalRejected):
            wf.require_approval("refund", context={"amount": 5000}, policy=lambda r: False)
    assert controls.rows("SELECT COUNT(*) FROM approval_requests WHERE decided_by = 'policy'") == [(2,)]


def test_bad_approval_input_is_a_clear_error_and_writes_nothing(controls):
    with wflo_otel.workflow("refunds") as wf:
        with pytest.raises(TypeError, match=r"context\['card'\] is a object"):
            wf.require_approval("refund", context={"card": object()})
        with pytest.raises(ValueError, match="timeout_s must be a positive number"):
            wf.require_approval("refund", timeout_s=-1)
    assert controls.rows("SELECT COUNT(*) FROM approval_requests") == [(0,)]


def test_async_gates_wait_without_blocking_the_event_loop(controls):
    import asyncio

    async def body():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        async with wflo_otel.workflow("refunds") as wf:
            decider = _decide_when_pending(controls, approved=True, by="carol")
            decision = await wf.arequire_approval("send-refund", timeout_s=30)
        task.cancel()
        await asyncio.to_thread(decider.join)
        return decision, ticks

    decision, ticks = asyncio.run(body())
    assert decision.decided_by == "carol" and ticks >= 3


def test_on_exceed_approve_raises_the_budget_when_approved_and_refuses_when_rejected(controls, client, openai_server):
    with wflo_otel.workflow("agent", budget_usd=0.000001, on_exceed="approve") as wf:
        decider = _decide_when_pending(controls, approved=True, by="finance")
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
        decider.join()
        assert wf.budget_usd == 0.000001 and wf._scope.budget_usd > 0.000001
    ((kind, requested, status),) = controls.rows("SELECT kind, requested_usd, status FROM approval_requests")
    assert kind == "budget" and requested > 0 and status == "APPROVED"
    (root,) = controls.spans("invoke_workflow")
    assert root.attributes["wflo.budget.raised_usd"] == pytest.approx(requested)

    sent = openai_server.request_count
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("agent", budget_usd=0.000001, on_exceed="approve"):
            decider = _decide_when_pending(controls, approved=False, by="finance", reason="no")
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
            finally:
                decider.join()
    assert caught.value.refused and openai_server.request_count == sent


def test_auto_approve_below_raises_small_budgets_as_the_policy(controls, client):
    with wflo_otel.workflow("agent", budget_usd=0.000001, on_exceed="approve", auto_approve_below_usd=1.0):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
    assert controls.rows("SELECT status, decided_by FROM approval_requests") == [("APPROVED", "policy")]


def test_the_approvals_commands_list_show_approve_and_refuse_a_second_decision(controls, capsys):
    with wflo_otel.workflow("refunds") as wf:
        ref = wf._ref()
    request = controls.run(lambda s: s.create_approval(ref, "send-refund", message="Refund $420", timeout_s=600))
    close_stores()
    url = ["--database-url", controls.url]
    assert main([*url, "approvals", "list"]) == 0
    assert request.id in capsys.readouterr().out
    assert main([*url, "approvals", "show", request.id]) == 0
    assert "message: Refund $420" in capsys.readouterr().out
    assert main([*url, "approvals", "approve", request.id, "--by", "alice", "--comment", "ok"]) == 0
    assert f"APPROVED {request.id} by alice" in capsys.readouterr().out
    assert main([*url, "approvals", "reject", request.id, "--by", "bob", "--reason", "no"]) == 1
    err = capsys.readouterr().err
    assert "already APPROVED (by alice" in err and "decided_by: alice" in err
    assert main([*url, "approvals", "approve", "unknown", "--by", "x"]) == 1
    assert "no approval request with id 'unknown'" in capsys.readouterr().err
    assert main([*url, "approvals", "list", "--status", "pending"]) == 0
    assert "no pending approval requests" in capsys.readouterr().out


def _http(service, method, path, body=None, token="s3cret"):
    request = urllib.request.Request(service.url + path, method=method, data=json.dumps(body).encode() if body is not None else None)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_http_routes_need_the_token_list_pending_and_let_one_of_two_approvers_win(controls):
    with wflo_otel.workflow("refunds") as wf:
        ref = wf._ref()
    request = controls.run(lambda s: s.create_approval(ref, "send-refund", message="Refund $420", timeout_s=600))
    with IngestService(controls.url, port=0, token="s3cret") as service:
        assert _http(service, "GET", "/v1/approvals?status=pending", token=None)[0] == 401
        assert _http(service, "POST", f"/v1/approvals/{request.id}/approve", {"by": "mallory"}, token="wrong")[0] == 401
        status, listing = _http(service, "GET", "/v1/approvals?status=pending")
        assert status == 200 and [a["id"] for a in listing["approvals"]] == [request.id]
        assert _http(service, "POST", f"/v1/approvals/{request.id}/approve", {})[0] == 400
        assert _http(service, "POST", f"/v1/approvals/{request.id}/reject", {"by": "bob"})[0] == 400
        assert _http(service, "POST", "/v1/approvals/unknown/approve", {"by": "bob"})[0] == 404

        barrier = threading.Barrier(2)
        answers = []

        def decide(name):
            barrier.wait()
            answers.append(_http(service, "POST", f"/v1/approvals/{request.id}/approve", {"by": name, "comment": "ok"}))

        threads = [threading.Thread(target=decide, args=(n,)) for n in ("alice", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(code for code, _ in answers) == [200, 409]
        (winner,) = [body for code, body in answers if code == 200]
        (conflict,) = [body for code, body in answers if code == 409]
        assert conflict["approval"]["decided_by"] == winner["decided_by"] and conflict["approval"]["status"] == "APPROVED"
        assert _http(service, "GET", "/v1/approvals?status=pending")[1] == {"approvals": []}
    assert controls.rows("SELECT decided_by FROM approval_requests") == [(winner["decided_by"],)]


@pytest.mark.one_leg
def test_a_decision_from_another_process_releases_a_waiting_workflow_within_a_second(database_url, tmp_path):
    from wflo_otel import migrations

    migrations.upgrade(database_url)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    waiter = subprocess.Popen([sys.executable, str(APP), "approve", database_url, "60"], stdout=subprocess.PIPE, env=env, text=True)
    store = ControlStore(database_url, migrate=False)
    try:
        assert waiter.stdout.readline().startswith("EXECUTION")
        deadline = time.monotonic() + 20
        pending = []
        while not pending and time.monotonic() < deadline:
            pending = store.run(lambda: store.approvals("PENDING"))
            time.sleep(0.05)
        (request,) = pending
        time.sleep(0.5)  # the waiter is in its wait, not in its first read
        assert main(["--database-url", database_url, "approvals", "approve", request.id, "--by", "ops"]) == 0
        decided_at = time.time()
        released, at, status, by = waiter.stdout.readline().split()
        assert (released, status, by) == ("RELEASED", "APPROVED", "ops")
        assert float(at) - decided_at < 1.0
    finally:
        store.close()
        waiter.kill()
        waiter.wait(timeout=10)
