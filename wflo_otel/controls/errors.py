"""The exceptions of the controls: what a gate raises into user code, and clear bad-input errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .records import Approval


class _ApprovalRefused(Exception):
    """A gate that did not open: ``.approval`` is the stored request, ``.decided_by`` / ``.reason`` who and why."""

    def __init__(self, approval: "Approval") -> None:
        self.approval = approval
        self.decided_by = approval.decided_by
        self.reason = approval.reason
        super().__init__(self._describe(approval))

    def _describe(self, approval: "Approval") -> str:
        raise NotImplementedError


class ApprovalRejected(_ApprovalRefused):
    """A person (or a policy) rejected the request."""

    def _describe(self, approval: "Approval") -> str:
        return f"approval {approval.name!r} ({approval.id}) rejected by {approval.decided_by}: {approval.reason or 'no reason given'}"


class ApprovalExpired(_ApprovalRefused):
    """Nobody decided before the request's ``expires_at``."""

    def _describe(self, approval: "Approval") -> str:
        return f"approval {approval.name!r} ({approval.id}) expired after {approval.timeout_s}s without a decision"


class ApprovalConflict(Exception):
    """A decision on a request that is no longer PENDING: ``.approval`` is the first decision, unchanged."""

    def __init__(self, approval: "Approval") -> None:
        self.approval = approval
        super().__init__(
            f"approval {approval.id} is already {approval.status}"
            + (f" ({_by(approval)}at {approval.decided_at.isoformat()})" if approval.decided_at else "")
        )


def _by(approval: "Approval") -> str:
    """``by NAME `` for a decision; nothing for an expiry, which nobody decided."""
    return f"by {approval.decided_by} " if approval.decided_by else ""


class ApprovalNotFound(LookupError):
    """No approval request has this id."""

    def __init__(self, approval_id: str) -> None:
        self.approval_id = approval_id
        super().__init__(f"no approval request with id {approval_id!r}")


class ExecutionNotFound(LookupError):
    """``resume=`` (or a checkpoint listing) names an execution the database does not have."""

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        super().__init__(f"no workflow execution with id {execution_id!r} in the database; nothing to resume")


class ExecutionBusy(RuntimeError):
    """Another resume of the same execution started from the same stored state first."""

    def __init__(self, execution_id: str, generation: int) -> None:
        self.execution_id = execution_id
        self.generation = generation
        super().__init__(
            f"execution {execution_id} is being resumed by another process (resume #{generation} is taken); "
            "two resumes of one stored state would each spend its remaining budget"
        )


class CheckpointNotFound(LookupError):
    """``restore(name)`` or ``rollback(to=name)`` names a checkpoint this execution never took."""

    def __init__(self, execution_id: str, name: str) -> None:
        self.execution_id = execution_id
        self.name = name
        super().__init__(f"execution {execution_id} has no checkpoint named {name!r}")
