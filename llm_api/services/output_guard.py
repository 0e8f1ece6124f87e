"""The output guard: checks each answer's growing text before it is sent, whatever engine generated it.

Two checks, both on text (not on tokens), both across token boundaries:

- **The content filter.** One Python regular expression (``LLM_API_OUTPUT_FILTER``) and/or a word
  list (``LLM_API_OUTPUT_FILTER_WORDS``: whole words or phrases, case-insensitive). The last
  ``holdback`` characters of the text are held back, because a later token could still complete a
  match that starts in them. On a match, the text before it is released, the rest never is, and the
  answer ends with ``content_filter``.
- **The repetition stop.** Word n-grams of the generated text are counted; when one occurs more
  than ``max_repeats`` times, the answer ends with ``repetition`` right after that word.

:class:`OutputGuard` is built once from the settings; :meth:`OutputGuard.check` gives each answer
its own :class:`OutputCheck`, which :class:`~llm_api.services.chat_stream.ChatStream` feeds every
delta through.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("llm_api.guard")

CONTENT_FILTER = "content_filter"
REPETITION = "repetition"

PATTERN_RULE = "LLM_API_OUTPUT_FILTER"
SCAN_BACK = 1024  # characters before the sent text (and its hold-back) that are scanned again on each delta
WORDS_RULE = "LLM_API_OUTPUT_FILTER_WORDS"

# Scripts written without spaces between words: each character counts as one word for the n-grams.
_NO_SPACE_SCRIPTS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_NO_SPACE_SCRIPTS}]|(?:(?![{_NO_SPACE_SCRIPTS}])\w)+")


@dataclass(frozen=True)
class GuardStop:
    """Why the guard ended an answer: its finish reason, the rule, and what matched (never logged by default)."""

    reason: str  # content_filter | repetition
    rule: str  # LLM_API_OUTPUT_FILTER, LLM_API_OUTPUT_FILTER_WORDS:<line>, or repetition:<n>x<max>
    matched: str  # the matched text, or the repeated n-gram
    sent: int  # characters of the answer released before the stop


@dataclass(frozen=True)
class _Filter:
    """One compiled rule: the user's regular expression, or the whole word list in one expression."""

    pattern: re.Pattern[str]
    name: str
    lines: dict[str, int] | None = None  # word list: normalized entry -> its line in the file

    def rule(self, match: re.Match[str]) -> str:
        if self.lines is None:
            return self.name
        line = self.lines.get(_normalized(match.group()))
        return f"{self.name}:{line}" if line is not None else self.name

    def first_match(self, text: str, pos: int) -> re.Match[str] | None:
        """The leftmost non-empty match starting at ``pos`` or later (characters before ``pos`` still
        count for lookbehinds and ``\\b``)."""
        return next((m for m in self.pattern.finditer(text, pos) if m.end() > m.start()), None)


def read_word_list(path: str) -> list[tuple[int, str]]:
    """(line number, entry) for each word or phrase in the file: one per line, ``#`` starts a comment line."""
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()
    entries = []
    for number, line in enumerate(lines, start=1):
        entry = " ".join(line.split())
        if entry and not entry.startswith("#"):
            entries.append((number, entry))
    return entries


def _normalized(text: str) -> str:
    return " ".join(text.split()).lower()


