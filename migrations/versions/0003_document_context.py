"""documents: what identifies a document (title provenance, date and its provenance, the period a report covers,
the header both indexes see with every chunk, and the version of the rules that found them)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('documents') as batch:
        batch.add_column(sa.Column('title_source', sa.String(length=20), nullable=True))
        batch.add_column(sa.Column('date', sa.String(length=10), nullable=True))
        batch.add_column(sa.Column('date_source', sa.String(length=20), nullable=True))
        batch.add_column(sa.Column('period', sa.String(length=10), nullable=True))
        batch.add_column(sa.Column('context', sa.Text(), nullable=True))
        # NULL: ingested before these rules; the next ingest reads the document again.
        batch.add_column(sa.Column('context_version', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('documents') as batch:
        for name in ('context_version', 'context', 'period', 'date_source', 'date', 'title_source'):
            batch.drop_column(name)
