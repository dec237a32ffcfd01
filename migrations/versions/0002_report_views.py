"""report views and the indexes that keep the documented queries fast

Views (the same columns on SQLite and PostgreSQL):

- ``cost_per_workflow``: executions, LLM calls, tokens and USD per workflow
- ``cost_per_model_per_day``: LLM calls, tokens (cached and reasoning apart) and USD per model per UTC day
- ``execution_steps``: every step with its execution and workflow
- ``step_costs``: per workflow and step name: runs, total and average USD, average and worst duration
- ``failed_or_over_budget``: executions that failed, exceeded their budget, or cost more than it

Indexes: a partial covering index over LLM steps (cost per model per day reads it
without touching the wide step rows on PostgreSQL), partial indexes for the most
expensive and slowest single steps, and one for failed / over-budget executions.
On PostgreSQL 14+ also expression statistics for the (day, model) grouping.

Note for later revisions: SQLite rebuilds a table for most ALTERs (alembic batch
mode); drop these views before such a rebuild and create them again after.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STEP_DURATION = "duration_ms IS NOT NULL AND kind <> 'workflow'"
# Lets the PostgreSQL planner know how few (day, model) groups there are, so it
# aggregates in a hash table instead of sorting every LLM row (PostgreSQL 14+).
DAY_MODEL_STATISTICS = (
    "CREATE STATISTICS IF NOT EXISTS st_step_executions_day_model (ndistinct) ON "
    "(CAST(started_at AT TIME ZONE 'UTC' AS DATE)), (COALESCE(response_model, request_model)) FROM step_executions"
)
# On status only: a predicate on the totals would make every totals update a non-HOT update.
PROBLEM = "status IN ('BUDGET_EXCEEDED', 'FAILED')"

# name -> (PostgreSQL day expression, SQLite day expression) are the only engine differences.
_DAY = {
    "postgresql": "CAST(s.started_at AT TIME ZONE 'UTC' AS DATE)",
    "sqlite": "date(s.started_at)",
}


def _views(dialect: str) -> dict[str, str]:
    day = _DAY.get(dialect, "CAST(s.started_at AS DATE)")
    return {
        "cost_per_workflow": """
SELECT e.workflow_id                  AS workflow,
       COUNT(*)                       AS executions,
       SUM(e.llm_calls)               AS llm_calls,
       SUM(e.input_tokens)            AS input_tokens,
       SUM(e.output_tokens)           AS output_tokens,
       SUM(e.cost_total_usd)          AS cost_usd,
       AVG(e.cost_total_usd)          AS avg_cost_usd,
       SUM(CASE WHEN e.status = 'FAILED' THEN 1 ELSE 0 END)          AS failed,
       SUM(CASE WHEN e.status = 'BUDGET_EXCEEDED' THEN 1 ELSE 0 END) AS over_budget,
       MAX(e.started_at)              AS last_started_at
FROM workflow_executions e
GROUP BY e.workflow_id""",
        "cost_per_model_per_day": f"""
SELECT {day}                                        AS day,
       COALESCE(s.response_model, s.request_model)  AS model,
       COUNT(*)                                     AS calls,
       SUM(s.input_tokens)                          AS input_tokens,
       SUM(s.cache_read_tokens)                     AS cached_tokens,
       SUM(s.output_tokens)                         AS output_tokens,
       SUM(s.cost_usd)                              AS cost_usd,
       SUM(s.reasoning_tokens)                      AS reasoning_tokens
FROM step_executions s
WHERE s.kind = 'llm' AND s.input_tokens IS NOT NULL
GROUP BY {day}, COALESCE(s.response_model, s.request_model)""",
        "execution_steps": """
SELECT s.execution_id,
       e.workflow_id                                AS workflow,
       e.status                                     AS execution_status,
       s.id                                         AS span_id,
       s.parent_span_id,
       s.name,
       s.kind,
       s.status,
       s.error_type,
       COALESCE(s.response_model, s.request_model)  AS model,
       s.input_tokens,
       s.output_tokens,
       s.cache_read_tokens,
       s.reasoning_tokens,
       s.cost_usd,
       s.duration_ms,
       s.started_at,
       s.ended_at,
       s.trace_id
FROM step_executions s
JOIN workflow_executions e ON e.id = s.execution_id""",
        "step_costs": """
SELECT e.workflow_id                                AS workflow,
       s.name                                       AS step,
       s.kind,
       COUNT(*)                                     AS runs,
       SUM(s.cost_usd)                              AS cost_usd,
       AVG(s.cost_usd)                              AS avg_cost_usd,
       AVG(s.duration_ms)                           AS avg_duration_ms,
       MAX(s.duration_ms)                           AS max_duration_ms,
       SUM(CASE WHEN s.status = 'ERROR' THEN 1 ELSE 0 END) AS errors
FROM step_executions s
JOIN workflow_executions e ON e.id = s.execution_id
WHERE s.kind <> 'workflow'
GROUP BY e.workflow_id, s.name, s.kind""",
        "failed_or_over_budget": """
SELECT e.workflow_id     AS workflow,
       e.id,
       e.status,
       e.budget_usd,
       e.cost_total_usd  AS cost_usd,
       e.error,
       e.llm_calls,
       e.started_at,
       e.ended_at,
       e.trace_id
FROM workflow_executions e
WHERE e.status IN ('BUDGET_EXCEEDED', 'FAILED') OR e.cost_total_usd > e.budget_usd""",
    }


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    pg = dialect == "postgresql"
    op.create_index(
        "ix_step_executions_llm_usage",
        "step_executions",
        ["started_at", "response_model", "request_model"],
        postgresql_include=["input_tokens", "cache_read_tokens", "output_tokens", "reasoning_tokens", "cost_usd"],
        postgresql_where=sa.text("kind = 'llm'"),
        sqlite_where=sa.text("kind = 'llm'"),
    )
    op.create_index(
        "ix_step_executions_cost_usd",
        "step_executions",
        ["cost_usd"],
        postgresql_where=sa.text("cost_usd IS NOT NULL"),
        sqlite_where=sa.text("cost_usd IS NOT NULL"),
    )
    op.create_index(
        "ix_step_executions_duration_ms",
        "step_executions",
        ["duration_ms"],
        postgresql_where=sa.text(STEP_DURATION),
        sqlite_where=sa.text(STEP_DURATION),
    )
    op.create_index(
        "ix_workflow_executions_problems",
        "workflow_executions",
        ["started_at"],
        postgresql_where=sa.text(PROBLEM),
        sqlite_where=sa.text(PROBLEM),
    )
    for name, body in _views(dialect).items():
        op.execute(f"CREATE VIEW {name} AS{body}")
    if pg:
        # Room on each page for the new row versions of totals updates (HOT updates, no index churn).
        op.execute("ALTER TABLE workflow_executions SET (fillfactor = 80)")
    if pg and op.get_bind().dialect.server_version_info >= (14,):
        op.execute(DAY_MODEL_STATISTICS)
    if pg:
        for name in _views(dialect):
            op.execute(f"COMMENT ON VIEW {name} IS 'wflo-otel report view (alembic revision 0002)'")


def downgrade() -> None:
    for name in reversed(list(_views(op.get_bind().dialect.name))):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_step_executions_day_model")
        op.execute("ALTER TABLE workflow_executions RESET (fillfactor)")
    op.drop_index("ix_workflow_executions_problems", table_name="workflow_executions")
    op.drop_index("ix_step_executions_duration_ms", table_name="step_executions")
    op.drop_index("ix_step_executions_cost_usd", table_name="step_executions")
    op.drop_index("ix_step_executions_llm_usage", table_name="step_executions")
