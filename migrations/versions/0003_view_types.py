"""report views: one Python type per column on both engines

PostgreSQL sums BIGINT columns as NUMERIC, so the token sums of the report views
(``cost_per_workflow.input_tokens``, ``cost_per_model_per_day.cached_tokens``...)
came back as ``Decimal`` there and as ``int`` on SQLite. On PostgreSQL they are
now cast back to BIGINT (``int`` in Python), saturating at the BIGINT maximum so
the cast never fails; SQLite's views are unchanged (its SUM of integers is an
integer). Amounts were already floating point on both (``double precision`` /
``REAL``); counts (``COUNT(*)``, sums of ``llm_calls`` and of flags) already ints.

Revision ID: 0003_view_types
Revises: 0002
Create Date: 2026-12-06
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0003_view_types"
down_revision = "0002"
branch_labels = None
depends_on = None

BIGINT_MAX = (1 << 63) - 1
_TOKEN_SUMS = (
    "e.input_tokens",
    "e.output_tokens",
    "s.input_tokens",
    "s.cache_read_tokens",
    "s.output_tokens",
    "s.reasoning_tokens",
)


def _report_views(dialect: str) -> dict[str, str]:
    """Revision 0002's view definitions (one source for both revisions).

    Loaded from its file: alembic loads revisions by path, not as a package's modules.
    """
    spec = importlib.util.spec_from_file_location("_wflo_otel_0002", Path(__file__).with_name("0002_report_views.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._views(dialect)


def typed_views(dialect: str) -> dict[str, str]:
    """The report views with each token sum an integer on ``dialect``."""
    views = _report_views(dialect)
    if dialect != "postgresql":
        return views
    typed = {}
    for name, body in views.items():
        for column in _TOKEN_SUMS:
            body = body.replace(f"SUM({column})", f"CAST(LEAST(SUM({column}), {BIGINT_MAX}) AS BIGINT)")
        typed[name] = body
    return typed


def _replace_views(views: dict[str, str]) -> None:
    for name in reversed(list(views)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name, body in views.items():
        op.execute(f"CREATE VIEW {name} AS{body}")
    if op.get_bind().dialect.name == "postgresql":
        for name in views:
            op.execute(f"COMMENT ON VIEW {name} IS 'wflo-otel report view (alembic revision {revision})'")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        _replace_views(typed_views(dialect))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        _replace_views(_report_views(dialect))
