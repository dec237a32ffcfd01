"""The documented SQL queries: the README's "Query your data" section, run by ``wflo-otel report``.

Plain SQL that runs unchanged on SQLite and PostgreSQL; a test executes each one
on both engines and checks the README shows the same text.
"""

from __future__ import annotations

QUERIES: dict[str, str] = {
    "cost_per_workflow": """
SELECT e.workflow_id            AS workflow,
       COUNT(*)                 AS executions,
       SUM(e.llm_calls)         AS llm_calls,
       SUM(e.input_tokens)      AS input_tokens,
       SUM(e.output_tokens)     AS output_tokens,
       SUM(e.cost_total_usd)    AS cost_usd
FROM workflow_executions e
GROUP BY e.workflow_id
ORDER BY cost_usd DESC
""".strip(),
    "cost_per_model_per_day": """
SELECT date(s.started_at)       AS day,
       COALESCE(s.response_model, s.request_model) AS model,
       COUNT(*)                 AS calls,
       SUM(s.input_tokens)      AS input_tokens,
       SUM(s.cache_read_tokens) AS cached_tokens,
       SUM(s.output_tokens)     AS output_tokens,
       SUM(s.cost_usd)          AS cost_usd
FROM step_executions s
WHERE s.kind = 'llm' AND s.input_tokens IS NOT NULL
GROUP BY date(s.started_at), COALESCE(s.response_model, s.request_model)
ORDER BY day DESC, cost_usd DESC
""".strip(),
    "recent_executions": """
SELECT e.id, e.workflow_id AS workflow, e.status, e.budget_usd,
       e.cost_total_usd, e.llm_calls, e.started_at, e.ended_at
FROM workflow_executions e
ORDER BY e.started_at DESC
LIMIT 20
""".strip(),
    "over_budget_or_failed": """
SELECT e.workflow_id AS workflow, e.id, e.status, e.budget_usd,
       e.cost_total_usd, e.error
FROM workflow_executions e
WHERE e.status IN ('BUDGET_EXCEEDED', 'FAILED')
ORDER BY e.started_at DESC
""".strip(),
    "steps_of_an_execution": """
SELECT s.name, s.kind, s.status, s.response_model, s.input_tokens,
       s.output_tokens, s.cost_usd, s.duration_ms
FROM step_executions s
WHERE s.execution_id = :execution_id
ORDER BY s.started_at
""".strip(),
}
