"""answer log: the verdict and the per-sentence verification of every answer

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('answers') as batch:
        # Answers logged before verification existed have no verdict: NULL, not a guess.
        batch.add_column(sa.Column('grounding', sa.String(length=20), nullable=True))
        batch.add_column(sa.Column('sentences', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('mode', sa.String(length=20), nullable=True))
        batch.create_index('ix_answers_grounding', ['grounding'])


def downgrade() -> None:
    with op.batch_alter_table('answers') as batch:
        batch.drop_index('ix_answers_grounding')
        batch.drop_column('mode')
        batch.drop_column('sentences')
        batch.drop_column('grounding')
