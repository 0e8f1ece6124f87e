"""The first schema: conversations and their messages.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PrimaryKey = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("pk", PrimaryKey, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "messages",
        sa.Column("pk", PrimaryKey, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("conversation_id", sa.String(32), sa.ForeignKey("conversations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reply_to", sa.String(32), nullable=True),
        sa.Column("finish_reason", sa.String(16), nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("time_to_first_token", sa.Float, nullable=True),
        sa.Column("total_time", sa.Float, nullable=True),
        sa.Column("params", sa.JSON, nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_messages_conversation_pk", "messages", ["conversation_id", "pk"])


def downgrade() -> None:
    op.drop_index("ix_messages_conversation_pk", "messages")
    op.drop_table("messages")
    op.drop_table("conversations")
