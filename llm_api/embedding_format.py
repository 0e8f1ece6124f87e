"""OpenAI's embeddings response: a ``list`` of ``embedding`` objects, each vector as floats or as base64.

``base64`` is the vector's little-endian float32 bytes, base64-encoded, as OpenAI's clients decode it
(the official Python client asks for it by default and decodes it with numpy).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from .services.embeddings import EmbeddingResult


def embedding_list(result: EmbeddingResult, encoding_format: str) -> dict[str, Any]:
    rows = np.asarray(result.rows, dtype="<f4")
    if encoding_format == "base64":
        vectors: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    else:
        vectors = rows.tolist()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": vector} for index, vector in enumerate(vectors)],
        "model": result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
