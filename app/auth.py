"""Optional API keys: ``Authorization: Bearer <key>``, stored only as SHA-256 hashes.

    python -m app.auth hash MY-SECRET-KEY    # prints sha256:..., put it in config or env

With keys configured, every /tasks call needs one (401 otherwise) and a task is visible
only to the key that submitted it (another key gets 404, as if it did not exist).
"""

from __future__ import annotations

import hashlib
import hmac
import sys

from fastapi import HTTPException, Request

_PREFIX = "sha256:"


def hash_key(key: str) -> str:
    """The at-rest form of an API key."""
    return _PREFIX + hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured key hashes; ``owner`` of a request is a short id of its key's hash."""

    def __init__(self, hashes: list[str]) -> None:
        bad = [h for h in hashes if not h.startswith(_PREFIX) or len(h) != len(_PREFIX) + 64]
        if bad:
            raise ValueError(
                "api_key_hashes must be 'sha256:<64 hex>' (python -m app.auth hash KEY)"
            )
        self.hashes = [h.lower() for h in hashes]

    @property
    def enabled(self) -> bool:
        return bool(self.hashes)

    def owner(self, authorization: str | None) -> str | None:
        """None when keys are off; the caller's owner id when the key is valid; else 401."""
        if not self.enabled:
            return None
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        candidate = hash_key(key.strip())
        # Compare against every hash, in constant time each, so timing tells nothing.
        matches = [hmac.compare_digest(candidate, h) for h in self.hashes]
        if not any(matches):
            raise _unauthorized("invalid API key")
        return candidate[len(_PREFIX) : len(_PREFIX) + 16]

    def dependency(self, request: Request) -> str | None:
        return self.owner(request.headers.get("authorization"))


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "hash":
        sys.exit("usage: python -m app.auth hash KEY")
    print(hash_key(sys.argv[2]))
