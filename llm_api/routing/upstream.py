"""An upstream OpenAI-compatible server (vLLM, text-generation-inference, llama.cpp's server, another
llm_api) with the engine's surface: ``submit`` returns a handle whose channel receives ``TextDelta`` and
one ``Finished``, exactly like the local engine's.

``submit`` posts ``{base}/chat/completions`` (or ``{base}/completions`` for a raw prompt) with
``stream: true`` and ``stream_options.include_usage``, and waits for the response headers (at most
``timeout`` seconds, connecting included). Refusals are raised there, before anything was generated,
so that the router can fall back:

- cannot connect, a timeout, 401, 403, 404, 408 or any 5xx → :class:`EngineUnavailableError`;
- 429, or an error whose code is ``queue_full`` or ``overloaded`` → :class:`QueueFullError` (overloaded);
- 400, 413 and 422 → :class:`UpstreamRejectedError` (the request itself: no fallback).

Then a reader (a greenlet in the gevent worker, whose sockets are cooperative; an OS thread in a process
gevent has not patched) turns each ``data:`` line into a ``TextDelta``, and its ``delta.tool_calls`` into
``ToolCallDelta`` events (:class:`ToolCallRelay`): ``tools`` and ``tool_choice`` are sent as the client sent
them, and the upstream prompts, constrains and parses the calls itself. A stream that ends without a
finish reason (the upstream died) ends with ``Finished("error")``. ``cancel`` shuts the socket down, so
the upstream sees its client leave and stops generating.

Discovery (``GET {base}/models``: the model name and context length) runs on a timer of its own, started by
:meth:`UpstreamEngine.start` and ended by :meth:`UpstreamEngine.stop`, never inside a request: at once,
then again after :data:`DISCOVERY_RETRY_SECONDS` (doubling up to :data:`DISCOVERY_RETRY_MAX_SECONDS`)
while it has never succeeded, and every :data:`DISCOVERY_REFRESH_SECONDS` after it has.

The prompt's token ids mean nothing upstream: :meth:`encode_chat` and :meth:`encode_text` only estimate
the count (for history trimming and token quotas), with the local engine's tokenizer when the chain has a
loaded one, else about four characters per token. The upstream's reported usage is what gets stored.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import gevent
from gevent import monkey

from ..generation.backlog import Backlog
from ..generation.channel import Channel
from ..generation.errors import EngineError, QueueFullError
from ..generation.features import ALL_FEATURES
from ..generation.handle import GenerationHandle
from ..generation.native import start_native_thread
from ..generation.protocol import Engine, EngineKind, Message
from ..generation.structured import StructuredOutput, ToolFunction
from ..generation.tool_calls import ToolCallDelta, new_call_id
from ..generation.types import (
    Finished,
    GenerationRequest,
    SamplingDefaults,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    Usage,
)
from .errors import EngineUnavailableError, UpstreamRejectedError

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the estimate without a local tokenizer
MESSAGE_OVERHEAD_TOKENS = 4  # role markers around each message in a chat template
MAX_LINE = 1 << 20
# Discovery's timer: the first retry after a failure, doubling while it keeps failing up to the maximum,
# as long as it has never succeeded; then a refresh (a redeployed upstream may serve another model).
DISCOVERY_RETRY_SECONDS = 1.0
DISCOVERY_RETRY_MAX_SECONDS = 30.0
DISCOVERY_REFRESH_SECONDS = 300.0
_REJECTED = (400, 413, 422)


def _trace_context(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The W3C trace context headers to send along (nothing else a caller might have put there)."""
    return {k: v for k, v in (headers or {}).items() if k in ("traceparent", "tracestate")}


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


