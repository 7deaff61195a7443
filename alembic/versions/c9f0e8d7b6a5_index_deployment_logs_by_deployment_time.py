"""index deployment_logs by deployment and time

Revision ID: c9f0e8d7b6a5
Revises: 7e5a1c9b2d34
Create Date: 2026-03-18 11:02:27.940311

"""
from typing import Sequence, Union

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c9f0e8d7b6a5"
down_revision: Union[str, None] = "7e5a1c9b2d34"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_deployment_logs_deployment_id_created_at", "deployment_logs",
                    ["deployment_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_deployment_logs_deployment_id_created_at", table_name="deployment_logs")
