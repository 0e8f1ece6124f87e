"""Building a prompt from a stored conversation, and trimming it to the model's context.

Plain functions over plain data: no engine, no database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..storage import Message

ChatMessage = dict[str, str]


def prompt_history(stored: Sequence[Message]) -> list[ChatMessage]:
    """The stored turns the model should see, in order.

    Each user turn is followed by its answer. A user turn whose answer is
    missing (still generating, or the server stopped) or failed is left out,
    with its answer, so the model never sees a question twice or an error.
    """
    answers = {m.reply_to: m for m in stored if m.role == "assistant" and m.reply_to}
    history: list[ChatMessage] = []
    for message in stored:
        if message.role == "system" or (message.role == "assistant" and message.reply_to is None):
            history.append({"role": message.role, "content": message.content})
        elif message.role == "user":
            answer = answers.get(message.id)
            if answer is None or answer.finish_reason == "error" or not answer.content:
                continue
            history += [{"role": "user", "content": message.content},
                        {"role": "assistant", "content": answer.content}]
    return history


def turn_groups(messages: Sequence[ChatMessage]) -> tuple[list[ChatMessage], list[list[ChatMessage]]]:
    """Split into the system messages and the turns after them (each turn starts at a user message)."""
    system = [m for m in messages if m["role"] == "system"]
    groups: list[list[ChatMessage]] = []
    for message in messages:
        if message["role"] == "system":
            continue
        if message["role"] == "user" or not groups:
            groups.append([])
        groups[-1].append(message)
    return system, groups


def fit_to_context(messages: list[ChatMessage], fits: Callable[[list[ChatMessage]], bool]
                   ) -> tuple[list[ChatMessage], int]:
    """Drop the fewest oldest turns so that ``fits(messages)``; system messages and the newest turn stay.

    Returns the messages and how many turns were dropped. When even the newest
    turn alone does not fit, it is returned alone, for the caller to reject.
    """
    if fits(messages):
        return messages, 0
    system, groups = turn_groups(messages)
    if len(groups) < 2:
        return messages, 0

    def keep_from(dropped: int) -> list[ChatMessage]:
        return system + [m for group in groups[dropped:] for m in group]

    low, high = 1, len(groups) - 1  # the answer lies in [low, high]; high always qualifies as the fallback
    while low < high:
        middle = (low + high) // 2
        if fits(keep_from(middle)):
            high = middle
        else:
            low = middle + 1
    return keep_from(low), low
