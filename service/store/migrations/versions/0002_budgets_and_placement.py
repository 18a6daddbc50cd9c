"""budgets per key; estimates, calibrated placement and cost per job

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 14:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_shots", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("max_cost", sa.Float(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pack_auto", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("estimate", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("placement", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("qpu_seconds", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("cost", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in ("cost", "qpu_seconds", "placement", "estimate", "pack_auto"):
            batch_op.drop_column(column)
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("max_cost")
        batch_op.drop_column("max_shots")
