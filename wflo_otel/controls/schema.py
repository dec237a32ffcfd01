"""The control tables (SQLAlchemy Core): checkpoints, rollbacks, approvals, resumes.

Each row belongs to a ``workflow_executions`` row (foreign key, cascading delete), so a
control row is kept exactly as long as its execution. The DDL is alembic's (revision
``0005_controls``); the tables live on the exporter's ``metadata`` so the test that
compares the Core schema with the migrated one covers them too.
"""

from __future__ import annotations

import sqlalchemy as sa

from wflo_otel.exporters.schema import JSONType, Timestamp, metadata



def _execution_fk(table: str) -> sa.ForeignKey:
    return sa.ForeignKey("workflow_executions.id", ondelete="CASCADE", name=f"fk_{table}_execution_id")


state_snapshots = sa.Table(
    "state_snapshots",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("execution_id", sa.String(64), _execution_fk("state_snapshots"), nullable=False),
    sa.Column("step_id", sa.String(16)),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", JSONType),
    sa.Column("spent_usd", sa.Double, nullable=False, server_default=sa.text("0")),
    sa.Column("trace_id", sa.String(32)),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("execution_id", "version", name="uq_state_snapshots_execution_version"),
    sa.Index("ix_state_snapshots_execution_name", "execution_id", "name"),
)

rollback_actions = sa.Table(
    "rollback_actions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("execution_id", sa.String(64), _execution_fk("rollback_actions"), nullable=False),
    sa.Column(
        "snapshot_id",
        sa.String(32),
        sa.ForeignKey("state_snapshots.id", ondelete="SET NULL", name="fk_rollback_actions_snapshot_id"),
    ),
    sa.Column("reason", sa.Text),
    sa.Column("initiated_by", sa.String(255)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("details", JSONType),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_rollback_actions_execution_id", "execution_id"),
)

approval_requests = sa.Table(
    "approval_requests",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("execution_id", sa.String(64), _execution_fk("approval_requests"), nullable=False),
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
    sa.Index("ix_approval_requests_status_created_at", "status", "created_at"),
    sa.Index("ix_approval_requests_execution_id", "execution_id"),
)

execution_resumes = sa.Table(
    "execution_resumes",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("execution_id", sa.String(64), _execution_fk("execution_resumes"), nullable=False),
    sa.Column(
        "snapshot_id",
        sa.String(32),
        sa.ForeignKey("state_snapshots.id", ondelete="SET NULL", name="fk_execution_resumes_snapshot_id"),
    ),
    sa.Column("trace_id", sa.String(32)),
    sa.Column("previous_trace_id", sa.String(32)),
    sa.Column("spent_usd", sa.Double, nullable=False, server_default=sa.text("0")),
    sa.Column("created_at", Timestamp, nullable=False),
    # The number of earlier resumes + 1 (revision 0007): two resumes of one state cannot both start.
    sa.Column("generation", sa.Integer),
    sa.Index("ix_execution_resumes_execution_id", "execution_id"),
    sa.Index("uq_execution_resumes_execution_generation", "execution_id", "generation", unique=True),
)
