"""Tools and tool turns in a prompt: OpenAI's messages (assistant ``tool_calls``, ``tool`` results) and
``tools`` → the messages a model's prompt format renders.

- A chat template that renders tools itself gets them as ``tools=`` and the turns in the Hugging Face shape.
- A template that does not (the embedded SmolLM2) gets the tools described in the system turn, calls written
  as the JSON the model is asked for, and results as user turns naming the function.
- ChatGLM3 gets its own layout, as its ``openai_api_demo`` builds it: the tools as JSON in the system turn,
  each call as an assistant turn whose metadata is the function's name and whose content is the arguments'
  JSON, each result as an ``<|observation|>`` turn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..generation.structured import ToolFunction
from ..generation.tool_calls import ToolSyntax

PLAIN_INSTRUCTION = (
    "You can call these functions. To call one, answer with only a JSON object of the form "
    '{{"name": <function name>, "arguments": <an object of its parameters>}}{tags}. Otherwise answer as usual.\n'
    "Functions:\n{functions}"
)
CHATGLM3_INSTRUCTION = "Answer the following questions as best as you can. You have access to the following tools:"


def _calls(message: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """An assistant message's calls as (name, arguments)."""
    calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function", {})
        arguments = function.get("arguments", "{}")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
        except ValueError:
            parsed = {"arguments": arguments}
        calls.append((str(function.get("name", "")), parsed if isinstance(parsed, dict) else {"value": parsed}))
    return calls


def _call_names(messages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """tool_call_id → function name, from the assistant turns."""
    return {str(call.get("id")): str(call.get("function", {}).get("name", ""))
            for message in messages for call in message.get("tool_calls") or ()}


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The Hugging Face chat-template shape (arguments as objects)."""
    out: list[dict[str, Any]] = []
    names = _call_names(messages)
    for message in messages:
        item: dict[str, Any] = {"role": message["role"], "content": message.get("content") or ""}
        if message.get("tool_calls"):
            item["tool_calls"] = [{"type": "function", "function": {"name": name, "arguments": arguments}}
                                  for name, arguments in _calls(message)]
        if message["role"] == "tool":
            item["tool_call_id"] = message.get("tool_call_id", "")
            item["name"] = names.get(str(message.get("tool_call_id")), "")
        out.append(item)
    return out


def plain_messages(messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolFunction],
                   syntax: ToolSyntax) -> list[dict[str, str]]:
    """For a template without tools: tools in the system turn, calls and results as text."""
    names = _call_names(messages)
    out: list[dict[str, str]] = []
    for message in messages:
        role, content = str(message["role"]), str(message.get("content") or "")
        if message.get("tool_calls"):
            calls = [json.dumps({"name": n, "arguments": a}, ensure_ascii=False) for n, a in _calls(message)]
            content = "\n".join(syntax.open_tag + c + syntax.close_tag for c in calls)
        elif role == "tool":
            role, content = "user", f"Result of {names.get(str(message.get('tool_call_id')), 'the function')}: " \
                                    f"{content}"
        out.append({"role": role, "content": content})
    if tools:
        functions = "\n".join(json.dumps(t.openai_dict()["function"], ensure_ascii=False) for t in tools)
        tags = f" inside {syntax.open_tag.strip()}…{syntax.close_tag.strip()}" if syntax.open_tag else ""
        instruction = PLAIN_INSTRUCTION.format(tags=tags, functions=functions)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instruction}"}
        else:
            out.insert(0, {"role": "system", "content": instruction})
    return out


def chatglm3_messages(messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolFunction]) -> list[dict[str, str]]:
    """ChatGLM3's turns: ``role``, ``metadata`` (a called function's name) and ``content``."""
    out: list[dict[str, str]] = []
    for message in messages:
        role, content = str(message["role"]), str(message.get("content") or "")
        if message.get("tool_calls"):
            if content:
                out.append({"role": "assistant", "metadata": "", "content": content})
            for name, arguments in _calls(message):
                out.append({"role": "assistant", "metadata": name,
                            "content": json.dumps(arguments, ensure_ascii=False)})
        elif role == "tool":
            out.append({"role": "observation", "metadata": "", "content": content})
        else:
            out.append({"role": role, "metadata": str(message.get("metadata", "")), "content": content})
    if tools:
        listed = json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters_dict()}
                             for t in tools], indent=4, ensure_ascii=False)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n{listed}"}
        else:
            out.insert(0, {"role": "system", "metadata": "", "content": f"{CHATGLM3_INSTRUCTION}\n{listed}"})
    return out

