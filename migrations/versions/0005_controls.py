"""workflow controls: state_snapshots, rollback_actions, approval_requests, execution_resumes

Tables (each with a foreign key to ``workflow_executions``, cascading delete):

- ``state_snapshots``: a checkpoint's JSON state, versioned per execution, with the
  execution's spend when it was taken (the resumed budget starts from it)
- ``rollback_actions``: one rollback: to which snapshot, why, who, the outcome and the
  compensations that ran and failed
- ``approval_requests``: a human (or policy) gate: PENDING until APPROVED, REJECTED or EXPIRED
- ``execution_resumes``: each resume of an execution (its new trace, the spend it started from)

Views (the same columns on SQLite and PostgreSQL): ``pending_approvals``,
``approval_latency`` (per workflow and gate), ``executions_resumed``, ``rollback_outcomes``.

Revision ID: 0005_controls
Revises: 0002
Create Date: 2026-12-06
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005_controls"
down_revision = "0004_spend_limits"
branch_labels = None
depends_on = None

JSONType = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
Timestamp = sa.DateTime(timezone=True)

# Seconds between two timestamps: the only engine difference of the views.
_SECONDS = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS DOUBLE PRECISION)",
    "sqlite": "((julianday({end}) - julianday({start})) * 86400.0)",
}


def _views(dialect: str) -> dict[str, str]:
    latency = _SECONDS.get(dialect, _SECONDS["postgresql"]).format(end="a.decided_at", start="a.created_at")
    return {
        "pending_approvals": """
SELECT a.id,
       e.workflow_id      AS workflow,
       a.execution_id,
       a.name,
       a.kind,
       a.message,
       a.requested_usd,
       a.created_at,
       a.expires_at
FROM approval_requests a
JOIN workflow_executions e ON e.id = a.execution_id
WHERE a.status = 'PENDING'""",
        "approval_latency": f"""
SELECT e.workflow_id      AS workflow,
       a.name,
       COUNT(*)           AS decided,
       SUM(CASE WHEN a.status = 'APPROVED' THEN 1 ELSE 0 END) AS approved,
       SUM(CASE WHEN a.status = 'REJECTED' THEN 1 ELSE 0 END) AS rejected,
       SUM(CASE WHEN a.status = 'EXPIRED' THEN 1 ELSE 0 END)  AS expired,
       SUM(CASE WHEN a.decided_by = 'policy' THEN 1 ELSE 0 END) AS by_policy,
       AVG({latency})     AS avg_wait_s,
       MAX({latency})     AS max_wait_s
FROM approval_requests a
JOIN workflow_executions e ON e.id = a.execution_id
WHERE a.status <> 'PENDING' AND a.decided_at IS NOT NULL
GROUP BY e.workflow_id, a.name""",
        "executions_resumed": """
SELECT r.execution_id,
       e.workflow_id      AS workflow,
       e.status,
       COUNT(*)           AS resumes,
       MAX(r.spent_usd)   AS spent_before_last_resume_usd,
       e.cost_total_usd,
       MIN(r.created_at)  AS first_resumed_at,
       MAX(r.created_at)  AS last_resumed_at
FROM execution_resumes r
JOIN workflow_executions e ON e.id = r.execution_id
GROUP BY r.execution_id, e.workflow_id, e.status, e.cost_total_usd""",
        "rollback_outcomes": """
SELECT r.id,
       e.workflow_id      AS workflow,
       r.execution_id,
       s.name             AS to_checkpoint,
       s.version          AS to_version,
       r.reason,
       r.initiated_by,
       r.status,
       r.created_at
FROM rollback_actions r
JOIN workflow_executions e ON e.id = r.execution_id
LEFT JOIN state_snapshots s ON s.id = r.snapshot_id""",
    }


def _execution_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["execution_id"], ["workflow_executions.id"], name=f"fk_{table}_execution_id", ondelete="CASCADE"
    )


def _snapshot_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["snapshot_id"], ["state_snapshots.id"], name=f"fk_{table}_snapshot_id", ondelete="SET NULL"
    )


def upgrade() -> None:
    op.create_table(
        "state_snapshots",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(16)),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", JSONType),
        sa.Column("spent_usd", sa.Double, nullable=False, server_default=sa.text("0")),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("created_at", Timestamp, nullable=False),
        _execution_fk("state_snapshots"),
        sa.UniqueConstraint("execution_id", "version", name="uq_state_snapshots_execution_version"),
    )
    op.create_index("ix_state_snapshots_execution_name", "state_snapshots", ["execution_id", "name"])
    op.create_table(
        "rollback_actions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("snapshot_id", sa.String(32)),
        sa.Column("reason", sa.Text),
        sa.Column("initiated_by", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("details", JSONType),
        sa.Column("created_at", Timestamp, nullable=False),
        _execution_fk("rollback_actions"),
        _snapshot_fk("rollback_actions"),
    )
    op.create_index("ix_rollback_actions_execution_id", "rollback_actions", ["execution_id"])
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(16)),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, server_default=sa.text("'gate'")),
        sa.Column("message", sa.Text),
        sa.Column("context", JSONType),
        sa.Column("requested_usd", sa.Double),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(255)),
        sa.Column("decided_at", Timestamp),
        sa.Column("reason", sa.Text),
        sa.Column("timeout_s", sa.Double),
        sa.Column("expires_at", Timestamp),
        sa.Column("created_at", Timestamp, nullable=False),
        _execution_fk("approval_requests"),
    )
    op.create_index("ix_approval_requests_status_created_at", "approval_requests", ["status", "created_at"])
    op.create_index("ix_approval_requests_execution_id", "approval_requests", ["execution_id"])
    op.create_table(
        "execution_resumes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("snapshot_id", sa.String(32)),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("previous_trace_id", sa.String(32)),
        sa.Column("spent_usd", sa.Double, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", Timestamp, nullable=False),
        _execution_fk("execution_resumes"),
        _snapshot_fk("execution_resumes"),
    )
    op.create_index("ix_execution_resumes_execution_id", "execution_resumes", ["execution_id"])
    for name, body in _views(op.get_bind().dialect.name).items():
        op.execute(f"CREATE VIEW {name} AS{body}")


def downgrade() -> None:
    for name in reversed(list(_views(op.get_bind().dialect.name))):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_execution_resumes_execution_id", table_name="execution_resumes")
    op.drop_table("execution_resumes")
    op.drop_index("ix_approval_requests_execution_id", table_name="approval_requests")
    op.drop_index("ix_approval_requests_status_created_at", table_name="approval_requests")
    op.drop_table("approval_requests")
    op.drop_index("ix_rollback_actions_execution_id", table_name="rollback_actions")
    op.drop_table("rollback_actions")
    op.drop_index("ix_state_snapshots_execution_name", table_name="state_snapshots")
    op.drop_table("state_snapshots")
