"""Rollback: compensations run newest first, each a span; failures recorded; rollback_on runs them."""

from __future__ import annotations

import pytest

import wflo_otel
from wflo_otel import BudgetExceededError, CheckpointNotFound

from controls_support import controls  # noqa: F401  (fixture)

MESSAGES = [{"role": "user", "content": "Book it, please."}]


def _details(controls, execution_id):
    import json

    rows = controls.rows(
        "SELECT status, reason, initiated_by, details FROM rollback_actions WHERE execution_id = :e", e=execution_id
    )
    return [(status, reason, by, details if isinstance(details, dict) else json.loads(details)) for status, reason, by, details in rows]


def test_compensations_run_newest_first_and_a_failing_one_is_recorded_without_stopping_the_rest(controls):
    undone = []

    def refund_card(charge_id):
        raise ConnectionError(f"payment API down while refunding {charge_id}")

    with wflo_otel.workflow("booking") as wf:
        with wflo_otel.step("reserve-hotel") as s:
            s.on_rollback(undone.append, "hotel")
        with wflo_otel.step("charge-card") as s:
            s.on_rollback(refund_card, "ch_1")
        with wflo_otel.step("send-email") as s:
            s.on_rollback(undone.append, "email")
        assert wf.rollback(reason="customer cancelled") is None
    assert undone == ["email", "hotel"]
    ((status, reason, by, details),) = _details(controls, wf.execution_id)
    assert (status, reason, by) == ("PARTIAL", "customer cancelled", "user")
    assert [c["step"] for c in details["ran"]] == ["send-email", "reserve-hotel"]
    (failed,) = details["failed"]
    assert failed["step"] == "charge-card" and "ConnectionError: payment API down while refunding ch_1" in failed["error"]
    compensations = controls.spans("compensate ")
    assert [s.name for s in compensations] == ["compensate send-email", "compensate charge-card", "compensate reserve-hotel"]
    assert compensations[1].status.is_ok is False
    (rollback_span,) = controls.spans("rollback ")
    assert rollback_span.attributes["wflo.rollback.status"] == "PARTIAL"
    assert all(c.parent.span_id == rollback_span.context.span_id for c in compensations)
    assert controls.rows("SELECT status, to_checkpoint FROM rollback_outcomes") == [("PARTIAL", None)]


def test_a_rollback_to_a_checkpoint_undoes_only_what_came_after_it_and_returns_its_state(controls):
    undone = []
    with wflo_otel.workflow("booking") as wf:
        with wflo_otel.step("research") as s:
            s.on_rollback(undone.append, "research")
        wf.checkpoint("after-research", {"options": ["a", "b"]})
        with wflo_otel.step("book") as s:
            s.on_rollback(undone.append, "book")
        with wflo_otel.step("pay") as s:
            s.on_rollback(undone.append, "pay")
        assert wf.rollback(to="after-research", reason="price changed") == {"options": ["a", "b"]}
        assert undone == ["pay", "book"]
        with pytest.raises(CheckpointNotFound, match="no checkpoint named 'nowhere'"):
            wf.rollback(to="nowhere")
    ((status, _, _, details),) = _details(controls, wf.execution_id)
    assert status == "COMPLETED" and details["to_version"] == 1
    assert controls.rows("SELECT to_checkpoint, to_version FROM rollback_outcomes") == [("after-research", 1)]


def test_rollback_on_budget_runs_the_compensations_when_a_budget_refuses_and_reraises(controls, client, openai_server):
    undone = []
    with pytest.raises(BudgetExceededError) as caught:
        with wflo_otel.workflow("booking", budget_usd=0.000001, rollback_on="budget") as wf:
            with wflo_otel.step("hold-seat") as s:
                s.on_rollback(undone.append, "seat")
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
    assert caught.value.refused and undone == ["seat"]
    ((status, reason, by, _),) = _details(controls, wf.execution_id)
    assert (status, by) == ("COMPLETED", "rollback_on:budget") and reason.startswith("BudgetExceededError")


def test_rollback_on_error_runs_for_other_exceptions_and_budget_only_does_not(controls):
    undone = []
    with pytest.raises(ValueError):
        with wflo_otel.workflow("a", rollback_on=("error", "budget")):
            with wflo_otel.step("s") as s:
                s.on_rollback(undone.append, "a")
            raise ValueError("boom")
    with pytest.raises(ValueError):
        with wflo_otel.workflow("b", rollback_on="budget"):
            with wflo_otel.step("s") as s:
                s.on_rollback(undone.append, "b")
            raise ValueError("boom")
    assert undone == ["a"]
    with pytest.raises(ValueError, match="rollback_on takes"):
        wflo_otel.workflow("c", rollback_on="sometimes")


def test_a_decorated_steps_compensation_gets_what_the_step_returned(controls):
    refunded = []

    @wflo_otel.step("charge-card", compensate=refunded.append)
    def charge(amount):
        return f"ch_{amount}"

    with wflo_otel.workflow("booking") as wf:
        charge(42)
        wf.rollback(reason="test")
    assert refunded == ["ch_42"]


def test_on_rollback_outside_a_workflow_is_a_clear_error(controls):
    with wflo_otel.step("orphan") as s:
        with pytest.raises(RuntimeError, match="needs an enclosing wflo_otel.workflow"):
            s.on_rollback(print)


def test_an_async_compensation_is_recorded_as_failed_rather_than_silently_skipped(controls):
    undone = []

    async def cancel_async():
        undone.append("never")

    with wflo_otel.workflow("booking") as wf:
        with wflo_otel.step("a") as s:
            s.on_rollback(cancel_async)
        with wflo_otel.step("b") as s:
            s.on_rollback(undone.append, "b")
        wf.rollback(reason="test")
    ((status, _, _, details),) = _details(controls, wf.execution_id)
    assert status == "PARTIAL" and undone == ["b"]
    assert "is async: rollback runs compensations synchronously" in details["failed"][0]["error"]
