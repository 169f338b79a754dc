"""security groups, their rules, and the groups of each server

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'security_groups',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('project_id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('description', sa.String(length=255), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('project_id', 'name'),
    )
    op.create_table(
        'security_group_rules',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('group_id', sa.String(length=36), nullable=False),
        sa.Column('direction', sa.String(length=8), nullable=False),
        sa.Column('protocol', sa.String(length=8), nullable=False),
        sa.Column('port_min', sa.Integer(), nullable=True),
        sa.Column('port_max', sa.Integer(), nullable=True),
        sa.Column('remote_cidr', sa.String(length=64), nullable=False),
        sa.Column('remote_group_id', sa.String(length=36), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['group_id'], ['security_groups.id']),
        sa.ForeignKeyConstraint(['remote_group_id'], ['security_groups.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_security_group_rules_group_id', 'security_group_rules', ['group_id'])
    op.create_table(
        'instance_security_groups',
        sa.Column('instance_id', sa.String(length=36), nullable=False),
        sa.Column('group_id', sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(['instance_id'], ['instances.id']),
        sa.ForeignKeyConstraint(['group_id'], ['security_groups.id']),
        sa.PrimaryKeyConstraint('instance_id', 'group_id'),
    )


def downgrade() -> None:
    op.drop_table('instance_security_groups')
    op.drop_index('ix_security_group_rules_group_id', table_name='security_group_rules')
    op.drop_table('security_group_rules')
    op.drop_table('security_groups')
