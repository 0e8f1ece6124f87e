"""Chat messages → prompt token ids, and the token ids that end an assistant turn."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..generation.structured import ToolFunction
from ..generation.tool_calls import ToolSyntax
from . import tool_prompts

Message = Mapping[str, Any]  # {"role": ..., "content": ...}, and tool_calls / tool_call_id where they apply


class PromptFormat(Protocol):
    def build(self, messages: Sequence[Message], tools: Sequence[ToolFunction] = ()) -> list[int]: ...

    @property
    def stop_token_ids(self) -> frozenset[int]: ...

    @property
    def tool_syntax(self) -> ToolSyntax:
        """How this model writes a tool call (what constrained decoding produces and the reader parses)."""


class ChatTemplateFormat:
    """Uses the tokenizer's own chat template (any Hugging Face chat model)."""

    def __init__(self, tokenizer: Any, extra_stop_ids: Sequence[int] = ()) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat_template")
        self._tokenizer = tokenizer
        stops = set(extra_stop_ids)
        if tokenizer.eos_token_id is not None:
            stops.add(tokenizer.eos_token_id)
        self._stops = frozenset(stops)
        template = str(tokenizer.chat_template)
        self._template_tools = "tools" in template  # the template renders tools itself (Qwen, Hermes, Llama 3)
        tagged = self._template_tools and "<tool_call>" in template
        self._syntax = ToolSyntax("json", "<tool_call>\n", "\n</tool_call>") if tagged else ToolSyntax("json")

    @property
    def tool_syntax(self) -> ToolSyntax:
        return self._syntax

    def build(self, messages: Sequence[Message], tools: Sequence[ToolFunction] = ()) -> list[int]:
        extra: dict[str, Any] = {}
        if self._template_tools:
            chat = tool_prompts.template_messages(messages)
            if tools:
                extra["tools"] = [tool.openai_dict() for tool in tools]
        else:
            chat = tool_prompts.plain_messages(messages, tools, self._syntax)
        ids = self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, **extra)
        if hasattr(ids, "keys"):  # BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return self._stops


CHATGLM3_SPECIAL_TOKENS = (
    "[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
)


class ChatGLM3Format:
    """ChatGLM3's role-token layout, built from ids rather than one templated string.

    ``[gMASK] sop``, then per message ``<|role|>`` + encode(metadata + "\\n") +
    encode(content), and finally ``<|assistant|>``. ``encode`` is the plain
    SentencePiece encoder (each call adds its own dummy-prefix "▁"), which is how
    the reference tokenizer builds chat input; templating a single string does not
    reproduce it.
    """

    def __init__(self, encode: Callable[[str], list[int]], special_ids: Mapping[str, int],
                 eos_token_id: int) -> None:
        self._encode = encode
        self._special = dict(special_ids)
        self._stops = frozenset({eos_token_id, self._special["<|user|>"], self._special["<|observation|>"]})

    @property
    def tool_syntax(self) -> ToolSyntax:
        return ToolSyntax("name_line")

    def build(self, messages: Sequence[Message], tools: Sequence[ToolFunction] = ()) -> list[int]:
        ids = [self._special["[gMASK]"], self._special["sop"]]
        for message in tool_prompts.chatglm3_messages(messages, tools):
            role = message["role"]
            ids.append(self._special[f"<|{role}|>"])
            ids.extend(self._encode(f"{message.get('metadata', '')}\n"))
            ids.extend(self._encode(message["content"]))
        ids.append(self._special["<|assistant|>"])
        return ids

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return self._stops

    @classmethod
    def from_remote_tokenizer(cls, tokenizer: Any) -> ChatGLM3Format:
        """Wrap the checkpoint's own (remote-code) ChatGLM3 tokenizer."""
        special = {name: tokenizer.get_command(name) for name in CHATGLM3_SPECIAL_TOKENS}
        return cls(tokenizer.tokenizer.encode, special, tokenizer.eos_token_id)
