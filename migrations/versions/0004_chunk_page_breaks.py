"""chunks: where each later page begins inside a chunk, so a span of it (a sentence's evidence) names its own pages

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for rows stored before this revision: their spans keep naming the chunk's pages until re-ingested.
    with op.batch_alter_table('chunks') as batch:
        batch.add_column(sa.Column('page_breaks', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('page_breaks')
