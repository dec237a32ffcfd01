"""initial schema: workflow definitions, executions, steps

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workflow_definitions",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("policies", JSONType),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_table(
        "workflow_executions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("inputs", JSONType),
        sa.Column("error", sa.Text),
        sa.Column("budget_usd", sa.Double),
        sa.Column("cost_total_usd", sa.Double, nullable=False, server_default=sa.text("0")),
        sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("llm_calls", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("correlation_id", sa.String(255)),
        sa.Column("service_name", sa.String(255)),
        sa.Column("started_at", Timestamp),
        sa.Column("ended_at", Timestamp),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflow_definitions.id"],
            name="fk_workflow_executions_workflow_id",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_workflow_executions_workflow_id", "workflow_executions", ["workflow_id"])
    op.create_index("ix_workflow_executions_started_at", "workflow_executions", ["started_at"])
    op.create_index("ix_workflow_executions_trace_id", "workflow_executions", ["trace_id"])
    op.create_index("ix_workflow_executions_status", "workflow_executions", ["status"])
    op.create_table(
        "step_executions",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("parent_span_id", sa.String(16)),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(255)),
        sa.Column("provider", sa.String(64)),
        sa.Column("operation", sa.String(64)),
        sa.Column("request_model", sa.String(255)),
        sa.Column("response_model", sa.String(255)),
        sa.Column("input_tokens", sa.BigInteger),
        sa.Column("output_tokens", sa.BigInteger),
        sa.Column("cache_read_tokens", sa.BigInteger),
        sa.Column("reasoning_tokens", sa.BigInteger),
        sa.Column("cost_usd", sa.Double),
        sa.Column("cost_source", sa.String(64)),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("ended_at", Timestamp),
        sa.Column("duration_ms", sa.Double),
        sa.Column("attributes", JSONType),
        sa.Column("events", JSONType),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["workflow_executions.id"],
            name="fk_step_executions_execution_id",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_step_executions_execution_id", "step_executions", ["execution_id"])
    op.create_index("ix_step_executions_started_at", "step_executions", ["started_at"])
    op.create_index("ix_step_executions_kind_model", "step_executions", ["kind", "response_model"])


def downgrade() -> None:
    op.drop_table("step_executions")
    op.drop_table("workflow_executions")
    op.drop_table("workflow_definitions")
