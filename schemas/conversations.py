"""``/conversations``: query strings and the stored records as JSON."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate

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


# The title column's width; titles made from a first prompt are cut to 80 characters.
MAX_TITLE_LENGTH = 200


def _title(value: str) -> None:
    collapsed = " ".join(value.split())
    if not collapsed:
        raise ValidationError("Must not be empty.")
    if len(collapsed) > MAX_TITLE_LENGTH:
        raise ValidationError(f"Longer than {MAX_TITLE_LENGTH} characters.")


class ConversationRenameSchema(Schema):
    """``PATCH /conversations/<id>``: the new title (whitespace collapsed, as a title made from a prompt)."""

    class Meta:
        unknown = RAISE

    title = fields.String(required=True, validate=_title, metadata={
        "description": f"1 to {MAX_TITLE_LENGTH} characters once runs of whitespace are collapsed to one space"})

    @post_load
    def _collapse(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["title"] = " ".join(data["title"].split())
        return data


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
