"""An owner on every record, so reads can be scoped to the API key that wrote them.

Existing rows get the empty owner (written before keys existed).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("conversations", "messages"):
        op.add_column(table, sa.Column("owner", sa.String(64), nullable=False, server_default=""))
    op.create_index("ix_conversations_owner_pk", "conversations", ["owner", "pk"])
    op.create_index("ix_messages_owner_role_pk", "messages", ["owner", "role", "pk"])


def downgrade() -> None:
    op.drop_index("ix_messages_owner_role_pk", "messages")
    op.drop_index("ix_conversations_owner_pk", "conversations")
    for table in ("messages", "conversations"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner")
