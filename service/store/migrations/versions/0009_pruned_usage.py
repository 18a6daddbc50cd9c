"""api keys: what their pruned jobs had counted against their budgets

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 08:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pruned_shots", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("pruned_cost", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("pruned_cost")
        batch_op.drop_column("pruned_shots")
