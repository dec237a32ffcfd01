"""``wflo-otel approvals list|show|approve|reject`` and ``wflo-otel checkpoints EXECUTION_ID``.

Registered in the CLI's ``COMMAND_GROUPS``. A decision from here wakes a waiting
process at once on PostgreSQL (``NOTIFY``), within ``SQLITE_POLL_S`` on SQLite.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from .decisions import check_decision
from .errors import ApprovalConflict, ApprovalNotFound
from .records import APPROVAL_STATUSES, Approval

_LIST_COLUMNS = ("id", "status", "workflow", "name", "requested_usd", "created_at", "expires_at", "decided_by", "message")


def _with_store(args: argparse.Namespace, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(store)`` on the command's database (which must exist), then close the store."""
    from ..cli import _existing_database_url
    from .store import ControlStore

    store = ControlStore(_existing_database_url(args), migrate=False)
    try:
        return store.run(lambda: fn(store))
    finally:
        store.close()


def _show(approval: Approval) -> str:
    return "\n".join(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else ('' if value is None else value)}" for key, value in approval.to_json().items())


def _cmd_approvals(args: argparse.Namespace) -> int:
    from ..cli import CommandError, format_table

    command = args.approvals_command
    if command == "list":
        status = None if args.status == "all" else args.status
        found = _with_store(args, lambda s: s.approvals(status, execution_id=args.execution, limit=args.limit))
        rows = [[a.to_json()[c] for c in _LIST_COLUMNS] for a in found]
        print(format_table(_LIST_COLUMNS, rows) if rows else f"no {args.status} approval requests")
        return 0
    if command == "show":
        approval = _with_store(args, lambda s: s.approval(args.id))
        if approval is None:
            raise CommandError(str(ApprovalNotFound(args.id)))
        print(_show(approval))
        return 0
    approved = command == "approve"
    reason = args.comment if approved else args.reason
    try:
        by, reason = check_decision(args.by, reason, approved=approved)  # before the database is opened
        decided = _with_store(args, lambda s: s.decide(args.id, approved=approved, by=by, reason=reason))
    except (ApprovalNotFound, ValueError) as exc:
        raise CommandError(str(exc)) from None
    except ApprovalConflict as exc:
        raise CommandError(f"{exc}; the first decision stands:\n{_show(exc.approval)}") from None
    print(f"{decided.status} {decided.id} by {decided.decided_by}")
    return 0


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    from ..cli import CommandError, format_table

    snapshots = _with_store(args, lambda s: s.snapshots(args.execution_id))
    if not snapshots:
        raise CommandError(f"execution {args.execution_id} has no checkpoints (is the id right?)")
    columns = ("version", "name", "step_id", "spent_usd", "created_at", "state")
    rows = [
        [s.version, s.name, s.step_id, s.spent_usd, s.created_at.isoformat(), _clip(json.dumps(s.state), args.width)]
        for s in snapshots
    ]
    print(format_table(columns, rows))
    return 0


def _clip(text: str, width: int) -> str:
    return text if width <= 0 or len(text) <= width else text[: max(width - 1, 1)] + "…"


def _positive_int(text: str) -> int:
    """``--limit``: a negative LIMIT means "no limit" to SQLite and an error to PostgreSQL; neither is asked for."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register_approvals(commands: Any) -> None:
    approvals = commands.add("approvals", help="list, show, approve or reject approval requests (human gates, budget raises)")
    approvals.set_defaults(func=_cmd_approvals)
    sub = commands.group(approvals, "approvals_command")
    listing = sub.add("list", help="approval requests, newest first (default: pending ones)")
    listing.add_argument("--status", default="pending", choices=[s.lower() for s in APPROVAL_STATUSES] + ["all"])
    listing.add_argument("--execution", metavar="ID", help="only this execution's requests")
    listing.add_argument("--limit", type=_positive_int, default=100, help="at most this many (default 100)")
    show = sub.add("show", help="one request with its context and decision")
    show.add_argument("id")
    approve = sub.add("approve", help="approve a pending request (a decided one stays as it was decided)")
    approve.add_argument("id")
    approve.add_argument("--by", required=True, metavar="NAME", help="who approves")
    approve.add_argument("--comment", help="recorded with the decision")
    reject = sub.add("reject", help="reject a pending request (the waiting workflow raises ApprovalRejected)")
    reject.add_argument("id")
    reject.add_argument("--by", required=True, metavar="NAME", help="who rejects")
    reject.add_argument("--reason", required=True, help="why (recorded, and in the exception)")


def register_checkpoints(commands: Any) -> None:
    checkpoints = commands.add("checkpoints", help="the checkpoints (state snapshots) of an execution")
    checkpoints.add_argument("execution_id", metavar="EXECUTION_ID")
    checkpoints.add_argument("--width", type=int, default=80, help="clip the state column (0: whole)")
    checkpoints.set_defaults(func=_cmd_checkpoints)
