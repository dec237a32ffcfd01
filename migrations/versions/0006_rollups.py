"""cost rollups for the dashboard

``cost_rollup_hourly`` and ``cost_rollup_daily`` (per UTC hour / day x workflow x model x
step status) and ``cost_rollup_tenant_daily`` (per UTC day x tenant): the LLM calls,
refusals, errors, tokens and USD of the LLM steps (``wflo_otel.exporters.rollups`` says
what each counts). The store adds to them in the transaction that inserts steps; this
revision fills them from the steps already stored. Two indexes for the dashboard's
executions list: (workflow_id, status, started_at) and cost_total_usd.

Revision ID: 0006_rollups
Revises: 0002
Create Date: 2026-12-06
"""

from alembic import op
import sqlalchemy as sa

from wflo_otel.exporters.rollups import ROLLUPS, backfill_sql

revision = "0006_rollups"
down_revision = "0005_controls"
branch_labels = None
depends_on = None

_KEY_TYPES = {
    "hour": sa.DateTime(timezone=True),
    "day": sa.DateTime(timezone=True),
    "workflow_id": sa.String(255),
    "model": sa.String(255),
    "status": sa.String(16),
    "tenant": sa.String(255),
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for rollup in ROLLUPS:
        op.create_table(
            rollup.table,
            *(sa.Column(name, _KEY_TYPES[name], primary_key=True) for name in rollup.key_columns),
            *(
                sa.Column(name, sa.BigInteger, nullable=False, server_default=sa.text("0"))
                for name in ("calls", "refusals", "errors", "input_tokens", "output_tokens",
                             "cache_read_tokens", "reasoning_tokens")
            ),
            sa.Column("cost_usd", sa.Double, nullable=False, server_default=sa.text("0")),
        )
        op.execute(backfill_sql(rollup, dialect))
    # The executions list: a workflow (and a status) in a window, newest first; the dearest first.
    op.create_index("ix_workflow_executions_workflow_status_started", "workflow_executions", ["workflow_id", "status", "started_at"])
    op.create_index("ix_workflow_executions_cost", "workflow_executions", ["cost_total_usd"])


def downgrade() -> None:
    op.drop_index("ix_workflow_executions_cost", table_name="workflow_executions")
    op.drop_index("ix_workflow_executions_workflow_status_started", table_name="workflow_executions")
    for rollup in reversed(ROLLUPS):
        op.drop_table(rollup.table)
