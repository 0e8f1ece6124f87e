"""Reading one request's events straight from an engine (the in-process model tests)."""

from __future__ import annotations

from llm_api.generation import Finished, GenerationStream, TextDelta


def collect(handle: GenerationStream, timeout: float = 60, cancel_after: int | None = None,
            cancel_reason: str = "cancelled") -> tuple[str, Finished, int]:
    """Read ``handle`` to its end: (the text, the ``Finished``, how many deltas). With ``cancel_after``, cancel
    (with ``cancel_reason``) once that many deltas have arrived. Fails if no event comes within ``timeout``."""
    text, deltas = "", 0
    while True:
        event = handle.next_event(timeout)
        assert event is not None, f"no event within {timeout:g} s"
        if isinstance(event, TextDelta):
            text += event.text
            deltas += 1
            if cancel_after is not None and deltas == cancel_after:
                handle.cancel(cancel_reason)
        elif isinstance(event, Finished):
            handle.close()
            return text, event, deltas