def _trie_expression(entries: Iterable[str]) -> str:
    """One expression for many literal entries, sharing their prefixes (Python's ``re`` tries the branches
    of a plain ``a|b|c`` one after another at every position, which is slow for long lists). A space in
    an entry matches any run of whitespace."""
    trie: dict[str, dict] = {}
    for entry in entries:
        node = trie
        for char in entry:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, dict]) -> str:
        branches = [(r"\s+" if char == " " else re.escape(char)) + build(child)
                    for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        if "" in node:
            return "(?:" + "|".join(branches) + ")?"
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return build(trie)


def word_list_filter(entries: list[tuple[int, str]]) -> _Filter | None:
    """Whole words or phrases, case-insensitive: an entry matches where no letter, digit or ``_`` touches it."""
    lines: dict[str, int] = {}
    for number, entry in entries:
        lines.setdefault(_normalized(entry), number)
    if not lines:
        return None
    pattern = re.compile(r"(?<!\w)" + _trie_expression(lines) + r"(?!\w)", re.IGNORECASE)
    return _Filter(pattern, WORDS_RULE, lines)


class _RepeatCounter:
    """Counts the word n-grams of a growing text; reports the first one seen more than ``limit`` times."""

    def __init__(self, n: int, limit: int) -> None:
        self._n = n
        self._limit = limit
        self._window: deque[str] = deque(maxlen=n)
        self._counts: dict[tuple[str, ...], int] = {}
        self._read = 0  # where the next word not yet counted may start

    def feed(self, text: str) -> tuple[int, tuple[str, ...]] | None:
        """Count the words completed in ``text`` since the last call; on a repeat beyond the limit,
        return where its last word ends and the n-gram."""
        for match in _WORD.finditer(text, self._read):
            if match.end() == len(text):
                break  # the word may go on in the next delta
            self._read = match.end()
            self._window.append(match.group().lower())
            if len(self._window) < self._n:
                continue
            gram = tuple(self._window)
            count = self._counts.get(gram, 0) + 1
            self._counts[gram] = count
            if count > self._limit:
                return match.end(), gram
        return None


class OutputCheck:
    """One answer's guard: feed it every delta, then call :meth:`finish` when the engine is done.

    Each call returns the text that is safe to send now. Once :attr:`stop` is set, nothing more is
    released: the caller should cancel the generation and end the answer with ``stop.reason``.
    """

    def __init__(self, filters: tuple[_Filter, ...] = (), holdback: int = 0, ngram: int = 0,
                 max_repeats: int = 0) -> None:
        self._filters = filters
        self._holdback = holdback if filters else 0
        self._repeats = _RepeatCounter(ngram, max_repeats) if ngram and max_repeats else None
        self._repeat_rule = f"repetition:{ngram}x{max_repeats}"
        self.text = ""  # everything received
        self.sent = 0  # how much of it has been released
        self.stop: GuardStop | None = None

    @property
    def active(self) -> bool:
        return bool(self._filters) or self._repeats is not None

    def feed(self, delta: str) -> str:
        """Add a delta; return what may be sent now (perhaps nothing). May set :attr:`stop`."""
        if self.stop is not None or not delta:
            return ""
        if not self.active:
            self.text += delta
            self.sent = len(self.text)
            return delta
        self.text += delta
        if self._repeats is not None:
            looped = self._repeats.feed(self.text)
            if looped is not None:
                end, gram = looped
                out = self._release(self.text[:end], final=True)  # the filter still applies to what is kept
                if self.stop is None:
                    self.stop = GuardStop(REPETITION, self._repeat_rule, " ".join(gram), self.sent)
                return out
        return self._release(self.text, final=False)

    def finish(self) -> str:
        """The generation ended by itself: check the whole text once more and release the rest of it."""
        if self.stop is not None:
            return ""
        return self._release(self.text, final=True)

    def _release(self, text: str, final: bool) -> str:
        """Release what is safe of ``text``. A match is acted on once a character follows it (a later token
        could still undo it, e.g. ``\\b`` or ``$``) or when ``final``; until then it is held back whole."""
        limit = len(text) if final else len(text) - self._holdback
        found = self._first_match(text)
        if found is not None:
            match, rule = found
            if final or match.end() < len(text):
                cut = max(match.start(), self.sent)  # what was sent already cannot be taken back
                out = text[self.sent:cut]
                self.sent = max(cut, self.sent)
                self.stop = GuardStop(CONTENT_FILTER, rule, match.group(), self.sent)
                return out
            limit = min(limit, match.start())
        if limit <= self.sent:
            return ""
        out = text[self.sent:limit]
        self.sent = limit
        return out

    def _first_match(self, text: str) -> tuple[re.Match[str], str] | None:
        # A match that starts in text already sent can no longer be cut, but it still stops the rest; one
        # that starts more than SCAN_BACK characters before it is not looked for, so the work per delta
        # stays bounded however long the answer grows.
        pos = max(0, self.sent - self._holdback - SCAN_BACK)
        best: tuple[re.Match[str], str] | None = None
        for rule in self._filters:
            match = rule.first_match(text, pos)
            if match is not None and (best is None or match.start() < best[0].start()):
                best = (match, rule.rule(match))
        return best


class OutputGuard:
    """The configured checks; :meth:`check` makes one :class:`OutputCheck` per answer."""

    def __init__(self, pattern: str = "", words: list[tuple[int, str]] | None = None, *, holdback: int = 64,
                 ngram: int = 10, max_repeats: int = 4, log_matches: bool = False) -> None:
        filters = []
        if pattern:
            filters.append(_Filter(re.compile(pattern), PATTERN_RULE))
        word_filter = word_list_filter(words or [])
        if word_filter is not None:
            filters.append(word_filter)
            # Never less than the longest entry, so that every listed word is caught across tokens.
            holdback = max(holdback, *(len(entry) for _, entry in words or []))
        self._filters = tuple(filters)
        self.holdback = holdback
        self._ngram = ngram
        self._max_repeats = max_repeats
        self._log_matches = log_matches

    @classmethod
    def from_settings(cls, settings: Settings) -> OutputGuard:
        words = read_word_list(settings.output_filter_words) if settings.output_filter_words else None
        return cls(settings.output_filter, words, holdback=settings.output_filter_holdback,
                   ngram=settings.repetition_ngram, max_repeats=settings.repetition_max,
                   log_matches=settings.log_prompts)

    def check(self, *, repetition: bool = True) -> OutputCheck:
        """A checker for one answer. ``repetition=False`` (requests with ``ignore_eos``, which ask for an
        exact length) leaves out the repetition stop."""
        return OutputCheck(self._filters, self.holdback, self._ngram,
                           self._max_repeats if repetition else 0)

    def report(self, stop: GuardStop, message_id: str, request_id: str | None = None) -> None:
        """Log one line for a stopped answer; the matched text only when prompts are logged too."""
        line = f"output guard stopped message_id={message_id} reason={stop.reason} rule={stop.rule} sent={stop.sent}"
        if self._log_matches:
            line += f" matched={stop.matched!r}"
        log.info(line, extra={"request_id": request_id})
