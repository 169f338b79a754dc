"""external networks, egress, routers' addresses and floating IPs

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('networks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('egress', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column('external', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('uplink', sa.String(length=15), nullable=False, server_default=''))
    op.create_table(
        'external_addresses',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('external_id', sa.String(length=36), nullable=False),
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.Column('project_id', sa.String(length=36), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('router_of', sa.String(length=36), nullable=True),
        sa.Column('port_id', sa.String(length=36), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['external_id'], ['networks.id']),
        sa.ForeignKeyConstraint(['router_of'], ['networks.id']),
        sa.ForeignKeyConstraint(['port_id'], ['ports.id']),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('external_id', 'address'),
        sa.UniqueConstraint('router_of'),
        sa.UniqueConstraint('port_id'),
    )


def downgrade() -> None:
    op.drop_table('external_addresses')
    with op.batch_alter_table('networks', schema=None) as batch_op:
        batch_op.drop_column('uplink')
        batch_op.drop_column('external')
        batch_op.drop_column('egress')
