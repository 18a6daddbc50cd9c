"""uploads are content-addressed: one model per key for the same spec and weights

Rows already stored keep a NULL digest (NULLs never collide in a unique index, on
SQLite or PostgreSQL), so existing duplicates and their jobs stay as they are.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 13:15:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_models_owner_digest", ["owner_id", "digest"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index("ix_models_owner_digest")
        batch_op.drop_column("digest")
