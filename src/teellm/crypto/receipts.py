"""Signed receipts: the server's Ed25519 statement "for this request I answered this".

The signing key is the one the attestation document lists and the evidence
binds, so a user holding the request body, the response body, the receipt and
the attestation document can later prove what the server answered.

Signed message (Ed25519 over these bytes; all integers big-endian):
    SHA-256( lp("teellm/receipt/v1") || lp(request_hash) || lp(response_hash)
             || lp(model_digest) || u64(time) )
where lp(b) = u32(len(b)) || b, request_hash = SHA-256(request body),
response_hash = SHA-256(response body, all streamed data concatenated),
model_digest = the model manifest digest, time = Unix seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from teellm.errors import TeellmError

DOMAIN = b"teellm/receipt/v1"
RECEIPT_HEADER = "X-Teellm-Receipt"
MAX_RECEIPT_SIZE = 4096
_HEX32 = r"^[0-9a-f]{64}$"


class ReceiptError(TeellmError):
    """A receipt is malformed, or does not verify for what it is said to cover."""

    code = "receipt_invalid"


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def signed_message(
    *, request_hash: bytes, response_hash: bytes, model_digest: bytes, time: int
) -> bytes:
    """The 32 bytes the server signs (see the module doc)."""
    return hashlib.sha256(
        _lp(DOMAIN)
        + _lp(request_hash)
        + _lp(response_hash)
        + _lp(model_digest)
        + struct.pack(">Q", time)
    ).digest()


class Receipt(BaseModel):
    """A signed receipt; hashes and digest are lowercase hex, signature base64."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(default=1, ge=1, le=1)
    request_hash: str = Field(pattern=_HEX32)
    response_hash: str = Field(pattern=_HEX32)
    model_digest: str = Field(pattern=_HEX32)
    time: int = Field(ge=0, lt=2**63)
    signature: str

    def message(self) -> bytes:
        return signed_message(
            request_hash=bytes.fromhex(self.request_hash),
            response_hash=bytes.fromhex(self.response_hash),
            model_digest=bytes.fromhex(self.model_digest),
            time=self.time,
        )

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces)."""
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":")).encode()

    def to_header(self) -> str:
        """Base64 of :meth:`to_bytes`, for the ``X-Teellm-Receipt`` header."""
        return base64.b64encode(self.to_bytes()).decode()

    @classmethod
    def from_bytes(cls, data: bytes | str) -> Receipt:
        """Parse receipt JSON (hostile input: :class:`ReceiptError` only)."""
        if len(data) > MAX_RECEIPT_SIZE:
            raise ReceiptError("receipt too large", code="receipt_malformed")
        try:
            return cls.model_validate_json(data)
        except (ValidationError, ValueError):
            raise ReceiptError("receipt is malformed", code="receipt_malformed") from None

    @classmethod
    def from_header(cls, value: str) -> Receipt:
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            raise ReceiptError("receipt header is not base64", code="receipt_malformed") from None
        return cls.from_bytes(raw)


def sign_receipt(
    signing_key: Ed25519PrivateKey,
    *,
    request_hash: bytes,
    response_hash: bytes,
    model_digest: bytes,
    when: int | None = None,
) -> Receipt:
    """Sign a receipt over the given 32-byte hashes (``when`` defaults to now)."""
    for name, value in (
        ("request_hash", request_hash),
        ("response_hash", response_hash),
        ("model_digest", model_digest),
    ):
        if len(value) != 32:
            raise ValueError(f"{name} must be 32 bytes")
    t = int(time.time()) if when is None else when
    msg = signed_message(
        request_hash=request_hash, response_hash=response_hash, model_digest=model_digest, time=t
    )
    return Receipt(
        request_hash=request_hash.hex(),
        response_hash=response_hash.hex(),
        model_digest=model_digest.hex(),
        time=t,
        signature=base64.b64encode(signing_key.sign(msg)).decode(),
    )


def verify_receipt(
    receipt: Receipt | bytes | str,
    public_key: Ed25519PublicKey | bytes,
    *,
    request_body: bytes | None = None,
    response_body: bytes | None = None,
    model_digest: bytes | None = None,
) -> Receipt:
    """Check the signature, and that the receipt covers the bodies/digest given.

    Returns the parsed receipt; raises :class:`ReceiptError` on any mismatch.
    """
    r = receipt if isinstance(receipt, Receipt) else Receipt.from_bytes(receipt)
    try:
        key = (
            public_key
            if isinstance(public_key, Ed25519PublicKey)
            else Ed25519PublicKey.from_public_bytes(public_key)
        )
        sig = base64.b64decode(r.signature, validate=True)
        key.verify(sig, r.message())
    except (InvalidSignature, ValueError):
        raise ReceiptError("receipt signature does not verify", code="receipt_signature") from None
    expected: dict[str, Any] = {}
    if request_body is not None:
        expected["request_hash"] = hashlib.sha256(request_body).hexdigest()
    if response_body is not None:
        expected["response_hash"] = hashlib.sha256(response_body).hexdigest()
    if model_digest is not None:
        expected["model_digest"] = model_digest.hex()
    for name, value in expected.items():
        if getattr(r, name) != value:
            raise ReceiptError(f"receipt {name} does not match", code="receipt_mismatch")
    return r
