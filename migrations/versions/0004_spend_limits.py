"""spend limits: periods, leases, alert firings, and the spend_per_limit view

- ``spend_limit_periods``: one row per limit, key and period (the history stays):
  the limit's amount, what was spent (reported by the processes) and what is leased
  to running processes right now.
- ``spend_limit_leases``: the slice of a period's money each running process holds;
  a lease whose ``expires_at`` (epoch seconds) passed is reclaimed.
- ``spend_limit_alerts``: each threshold of each period and key, fired once (the
  primary key makes the second process's insert a no-op).
- view ``spend_per_limit``: spend, remaining and the highest threshold fired per
  limit, key and period.

Revision ID: 0004_spend_limits
Revises: 0002
Create Date: 2026-12-06
"""

from alembic import op
import sqlalchemy as sa

revision = "0004_spend_limits"
down_revision = "0003_view_types"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)

SPEND_PER_LIMIT = """
SELECT p.limit_name                                   AS limit_name,
       p.limit_key                                    AS limit_key,
       p.per                                          AS per,
       p.period_start                                 AS period_start,
       p.period_end                                   AS period_end,
       p.limit_usd                                    AS limit_usd,
       p.spent_usd                                    AS spent_usd,
       p.leased_usd                                   AS leased_usd,
       CASE WHEN p.limit_usd > p.spent_usd THEN p.limit_usd - p.spent_usd ELSE 0 END AS remaining_usd,
       (SELECT MAX(a.threshold) FROM spend_limit_alerts a
         WHERE a.limit_name = p.limit_name AND a.limit_key = p.limit_key
           AND a.period_start = p.period_start)       AS alerted_threshold
FROM spend_limit_periods p
"""


def upgrade() -> None:
    op.create_table(
        "spend_limit_periods",
        sa.Column("limit_name", sa.String(255), primary_key=True),
        sa.Column("limit_key", sa.String(255), primary_key=True),
        sa.Column("period_start", Timestamp, primary_key=True),
        sa.Column("period_end", Timestamp, nullable=False),
        sa.Column("per", sa.String(16), nullable=False),
        sa.Column("limit_usd", sa.Double, nullable=False),
        sa.Column("spent_usd", sa.Double, nullable=False, server_default=sa.text("0")),
        sa.Column("leased_usd", sa.Double, nullable=False, server_default=sa.text("0")),
    )
    op.create_index("ix_spend_limit_periods_period_end", "spend_limit_periods", ["period_end"])
    op.create_table(
        "spend_limit_leases",
        sa.Column("limit_name", sa.String(255), primary_key=True),
        sa.Column("limit_key", sa.String(255), primary_key=True),
        sa.Column("period_start", Timestamp, primary_key=True),
        sa.Column("holder", sa.String(64), primary_key=True),
        sa.Column("amount_usd", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.ForeignKeyConstraint(
            ["limit_name", "limit_key", "period_start"],
            ["spend_limit_periods.limit_name", "spend_limit_periods.limit_key", "spend_limit_periods.period_start"],
            name="fk_spend_limit_leases_period",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "spend_limit_alerts",
        sa.Column("limit_name", sa.String(255), primary_key=True),
        sa.Column("limit_key", sa.String(255), primary_key=True),
        sa.Column("period_start", Timestamp, primary_key=True),
        sa.Column("threshold", sa.Double, primary_key=True),
        sa.Column("spent_usd", sa.Double, nullable=False),
        sa.Column("fired_at", Timestamp, nullable=False),
    )
    op.execute(f"CREATE VIEW spend_per_limit AS {SPEND_PER_LIMIT}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS spend_per_limit")
    op.drop_table("spend_limit_alerts")
    op.drop_table("spend_limit_leases")
    op.drop_index("ix_spend_limit_periods_period_end", table_name="spend_limit_periods")
    op.drop_table("spend_limit_periods")
