"""The TEE side of key release: challenge, evidence, attest, open into protected memory.

Runs inside the TEE. The ephemeral HPKE private key never leaves this process,
and the released content key is copied straight into protected memory and the
intermediate buffer wiped.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import httpx
from pydantic import ValidationError

from teellm.attestation.types import TEERuntime
from teellm.closing import Closing
from teellm.crypto.secret import SecretBytes, zeroize
from teellm.kbs.errors import BrokerUnavailable, KeyReleaseDenied, ProtocolError, RateLimited
from teellm.kbs.protocol import (
    DEFAULT_SUITE,
    NONCE_SIZE,
    AttestResponse,
    ChallengeResponse,
    EphemeralKeyPair,
    expected_report_data,
    hpke_info,
)

log = logging.getLogger("teellm.kbs")


class _Retryable(Exception):
    """A transient failure: connection error or 5xx; the whole exchange is retried."""


class KeyBrokerClient(Closing):
    """Fetches model content keys from a key broker over HTTP.

    Connection failures and 5xx answers are retried with exponential backoff
    (``backoff_s`` doubling up to ``max_backoff_s``, with jitter), each retry a
    fresh exchange (new nonce, new key pair: a nonce is consumed by any attempt).
    A denial fails at once with the broker's reasons.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        retries: int = 4,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        suite: str = DEFAULT_SUITE,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.suite = suite
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def fetch_key(
        self, model_id: str, version: int, runtime: TEERuntime, *, manifest_digest: bytes = b""
    ) -> SecretBytes:
        """Run the whole exchange; return the content key in protected memory.

        Raises ``KeyReleaseDenied`` (with ``.reasons``) when the broker refuses,
        ``RateLimited`` when this client failed too often, ``BrokerUnavailable``
        after the retries are spent.
        """
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            try:
                return self._exchange(model_id, version, runtime, manifest_digest)
            except _Retryable as exc:
                last = str(exc)
                log.warning("key broker attempt %d failed: %s", attempt + 1, last)
        raise BrokerUnavailable(f"key broker unreachable after {self.retries + 1} attempts: {last}")

    def _exchange(
        self, model_id: str, version: int, runtime: TEERuntime, manifest_digest: bytes
    ) -> SecretBytes:
        try:
            return self._exchange_unchecked(model_id, version, runtime, manifest_digest)
        except ValidationError:
            # The broker's answers are input too: a malformed one is a typed error.
            raise ProtocolError("broker answer does not match the protocol") from None

    def _exchange_unchecked(
        self, model_id: str, version: int, runtime: TEERuntime, manifest_digest: bytes
    ) -> SecretBytes:
        ch = ChallengeResponse.model_validate(
            self._post(
                "/v1/challenge",
                {"model_id": model_id, "version": version, "tee_type": runtime.kind.value},
            )
        )
        if ch.suite != self.suite:
            raise ProtocolError(
                f"broker seals with {ch.suite}, this client expects {self.suite}",
                code="suite_mismatch",
            )
        try:
            nonce = bytes.fromhex(ch.nonce)
        except ValueError:
            raise ProtocolError("broker nonce is not hex") from None
        if len(nonce) != NONCE_SIZE:
            raise ProtocolError("broker nonce has the wrong size")
        pair = EphemeralKeyPair.generate(self.suite)
        evidence = runtime.evidence(expected_report_data(nonce, pair.public_bytes, manifest_digest))
        resp = AttestResponse.model_validate(
            self._post(
                "/v1/attest",
                {
                    "request_id": ch.request_id,
                    "evidence": evidence.to_json(),
                    "hpke_public_key": pair.public_bytes.hex(),
                },
            )
        )
        if resp.suite != self.suite or resp.model_id != model_id or resp.version != version:
            raise ProtocolError("broker answered for another suite, model or version")
        try:
            sealed = bytes.fromhex(resp.sealed_key)
        except ValueError:
            raise ProtocolError("sealed key is not hex") from None
        plain = pair.open(sealed, hpke_info(model_id, version, ch.request_id, self.suite))
        try:
            return _into_protected_memory(plain)
        finally:
            zeroize(plain)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            r = self._http.post(path, json=body)
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__} on {path}") from None
        if r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code} on {path}")
        try:
            data = r.json()
        except ValueError:
            raise ProtocolError(f"broker answered {r.status_code} with non-JSON") from None
        if r.status_code == 200:
            return data
        err = data.get("error", {}) if isinstance(data, dict) else {}
        if not isinstance(err, dict):
            err = {}
        if r.status_code == 403:
            raise KeyReleaseDenied(
                "key release denied",
                reasons=[str(x) for x in err.get("reasons", [])][:50],
                codes=[str(x) for x in err.get("codes", [])][:50],
            )
        if r.status_code == 429:
            try:
                retry_after = float(r.headers.get("retry-after", "60"))
            except ValueError:
                retry_after = 60.0
            raise RateLimited("broker rate-limited this client", retry_after_s=retry_after)
        raise ProtocolError(
            f"broker refused the request ({r.status_code} {str(err.get('code', ''))[:40]})"
        )


def _into_protected_memory(plain: bytearray) -> SecretBytes:
    """Copy the released key into protected memory (the bundle owner's teellm.memory)."""
    from teellm.memory import protected_secret

    return protected_secret(plain, label="content key")
