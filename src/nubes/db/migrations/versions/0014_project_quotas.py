"""quotas per project: a project's own limits (the defaults are settings)

Revision ID: 0014
Revises: 0013
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'project_quotas',
        sa.Column('project_id', sa.String(length=36), nullable=False),
        sa.Column('resource', sa.String(length=32), nullable=False),
        sa.Column('limit', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('project_id', 'resource'),
    )


def downgrade() -> None:
    op.drop_table('project_quotas')
