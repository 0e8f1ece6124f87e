"""API keys: issued once in plain text, kept only as a SHA-256 hash, checked in constant time.

A key reads ``llmk_<id>_<secret>``: the public id finds the record, and the
secret is compared with :func:`hmac.compare_digest` against the stored hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import uuid
from datetime import UTC, datetime

from ..storage import ApiKey, SqlKeyStore

KEY_PREFIX = "llmk_"
SCOPES = ("chat", "admin", "metrics")  # admin implies the others
_KEY_FORMAT = re.compile(r"^llmk_([0-9a-f]{32})_([0-9a-f]{64})$")
_KEYS_EXIST_TTL = 5.0  # how long "some key exists" is trusted before it is checked again


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_key(store: SqlKeyStore, name: str, scopes: tuple[str, ...] = ("chat",), *, rpm: int | None = None,
              tpm: int | None = None, max_streams: int | None = None) -> tuple[ApiKey, str]:
    """Create and store a key; returns its record and the plain key, which is never shown again."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    key_id, secret = uuid.uuid4().hex, secrets.token_hex(32)
    record = ApiKey(id=key_id, name=name, secret_hash=hash_secret(secret), scopes=tuple(scopes),
                    created_at=datetime.now(UTC), rpm=rpm, tpm=tpm, max_streams=max_streams)
    store.add(record)
    return record, f"{KEY_PREFIX}{key_id}_{secret}"


def grants(key: ApiKey, scope: str) -> bool:
    return scope in key.scopes or "admin" in key.scopes


class KeyRing:
    """Checks presented keys against the store."""

    def __init__(self, store: SqlKeyStore) -> None:
        self.store = store
        self._exist: tuple[float, bool] = (0.0, False)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The active key matching ``presented``, else None."""
        match = _KEY_FORMAT.match(presented)
        if not match:
            return None
        key = self.active_key(match.group(1))
        if key is None:
            return None
        return key if hmac.compare_digest(key.secret_hash, hash_secret(match.group(2))) else None

    def active_key(self, key_id: str) -> ApiKey | None:
        key = self.store.get(key_id)
        return key if key is not None and key.active else None

    def keys_exist(self) -> bool:
        """Whether any key was ever created (revoked ones count: revoking the last key must not open
        the service). Without one the service runs open. A "yes" is cached briefly; a "no" is not,
        so the first key created closes the service at once."""
        checked_at, exist = self._exist
        if not exist or time.monotonic() - checked_at > _KEYS_EXIST_TTL:
            exist = self.store.count(active_only=False) > 0
            self._exist = (time.monotonic(), exist)
        return exist
