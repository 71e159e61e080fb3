"""HPKE (RFC 9180) key pairs and single-shot sealing, over pyca/cryptography.

Two suites, both with HKDF-SHA256 and AES-256-GCM:

- ``mlkem768-x25519`` (default): hybrid post-quantum KEM (ML-KEM-768 + X25519).
  Public key = ML-KEM-768 encapsulation key (1184 bytes) || X25519 key (32 bytes).
  Private key = ML-KEM-768 seed (64 bytes) || X25519 private key (32 bytes).
- ``x25519``: DHKEM(X25519). Public key 32 bytes, private key 32 bytes.

The KEM of a public key follows from its length (1216 or 32 bytes), so a raw
public key is unambiguous on the wire and in the attestation transcript.
"""

from __future__ import annotations

from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from teellm.crypto.secret import SecretBytes
from teellm.errors import TeellmError

MLKEM768_PUBLIC_SIZE = 1184
MLKEM768_SEED_SIZE = 64
X25519_SIZE = 32


class HpkeError(TeellmError):
    """An HPKE key could not be parsed or a ciphertext could not be opened."""

    code = "hpke_failed"


class Kem(StrEnum):
    """The KEMs teellm offers; both use HKDF-SHA256 and AES-256-GCM."""

    MLKEM768_X25519 = "mlkem768-x25519"
    X25519 = "x25519"

    @property
    def suite_id(self) -> int:
        """The one-byte suite identifier used in the envelope header."""
        return _SUITE_IDS[self]

    @property
    def public_size(self) -> int:
        return MLKEM768_PUBLIC_SIZE + X25519_SIZE if self is Kem.MLKEM768_X25519 else X25519_SIZE

    @property
    def enc_size(self) -> int:
        return int(_KEMS[self].enc_length())

    @classmethod
    def from_suite_id(cls, value: int) -> Kem:
        for kem, sid in _SUITE_IDS.items():
            if sid == value:
                return kem
        raise HpkeError(f"unknown HPKE suite id {value}", code="unknown_suite")


_SUITE_IDS = {Kem.MLKEM768_X25519: 1, Kem.X25519: 2}
_KEMS = {Kem.MLKEM768_X25519: hpke.KEM.MLKEM768_X25519, Kem.X25519: hpke.KEM.X25519}

_PublicObj = hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey
_PrivateObj = hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey


def suite(kem: Kem) -> hpke.Suite:
    """The HPKE suite for ``kem`` with HKDF-SHA256 and AES-256-GCM."""
    return hpke.Suite(_KEMS[kem], hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class HpkePublicKey:
    """A recipient public key; ``raw`` is its wire encoding."""

    __slots__ = ("_obj", "kem", "raw")

    def __init__(self, kem: Kem, raw: bytes, obj: _PublicObj) -> None:
        self.kem = kem
        self.raw = raw
        self._obj = obj

    @classmethod
    def from_bytes(cls, raw: bytes) -> HpkePublicKey:
        """Parse a raw public key; the KEM follows from the length."""
        raw = bytes(raw)
        try:
            if len(raw) == Kem.MLKEM768_X25519.public_size:
                m = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_SIZE])
                x = x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_SIZE:])
                return cls(Kem.MLKEM768_X25519, raw, hpke.MLKEM768X25519PublicKey(m, x))
            if len(raw) == X25519_SIZE:
                return cls(Kem.X25519, raw, x25519.X25519PublicKey.from_public_bytes(raw))
        except ValueError:
            raise HpkeError("malformed HPKE public key", code="bad_public_key") from None
        raise HpkeError(f"HPKE public key has bad length {len(raw)}", code="bad_public_key")

    def seal(self, plaintext: bytes, *, info: bytes) -> bytes:
        """Single-shot HPKE base mode: ``enc || ciphertext``."""
        return suite(self.kem).encrypt(plaintext, self._obj, info=info)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HpkePublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"HpkePublicKey({self.kem.value}, {self.raw[-8:].hex()}...)"


class HpkePrivateKey:
    """A recipient private key. The key object lives in OpenSSL memory.

    Identity keys are made at boot and never leave the process, so there is
    deliberately no export; :meth:`from_private_bytes` exists for test vectors.
    """

    __slots__ = ("_obj", "kem", "public_key")

    def __init__(self, kem: Kem, obj: _PrivateObj, public_key: HpkePublicKey) -> None:
        self.kem = kem
        self._obj = obj
        self.public_key = public_key

    @classmethod
    def generate(cls, kem: Kem = Kem.MLKEM768_X25519) -> HpkePrivateKey:
        """A fresh key pair."""
        size = X25519_SIZE if kem is Kem.X25519 else MLKEM768_SEED_SIZE + X25519_SIZE
        with SecretBytes.random(size, label="hpke-seed") as seed:
            return cls.from_private_bytes(kem, seed)

    @classmethod
    def from_private_bytes(cls, kem: Kem, secret: SecretBytes) -> HpkePrivateKey:
        """Rebuild a key pair from its private encoding (see the module doc)."""
        data = secret.reveal()
        try:
            if kem is Kem.X25519:
                if len(data) != X25519_SIZE:
                    raise ValueError("length")
                x = x25519.X25519PrivateKey.from_private_bytes(data)
                pub = HpkePublicKey(kem, x.public_key().public_bytes_raw(), x.public_key())
                return cls(kem, x, pub)
            if len(data) != MLKEM768_SEED_SIZE + X25519_SIZE:
                raise ValueError("length")
            m = mlkem.MLKEM768PrivateKey.from_seed_bytes(data[:MLKEM768_SEED_SIZE])
            xk = x25519.X25519PrivateKey.from_private_bytes(data[MLKEM768_SEED_SIZE:])
            raw = m.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
            return cls(kem, hpke.MLKEM768X25519PrivateKey(m, xk), HpkePublicKey.from_bytes(raw))
        except ValueError:
            raise HpkeError("malformed HPKE private key", code="bad_private_key") from None

    def open(self, ciphertext: bytes, *, info: bytes) -> bytes:
        """Open ``enc || ciphertext`` sealed to this key; :class:`HpkeError` if it fails."""
        try:
            return suite(self.kem).decrypt(ciphertext, self._obj, info=info)
        except (InvalidTag, ValueError):
            raise HpkeError("HPKE ciphertext could not be opened", code="decrypt_failed") from None

    def __repr__(self) -> str:
        return f"HpkePrivateKey({self.kem.value}, public {self.public_key.raw[-8:].hex()}...)"
