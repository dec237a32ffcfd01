"""The relational schema (SQLAlchemy Core): workflow definitions → executions → steps.

This module describes the tables for the write and read paths; the DDL itself is
owned by alembic (``wflo_otel.migrations``), and a test checks the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

JSONType = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
Timestamp = sa.DateTime(timezone=True)

workflow_definitions = sa.Table(
    "workflow_definitions",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("policies", JSONType),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)

workflow_executions = sa.Table(
    "workflow_executions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "workflow_id",
        sa.String(255),
        sa.ForeignKey("workflow_definitions.id", ondelete="CASCADE", name="fk_workflow_executions_workflow_id"),
        nullable=False,
    ),
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
    sa.Index("ix_workflow_executions_workflow_id", "workflow_id"),
    sa.Index("ix_workflow_executions_started_at", "started_at"),
    sa.Index("ix_workflow_executions_trace_id", "trace_id"),
    sa.Index("ix_workflow_executions_status", "status"),
)

step_executions = sa.Table(
    "step_executions",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column(
        "execution_id",
        sa.String(64),
        sa.ForeignKey("workflow_executions.id", ondelete="CASCADE", name="fk_step_executions_execution_id"),
        nullable=False,
    ),
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
    sa.Index("ix_step_executions_execution_id", "execution_id"),
    sa.Index("ix_step_executions_started_at", "started_at"),
    sa.Index("ix_step_executions_kind_model", "kind", "response_model"),
)

# Indexes of revision 0002 (partial/covering ones, declared here so the Core tables
# equal the migrated schema).
STEP_DURATION = "duration_ms IS NOT NULL AND kind <> 'workflow'"
# On status only: a predicate on the totals would make every totals update a non-HOT update.
PROBLEM = "status IN ('BUDGET_EXCEEDED', 'FAILED')"

sa.Index(
    "ix_step_executions_llm_usage",
    step_executions.c.started_at,
    step_executions.c.response_model,
    step_executions.c.request_model,
    postgresql_include=["input_tokens", "cache_read_tokens", "output_tokens", "reasoning_tokens", "cost_usd"],
    postgresql_where=sa.text("kind = 'llm'"),
    sqlite_where=sa.text("kind = 'llm'"),
)
sa.Index(
    "ix_step_executions_cost_usd",
    step_executions.c.cost_usd,
    postgresql_where=sa.text("cost_usd IS NOT NULL"),
    sqlite_where=sa.text("cost_usd IS NOT NULL"),
)
sa.Index(
    "ix_step_executions_duration_ms",
    step_executions.c.duration_ms,
    postgresql_where=sa.text(STEP_DURATION),
    sqlite_where=sa.text(STEP_DURATION),
)
def on_this_engine(dialect: str):
    """An alembic ``include_object`` hook: leave out the objects of another engine only
    (``info={"dialects": (...)}``, as the PostgreSQL GIN index), so autogenerate on SQLite
    does not propose them."""

    def include(obj, name, type_, reflected, compare_to) -> bool:
        dialects = getattr(obj, "info", {}).get("dialects")
        return not (dialects and dialect not in dialects)

    return include


# Revision 0008: the attributes of root and workflow spans (what ``workflow(attributes=...)``
# sets), for the dashboard's attribute filter; PostgreSQL only (a JSONB GIN index; SQLite
# has no such index and reads the roots of each execution instead).
WORKFLOW_SPAN = "(kind = 'workflow' OR parent_span_id IS NULL)"
sa.Index(
    "ix_step_executions_workflow_attributes",
    step_executions.c.attributes,
    postgresql_using="gin",
    postgresql_ops={"attributes": "jsonb_path_ops"},
    postgresql_where=sa.text(WORKFLOW_SPAN),
    info={"dialects": ("postgresql",)},
).ddl_if(dialect="postgresql")
sa.Index(
    "ix_workflow_executions_problems",
    workflow_executions.c.started_at,
    postgresql_where=sa.text(PROBLEM),
    sqlite_where=sa.text(PROBLEM),
)


# Spend limits (wflo_otel.limits_store writes them; migration 0004_spend_limits).


def _period_key() -> list[sa.Column]:
    """(limit, key, period start): what identifies a limit's period in all three tables."""
    return [
        sa.Column("limit_name", sa.String(255), primary_key=True),
        sa.Column("limit_key", sa.String(255), primary_key=True),
        sa.Column("period_start", Timestamp, primary_key=True),
    ]


spend_limit_periods = sa.Table(
    "spend_limit_periods",
    metadata,
    *_period_key(),
    sa.Column("period_end", Timestamp, nullable=False),
    sa.Column("per", sa.String(16), nullable=False),
    sa.Column("limit_usd", sa.Double, nullable=False),
    sa.Column("spent_usd", sa.Double, nullable=False, server_default=sa.text("0")),
    sa.Column("leased_usd", sa.Double, nullable=False, server_default=sa.text("0")),
    sa.Index("ix_spend_limit_periods_period_end", "period_end"),
)

spend_limit_leases = sa.Table(
    "spend_limit_leases",
    metadata,
    *_period_key(),
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

spend_limit_alerts = sa.Table(
    "spend_limit_alerts",
    metadata,
    *_period_key(),
    sa.Column("threshold", sa.Double, primary_key=True),
    sa.Column("spent_usd", sa.Double, nullable=False),
    sa.Column("fired_at", Timestamp, nullable=False),
)


# Revision 0006: the dashboard's executions list (a workflow, a status, newest first; the dearest first).
# The cost index makes a totals update of a stored execution a non-HOT update on PostgreSQL.
sa.Index(
    "ix_workflow_executions_workflow_status_started",
    workflow_executions.c.workflow_id,
    workflow_executions.c.status,
    workflow_executions.c.started_at,
)
sa.Index("ix_workflow_executions_cost", workflow_executions.c.cost_total_usd)

# Revision 0006: rollups of the LLM steps, kept by the store in the transaction that
# inserts them (``rollups.py``). The dashboard reads these for anything over a time window.
def _rollup_table(name: str, key: tuple[tuple[str, sa.types.TypeEngine], ...]) -> sa.Table:
    counts = ("calls", "refusals", "errors", "input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens")
    return sa.Table(
        name,
        metadata,
        *(sa.Column(column, type_, primary_key=True) for column, type_ in key),
        *(sa.Column(column, sa.BigInteger, nullable=False, server_default=sa.text("0")) for column in counts),
        sa.Column("cost_usd", sa.Double, nullable=False, server_default=sa.text("0")),
    )


_WORKFLOW_MODEL_STATUS = (("workflow_id", sa.String(255)), ("model", sa.String(255)), ("status", sa.String(16)))
cost_rollup_hourly = _rollup_table("cost_rollup_hourly", (("hour", Timestamp), *_WORKFLOW_MODEL_STATUS))
cost_rollup_daily = _rollup_table("cost_rollup_daily", (("day", Timestamp), *_WORKFLOW_MODEL_STATUS))
cost_rollup_tenant_daily = _rollup_table("cost_rollup_tenant_daily", (("day", Timestamp), ("tenant", sa.String(255))))


# The control tables (checkpoints, rollbacks, approvals) live on the same metadata; imported
# last, as they reference the tables above.
from wflo_otel.controls import schema as _controls_schema  # noqa: E402,F401
