"""servers from an installer ISO remember when their CD was ejected; fenced hosts

Revision ID: 0018
Revises: 0017
"""
from alembic import op
import sqlalchemy as sa


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('cdrom_ejected', sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column(
                'eject_after_install', sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fenced_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('fenced_at')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('eject_after_install')
        batch_op.drop_column('cdrom_ejected')
