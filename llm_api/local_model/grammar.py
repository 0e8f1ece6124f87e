"""Constrained decoding with xgrammar: a request's answer shape (:class:`StructuredOutput`) → a compiled
grammar for this model's vocabulary → one matcher per row, which masks the row's logits before the batch's
one sampling pass and advances with the token sampled.

xgrammar was chosen by measuring the per-token cost inside a batch of 8 against llguidance and outlines-core
(docs/benchmarks.md). Compiled grammars are cached by xgrammar's compiler, keyed by the grammar and bounded
in bytes (:data:`CACHE_BYTES`). Matchers live only as long as their sequence (:meth:`RowGrammar.free`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
import xgrammar as xgr

from ..generation.structured import StructuredOutput, ToolFunction, UnsupportedFieldError
from ..generation.tool_calls import ToolSyntax
from .schema_support import check_supported

CACHE_BYTES = 64 << 20  # compiled grammars kept for reuse (bytes, least recently used first out)


_live = 0  # matchers not yet freed (a cancelled or finished request frees its own)


def live_matchers() -> int:
    """Grammar matchers alive now, in every sequence (for tests and the metrics)."""
    return _live


class RowGrammar:
    """One sequence's grammar state: which tokens may come next, advanced token by token."""

    def __init__(self, compiled: xgr.CompiledGrammar) -> None:
        global _live
        self._matcher: xgr.GrammarMatcher | None = xgr.GrammarMatcher(compiled)
        _live += 1  # created and freed on the engine thread only

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        assert self._matcher is not None
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def advance(self, token: int) -> bool:
        """Take the sampled token; False if the grammar rejects it (only a bug can cause that)."""
        return self._matcher is not None and bool(self._matcher.accept_token(token))

    @property
    def complete(self) -> bool:
        """The answer is whole: nothing but an end-of-turn token may follow (or nothing at all)."""
        return self._matcher is None or bool(self._matcher.is_terminated())

    def free(self) -> None:
        """Drop the matcher's state (finish, cancel, error)."""
        global _live
        if self._matcher is not None:
            self._matcher = None
            _live -= 1


class GrammarCompiler:
    """Compiles answer shapes for one model's vocabulary; safe to call from any thread."""

    def __init__(self, info: xgr.TokenizerInfo, syntax: ToolSyntax) -> None:
        self._info = info
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True, cache_limit_bytes=CACHE_BYTES)
        self.syntax = syntax
        self.vocab_size = int(info.vocab_size)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int],
                      syntax: ToolSyntax) -> GrammarCompiler:
        """A Hugging Face fast tokenizer, or one exposing its pieces (``grammar_vocabulary``: ChatGLM3's)."""
        stops = sorted(stop_token_ids)
        pieces = getattr(tokenizer, "grammar_vocabulary", None)
        if pieces is not None:
            info = xgr.TokenizerInfo(pieces(), vocab_type=xgr.VocabType.BYTE_FALLBACK, vocab_size=vocab_size,
                                     stop_token_ids=stops, add_prefix_space=True)
        else:
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stops)
        return cls(info, syntax)

    def compile(self, output: StructuredOutput) -> xgr.CompiledGrammar | None:
        """The grammar the answer must follow, or None when it is free text (tools with ``auto``, no format).
        Raises :class:`UnsupportedFieldError` naming the field whose schema cannot be honoured."""
        if output.forces_call:
            grammar = self._call_grammar(output.callable_tools())
            field = "tools"
        elif output.response_format is not None and not output.may_call:
            grammar = self._response_grammar(output)
            field = "response_format"
        else:
            return None
        try:
            return self._compiler.compile_grammar(grammar)
        except Exception as exc:  # xgrammar reports every problem of the grammar as an exception
            raise UnsupportedFieldError(field, f"The grammar for {field} cannot be compiled: {_first_line(exc)}") \
                from None

    def _response_grammar(self, output: StructuredOutput) -> xgr.Grammar:
        response = output.response_format
        assert response is not None
        if response.kind == "json_object":
            return self._json({"type": "object"}, "response_format", strict=False)
        return self._json(response.schema_dict(), "response_format.json_schema.schema")

    def _call_grammar(self, tools: Sequence[ToolFunction]) -> xgr.Grammar:
        choices = []
        for index, tool in enumerate(tools):
            field = f"tools[{index}].function.parameters"
            parameters = tool.parameters_dict()
            if self.syntax.kind == "name_line":
                literal = xgr.Grammar.from_ebnf(f"root ::= {json.dumps(tool.name + chr(10))}")
                choices.append(xgr.Grammar.concat(literal, self._json(parameters, field)))
            else:
                call = {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": parameters},
                        "required": ["name", "arguments"], "additionalProperties": False}
                check_supported(parameters, field)
                choices.append(self._json(call, field, checked=True))
        grammar = choices[0] if len(choices) == 1 else xgr.Grammar.union(*choices)
        if self.syntax.open_tag:
            opening = xgr.Grammar.from_ebnf(f"root ::= {json.dumps(self.syntax.open_tag)}")
            closing = xgr.Grammar.from_ebnf(f"root ::= {json.dumps(self.syntax.close_tag)}")
            grammar = xgr.Grammar.concat(opening, grammar, closing)
        return grammar

    def _json(self, schema: dict[str, Any], field: str, *, strict: bool = True, checked: bool = False) -> xgr.Grammar:
        if not checked:
            check_supported(schema, field)
        try:
            return xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=strict)
        except Exception as exc:  # whatever the converter raises, the schema is the caller's: a 422
            raise UnsupportedFieldError(field, f"{field} cannot be turned into a grammar: {_first_line(exc)}") \
                from None


def apply_masks(logits: torch.Tensor, grammars: Sequence[RowGrammar | None], vocab_size: int) -> torch.Tensor:
    """Logits [rows, vocab] with every token a row's grammar forbids set to -inf (unconstrained rows as they
    were). Returns ``logits`` itself when no row is constrained."""
    rows = [row for row, grammar in enumerate(grammars) if grammar is not None]
    if not rows:
        return logits
    bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
    for row in rows:
        grammar = grammars[row]
        assert grammar is not None
        grammar.fill(bitmask, row)
    masked = logits.float() if logits.dtype != torch.float32 else logits.clone()
    xgr.apply_token_bitmask_inplace(masked, bitmask, vocab_size=vocab_size, indices=rows)
    return masked


def _first_line(exc: BaseException) -> str:
    """xgrammar's messages start with a timestamp and its source location; keep the reason."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[1] if text.startswith("[") and ": " in text else text

