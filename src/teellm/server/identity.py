"""The server's identity keys, made at boot and bound into its evidence.

An HPKE key pair (hybrid ML-KEM-768 + X25519 by default) that clients seal
requests to, and an Ed25519 key that signs receipts. Neither ever leaves the
process: there is no export, only the public halves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from teellm.crypto import envelope
from teellm.crypto.hpke import HpkePrivateKey, Kem


@dataclass(frozen=True)
class ServerIdentity:
    """Identity key pairs of one server process."""

    hpke: HpkePrivateKey = field(repr=False)
    signing: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, kem: Kem = Kem.MLKEM768_X25519) -> ServerIdentity:
        return cls(hpke=HpkePrivateKey.generate(kem), signing=Ed25519PrivateKey.generate())

    @property
    def hpke_public(self) -> bytes:
        return self.hpke.public_key.raw

    @property
    def signing_public(self) -> bytes:
        return self.signing.public_key().public_bytes_raw()

    @property
    def key_id(self) -> bytes:
        """The 16-byte id requests name (see :func:`teellm.crypto.envelope.key_id`)."""
        return envelope.key_id(self.hpke_public, self.signing_public)

    def public_keys(self) -> dict[str, bytes]:
        """The keys the report data binds, by transcript name."""
        return {"hpke": self.hpke_public, "signing": self.signing_public}
