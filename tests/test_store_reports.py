"""The read path on both engines: report views (alembic 0002), the documented queries, prune, report."""

from __future__ import annotations

import asyncio
import time

import pytest

from test_store_support import make_workflows, query
from wflo_otel import migrations
from wflo_otel.cli import main
from wflo_otel.exporters.sql import SQLSpanExporter
from wflo_otel.reports import QUERIES

VIEWS = {"cost_per_workflow", "cost_per_model_per_day", "execution_steps", "step_costs", "failed_or_over_budget"}
NEW_INDEXES = {
    "ix_step_executions_llm_usage",
    "ix_step_executions_cost_usd",
    "ix_step_executions_duration_ms",
    "ix_workflow_executions_problems",
}
DAY_NS = 86_400 * 10**9


def _schema(url):
    def inspect(conn):
        import sqlalchemy as sa

        inspector = sa.inspect(conn)
        indexes = {ix["name"] for t in ("step_executions", "workflow_executions") for ix in inspector.get_indexes(t)}
        return set(inspector.get_view_names()), indexes

    return asyncio.run(migrations.run_async(url, inspect))


def test_report_views_come_with_revision_0002_and_go_with_its_downgrade(database_url):
    migrations.upgrade(database_url)
    views, indexes = _schema(database_url)
    assert VIEWS <= views and NEW_INDEXES <= indexes
    for view in VIEWS:
        assert query(database_url, f"SELECT COUNT(*) FROM {view}") == [(0,)]
    migrations.downgrade(database_url, "0001")
    views, indexes = _schema(database_url)
    assert not (VIEWS & views) and not (NEW_INDEXES & indexes)
    migrations.downgrade(database_url, "base")
    migrations.upgrade(database_url)
    assert VIEWS <= _schema(database_url)[0]


def _export(url, spans, tmp_path):
    exporter = SQLSpanExporter(url, spool_dir=tmp_path / "spool", handle_sigterm=False)
    try:
        for i in range(0, len(spans), 200):
            assert exporter.export(spans[i : i + 200]).name == "SUCCESS"
    finally:
        exporter.shutdown()


def test_documented_queries_agree_with_the_tables(database_url, tmp_path):
    spans, expected = make_workflows(40, llm_calls=3, steps=2, seed=21, failing_every=5, over_budget_every=7)
    _export(database_url, spans, tmp_path)

    per_workflow = query(database_url, QUERIES["cost_per_workflow"])
    totals = dict(
        (r[0], r[1:])
        for r in query(
            database_url,
            "SELECT workflow_id, COUNT(*), SUM(llm_calls), SUM(input_tokens), SUM(output_tokens), SUM(cost_total_usd)"
            " FROM workflow_executions GROUP BY workflow_id",
        )
    )
    assert {r[0] for r in per_workflow} == set(totals)
    for row in per_workflow:
        assert row[1:5] == totals[row[0]][:4] and row[5] == pytest.approx(totals[row[0]][4])
    assert [r[5] for r in per_workflow] == sorted((r[5] for r in per_workflow), reverse=True)

    per_model = query(database_url, QUERIES["cost_per_model_per_day"])
    assert sum(r[2] for r in per_model) == 40 * 3
    assert sum(r[6] for r in per_model) == pytest.approx(sum(e["cost"] for e in expected.executions.values()))

    bad = query(database_url, QUERIES["over_budget_or_failed"])
    want = {i for i, e in expected.executions.items() if e["status"] != "COMPLETED"}
    assert {r[1] for r in bad} == want and {r[2] for r in bad} == {"FAILED", "BUDGET_EXCEEDED"}

    costly = query(database_url, QUERIES["most_expensive_steps"])
    (top_cost,) = query(database_url, "SELECT MAX(cost_usd) FROM step_executions")[0]
    assert len(costly) == 10 and costly[0][4] == pytest.approx(top_cost) and costly[0][0].startswith("wf-")
    slow = query(database_url, QUERIES["slowest_steps"])
    (top_duration,) = query(database_url, "SELECT MAX(duration_ms) FROM step_executions WHERE kind <> 'workflow'")[0]
    assert slow[0][4] == pytest.approx(top_duration) and all(r[3] != "workflow" for r in slow)

    execution_id = next(iter(expected.executions))
    steps = query(database_url, QUERIES["steps_of_an_execution"], execution_id=execution_id)
    assert [s[1] for s in steps] == ["workflow", "step", "step", "llm", "llm", "llm"]

    where = query(database_url, QUERIES["step_costs_of_a_workflow"], workflow="wf-0")
    assert {(r[0], r[1]) for r in where} >= {("step-0", "step"), ("step-1", "step")}
    assert sum(r[2] for r in where if r[1] == "llm") == 3 * sum(1 for i in range(40) if i % 3 == 0)


def test_prune_deletes_old_executions_with_their_steps_and_says_how_many(database_url, tmp_path, capsys):
    now = time.time_ns()
    old, _ = make_workflows(3, llm_calls=2, steps=1, seed=22, start_ns=now - 40 * DAY_NS)
    new, expected_new = make_workflows(4, llm_calls=2, steps=1, seed=23, start_ns=now - DAY_NS)
    _export(database_url, old + new, tmp_path)

    assert main(["--database-url", database_url, "db", "prune", "--older-than", "30d", "--dry-run"]) == 0
    assert "would delete 3 executions and 12 steps" in capsys.readouterr().out
    assert main(["--database-url", database_url, "db", "prune", "--older-than", "30d"]) == 0
    assert "deleted 3 executions and 12 steps" in capsys.readouterr().out
    remaining = {r[0] for r in query(database_url, "SELECT id FROM workflow_executions")}
    assert remaining == set(expected_new.executions)
    assert query(database_url, "SELECT COUNT(*) FROM step_executions") == [(16,)]
    orphans = query(
        database_url,
        "SELECT COUNT(*) FROM step_executions s WHERE NOT EXISTS"
        " (SELECT 1 FROM workflow_executions e WHERE e.id = s.execution_id)",
    )
    assert orphans == [(0,)]


def test_report_command_prints_every_section_from_the_views(database_url, tmp_path, capsys):
    spans, expected = make_workflows(6, seed=24, failing_every=3)
    _export(database_url, spans, tmp_path)
    execution_id = next(iter(expected.executions))
    assert main(["--database-url", database_url, "report", "--workflow", "wf-0", "--execution", execution_id]) == 0
    out = capsys.readouterr().out
    for title in (
        "Recent executions",
        "Cost per workflow",
        "Cost per model per day",
        "Executions that failed or exceeded their budget",
        "Most expensive steps",
        "Slowest steps",
        "Where the cost and time of workflow wf-0 go",
        f"Steps of execution {execution_id}",
    ):
        assert f"== {title}" in out
    assert "FAILED" in out and "gpt-4o" in out


def test_db_current_names_the_head_and_the_revisions_applied(database_url, capsys):
    assert main(["--database-url", database_url, "db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["--database-url", database_url, "db", "current"]) == 0
    out = capsys.readouterr().out
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    assert out.startswith(f"{head} (head)") and "applied 0001" in out and "applied 0002" in out


def test_prune_refuses_an_age_it_cannot_read(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        main(["--database-url", "sqlite:///unused.db", "db", "prune", "--older-than", "soon"])
    assert exit_info.value.code == 2 and "soon" in capsys.readouterr().err
