"""``POST /v1/embeddings``: OpenAI's embeddings endpoint over the embedding models."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from blueprints import route
from llm_api import caller
from llm_api.embedding_format import embedding_list
from llm_api.http_body import read_json_body
from llm_api.services.embeddings import EmbeddingRequest
from llm_api.state import services
from schemas.embeddings import EmbeddingRequestSchema

bp = Blueprint("embeddings", __name__, url_prefix="/v1")


@route(bp, "/embeddings", ["POST"])  # the `chat` scope, like the other /v1 routes
def embeddings():  # noqa: ANN201
    fields = EmbeddingRequestSchema().load(read_json_body(request, current_app.config["LLM_API"].max_body_bytes))
    embedding_request = EmbeddingRequest(fields["model"], fields.get("texts"), fields.get("token_ids"),
                                         fields["dimensions"])
    result = services().embeddings.embed(embedding_request, caller.admission())
    return jsonify(embedding_list(result, fields["encoding_format"]))
