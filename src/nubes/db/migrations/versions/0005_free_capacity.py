"""free capacity indexed: the scheduler's ORDER BY free RAM, name ... LIMIT k walks an index

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        # host names by code point, as on SQLite and in Python (the scheduler's tie order)
        op.alter_column('hosts', 'name', type_=sa.String(64, collation='C'),
                        existing_type=sa.String(64), existing_nullable=False)
    op.create_index('ix_hosts_most_free_ram', 'hosts', [sa.text('(used_ram_mb - ram_mb)'), 'name'])
    op.create_index('ix_hosts_least_free_ram', 'hosts', [sa.text('(ram_mb - used_ram_mb)'), 'name'])


def downgrade() -> None:
    op.drop_index('ix_hosts_least_free_ram', table_name='hosts')
    op.drop_index('ix_hosts_most_free_ram', table_name='hosts')
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('hosts', 'name', type_=sa.String(64),
                        existing_type=sa.String(64, collation='C'), existing_nullable=False)
