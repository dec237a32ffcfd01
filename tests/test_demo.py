"""The demo end to end: real openai client, local server, SQLite, costs checked against genai-prices."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import genai_prices
import pytest

from wflo_otel.configuration import current_handle
from wflo_otel.demo.agent import main


def _rows(path, sql: str) -> list[sqlite3.Row]:
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _genai_prices_cost(step: sqlite3.Row) -> float:
    """The price straight from genai-prices, independent of wflo-otel's compiled fast path."""
    usage = genai_prices.Usage(
        input_tokens=step["input_tokens"],
        cache_read_tokens=step["cache_read_tokens"] or 0,
        output_tokens=step["output_tokens"],
        output_reasoning_tokens=step["reasoning_tokens"] or 0,
    )
    return float(genai_prices.calc_price(usage, model_ref=step["response_model"], provider_id="openai").total_price)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    """Run the demo once in this process, quietly, against a fresh SQLite file."""
    if current_handle() is not None:
        pytest.skip("another test left wflo-otel configured in this process")
    path = tmp_path_factory.mktemp("demo") / "wflo.db"
    assert main(f"sqlite+aiosqlite:///{path}", quiet=True) == 0
    assert current_handle() is None, "the demo must leave no configuration behind"
    return path


def test_demo_leaves_no_configuration_behind(demo_db):
    assert current_handle() is None


def test_demo_writes_definitions_and_both_outcomes(demo_db):
    definitions = {r["id"]: r for r in _rows(demo_db, "SELECT * FROM workflow_definitions")}
    assert {"support-agent", "summarize"} <= definitions.keys()

    statuses = [r["status"] for r in _rows(demo_db, "SELECT status FROM workflow_executions")]
    assert "COMPLETED" in statuses
    assert "BUDGET_EXCEEDED" in statuses
    assert "RUNNING" not in statuses  # every root span landed

    (over,) = _rows(demo_db, "SELECT * FROM workflow_executions WHERE status = 'BUDGET_EXCEEDED'")
    assert over["workflow_id"] == "support-agent"
    assert over["budget_usd"] == pytest.approx(0.0005)
    assert over["cost_total_usd"] <= over["budget_usd"]  # refused before overspending
    assert "BudgetExceededError" in (over["error"] or "") or "refused" in (over["error"] or "")
    assert '"ticket"' in over["inputs"]


def test_demo_step_shapes(demo_db):
    steps = _rows(demo_db, "SELECT * FROM step_executions")
    by_name = {}
    for step in steps:
        by_name.setdefault(step["name"], []).append(step)
    assert {s["kind"] for s in by_name["retrieve"]} == {"tool"}
    for name in ("classify", "draft-reply", "review"):
        assert {s["kind"] for s in by_name[name]} == {"step"}
    llm = [s for s in steps if s["kind"] == "llm"]
    models = {s["response_model"] for s in llm if s["response_model"]}
    assert any(m.startswith("gpt-4o-mini") for m in models)
    assert any(m.startswith("o4-mini") for m in models)
    # the streamed draft is a priced LLM call like the others
    streamed = [s for s in llm if json.loads(s["attributes"] or "{}").get("gen_ai.request.stream") is True]
    assert streamed and all(s["cost_usd"] and s["cost_usd"] > 0 for s in streamed)
    # the refused call is recorded, but nothing was sent so it costs nothing
    refused = [s for s in llm if s["error_type"] == "BudgetExceededError"]
    assert len(refused) == 1
    assert refused[0]["input_tokens"] is None and not refused[0]["cost_usd"]


def test_demo_llm_costs_match_genai_prices(demo_db):
    llm = _rows(demo_db, "SELECT * FROM step_executions WHERE kind = 'llm' AND input_tokens IS NOT NULL")
    assert len(llm) >= 5
    for step in llm:
        assert step["cost_usd"] is not None, dict(step)
        assert step["cost_source"].startswith("genai-prices@"), dict(step)
        assert step["cost_usd"] == pytest.approx(_genai_prices_cost(step), rel=1e-9, abs=0), dict(step)
    assert any(s["cache_read_tokens"] > 0 for s in llm)
    assert any(s["reasoning_tokens"] > 0 for s in llm)


def test_demo_execution_totals_are_the_sum_of_their_llm_steps(demo_db):
    executions = _rows(demo_db, "SELECT * FROM workflow_executions")
    assert len(executions) >= 3
    for execution in executions:
        steps = _rows(
            demo_db,
            f"SELECT cost_usd, input_tokens, output_tokens, error_type FROM step_executions "
            f"WHERE kind = 'llm' AND execution_id = '{execution['id']}'",
        )
        assert steps, execution["id"]
        expected = sum(s["cost_usd"] or 0.0 for s in steps)
        assert execution["cost_total_usd"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
        sent = [s for s in steps if s["error_type"] != "BudgetExceededError"]
        assert execution["llm_calls"] == len(sent)
        assert execution["input_tokens"] == sum(s["input_tokens"] or 0 for s in steps)


def test_python_m_demo_writes_default_database_in_cwd(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WFLO_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-m", "wflo_otel.demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for heading in ("== Recent executions", "== Cost per workflow", "== Cost per model per day"):
        assert heading in out
    assert "support-agent" in out and "BUDGET_EXCEEDED" in out and "COMPLETED" in out
    assert "BudgetExceededError" in out
    assert 'sqlite3 wflo.db "SELECT' in out
    db = tmp_path / "wflo.db"
    assert db.is_file()
    assert f"Database: {db}" in out
    assert _rows(db, "SELECT COUNT(*) AS n FROM workflow_executions")[0]["n"] >= 3
