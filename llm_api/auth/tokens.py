"""Short-lived signed stream tokens, for the browser's EventSource (which cannot send headers).

A token names the key it was minted for and expires after ``max_age`` seconds;
it is signed with the service's shared secret, so any worker can check it, and
the raw key never travels in a URL.
"""

from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer


class TokenRejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamTokens:
    def __init__(self, secret: str, max_age: int) -> None:
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(secret, salt="llm_api.stream-token")

    def mint(self, key_id: str) -> str:
        return self._serializer.dumps({"key": key_id})

    def key_id(self, token: str) -> str:
        """The key a valid token was minted for; raises :class:`TokenRejected` otherwise."""
        try:
            payload = self._serializer.loads(token, max_age=self.max_age)
        except SignatureExpired:
            raise TokenRejected("token_expired", "The stream token has expired; mint a new one.") from None
        except BadSignature:
            raise TokenRejected("invalid_token", "The stream token is not valid.") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("key"), str):
            raise TokenRejected("invalid_token", "The stream token is not valid.")
        return payload["key"]
