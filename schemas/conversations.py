"""``/conversations``: query strings and the stored records as JSON."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from .chat import UsageSchema
from .fields import INT64_MAX


class _CursorQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    # a row id: past the 64-bit range no database can compare it (a 500 from SQLite before)
    cursor = fields.Integer(load_default=None, strict=False, validate=validate.Range(min=0, max=INT64_MAX),
                            metadata={"description": "the next_cursor of the previous page"})


class ConversationListQuerySchema(_CursorQuerySchema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


class ConversationMessagesQuerySchema(_CursorQuerySchema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=500))


class ConversationSchema(Schema):
    id = fields.String()
    title = fields.String()
    created_at = fields.DateTime(format="iso")
    updated_at = fields.DateTime(format="iso")


class StoredMessageSchema(Schema):
    message_id = fields.String(attribute="id")
    conversation_id = fields.String()
    role = fields.String()
    content = fields.String()
    created_at = fields.DateTime(format="iso")
    reply_to = fields.String(allow_none=True)
    finish_reason = fields.String(allow_none=True)
    usage = fields.Nested(UsageSchema, allow_none=True)
    time_to_first_token = fields.Float(allow_none=True)
    total_time = fields.Float(allow_none=True)
    params = fields.Dict(allow_none=True)
    model = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
