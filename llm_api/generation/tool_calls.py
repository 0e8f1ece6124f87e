"""Reading tool calls out of a model's text as it streams: the call's name first, then its arguments in
fragments, as OpenAI streams ``tool_calls``; anything that is not a call passes through as text.

Two syntaxes, chosen by the model's prompt format (docs/api.md, "Tool calling"):

- ``json``: ``{"name": "<function>", "arguments": {...}}``, optionally inside tags such as
  ``<tool_call>…</tool_call>`` (Hermes, Qwen); with ``auto`` also ``"arguments"`` given as a JSON string, a
  list of such objects, or the object inside a Markdown code fence.
- ``name_line``: ChatGLM3's: the function's name on the first line, then the arguments, either a JSON object
  or its own ``tool_call(key=value, ...)`` (read with :mod:`ast`, never evaluated), in or out of a fence.

An answer whose beginning cannot be a call is text from its first characters on; one that might be is held
back until it is clearly one or the other (or the answer ends).
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from .types import TextDelta

_HEAD = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_HEAD_SKELETON = '{"name":"'
_ARGS_SKELETON = ',"arguments":'
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.S)
_UNDECIDED_LIMIT = 512  # characters held back, at most, while an auto answer might still become a call


@dataclass(frozen=True)
class ToolSyntax:
    kind: Literal["json", "name_line"] = "json"
    open_tag: str = ""
    close_tag: str = ""


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of tool call ``index``: its first delta has ``id`` and ``name``; later ones argument text."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


Piece = TextDelta | ToolCallDelta


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolCallReader:
    """Turns one answer's text into text deltas and tool-call deltas."""

    def __init__(self, syntax: ToolSyntax, tool_names: frozenset[str], forced: bool) -> None:
        self._syntax = syntax
        self._names = tool_names
        self._forced = forced
        self._state: Literal["undecided", "text", "arguments", "raw", "after"] = "undecided"
        self._buffer = ""  # undecided text, or raw arguments (a ChatGLM3 tool_call, a JSON string)
        self._scan = _ValueScanner()
        self._closing = ""  # what closes the call just read (its wrapper's brace, the closing tag), to drop
        self.calls = 0

    @property
    def called(self) -> bool:
        return self.calls > 0

    def feed(self, text: str) -> list[Piece]:
        if not text:
            return []
        if self._state == "text":
            return [TextDelta(text)]
        if self._state == "arguments":
            return self._arguments(text)
        self._buffer += text
        if self._state in ("raw", "after"):
            return []
        return self._decide()

    def finish(self) -> list[Piece]:
        """The answer ended: settle what is held back."""
        pieces: list[Piece] = []
        if self._state == "raw":
            raw = self._buffer
            if self._syntax.kind == "json":  # arguments given as a JSON string: drop the wrapper's end
                raw = raw.rstrip()
                tag = self._syntax.close_tag.strip()
                raw = raw[:-len(tag)].rstrip() if tag and raw.endswith(tag) else raw
                raw = raw[:-1] if raw.endswith("}") else raw
            pieces.append(ToolCallDelta(self.calls - 1, _normalised_arguments(raw, self._syntax)))
        elif self._state == "undecided" and self._buffer.strip():
            calls = parse_tool_calls(self._buffer, self._syntax, self._names)
            if calls:
                for name, arguments in calls:
                    pieces += [self._open(name), ToolCallDelta(self.calls - 1, arguments)]
            elif not self.called:
                pieces.append(TextDelta(self._buffer))
        self._buffer = ""
        return pieces

    # ---- deciding ----------------------------------------------------------------------------------
    def _decide(self) -> list[Piece]:
        if self._syntax.kind == "name_line":
            return self._decide_name_line()
        return self._decide_json()

    def _drop_closing(self) -> bool:
        """Drop what closes the previous call from the buffer; False while it is still arriving."""
        while self._closing:
            text = self._buffer.lstrip()
            if not text:
                self._buffer = ""
                return False
            if self._closing.startswith(text[: len(self._closing)]) and len(text) < len(self._closing):
                return False
            if text.startswith(self._closing[0]):
                self._buffer, self._closing = text[1:], self._closing[1:].lstrip()
            else:
                self._closing = ""
        return True

    def _decide_json(self) -> list[Piece]:
        if not self._drop_closing():
            return []
        text = self._buffer.lstrip()
        tag = self._syntax.open_tag.strip()
        if tag:
            if tag.startswith(text):
                return []  # the tag is still arriving
            if text.startswith(tag):
                text = text[len(tag):].lstrip()
        match = _HEAD.match(text)
        if match:
            name = json.loads(f'"{match[1]}"')
            if name in self._names or self._forced:
                self._buffer = ""
                return [self._open(name), *self._arguments(text[match.end():])]
            return self._to_text()
        if self._forced or (_may_become_head(text) and len(self._buffer) < _UNDECIDED_LIMIT):
            return []
        fence_or_list = text.startswith(("```", "[")) or "```".startswith(text)
        if fence_or_list and len(self._buffer) < _UNDECIDED_LIMIT:
            return []  # a fenced or listed call is read when the answer ends
        return self._to_text()

    def _decide_name_line(self) -> list[Piece]:
        if "\n" not in self._buffer:
            longest = max((len(n) for n in self._names), default=0)
            if self._forced or len(self._buffer.strip()) <= longest:
                return []
            return self._to_text()
        first, rest = self._buffer.split("\n", 1)
        name = first.strip()
        if name not in self._names and not (self._forced and name):
            return self._to_text()
        self._buffer = ""
        opened = self._open(name)
        body = rest.lstrip()
        if body.startswith("{") or (not body and self._forced):
            return [opened, *self._arguments(rest)]
        self._state, self._buffer = "raw", rest
        return [opened]

    def _to_text(self) -> list[Piece]:
        if self.called:  # text after a call is dropped (docs/api.md)
            self._state, self._buffer = "after", ""
            return []
        self._state, text, self._buffer = "text", self._buffer, ""
        return [TextDelta(text)]

    def _open(self, name: str) -> ToolCallDelta:
        self.calls += 1
        self._state = "arguments"
        self._scan = _ValueScanner()
        return ToolCallDelta(self.calls - 1, "", new_call_id(), name)

    # ---- arguments ---------------------------------------------------------------------------------
    def _arguments(self, text: str) -> list[Piece]:
        taken, rest = self._scan.take(text)
        pieces: list[Piece] = [ToolCallDelta(self.calls - 1, taken)] if taken else []
        if self._scan.not_an_object:
            self._state, self._buffer = "raw", taken + rest
            return []
        if self._scan.done:
            if self._syntax.kind == "json":
                self._state, self._buffer = "undecided", rest
                self._closing = "}" + self._syntax.close_tag.strip()
                if rest.strip():
                    pieces += self._decide()
            else:
                self._state = "after"
        return pieces


