"""volumes travel with a migrating server: the hotplug port each is on, the volumes a
migration carries

Revision ID: 0020
Revises: 0019
"""
from alembic import op
import sqlalchemy as sa


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('volumes', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('port', sa.String(length=16), nullable=False, server_default='')
        )
    with op.batch_alter_table('migrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('volumes', sa.Text(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('migrations', schema=None) as batch_op:
        batch_op.drop_column('volumes')
    with op.batch_alter_table('volumes', schema=None) as batch_op:
        batch_op.drop_column('port')
