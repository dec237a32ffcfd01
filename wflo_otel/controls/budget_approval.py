"""``on_exceed="approve"``: a budget that would refuse a call asks to be raised instead.

The ledger calls the scope's ``BudgetApprover`` (outside its lock) with what the call
needs beyond the budget. ``auto_approve_below_usd`` is a cumulative allowance of the
scope: while the raises the policy approved, this one included, stay below it, the raise
is approved at once and recorded as decided by ``policy`` (per raise, a loop of small
overruns would be approved forever). Otherwise an approval request of kind ``budget``
(``requested_usd`` = the raise) waits for a person like any gate.
Approved: the ledger raises the scope's budget by that much and the call goes on, and
the raise is on the scope's span (``wflo.budget.raised_usd``, an event per raise).
Rejected, expired, or the database unreachable: the usual ``BudgetExceededError``.

A sync call waits in its own thread; an async call's reservation is synchronous too, so
it waits in the event loop's thread (use ``auto_approve_below_usd`` or a short
``approval_timeout_s`` in async services, or gate explicitly with ``arequire_approval``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import ApprovalExpired, ApprovalRejected

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import WorkflowControls

_log = logging.getLogger(__name__)

ATTR_RAISED_USD = "wflo.budget.raised_usd"
RAISED_EVENT = "wflo.budget.raised"


class BudgetApprover:
    """Decides budget raises for one workflow's scope (see the module doc)."""

    def __init__(self, workflow: "WorkflowControls") -> None:
        self.workflow = workflow
        self.raised_usd = 0.0
        self.auto_raised_usd = 0.0  # what the policy approved so far: the allowance is cumulative

    def __call__(self, scope: Any, needed_usd: float) -> float:
        wf = self.workflow
        auto = wf.auto_approve_below_usd
        automatic = auto is not None and self.auto_raised_usd + needed_usd < auto
        gate = wf._gate(
            f"budget {scope.name}",
            message=f"raise the budget of {scope.name!r} by ${needed_usd:.6f} (budget ${scope.budget_usd:.6f}, "
            f"spent ${scope.spent_usd:.6f})",
            context={"budget_usd": scope.budget_usd, "spent_usd": scope.spent_usd, "reserved_usd": scope.reserved_usd},
            timeout_s=wf.approval_timeout_s,
            policy=None,
            kind="budget",
            requested_usd=needed_usd,
            policy_decision=True if automatic else None,
        )
        try:
            with gate.span() as block:
                gate.outcome(block, wf.store.run(gate.decide))
        except (ApprovalRejected, ApprovalExpired):
            return 0.0
        except Exception:  # a database that is away: no raise, so the usual refusal
            _log.exception("wflo-otel: could not ask for a budget raise of workflow %r", scope.name)
            return 0.0
        self.raised_usd += needed_usd
        if automatic:
            self.auto_raised_usd += needed_usd
        span = scope.span
        if span is not None and span.is_recording():
            span.set_attribute(ATTR_RAISED_USD, self.raised_usd)
            span.add_event(RAISED_EVENT, {"wflo.budget.raise_usd": needed_usd, "wflo.approval.id": block.span.attributes.get("wflo.approval.id", "")})
        return needed_usd
