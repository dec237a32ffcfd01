"""What the control store returns: plain, immutable records with a JSON form for the CLI and HTTP."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

STATUS_PENDING = "PENDING"
STATUS_APPROVED = "APPROVED"
STATUS_REJECTED = "REJECTED"
STATUS_EXPIRED = "EXPIRED"
APPROVAL_STATUSES = (STATUS_PENDING, STATUS_APPROVED, STATUS_REJECTED, STATUS_EXPIRED)

ROLLBACK_COMPLETED = "COMPLETED"
ROLLBACK_FAILED = "FAILED"
ROLLBACK_PARTIAL = "PARTIAL"


def utc(value: datetime | None) -> datetime | None:
    """SQLite gives timestamps back without their zone; every stored one is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _json(record: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(record).items()}


@dataclass(frozen=True)
class Snapshot:
    """One checkpoint: a version of an execution's state, with what the execution had spent then."""

    id: str
    execution_id: str
    name: str
    version: int
    state: Any
    spent_usd: float
    step_id: str | None
    trace_id: str | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True)
class Approval:
    """One approval request and, once decided, its decision (``decided_by``, ``decided_at``, ``reason``)."""

    id: str
    execution_id: str
    name: str
    kind: str
    status: str
    message: str | None
    context: Any
    requested_usd: float | None
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    timeout_s: float | None
    expires_at: datetime | None
    created_at: datetime
    step_id: str | None
    workflow: str | None = None

    @property
    def comment(self) -> str | None:
        """The approver's comment (stored in ``reason``, as a rejection's reason is)."""
        return self.reason

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True)
class ExecutionInfo:
    """What the controls need to know of a stored execution (resume, and the placeholder row)."""

    id: str
    workflow: str
    status: str
    budget_usd: float | None
    cost_total_usd: float
    trace_id: str | None
    inputs: Any
