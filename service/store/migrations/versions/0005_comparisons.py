"""comparisons: backends run on the same inputs against a reference, one job each

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 15:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=36), nullable=True),
        sa.Column("reference", sa.String(length=200), nullable=False),
        sa.Column("backends", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"]),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_comparisons_owner_id", "comparisons", ["owner_id"])
    op.create_index("ix_comparisons_created_at", "comparisons", ["created_at"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("comparison_id", sa.String(length=36), nullable=True))
        batch_op.create_index("ix_jobs_comparison_id", ["comparison_id"])
        batch_op.create_foreign_key("fk_jobs_comparison_id", "comparisons", ["comparison_id"], ["id"],
                                    ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jobs_comparison_id", type_="foreignkey")
        batch_op.drop_index("ix_jobs_comparison_id")
        batch_op.drop_column("comparison_id")
    op.drop_index("ix_comparisons_created_at", "comparisons")
    op.drop_index("ix_comparisons_owner_id", "comparisons")
    op.drop_table("comparisons")
