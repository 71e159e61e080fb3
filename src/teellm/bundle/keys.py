"""Publisher signing keys (Ed25519, PEM) and content keys (256-bit, hex file)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from teellm.bundle.errors import KeyFileError
from teellm.crypto.secret import SecretBytes, zeroize
from teellm.memory import protected_secret

CONTENT_KEY_SIZE = 32
_MAX_PEM = 16 * 1024
_HEX = b"0123456789abcdef"


def public_key_path(private_key_path: str | Path) -> Path:
    """``publisher.key`` -> ``publisher.pub`` (the public key lives beside it)."""
    return Path(private_key_path).with_suffix(".pub")


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Lowercase hex SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_signing_key(path: str | Path, key: Ed25519PrivateKey) -> Path:
    """Write the private key (PKCS8 PEM, mode 0600) and ``<name>.pub``; return the .pub path."""
    path = Path(path)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem)
    pub = public_key_path(path)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pub


def _read_small(path: str | Path, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_PEM + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {Path(path).name}: {exc.strerror}") from None
    if len(data) > _MAX_PEM:
        raise KeyFileError(f"{what} {Path(path).name} is too large")
    return data


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from an unencrypted PKCS8 PEM file."""
    data = _read_small(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{Path(path).name} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{Path(path).name} is not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key (SubjectPublicKeyInfo PEM).

    A private key file is accepted too: its public half is returned.
    """
    data = _read_small(path, "public key")
    try:
        if b"PRIVATE KEY" in data:
            return load_signing_key(path).public_key()
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{Path(path).name} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{Path(path).name} is not an Ed25519 key")
    return key


def generate_content_key() -> SecretBytes:
    """A fresh random 256-bit content key in protected memory."""
    buf = bytearray(os.urandom(CONTENT_KEY_SIZE))
    return protected_secret(buf, label="content key")


def parse_content_key(text: bytes | bytearray | memoryview) -> SecretBytes:
    """Decode 64 lowercase hex chars (+ optional newline) into protected memory.

    Decoded by hand into a bytearray: ``bytes.fromhex`` would leave an immutable,
    unwipeable copy of the key on the heap.
    """
    raw = memoryview(text).cast("B")
    n = len(raw)
    if n == 2 * CONTENT_KEY_SIZE + 1 and raw[n - 1] == 0x0A:
        n -= 1
    if n != 2 * CONTENT_KEY_SIZE:
        raise KeyFileError("content key must be 64 hex characters")
    out = bytearray(CONTENT_KEY_SIZE)
    try:
        for i in range(CONTENT_KEY_SIZE):
            hi = _HEX.find(raw[2 * i])
            lo = _HEX.find(raw[2 * i + 1])
            if hi < 0 or lo < 0:
                raise KeyFileError("content key must be 64 lowercase hex characters")
            out[i] = hi << 4 | lo
        return protected_secret(out, label="content key")
    finally:
        zeroize(out)


def read_content_key(path: str | Path) -> SecretBytes:
    """Read a content key file (64 lowercase hex chars + newline)."""
    buf = bytearray(2 * CONTENT_KEY_SIZE + 2)
    try:
        with open(path, "rb", buffering=0) as fh:
            n = fh.readinto(buf)
    except OSError as exc:
        raise KeyFileError(f"cannot read content key {Path(path).name}: {exc.strerror}") from None
    try:
        return parse_content_key(memoryview(buf)[:n])
    finally:
        zeroize(buf)


def content_key_hex(key: SecretBytes) -> bytearray:
    """The key as lowercase hex in a bytearray the caller must zeroize."""
    raw = key.reveal()
    out = bytearray(2 * len(raw))
    for i, b in enumerate(raw):
        out[2 * i] = _HEX[b >> 4]
        out[2 * i + 1] = _HEX[b & 15]
    return out


def write_content_key(path: str | Path, key: SecretBytes) -> None:
    """Write the key as 64 hex chars + newline, mode 0600 (never world-readable)."""
    if len(key) != CONTENT_KEY_SIZE:
        raise KeyFileError("content key must be 32 bytes")
    text = content_key_hex(key)
    text.append(0x0A)
    try:
        _write_private(Path(path), text)
    finally:
        zeroize(text)


def _write_private(path: Path, data: bytes | bytearray) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
