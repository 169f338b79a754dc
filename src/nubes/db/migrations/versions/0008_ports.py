"""ports: NIC order, port security (and its network default), allowed address pairs

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('position', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('port_security', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column('allowed_addresses', sa.Text(), nullable=False, server_default='[]'))
    with op.batch_alter_table('networks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('port_security', sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table('networks', schema=None) as batch_op:
        batch_op.drop_column('port_security')
    with op.batch_alter_table('ports', schema=None) as batch_op:
        batch_op.drop_column('allowed_addresses')
        batch_op.drop_column('port_security')
        batch_op.drop_column('position')
