"""A GIN index on the attributes of root and workflow spans (PostgreSQL)

The dashboard's executions page filters by an attribute of the execution
(``attr=tenant.id=acme``): what ``workflow(attributes=...)`` or a manual root span sets.
Without an index, a rare value costs a scan of the whole window (0.4 s at 1M steps); a
JSONB containment query on this partial GIN index answers it at once. Only root and
workflow spans are indexed (about one step in seven), so the store's insert throughput
loses 0-7 % where an index over every step's attributes cost 16-19 %
(``bench/attribute_index.py``). SQLite has no such index: it
reads each execution's roots through the ``execution_id`` index.

Revision ID: 0008_workflow_attributes_index
Revises: 0007_resume_generation
"""

from alembic import op
import sqlalchemy as sa

revision = "0008_workflow_attributes_index"
down_revision = "0007_resume_generation"
branch_labels = None
depends_on = None

INDEX = "ix_step_executions_workflow_attributes"
WORKFLOW_SPAN = "(kind = 'workflow' OR parent_span_id IS NULL)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(
        INDEX,
        "step_executions",
        ["attributes"],
        postgresql_using="gin",
        postgresql_ops={"attributes": "jsonb_path_ops"},
        postgresql_where=sa.text(WORKFLOW_SPAN),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, table_name="step_executions")
