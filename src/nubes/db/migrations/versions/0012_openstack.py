"""the OpenStack layer: Keystone tokens, application credentials, Neutron's pending networks

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('properties', sa.Text(), nullable=False, server_default='{}'))
    op.create_table(
        'os_tokens',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('token_sha256', sa.String(length=64), nullable=False),
        sa.Column('project_id', sa.String(length=36), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('methods', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_sha256'),
    )
    op.create_index(op.f('ix_os_tokens_expires_at'), 'os_tokens', ['expires_at'])
    op.create_table(
        'os_app_credentials',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('secret_sha256', sa.String(length=64), nullable=False),
        sa.Column('project_id', sa.String(length=36), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'os_networks',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('project_id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('subnet_name', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_os_networks_project_id'), 'os_networks', ['project_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_os_networks_project_id'), table_name='os_networks')
    op.drop_table('os_networks')
    op.drop_table('os_app_credentials')
    op.drop_index(op.f('ix_os_tokens_expires_at'), table_name='os_tokens')
    op.drop_table('os_tokens')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('properties')
