"""The tables at the newest schema revision (the migrations build them step by step)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# BIGINT on PostgreSQL; SQLite only auto-increments a column declared INTEGER PRIMARY KEY.
PrimaryKey = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

conversations = sa.Table(
    "conversations", metadata,
    sa.Column("pk", PrimaryKey, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("owner", sa.String(64), nullable=False, server_default=""),
    sa.Index("ix_conversations_owner_pk", "owner", "pk"),
)

messages = sa.Table(
    "messages", metadata,
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
    sa.Column("owner", sa.String(64), nullable=False, server_default=""),
    sa.Index("ix_messages_conversation_pk", "conversation_id", "pk"),
    sa.Index("ix_messages_owner_role_pk", "owner", "role", "pk"),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("pk", PrimaryKey, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scopes", sa.String(200), nullable=False),
    sa.Column("rpm", sa.Integer, nullable=True),
    sa.Column("tpm", sa.Integer, nullable=True),
    sa.Column("max_streams", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

# Values the service generates once and every worker shares (the stream-token signing secret).
service_secrets = sa.Table(
    "service_secrets", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
)
