"""tag notes, backfilled from the data

Revision ID: b2b2b2b2b2b2
Revises: a1a1a1a1a1a1
"""
from alembic import op
import sqlalchemy as sa

revision = "b2b2b2b2b2b2"
down_revision = "a1a1a1a1a1a1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notes", sa.Column("tag", sa.String(20)))
    # a data migration that reads the database: it cannot run in Alembic's offline mode (--sql)
    count = op.get_bind().execute(sa.text("SELECT count(*) FROM notes")).scalar()
    if count:
        op.execute("UPDATE notes SET tag = 'old'")


def downgrade() -> None:
    op.drop_column("notes", "tag")