class UpstreamEngine:
    """One upstream server, named ``name``, at ``base_url`` (``http(s)://HOST:PORT/v1``)."""

    kind: EngineKind = "upstream"
    batched = True
    # Forwarded unchanged (vLLM, llama.cpp's server and another llm_api honour them all); an upstream that
    # does not (OpenAI itself has no top_k) answers 400, which reaches the caller as upstream_rejected.
    features = ALL_FEATURES  # forwarded as OpenAI fields; the upstream enforces them
    load_seconds: float | None = None  # nothing to load

    def __init__(self, name: str, base_url: str, *, api_key: str = "", model: str = "", timeout: float = 10.0,
                 context_length: int = 4096, estimator: Engine | None = None,
                 discovery_retry: float = DISCOVERY_RETRY_SECONDS,
                 discovery_retry_max: float = DISCOVERY_RETRY_MAX_SECONDS,
                 discovery_refresh: float = DISCOVERY_REFRESH_SECONDS) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path.rstrip("/")
        self._api_key = api_key
        self._model = model
        self._model_configured = bool(model)
        self._context_length: int | None = None
        self.default_context_length = context_length
        self.timeout = timeout
        self.estimator = estimator  # the chain's local engine, whose tokenizer gives better estimates
        self.ready = True  # nothing to load; whether it answers is the circuit breaker's business
        self.load_error: str | None = None
        self.queued = 0
        self.stats = {"requests": 0, "errors": 0, "running": 0, "cancelled": 0}
        self.discovery_retry = discovery_retry
        self.discovery_retry_max = discovery_retry_max
        self.discovery_refresh = discovery_refresh
        self._discovered = False
        self._first_discovery_ended = threading.Event()  # set once the first attempt has succeeded or failed
        self._discovery_lock = threading.Lock()
        self._discovery_stop: threading.Event | None = None  # set while the timer runs; set() ends it

    # ---- facts ---------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        self._await_first_discovery()
        return self._model or self.name

    @property
    def context_length(self) -> int:
        self._await_first_discovery()
        return self._context_length or self.default_context_length

    def _await_first_discovery(self) -> None:
        """A request that arrives while the first ``GET /models`` is under way waits for its answer (at
        most the upstream timeout, which bounds that call too) rather than use the name and length that
        the answer is about to replace."""
        if self._discovery_stop is not None and not self._first_discovery_ended.is_set():
            self._first_discovery_ended.wait(self.timeout + 1.0)

    def start(self, on_load_failure: Callable[[str], None] | None = None) -> None:
        """Start the discovery timer (idempotent; returns at once). It runs on a greenlet in the gevent
        worker (``threading`` is patched there) and on a daemon thread elsewhere."""
        with self._discovery_lock:
            if self._discovery_stop is not None:
                return
            self._discovery_stop = stop = threading.Event()
        threading.Thread(target=self._discovery_loop, args=(stop,), name=f"discovery-{self.name}",
                         daemon=True).start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the discovery timer (a ``GET /models`` under way finishes); the readers end with their
        requests. A later :meth:`start` starts the timer again."""
        with self._discovery_lock:
            stop, self._discovery_stop = self._discovery_stop, None
        if stop is not None:
            stop.set()

    def _discovery_loop(self, stop: threading.Event) -> None:
        retry = self.discovery_retry
        while not stop.is_set():
            self.discover()
            self._first_discovery_ended.set()
            if self._discovered:  # a failed refresh keeps what was learnt and asks again at the next one
                wait = self.discovery_refresh
            else:
                wait, retry = retry, min(retry * 2, self.discovery_retry_max)
            stop.wait(wait)

    def wait_ready(self, timeout: float) -> bool:
        return True  # nothing to load

    def backlog(self) -> Backlog:
        """Unknown here: the upstream keeps its own queue, and refuses (503) when it is too long."""
        return Backlog()

    def stop_token_ids(self) -> frozenset[int]:
        return frozenset()  # the upstream generates from text and knows its own stops

    def sampling_defaults(self) -> SamplingDefaults:
        return SamplingDefaults()  # OpenAI's: what an OpenAI-compatible server assumes when they are left out

    def discover(self) -> None:
        """``GET {base}/models``: the first model's id (unless one is configured) and its ``context_length``
        (llm_api) or ``max_model_len`` (vLLM); a success sets ``_discovered``, a failure is logged and changes
        nothing. The discovery timer calls it; a request never does."""
        connection = self._connection()
        try:
            connection.request("GET", self._path + "/models", headers=self._headers())
            response = connection.getresponse()
            body = response.read(MAX_LINE)
            if response.status != 200:
                log.info("engine %s: %s/models answered %d", self.name, self.base_url, response.status)
                return
            payload = json.loads(body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.info("engine %s: could not read %s/models: %s", self.name, self.base_url, exc)
            return
        finally:
            connection.close()
        listed = payload.get("data") if isinstance(payload, dict) else None
        models = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
        entry = next((m for m in models if m.get("id") == self._model), models[0] if models else None)
        if isinstance(entry, dict):
            if not self._model_configured and entry.get("id"):
                self._model = str(entry["id"])
            length = entry.get("context_length") or entry.get("max_model_len")
            if isinstance(length, int) and length > 0:
                self._context_length = length
        self._discovered = True

    # ---- the prompt (estimates) ----------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[Message], tools: Sequence[ToolFunction] = ()) -> list[int]:
        ids = self._estimated(lambda engine: engine.encode_chat(messages, tools))
        if ids is not None:
            return ids
        return [0] * (sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages) + 2)

    def encode_text(self, text: str) -> list[int]:
        ids = self._estimated(lambda engine: engine.encode_text(text))
        return ids if ids is not None else [0] * max(1, estimate_tokens(text))

    def _estimated(self, encode: Callable[[Engine], list[int]]) -> list[int] | None:
        if self.estimator is None or not self.estimator.ready:
            return None
        try:
            return list(encode(self.estimator))
        except EngineError:
            return None

    # ---- generating ----------------------------------------------------------------------------------
    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, *,
               messages: Sequence[Message] | None = None, prompt_text: str | None = None,
               trace_headers: Mapping[str, str] | None = None) -> GenerationHandle:
        if messages is None and prompt_text is None:
            raise EngineError(f"engine {self.name}: an upstream needs the messages or the prompt text")
        chat = prompt_text is None
        structured = params.structured
        body: dict[str, Any] = {"model": self.model_name, "stream": True, "stream_options": {"include_usage": True},
                                "max_tokens": params.max_tokens, "temperature": params.temperature,
                                "top_p": params.top_p}
        if chat:
            body["messages"] = [dict(m) for m in messages or ()]  # tool_calls and tool_call_id included
        else:
            body["prompt"] = prompt_text
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.ignore_eos:
            body["ignore_eos"] = True
        if structured is not None and structured.response_format is not None:
            body["response_format"] = structured.response_format.openai_dict()  # the upstream enforces it
        if chat and structured is not None and structured.tools:
            body.update(tool_fields(structured))  # the upstream prompts, constrains and parses the calls
        body.update(sampling_fields(params, chat))
        path = self._path + ("/chat/completions" if chat else "/completions")
        connection = self._connection()
        try:
            connection.request("POST", path, body=json.dumps(body).encode(),
                               headers={**_trace_context(trace_headers), **self._headers(),
                                        "Content-Type": "application/json", "Accept": "text/event-stream"})
            sock = connection.sock
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            self.stats["errors"] += 1
            raise EngineUnavailableError(f"engine {self.name}: {self.base_url} cannot be reached: {exc}") from None
        if response.status != 200:
            try:
                text = response.read(MAX_LINE).decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                text = ""
            connection.close()
            self.stats["errors"] += 1
            raise self._refusal(response.status, text)
        sock.settimeout(None)  # the timeout covered connecting and the headers; tokens may come slowly

        def on_cancel() -> None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the reader sees the end; the upstream sees its client leave
            except OSError:
                pass

        handle = GenerationHandle(GenerationRequest(request_id, list(prompt_ids), params), Channel(), on_cancel)
        self.stats["requests"] += 1
        self.stats["running"] += 1
        if monkey.is_module_patched("socket"):
            gevent.spawn(self._read, handle, connection, response, chat)
        else:
            start_native_thread(lambda: self._read(handle, connection, response, chat))
        return handle

    def _read(self, handle: GenerationHandle, connection: http.client.HTTPConnection,
              response: http.client.HTTPResponse, chat: bool) -> None:
        sent = 0
        calls = ToolCallRelay()
        first_at: float | None = None
        usage: dict[str, Any] = {}
        finish: str | None = None
        error: str | None = None
        try:
            while True:
                raw = response.readline(MAX_LINE)
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line.startswith("data:"):
                    continue  # comments (": ping"), event names, ids and blank lines
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                payload = json.loads(data)
                if isinstance(payload.get("error"), dict):
                    error = f"engine {self.name}: {payload['error'].get('message') or 'the upstream failed'}"
                    break
                if payload.get("usage"):
                    usage = payload["usage"]
                for choice in payload.get("choices") or ():
                    for call in calls.feed((choice.get("delta") or {}).get("tool_calls") if chat else None):
                        first_at = first_at or time.monotonic()
                        sent += 1
                        handle.channel.put(call)
                    piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    logprobs = read_logprobs(choice.get("logprobs"), chat)
                    if piece or logprobs:
                        first_at = first_at or time.monotonic()
                        sent += 1
                        handle.channel.put(TextDelta(piece or "", logprobs))
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        except Exception as exc:  # a reset connection, a broken line: the stream is over either way
            error = f"engine {self.name}: the upstream stream broke: {exc}"
        finally:
            response.close()
            connection.close()
            self.stats["running"] -= 1
        if finish is not None and error is None:
            for call in calls.finish():
                handle.channel.put(call)
            # Some servers end a forced call with "stop" (vLLM with a named function): a call is a call.
            reason = "tool_calls" if calls.called and finish == "stop" else finish
        elif handle.cancelled:
            reason, error = handle.cancel_reason, None
            handle.cancel_seen_at_token = sent
            self.stats["cancelled"] += 1
        else:
            reason = "error"
            error = error or f"engine {self.name}: the upstream closed the stream before the answer ended"
            self.stats["errors"] += 1
        now = time.monotonic()
        handle.channel.put(Finished(
            reason,
            Usage(int(usage.get("prompt_tokens") or len(handle.request.prompt_ids)),
                  int(usage.get("completion_tokens") or sent)),
            None if first_at is None else first_at - handle.submitted_at,
            now - handle.submitted_at,
            error=error,
        ))

    # ---- HTTP ----------------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _refusal(self, status: int, text: str) -> EngineError:
        code, message = "", text.strip()[:300]
        try:
            error = json.loads(text).get("error")
            if isinstance(error, dict):
                code, message = str(error.get("code") or ""), str(error.get("message") or message)
            elif isinstance(error, str):
                message = error
        except (ValueError, AttributeError):
            pass
        what = f"engine {self.name}: the upstream answered {status}: {message or http.client.responses.get(status, '')}"
        if status == 429 or code in ("queue_full", "overloaded"):  # an llm_api upstream sheds with `overloaded`
            return QueueFullError(what)
        if status in _REJECTED:
            return UpstreamRejectedError(what, status)
        return EngineUnavailableError(what)


def sampling_fields(params: SamplingParams, chat: bool) -> dict[str, Any]:
    """The optional sampling fields a request uses, in the upstream's request shape (neutral ones left out)."""
    body: dict[str, Any] = {}
    for name, neutral in (("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("repetition_penalty", 1.0),
                          ("top_k", 0), ("min_p", 0.0)):
        if getattr(params, name) != neutral:
            body[name] = getattr(params, name)
    if params.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
    if params.logprobs:
        if chat:
            body["logprobs"] = True
            body["top_logprobs"] = params.top_logprobs
        else:
            body["logprobs"] = params.top_logprobs  # /completions: the number of alternatives
    return body


def tool_fields(structured: StructuredOutput) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` in OpenAI's shape, as the client sent them (a description left out stays
    out)."""
    tools = []
    for tool in structured.tools:
        function: dict[str, Any] = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        function["parameters"] = tool.parameters_dict()
        tools.append({"type": "function", "function": function})
    choice: str | dict[str, Any] = structured.tool_choice
    if structured.tool_choice == "function":
        choice = {"type": "function", "function": {"name": structured.function_name}}
    return {"tools": tools, "tool_choice": choice}


class ToolCallRelay:
    """An upstream's streamed ``delta.tool_calls`` → :class:`ToolCallDelta` events: a call opens (index, id,
    name) once its name is known, then its argument fragments follow. Calls are numbered from 0 in the order
    they appear, whatever indexes the upstream uses; a call without an id gets one of ours. Malformed entries
    are skipped."""

    def __init__(self) -> None:
        self._index: dict[Any, int] = {}  # the upstream's index → ours, for calls opened
        self._pending: dict[Any, tuple[str | None, str]] = {}  # calls whose name has not come yet: (id, arguments)

    @property
    def called(self) -> bool:
        return bool(self._index)

    def feed(self, entries: Any) -> list[ToolCallDelta]:
        out: list[ToolCallDelta] = []
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict):
                continue
            key = entry.get("index") if isinstance(entry.get("index"), int) else 0
            function: dict[str, Any] = entry["function"] if isinstance(entry.get("function"), dict) else {}
            name, arguments = function.get("name"), function.get("arguments")
            arguments = arguments if isinstance(arguments, str) else ""
            if key in self._index:
                if arguments:
                    out.append(ToolCallDelta(self._index[key], arguments))
                continue
            call_id, held = self._pending.pop(key, (None, ""))
            call_id = entry.get("id") if isinstance(entry.get("id"), str) and entry.get("id") else call_id
            if isinstance(name, str) and name:
                out.append(self._open(key, call_id, name, held + arguments))
            else:
                self._pending[key] = (call_id, held + arguments)
        return out

    def finish(self) -> list[ToolCallDelta]:
        """The stream ended: calls that never got a name are passed on with an empty one."""
        out = [self._open(key, call_id, "", arguments) for key, (call_id, arguments) in self._pending.items()]
        self._pending.clear()
        return out

    def _open(self, key: Any, call_id: str | None, name: str, arguments: str) -> ToolCallDelta:
        self._index[key] = len(self._index)
        return ToolCallDelta(self._index[key], arguments, call_id or new_call_id(), name)


def read_logprobs(value: Any, chat: bool) -> tuple[TokenLogprob, ...]:
    """A streamed choice's ``logprobs`` (either endpoint's shape) as :class:`TokenLogprob` entries; anything
    malformed reads as none."""
    if not isinstance(value, dict):
        return ()
    try:
        if chat:
            return tuple(_chat_entry(entry) for entry in value.get("content") or ())
        tokens, logprobs = value.get("tokens") or [], value.get("token_logprobs") or []
        tops = value.get("top_logprobs") or [None] * len(tokens)
        return tuple(TokenLogprob(str(token), float(logprob), tuple(str(token).encode()),
                                  tuple(_plain(t, lp) for t, lp in (top or {}).items()))
                     for token, logprob, top in zip(tokens, logprobs, tops, strict=False))
    except (TypeError, ValueError, AttributeError, KeyError):
        return ()


def _chat_entry(entry: dict[str, Any]) -> TokenLogprob:
    def one(item: dict[str, Any]) -> TokenLogprob:
        token = str(item["token"])
        raw = item.get("bytes")
        return TokenLogprob(token, float(item["logprob"]),
                            tuple(raw) if isinstance(raw, list) else tuple(token.encode()))

    first = one(entry)
    return TokenLogprob(first.token, first.logprob, first.bytes, tuple(one(t) for t in entry.get("top_logprobs") or ()))


def _plain(token: Any, logprob: Any) -> TokenLogprob:
    return TokenLogprob(str(token), float(logprob), tuple(str(token).encode()))
