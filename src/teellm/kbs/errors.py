"""Typed errors of the key broker, its store and its client."""

from __future__ import annotations

from collections.abc import Sequence

from teellm.errors import TeellmError


class KbsError(TeellmError):
    """Base class of key-broker errors."""

    code = "kbs_error"


class StoreError(KbsError):
    """The broker database could not be opened or used."""

    code = "store_error"


class MasterKeyError(KbsError):
    """The master key is missing, malformed, or cannot unwrap a stored key."""

    code = "master_key_error"


class AuditChainBroken(KbsError):
    """The audit log's hash chain does not verify: a row was edited, inserted or deleted."""

    code = "audit_chain_broken"


class AdminAuthError(KbsError):
    """Missing or wrong admin credentials."""

    code = "admin_unauthorized"


class ProtocolError(KbsError):
    """A message that does not follow the key-release protocol (malformed, wrong sizes)."""

    code = "bad_request"


class RateLimited(KbsError):
    """Too many failed attempts from one client; ``retry_after_s`` says when to retry."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KeyReleaseDenied(KbsError):
    """The broker refused to release a key; ``reasons`` names every failed check.

    ``codes`` are the short machine-readable reason codes (``nonce_reused``,
    ``measurement``...), ``reasons`` the human-readable lines.
    """

    code = "key_release_denied"

    def __init__(
        self,
        message: str,
        *,
        reasons: Sequence[str] = (),
        codes: Sequence[str] = (),
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.reasons = list(reasons)
        self.codes = list(codes)

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}: {'; '.join(self.reasons)}" if self.reasons else base


class BrokerUnavailable(KbsError):
    """The broker could not be reached (after retries) or answered with a server error."""

    code = "broker_unavailable"
