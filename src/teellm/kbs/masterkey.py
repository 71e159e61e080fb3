"""The broker master key: content keys at rest are AES-256-GCM encrypted under it.

A key ring holds the current master key and, during a rotation, older ones, so
rows wrapped under an old key can still be opened and re-wrapped. Each master
key has a public id (a hash of the key under a domain label) stored beside
every wrapped row, so the ring knows which key opens it.

The associated data binds the wrapped key to its (model id, version): a row
copied onto another model's row fails to open instead of releasing the wrong key.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teellm.crypto.secret import SecretBytes
from teellm.kbs.errors import MasterKeyError

MASTER_KEY_SIZE = 32
ENV_VAR = "TEELLM_KBS_MASTER_KEY"
_NONCE_SIZE = 12


def master_key_id(key: SecretBytes) -> str:
    """Public identifier of a master key (16 hex chars); reveals nothing usable about it."""
    h = hashlib.sha256(b"teellm/kbs/master-key-id\x00")
    h.update(key.reveal())
    return h.hexdigest()[:16]


def _aad(model_id: str, version: int) -> bytes:
    return b"teellm/kbs/content-key\x00" + json.dumps([model_id, version]).encode()


def parse_master_keys(text: str) -> list[SecretBytes]:
    """Parse master keys: 64 hex chars each, separated by newlines or commas; newest first."""
    keys: list[SecretBytes] = []
    for token in text.replace(",", "\n").split():
        token = token.strip()
        if len(token) != 2 * MASTER_KEY_SIZE:
            raise MasterKeyError(
                f"a master key must be {2 * MASTER_KEY_SIZE} hex characters", code="master_key_bad"
            )
        try:
            keys.append(SecretBytes(bytearray.fromhex(token), label="master key"))
        except ValueError:
            raise MasterKeyError("a master key is not valid hex", code="master_key_bad") from None
    if not keys:
        raise MasterKeyError("no master key given", code="master_key_missing")
    return keys


def generate_master_key_file(path: Path) -> None:
    """Write a fresh random master key (hex) to ``path`` with mode 0600; refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(MASTER_KEY_SIZE) + "\n")


class MasterKeyRing:
    """The current master key plus older ones still accepted for unwrapping."""

    def __init__(self, keys: Iterable[SecretBytes]) -> None:
        ordered = list(keys)
        if not ordered:
            raise MasterKeyError("no master key given", code="master_key_missing")
        for k in ordered:
            if len(k) != MASTER_KEY_SIZE:
                raise MasterKeyError("a master key must be 32 bytes", code="master_key_bad")
        self._keys = {master_key_id(k): k for k in ordered}
        self.current_id = master_key_id(ordered[0])

    @classmethod
    def from_file(cls, path: str | Path) -> MasterKeyRing:
        """Keys from a file (newest first); the file should be readable only by the broker."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise MasterKeyError(
                f"cannot read master key file ({exc.strerror})", code="master_key_missing"
            ) from None
        return cls(parse_master_keys(text))

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> MasterKeyRing:
        """Keys from an environment variable (comma-separated, newest first)."""
        text = os.environ.get(var, "")
        if not text:
            raise MasterKeyError(f"{var} is not set", code="master_key_missing")
        return cls(parse_master_keys(text))

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def wrap(self, content_key: SecretBytes, *, model_id: str, version: int) -> tuple[str, bytes]:
        """Encrypt a content key under the current master key: (master key id, nonce||ct)."""
        nonce = secrets.token_bytes(_NONCE_SIZE)
        aead = AESGCM(bytes(self._keys[self.current_id].reveal()))
        ct = aead.encrypt(nonce, bytes(content_key.reveal()), _aad(model_id, version))
        return self.current_id, nonce + ct

    def unwrap(self, key_id: str, wrapped: bytes, *, model_id: str, version: int) -> SecretBytes:
        """Decrypt a stored content key; fails if the row was moved, edited or the key is gone."""
        key = self._keys.get(key_id)
        if key is None:
            raise MasterKeyError(
                f"stored key is wrapped under master key {key_id}, which is not loaded",
                code="master_key_unknown",
            )
        aead = AESGCM(bytes(key.reveal()))
        try:
            plain = aead.decrypt(
                wrapped[:_NONCE_SIZE], wrapped[_NONCE_SIZE:], _aad(model_id, version)
            )
        except (InvalidTag, ValueError):
            raise MasterKeyError(
                "stored key does not open under its master key (tampered or moved row)",
                code="wrapped_key_invalid",
            ) from None
        return SecretBytes(bytearray(plain), label="content key")

    def zeroize(self) -> None:
        for k in self._keys.values():
            k.zeroize()

    def __repr__(self) -> str:
        return f"MasterKeyRing(current={self.current_id}, keys={len(self._keys)})"
