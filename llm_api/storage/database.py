"""Opening the database: the URL, the connection pool, SQLite's settings, and migrations.

SQLite (the default) runs in WAL mode so readers never wait for the writer, with
a short busy timeout: every statement the service runs is small, and a call
that blocks holds up the worker's event loop. PostgreSQL goes through psycopg 3,
which waits on its socket through gevent's patched ``select``, so a slow query
lets every other greenlet run.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SUPPORTED_SCHEMES = ("sqlite", "postgresql")
SQLITE_BUSY_TIMEOUT_MS = 2000


def normalize_url(url: str) -> sa.URL:
    """Parse ``url``; ``postgresql://`` means psycopg 3. Raises ``ValueError`` for what is not served."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_SCHEMES:
        raise ValueError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend == "postgresql" and parsed.drivername != "postgresql+psycopg":
        raise ValueError("PostgreSQL is reached through psycopg 3: use postgresql://… or postgresql+psycopg://…")
    return parsed


def sqlite_path(url: sa.URL) -> Path | None:
    """The file behind a SQLite URL (None for an in-memory database)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def create_db_engine(url: str, pool_size: int = 10) -> sa.Engine:
    """An engine whose pool holds ``pool_size`` connections (and as many again in overflow)."""
    parsed = normalize_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed, pool_size=pool_size, max_overflow=pool_size, pool_timeout=10,
                              pool_pre_ping=parsed.get_backend_name() == "postgresql")
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _configure_sqlite)
    return engine


def _configure_sqlite(dbapi_connection, _record) -> None:  # noqa: ANN001 - a DBAPI connection
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


# Serialises migrations of several instances starting at once on one PostgreSQL database.
_MIGRATION_LOCK = 0x6C6C6D5F617069  # "llm_api"


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (idempotent: nothing happens at the newest one).

    On PostgreSQL a transaction-scoped advisory lock makes concurrent starts wait
    for each other; SQLite's own write lock does the same for a file.
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(_alembic_config(connection), revision)


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    with sa.create_engine("sqlite://").connect() as connection:
        head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
    assert head is not None
    return head
