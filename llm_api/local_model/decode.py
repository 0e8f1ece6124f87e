"""Incremental detokenization that never emits half a character.

Byte-level BPE and SentencePiece byte fallback split emoji and CJK characters
across tokens; decoding a partial byte sequence yields U+FFFD. Decoding token by
token also loses word spaces. So each step decodes a short window of recent ids,
emits only the new suffix, and holds it back while it ends in U+FFFD.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    ``decode`` maps ids to text (special tokens skipped). The window starts a few
    tokens back so that tokenizers which drop a leading space on the first piece
    decode the new text exactly as the full sequence would.
    """

    def __init__(self, decode: Decode, context_tokens: int = 5) -> None:
        self._decode = decode
        self._context = context_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = 0  # ids before this have been emitted
        self.text = ""

    def push(self, token_id: int) -> str:
        """Add one id; return the text that is now complete (maybe "")."""
        self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """Emit whatever is held back (a trailing broken character becomes U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        window = self._ids[self._prefix_offset:]
        before = self._decode(self._ids[self._prefix_offset:self._read_offset])
        after = self._decode(window)
        incomplete = after.endswith(REPLACEMENT) and not final
        if len(after) <= len(before) or incomplete:
            return ""
        delta = after[len(before):]
        self._read_offset = len(self._ids)
        self._prefix_offset = max(0, self._read_offset - self._context)
        self.text += delta
        return delta
