"""Report-data binding: the 64 bytes a TEE puts into its evidence.

report_data = SHA-512(transcript), where the transcript is domain-separated and
every field is length-prefixed, so no two different inputs encode alike and
evidence made for one key, nonce or model cannot be replayed for another.

Encoding (all integers big-endian u32):
    lp(b) = len(b) || b
    transcript = lp("teellm/report-data/v1") || lp(purpose) || lp(nonce)
               || count(public_keys) || for each (name, key) sorted by name: lp(name) || lp(key)
               || lp(manifest_digest) || lp(config)
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

from cryptography.hazmat.primitives import constant_time

from teellm.attestation.types import REPORT_DATA_SIZE

DOMAIN = b"teellm/report-data/v1"


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def transcript(
    purpose: str,
    *,
    nonce: bytes,
    public_keys: Mapping[str, bytes] | None = None,
    manifest_digest: bytes = b"",
    config: bytes = b"",
) -> bytes:
    keys = sorted((public_keys or {}).items())
    parts = [_lp(DOMAIN), _lp(purpose.encode()), _lp(nonce), struct.pack(">I", len(keys))]
    for name, key in keys:
        parts += [_lp(name.encode()), _lp(key)]
    parts += [_lp(manifest_digest), _lp(config)]
    return b"".join(parts)


def report_data(
    purpose: str,
    *,
    nonce: bytes,
    public_keys: Mapping[str, bytes] | None = None,
    manifest_digest: bytes = b"",
    config: bytes = b"",
) -> bytes:
    """The 64 report-data bytes binding these values."""
    digest = hashlib.sha512(
        transcript(
            purpose,
            nonce=nonce,
            public_keys=public_keys,
            manifest_digest=manifest_digest,
            config=config,
        )
    ).digest()
    assert len(digest) == REPORT_DATA_SIZE
    return digest


def matches(actual: bytes, expected: bytes) -> bool:
    """Constant-time comparison of evidence report data with the expected binding."""
    return len(actual) == REPORT_DATA_SIZE and constant_time.bytes_eq(actual, expected)
