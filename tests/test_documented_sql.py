"""The SQL users read in the README and docs/queries.md is the SQL that runs, on both engines."""

from __future__ import annotations

import re
from pathlib import Path

from test_store_support import make_workflows, query
from wflo_otel.exporters.sql import SQLSpanExporter
from wflo_otel.reports import QUERIES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUERIES_DOC = ROOT / "docs" / "queries.md"
SQL_BLOCK = re.compile(r"```sql\n(.*?)\n```", re.S)


def sql_blocks(path: Path) -> list[str]:
    return [block.strip() for block in SQL_BLOCK.findall(path.read_text())]


def test_every_report_query_is_documented_as_it_runs():
    documented = sql_blocks(QUERIES_DOC)
    for name, sql in QUERIES.items():
        assert sql in documented, f"docs/queries.md is missing the {name} query as `wflo-otel report` runs it"


def test_every_readme_query_is_one_the_tests_execute():
    documented = set(sql_blocks(QUERIES_DOC))
    readme = sql_blocks(README)
    assert readme, "the README shows no SQL"
    for sql in readme:
        assert sql in documented, f"README SQL not in docs/queries.md (so not executed by tests):\n{sql}"


def test_every_documented_query_runs_on_both_engines(database_url, tmp_path):
    spans, _expected = make_workflows(6, llm_calls=2, steps=1, workflow="wf-0", failing_every=3)
    exporter = SQLSpanExporter(database_url, spool_dir=tmp_path / "spool", handle_sigterm=False)
    try:
        assert exporter.export(spans).name == "SUCCESS"
    finally:
        exporter.shutdown()
    (execution_id,) = query(database_url, "SELECT id FROM workflow_executions ORDER BY id LIMIT 1")[0]
    values = {"execution_id": execution_id, "workflow": "wf-0"}
    for sql in sql_blocks(QUERIES_DOC):
        params = {name: values[name] for name in re.findall(r"(?<!:):(\w+)", sql)}
        rows = query(database_url, sql, **params)
        if sql in QUERIES.values():
            assert rows, f"a report query returned nothing on exported data:\n{sql}"
