"""Admin token: random, shown once, stored only as a hash, compared in constant time.

Tokens are 32 random bytes, so a fast hash (SHA-256) is enough: there is no
low-entropy password to protect against guessing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from teellm.kbs.errors import AdminAuthError

TOKEN_PREFIX = "kbs_"  # noqa: S105 - a label, not a secret
META_KEY = "admin_token_sha256"


def hash_token(token: str) -> str:
    """The stored form of an admin token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh admin token and its stored hash."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_token(token)


def check_token(presented: str | None, stored_hashes: list[str]) -> None:
    """Raise ``AdminAuthError`` unless ``presented`` hashes to one of ``stored_hashes``."""
    if not stored_hashes:
        raise AdminAuthError("the admin API is disabled (no admin token configured)")
    if not presented:
        raise AdminAuthError("admin token required")
    candidate = hash_token(presented).encode()
    ok = False
    for stored in stored_hashes:
        # Compare against every stored hash so timing does not reveal which one matched.
        ok |= hmac.compare_digest(candidate, stored.encode())
    if not ok:
        raise AdminAuthError("admin token rejected")
