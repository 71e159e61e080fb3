"""Key-release protocol messages and the HPKE wrapping of released keys.

See docs/key-broker.md for the exchange message by message. The HPKE suite is
named in every response so a client can refuse one it does not expect.
Public keys travel as hex: for ML-KEM-768+X25519 the encoding is the ML-KEM-768
encapsulation key (1184 bytes) followed by the X25519 public key (32 bytes);
for X25519 it is the 32 raw bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from pydantic import BaseModel, ConfigDict, Field

from teellm.attestation.transcript import report_data
from teellm.kbs.errors import ProtocolError

PURPOSE = "teellm/kbs/key-release"
NONCE_SIZE = 32
MAX_MODEL_ID = 200
MAX_VERSION = 2**53
_MLKEM768_PUB = 1184
_X25519_PUB = 32


# -- messages ----------------------------------------------------------------------------


class ChallengeRequest(BaseModel):
    """Step 1, TEE -> broker: which key it wants and which TEE type it will attest as."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=MAX_MODEL_ID)
    version: int = Field(ge=0, le=MAX_VERSION)
    tee_type: str = Field(min_length=1, max_length=32)


class ChallengeResponse(BaseModel):
    """Step 2, broker -> TEE: a single-use nonce for this request, and when it expires."""

    request_id: str
    nonce: str  # hex, 32 random bytes
    expires_at: str  # ISO 8601 UTC
    suite: str  # the HPKE suite the broker will seal to


class AttestRequest(BaseModel):
    """Step 3, TEE -> broker: evidence binding the nonce and the ephemeral HPKE public key."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    evidence: dict[str, Any]
    hpke_public_key: str = Field(min_length=2, max_length=4 * (_MLKEM768_PUB + _X25519_PUB))


class AttestResponse(BaseModel):
    """Step 4, broker -> TEE: the content key HPKE-sealed to the ephemeral public key."""

    sealed_key: str  # hex HPKE ciphertext (enc || ct)
    suite: str
    model_id: str
    version: int


class ErrorBody(BaseModel):
    code: str
    message: str
    reasons: list[str] = Field(default_factory=list)
    codes: list[str] = Field(default_factory=list)


# -- HPKE --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteSpec:
    """A named HPKE suite (KEM, KDF, AEAD) from cryptography's hpke module."""

    name: str
    kem: hpke.KEM
    kdf: hpke.KDF
    aead: hpke.AEAD

    def suite(self) -> hpke.Suite:
        return hpke.Suite(self.kem, self.kdf, self.aead)


SUITES: dict[str, SuiteSpec] = {
    s.name: s
    for s in (
        SuiteSpec(
            "MLKEM768-X25519/HKDF-SHA256/AES-256-GCM",
            hpke.KEM.MLKEM768_X25519,
            hpke.KDF.HKDF_SHA256,
            hpke.AEAD.AES_256_GCM,
        ),
        SuiteSpec(
            "MLKEM768-X25519/HKDF-SHA384/AES-256-GCM",
            hpke.KEM.MLKEM768_X25519,
            hpke.KDF.HKDF_SHA384,
            hpke.AEAD.AES_256_GCM,
        ),
        SuiteSpec(
            "X25519/HKDF-SHA256/AES-256-GCM",
            hpke.KEM.X25519,
            hpke.KDF.HKDF_SHA256,
            hpke.AEAD.AES_256_GCM,
        ),
    )
}
DEFAULT_SUITE = "MLKEM768-X25519/HKDF-SHA256/AES-256-GCM"

HpkePublicKey = hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey
HpkePrivateKey = hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey


def get_suite(name: str) -> SuiteSpec:
    try:
        return SUITES[name]
    except KeyError:
        raise ProtocolError(f"unknown HPKE suite {name[:80]!r}", code="suite_unknown") from None


def _is_hybrid(spec: SuiteSpec) -> bool:
    return spec.name.startswith("MLKEM768-X25519/")


@dataclass
class EphemeralKeyPair:
    """A one-exchange HPKE key pair; the private half never leaves the TEE."""

    spec: SuiteSpec
    private_key: HpkePrivateKey
    public_bytes: bytes

    @classmethod
    def generate(cls, suite: str = DEFAULT_SUITE) -> EphemeralKeyPair:
        spec = get_suite(suite)
        if _is_hybrid(spec):
            m = mlkem.MLKEM768PrivateKey.generate()
            x = x25519.X25519PrivateKey.generate()
            pub = m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
            return cls(spec, hpke.MLKEM768X25519PrivateKey(m, x), pub)
        xk = x25519.X25519PrivateKey.generate()
        return cls(spec, xk, xk.public_key().public_bytes_raw())

    def open(self, sealed: bytes, info: bytes) -> bytearray:
        """Decrypt a sealed key; raises ``ProtocolError`` if it was not sealed to this pair."""
        try:
            return bytearray(self.spec.suite().decrypt(sealed, self.private_key, info=info))
        except Exception:  # InvalidTag, ValueError: never say more than "does not open"
            raise ProtocolError(
                "sealed key does not open with this key pair", code="sealed_key_invalid"
            ) from None


def load_public_key(spec: SuiteSpec, data: bytes) -> HpkePublicKey:
    """Parse a hex-decoded HPKE public key for ``spec``; typed error on bad input."""
    try:
        if _is_hybrid(spec):
            if len(data) != _MLKEM768_PUB + _X25519_PUB:
                raise ValueError("length")
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(data[:_MLKEM768_PUB]),
                x25519.X25519PublicKey.from_public_bytes(data[_MLKEM768_PUB:]),
            )
        if len(data) != _X25519_PUB:
            raise ValueError("length")
        return x25519.X25519PublicKey.from_public_bytes(data)
    except ValueError:
        raise ProtocolError(
            f"hpke_public_key is not a valid {spec.name.split('/')[0]} public key",
            code="public_key_invalid",
        ) from None


def seal(spec: SuiteSpec, public_key: HpkePublicKey, plaintext: bytes, info: bytes) -> bytes:
    """HPKE base-mode single-shot seal (enc || ciphertext)."""
    return spec.suite().encrypt(plaintext, public_key, info=info)


def hpke_info(model_id: str, version: int, request_id: str, suite: str) -> bytes:
    """HPKE ``info``: binds the sealed key to this model, version, request and suite."""
    return (
        b"teellm/kbs/sealed-key/v1\x00"
        + json.dumps([model_id, version, request_id, suite], separators=(",", ":")).encode()
    )


def expected_report_data(nonce: bytes, hpke_public_key: bytes, manifest_digest: bytes) -> bytes:
    """The report data the broker requires in the evidence (see docs/key-broker.md)."""
    return report_data(
        PURPOSE,
        nonce=nonce,
        public_keys={"hpke": hpke_public_key},
        manifest_digest=manifest_digest,
        config=b"",
    )


def decode_hex(value: str, field: str, *, max_bytes: int) -> bytes:
    """Strict hex decoding of a protocol field; typed error otherwise."""
    if len(value) > 2 * max_bytes:
        raise ProtocolError(f"{field} is too long", code="bad_request")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ProtocolError(f"{field} is not hex", code="bad_request") from None
