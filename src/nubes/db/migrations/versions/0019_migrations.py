"""migrations: servers moving between hosts (live or cold)

Revision ID: 0019
Revises: 0018
"""
from alembic import op
import sqlalchemy as sa


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'migrations',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('instance_id', sa.String(length=36), nullable=False),
        sa.Column('source_host_id', sa.String(length=36), nullable=False),
        sa.Column('target_host_id', sa.String(length=36), nullable=False),
        sa.Column('live', sa.Boolean(), nullable=False),
        sa.Column('phase', sa.String(length=16), nullable=False),
        sa.Column('port', sa.Integer(), nullable=False),
        sa.Column('nbd_port', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('source_cleaned', sa.Boolean(), nullable=False),
        sa.Column('target_cleaned', sa.Boolean(), nullable=False),
        sa.Column('total_ms', sa.Integer(), nullable=False),
        sa.Column('downtime_ms', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['instance_id'], ['instances.id']),
        sa.ForeignKeyConstraint(['source_host_id'], ['hosts.id']),
        sa.ForeignKeyConstraint(['target_host_id'], ['hosts.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_migrations_instance_id', 'migrations', ['instance_id'])


def downgrade() -> None:
    op.drop_index('ix_migrations_instance_id', table_name='migrations')
    op.drop_table('migrations')
