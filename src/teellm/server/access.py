"""Access control: tenants, API tokens, allowed models, limits. Deny by default.

Tokens are stored only as SHA-256 hashes (``sha256:<hex>``). API tokens are
long random strings, so a fast hash is enough (no password stretching needed);
what matters is that the server never holds them in the clear. Checking a token
hashes it once and compares it with *every* stored hash in constant time,
without an early exit, so timing says nothing about which tenant matched.

YAML form::

    tenants:
      - name: acme
        token_hashes: ["sha256:9f86d0..."]
        models: ["tiny-llama"]        # "*" allows every model
        max_tokens: 512
        max_input_length: 2048
        requests_per_minute: 60
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from teellm.server.errors import ApiError

TOKEN_PREFIX = "tk-"  # noqa: S105 (a prefix, not a secret)
_HASH_PREFIX = "sha256:"


def hash_token(token: str) -> str:
    """The stored form of an API token."""
    return _HASH_PREFIX + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh random API token and its hash: ``(token, hash)``."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_token(token)


class Tenant(BaseModel):
    """One tenant: who it is, how it authenticates, what it may do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    token_hashes: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    max_tokens: int = Field(default=1024, ge=1)
    max_input_length: int | None = Field(default=None, ge=1)
    requests_per_minute: int = Field(default=60, ge=1)

    @field_validator("token_hashes")
    @classmethod
    def _hashes_well_formed(cls, value: list[str]) -> list[str]:
        for h in value:
            hexpart = h.removeprefix(_HASH_PREFIX)
            if not h.startswith(_HASH_PREFIX) or len(hexpart) != 64:
                raise ValueError("token hashes must look like sha256:<64 hex>")
            int(hexpart, 16)
        return [h.lower() for h in value]

    def may_use(self, model_id: str) -> bool:
        return "*" in self.models or model_id in self.models


class RateLimiter:
    """Token bucket per key (tenant, client address): ``rpm`` requests per minute,
    bursts up to ``rpm``.

    Keys can come from outside (addresses), so buckets idle for over a minute, which
    are full again and hold no state worth keeping, are dropped once there are many.
    """

    MAX_KEYS = 10_000

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}

    def take(self, key: str, rpm: int) -> float:
        """Consume one request; 0.0 if allowed, else seconds until one is free."""
        rate = rpm / 60.0
        with self._lock:
            now = self._clock()
            if key not in self._buckets and len(self._buckets) >= self.MAX_KEYS:
                self._prune(now)
            tokens, last = self._buckets.get(key, (float(rpm), now))
            tokens = min(float(rpm), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate


class AccessError(ApiError):
    """Authentication, authorisation or rate-limit failure (401/403/429)."""


class AccessPolicy(BaseModel):
    """The tenants a server admits. With no tenants nobody is admitted."""

    model_config = ConfigDict(extra="forbid")

    tenants: list[Tenant] = Field(default_factory=list)

    def model_post_init(self, __context: Any) -> None:
        self._limiter = RateLimiter(time.monotonic)
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenant names must be unique")
        hashes = [h for t in self.tenants for h in t.token_hashes]
        if len(set(hashes)) != len(hashes):
            raise ValueError("a token hash may belong to one tenant only")

    @classmethod
    def from_yaml(cls, source: str | Path) -> AccessPolicy:
        """Load from a YAML file path or YAML text; malformed input raises AccessError."""
        try:
            is_path = isinstance(source, Path) or ("\n" not in source and Path(source).is_file())
        except OSError:
            is_path = False
        text = Path(source).read_text() if is_path else str(source)
        try:
            data = yaml.safe_load(text) or {}
            return cls.model_validate(data)
        except (yaml.YAMLError, ValidationError, ValueError) as exc:
            raise AccessError(
                f"access policy is malformed ({type(exc).__name__})",
                status=500,
                code="access_policy_invalid",
            ) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_defaults=False), sort_keys=False)

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Use another monotonic clock for rate limiting (tests)."""
        self._limiter = RateLimiter(clock)

    def authenticate(self, token: str | None) -> Tenant:
        """The tenant owning ``token``; 401 when missing or unknown."""
        if not token:
            raise AccessError(
                "missing API key: send 'Authorization: Bearer <token>'",
                status=401,
                code="missing_api_key",
            )
        presented = hash_token(token).encode()
        found: Tenant | None = None
        for tenant in self.tenants:
            for stored in tenant.token_hashes:
                # No early exit: every hash is compared whatever matched before.
                if hmac.compare_digest(presented, stored.encode()) and found is None:
                    found = tenant
        if found is None:
            raise AccessError("invalid API key", status=401, code="invalid_api_key")
        return found

    def authorize(
        self,
        tenant: Tenant,
        *,
        model_id: str,
        max_tokens: int | None = None,
        input_length: int | None = None,
    ) -> None:
        """Raise 403 unless ``tenant`` may run this request on ``model_id``."""
        if not tenant.may_use(model_id):
            raise AccessError(
                "this API key may not use the requested model",
                status=403,
                code="model_not_allowed",
                param="model",
            )
        if max_tokens is not None and max_tokens > tenant.max_tokens:
            raise AccessError(
                f"max_tokens exceeds this tenant's limit of {tenant.max_tokens}",
                status=403,
                code="max_tokens_exceeded",
                param="max_tokens",
            )
        if (
            input_length is not None
            and tenant.max_input_length is not None
            and input_length > tenant.max_input_length
        ):
            raise AccessError(
                f"input of {input_length} tokens exceeds this tenant's limit of "
                f"{tenant.max_input_length}",
                status=403,
                code="input_length_exceeded",
            )

    def check_rate(self, tenant: Tenant) -> None:
        """Count one request for ``tenant``; 429 with Retry-After when over its rate."""
        wait = self._limiter.take(tenant.name, tenant.requests_per_minute)
        if wait > 0:
            raise AccessError(
                "rate limit exceeded for this API key",
                status=429,
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
