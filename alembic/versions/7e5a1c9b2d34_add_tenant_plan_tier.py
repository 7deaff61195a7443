"""add tenants.plan_tier

Revision ID: 7e5a1c9b2d34
Revises: 4d3b2f1a9c01
Create Date: 2026-02-03 16:40:51.602177

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = "7e5a1c9b2d34"
down_revision: Union[str, None] = "4d3b2f1a9c01"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Existing tenants get the server default, so the column can be NOT NULL straight away.
    op.add_column("tenants", sa.Column("plan_tier", sa.String(length=20), server_default="free", nullable=False))


def downgrade() -> None:
    op.drop_column("tenants", "plan_tier")
