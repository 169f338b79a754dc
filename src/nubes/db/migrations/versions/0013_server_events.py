"""server events (GET /v1/events): a growing id, bounded retention

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'server_events',
        sa.Column(
            'id',
            sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column('project_id', sa.String(length=36), nullable=False),
        sa.Column('server_id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('task_state', sa.String(length=16), nullable=False),
        sa.Column('ready', sa.Boolean(), nullable=False),
        sa.Column('at', sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f('ix_server_events_project_id'), 'server_events', ['project_id'])
    op.create_index(op.f('ix_server_events_at'), 'server_events', ['at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_server_events_at'), table_name='server_events')
    op.drop_index(op.f('ix_server_events_project_id'), table_name='server_events')
    op.drop_table('server_events')
