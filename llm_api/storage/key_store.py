"""API keys and the service's shared secrets, on SQLAlchemy Core (SQLite or PostgreSQL)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .errors import StorageError
from .records import ApiKey
from .sql_store import transaction, utc
from .tables import api_keys, service_secrets


class KeyNameTaken(ValueError):
    """Another key already has this name."""


class SqlKeyStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add(self, key: ApiKey) -> None:
        try:
            with transaction(self.engine) as db:
                db.execute(api_keys.insert().values(
                    id=key.id, name=key.name, secret_hash=key.secret_hash, scopes=",".join(key.scopes),
                    rpm=key.rpm, tpm=key.tpm, max_streams=key.max_streams, created_at=key.created_at))
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise KeyNameTaken(key.name) from exc
            raise

    def get(self, key_id: str) -> ApiKey | None:
        with transaction(self.engine) as db:
            row = db.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return _key(row) if row else None

    def list(self) -> list[ApiKey]:
        with transaction(self.engine) as db:
            return [_key(row) for row in db.execute(sa.select(api_keys).order_by(api_keys.c.pk))]

    def revoke(self, name: str) -> bool:
        """Revoke the active key called ``name``; False when there is none."""
        with transaction(self.engine) as db:
            result = db.execute(api_keys.update()
                                .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
                                .values(revoked_at=datetime.now(UTC)))
        return result.rowcount > 0

    def count(self, *, active_only: bool) -> int:
        query = sa.select(sa.func.count()).select_from(api_keys)
        if active_only:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with transaction(self.engine) as db:
            return db.execute(query).scalar_one()

    def shared_secret(self, name: str) -> str:
        """The secret called ``name``, generated on first use; every worker reads the same value."""
        with transaction(self.engine) as db:
            value = db.execute(sa.select(service_secrets.c.value).where(service_secrets.c.name == name)).scalar()
        if value is not None:
            return value
        try:
            with transaction(self.engine) as db:
                db.execute(service_secrets.insert().values(name=name, value=secrets.token_hex(32)))
        except StorageError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise  # anything but "another worker created it first"
        with transaction(self.engine) as db:
            return db.execute(sa.select(service_secrets.c.value).where(service_secrets.c.name == name)).scalar_one()


def _key(row: Any) -> ApiKey:
    m = row._mapping
    return ApiKey(id=m["id"], name=m["name"], secret_hash=m["secret_hash"],
                  scopes=tuple(s for s in m["scopes"].split(",") if s), created_at=utc(m["created_at"]),
                  rpm=m["rpm"], tpm=m["tpm"], max_streams=m["max_streams"],
                  revoked_at=utc(m["revoked_at"]) if m["revoked_at"] is not None else None)