class _ValueScanner:
    """Finds where a JSON object ends in text that arrives in pieces."""

    def __init__(self) -> None:
        self.depth = 0
        self.started = False
        self.done = False
        self.not_an_object = False
        self._in_string = False
        self._escaped = False

    def take(self, text: str) -> tuple[str, str]:
        """(the part of ``text`` that belongs to the value, what follows it)."""
        if self.started:
            return self._scan_from(text)
        for i, char in enumerate(text):
            if char.isspace():
                continue
            if char != "{":
                self.not_an_object = True
                return "", text[i:]
            self.started = True
            return self._scan_from(text[i:])
        return "", ""

    def _scan_from(self, text: str) -> tuple[str, str]:
        for i, char in enumerate(text):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return text[:i + 1], text[i + 1:]
        return text, ""


def _may_become_head(text: str) -> bool:
    """``text`` (stripped) is a beginning of ``{"name": "...", "arguments":``."""
    compact = re.sub(r"\s+", "", text)
    if len(compact) <= len(_HEAD_SKELETON):
        return _HEAD_SKELETON.startswith(compact)
    if not compact.startswith(_HEAD_SKELETON):
        return False
    tail = compact[len(_HEAD_SKELETON):]
    end = re.match(r'(?:[^"\\]|\\.)*"', tail)
    if end is None:
        return len(tail) < 128  # still inside the name
    after = tail[end.end():]
    return _ARGS_SKELETON.startswith(after)


# ---- reading a whole answer ------------------------------------------------------------------------
def parse_tool_calls(text: str, syntax: ToolSyntax, names: frozenset[str]) -> list[tuple[str, str]]:
    """Every call in a whole answer as (name, arguments as JSON text); empty when it is not only calls."""
    if syntax.kind == "name_line":
        first, _, rest = text.strip("\n ").partition("\n")
        if first.strip() not in names:
            return []
        try:
            return [(first.strip(), _normalised_arguments(rest, syntax, strict=True))]
        except ValueError:
            return []
    body = text.strip()
    tag, close = syntax.open_tag.strip() or "<tool_call>", syntax.close_tag.strip() or "</tool_call>"
    if body.startswith(tag):
        parts = [p.split(close, 1)[0] for p in body.split(tag) if p.strip()]
    else:
        fenced = _FENCE.match(body)
        parts = [fenced[1] if fenced else body]
    calls: list[tuple[str, str]] = []
    for part in parts:
        try:
            value = json.loads(part)
        except ValueError:
            return []
        for item in value if isinstance(value, list) else [value]:
            call = _call_of(item, names)
            if call is None:
                return []
            calls.append(call)
    return calls


def _call_of(item: Any, names: frozenset[str]) -> tuple[str, str] | None:
    if not isinstance(item, dict) or set(item) - {"name", "arguments", "parameters"}:
        return None
    name = item.get("name")
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if name not in names or not isinstance(arguments, dict):
        return None
    return name, json.dumps(arguments, ensure_ascii=False)


def _normalised_arguments(text: str, syntax: ToolSyntax, strict: bool = False) -> str:
    """Arguments held back whole (ChatGLM3's ``tool_call(...)``, a JSON string) → JSON object text. Text that
    is neither is passed on as it is (``strict``: raise ValueError instead)."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced[1].strip()
    try:
        value = json.loads(body)
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, dict):
            return json.dumps(value, ensure_ascii=False)
    except ValueError:
        pass
    call = _python_call(body)
    if call is not None:
        return json.dumps(call, ensure_ascii=False)
    if strict:
        raise ValueError("not a tool call")
    return text


def _python_call(text: str) -> dict[str, Any] | None:
    """ChatGLM3's ``tool_call(a=1, b="x")`` → {"a": 1, "b": "x"}; literals only, nothing is evaluated."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call) or node.args or any(k.arg is None for k in node.keywords):
        return None
    try:
        return {str(k.arg): ast.literal_eval(k.value) for k in node.keywords}
    except (ValueError, TypeError, SyntaxError):
        return None
