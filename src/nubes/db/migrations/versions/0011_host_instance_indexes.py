"""indexes for a host's instances and an instance's ports (each desired state reads them)

Revision ID: 0011
Revises: 0010
"""
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_instances_host_deleted', 'instances', ['host_id', 'deleted_at'])
    op.create_index(op.f('ix_ports_instance_id'), 'ports', ['instance_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_ports_instance_id'), table_name='ports')
    op.drop_index('ix_instances_host_deleted', table_name='instances')
