"""The documented SQL queries: the README's "Query your data" section, run by ``wflo-otel report``.

Each reads one of the report views of alembic revision 0002 (``cost_per_workflow``,
``cost_per_model_per_day``, ``execution_steps``, ``step_costs``,
``failed_or_over_budget``) or the executions table, in plain SQL that runs
unchanged on SQLite and PostgreSQL. A test executes each one on both engines and
checks the README shows the same text; ``bench/queries.py`` times them on a million
step rows.
"""

from __future__ import annotations

QUERIES: dict[str, str] = {
    "cost_per_workflow": """
SELECT workflow, executions, llm_calls, input_tokens, output_tokens, cost_usd
FROM cost_per_workflow
ORDER BY COALESCE(cost_usd, 0) DESC
""".strip(),
    "cost_per_model_per_day": """
SELECT day, model, calls, input_tokens, cached_tokens, output_tokens, cost_usd
FROM cost_per_model_per_day
ORDER BY day DESC, COALESCE(cost_usd, 0) DESC
""".strip(),
    "recent_executions": """
SELECT e.id, e.workflow_id AS workflow, e.status, e.budget_usd,
       e.cost_total_usd, e.llm_calls, e.started_at, e.ended_at
FROM workflow_executions e
ORDER BY e.started_at DESC
LIMIT 20
""".strip(),
    "over_budget_or_failed": """
SELECT workflow, id, status, budget_usd, cost_usd, error
FROM failed_or_over_budget
ORDER BY started_at DESC
LIMIT 100
""".strip(),
    "steps_of_an_execution": """
SELECT name, kind, status, model, input_tokens, output_tokens, cost_usd, duration_ms
FROM execution_steps
WHERE execution_id = :execution_id
ORDER BY started_at
""".strip(),
    "most_expensive_steps": """
SELECT workflow, execution_id, name, model, cost_usd, duration_ms
FROM execution_steps
WHERE cost_usd IS NOT NULL
ORDER BY cost_usd DESC
LIMIT 10
""".strip(),
    "slowest_steps": """
SELECT workflow, execution_id, name, kind, duration_ms, cost_usd
FROM execution_steps
WHERE kind <> 'workflow' AND duration_ms IS NOT NULL
ORDER BY duration_ms DESC
LIMIT 10
""".strip(),
    "step_costs_of_a_workflow": """
SELECT step, kind, runs, cost_usd, avg_cost_usd, avg_duration_ms, max_duration_ms, errors
FROM step_costs
WHERE workflow = :workflow
ORDER BY COALESCE(cost_usd, 0) DESC
""".strip(),
}

# Section titles, in the order ``wflo-otel report`` prints them.
TITLES: dict[str, str] = {
    "recent_executions": "Recent executions",
    "cost_per_workflow": "Cost per workflow",
    "cost_per_model_per_day": "Cost per model per day",
    "over_budget_or_failed": "Executions that failed or exceeded their budget",
    "most_expensive_steps": "Most expensive steps",
    "slowest_steps": "Slowest steps",
    "steps_of_an_execution": "Steps of execution {execution_id}",
    "step_costs_of_a_workflow": "Where the cost and time of workflow {workflow} go",
}
