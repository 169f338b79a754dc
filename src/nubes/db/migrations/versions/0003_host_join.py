"""host join tokens and host credentials

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('join_tokens',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.Column('used_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_sha256')
    )
    op.create_table('host_credentials',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('host_id', sa.String(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('secret_sha256')
    )
    with op.batch_alter_table('host_credentials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_host_credentials_host_id'), ['host_id'], unique=False)
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('joined_via', sa.String(length=16), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('agent_version', sa.String(length=32), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('agent_version')
        batch_op.drop_column('joined_via')
    with op.batch_alter_table('host_credentials', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_host_credentials_host_id'))
    op.drop_table('host_credentials')
    op.drop_table('join_tokens')
