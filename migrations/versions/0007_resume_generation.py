"""execution_resumes.generation: one resume per stored state of an execution

Two processes that resume the same execution at the same time would each start their
ledger from the same stored spend and together spend up to twice the budget. A resume now
claims the execution: its row carries ``generation`` = the number of earlier resumes + 1,
read before the resume reads the stored spend, and ``(execution_id, generation)`` is
unique, so of two resumes that read the same state one inserts and the other gets
``ExecutionBusy``. Existing rows are numbered in the order they were made.

Revision ID: 0007_resume_generation
Revises: 0006_rollups
"""

from alembic import op
import sqlalchemy as sa

revision = "0007_resume_generation"
down_revision = "0006_rollups"
branch_labels = None
depends_on = None

INDEX = "uq_execution_resumes_execution_generation"


def upgrade() -> None:
    op.add_column("execution_resumes", sa.Column("generation", sa.Integer))
    op.execute(
        """
UPDATE execution_resumes SET generation = (
    SELECT COUNT(*) FROM execution_resumes earlier
    WHERE earlier.execution_id = execution_resumes.execution_id
      AND (earlier.created_at < execution_resumes.created_at
           OR (earlier.created_at = execution_resumes.created_at AND earlier.id <= execution_resumes.id))
)"""
    )
    op.create_index(INDEX, "execution_resumes", ["execution_id", "generation"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="execution_resumes")
    op.execute("ALTER TABLE execution_resumes DROP COLUMN generation")  # SQLite >= 3.35 and PostgreSQL
