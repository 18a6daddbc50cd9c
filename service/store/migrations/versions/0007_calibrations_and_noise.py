"""emulation: calibration snapshots, and the noise a model was trained for

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 21:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("noise", sa.JSON(), nullable=True))
    op.create_table(
        "calibrations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("backend", sa.String(length=200), nullable=False),
        sa.Column("calibrated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("backend", "calibrated_at", name="uq_calibrations_backend_time"),
    )


def downgrade() -> None:
    op.drop_table("calibrations")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("noise")
