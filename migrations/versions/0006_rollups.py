"""hourly cost rollups for the dashboard

``cost_rollup_hourly``: per UTC hour x workflow x model x step status x tenant, the LLM
calls, refusals, errors, tokens and USD of the LLM steps (``wflo_otel.exporters.rollups``
says what each counts). The store adds to it in the transaction that inserts steps;
this revision fills it from the steps already stored.

Revision ID: 0006_rollups
Revises: 0002
Create Date: 2026-12-06
"""

from alembic import op
import sqlalchemy as sa

from wflo_otel.exporters.rollups import backfill_sql

revision = "0006_rollups"
down_revision = "0002"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger, nullable=False, server_default=sa.text("0"))


def upgrade() -> None:
    op.create_table(
        "cost_rollup_hourly",
        sa.Column("hour", Timestamp, primary_key=True),
        sa.Column("workflow_id", sa.String(255), primary_key=True),
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("tenant", sa.String(255), primary_key=True),
        *(_count(name) for name in ("calls", "refusals", "errors", "input_tokens", "output_tokens",
                                     "cache_read_tokens", "reasoning_tokens")),
        sa.Column("cost_usd", sa.Double, nullable=False, server_default=sa.text("0")),
    )
    op.execute(backfill_sql(op.get_bind().dialect.name))


def downgrade() -> None:
    op.drop_table("cost_rollup_hourly")
