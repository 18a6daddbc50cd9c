"""jobs: one index on (owner_id, state) in place of the one on owner_id

A submission counts its key's active jobs; the index on state alone made that
scan every key's active jobs. The new index serves owner_id lookups too.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 08:50:00
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_owner_state", ["owner_id", "state"], unique=False)
        batch_op.drop_index("ix_jobs_owner_id")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_owner_id", ["owner_id"], unique=False)
        batch_op.drop_index("ix_jobs_owner_state")
