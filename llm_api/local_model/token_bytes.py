"""The bytes each token stands for, as OpenAI's ``logprobs`` report them (``bytes`` holds a token's own
bytes even when it ends inside a UTF-8 character, so a client can join them back).

Three kinds of vocabulary: byte-level BPE (GPT-2's alphabet of 256 printable stand-ins, one per byte:
SmolLM2, Llama 3, Qwen), SentencePiece with byte fallback (``<0xE4>`` pieces and ``▁`` for a space:
ChatGLM3, Llama 2), and anything else, where the token's decoded text is the best answer there is.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SENTENCEPIECE_SPACE = "\u2581"
_PROBE = 512  # vocabulary entries looked at to recognise a byte-level alphabet


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's table from the stand-in characters back to bytes (the inverse of ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def token_bytes_function(tokenizer: Any) -> Callable[[int], bytes]:
    """``token id → bytes`` for ``tokenizer`` (cached per id)."""
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    decoder = _byte_decoder()

    def piece(token_id: int) -> str | None:
        try:
            value = tokenizer.convert_ids_to_tokens(token_id)
        except Exception:
            return None
        return value if isinstance(value, str) else None

    probe = [p for p in (piece(i) for i in range(min(_PROBE, len(tokenizer)))) if p]
    byte_level = bool(probe) and all(c in decoder for p in probe for c in p)

    @functools.lru_cache(maxsize=65536)
    def token_bytes(token_id: int) -> bytes:
        text = piece(token_id)
        if text is None or token_id in special:
            return str(text if text is not None else tokenizer.decode([token_id])).encode()
        match = _BYTE_PIECE.fullmatch(text)
        if match:
            return bytes([int(match.group(1), 16)])
        if byte_level and all(c in decoder for c in text):
            return bytes(decoder[c] for c in text)
        if _SENTENCEPIECE_SPACE in text:
            return text.replace(_SENTENCEPIECE_SPACE, " ").encode()
        return str(tokenizer.decode([token_id])).encode()

    return token_bytes
