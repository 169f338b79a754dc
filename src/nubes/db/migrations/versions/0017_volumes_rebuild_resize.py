"""volumes; instances' rebuild and resize generations; images made as snapshots of a server

Revision ID: 0017
Revises: 0016
"""
from alembic import op
import sqlalchemy as sa


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'volumes',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('project_id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('size_gb', sa.Integer(), nullable=False),
        sa.Column('image_id', sa.String(length=36), nullable=True),
        sa.Column('host_id', sa.String(length=36), nullable=True),
        sa.Column('instance_id', sa.String(length=36), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('fault', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id']),
        sa.ForeignKeyConstraint(['image_id'], ['images.id']),
        sa.ForeignKeyConstraint(['host_id'], ['hosts.id']),
        sa.ForeignKeyConstraint(['instance_id'], ['instances.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('project_id', 'name'),
    )
    op.create_index('ix_volumes_host_id', 'volumes', ['host_id'])
    op.create_index('ix_volumes_instance_id', 'volumes', ['instance_id'])
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rebuild_gen', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('resize_gen', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('snapshot_of', sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('snapshot_of')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('resize_gen')
        batch_op.drop_column('rebuild_gen')
    op.drop_index('ix_volumes_instance_id', table_name='volumes')
    op.drop_index('ix_volumes_host_id', table_name='volumes')
    op.drop_table('volumes')
