"""The STREAM construction over AES-256-GCM and the commitments of a bundle.

Everything here is a pure function of its inputs; ``docs/sealed-format.md`` gives
the same definitions byte for byte.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, hmac

CIPHER_SUITE = "AES-256-GCM-STREAM/SHA-256"
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
MAX_CHUNKS = 2**32  # the chunk counter in the nonce is 32 bits
# 1 MiB: a chunk stays in L2 cache between hashing and AES-GCM (measured a little
# faster than 4 and 16 MiB), and 1024 chunks per GiB keep every core busy.
DEFAULT_CHUNK_SIZE = 1024 * 1024

_AAD_LABEL = b"teellm/v1/chunk\x00"
_KEY_COMMIT_LABEL = b"teellm/v1/key-commitment"
_PT_KEY_LABEL = b"teellm/v1/plaintext-commitment-key"
_PT_LABEL = b"teellm/v1/plaintext\x00"
_CT_LABEL = b"teellm/v1/ciphertext\x00"


def _hmac(key: bytes | memoryview, msg: bytes) -> bytes:
    # cryptography's HMAC takes the key as a buffer: no immutable copy of it is made.
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(msg)
    return mac.finalize()


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks of a file; an empty file still has one (empty, final) chunk."""
    return max(1, -(-size // chunk_size))


def encrypted_size(size: int, chunk_size: int) -> int:
    return size + TAG_SIZE * chunk_count(size, chunk_size)


def chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """7-byte random prefix || 32-bit big-endian counter || final flag (0x01 on the last)."""
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _name_field(name: str) -> bytes:
    raw = name.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def chunk_aad(binding: bytes, name: str, index: int) -> bytes:
    """AAD of one chunk: label || binding digest || file name || chunk index."""
    return _AAD_LABEL + binding + _name_field(name) + index.to_bytes(8, "big")


def key_commitment(content_key: bytes | memoryview) -> bytes:
    """HMAC-SHA256(K, label): pins the one key this bundle decrypts under."""
    return _hmac(content_key, _KEY_COMMIT_LABEL)


def plaintext_commitment_key(content_key: bytes | memoryview) -> bytes:
    return _hmac(content_key, _PT_KEY_LABEL)


def plaintext_commitment(
    commit_key: bytes, name: str, size: int, chunk_digests: list[bytes]
) -> bytes:
    """Keyed commitment to a file's plaintext (SHA-256 of every plaintext chunk).

    Keyed so that it hides guessable files (config.json) from anyone without the
    key; binding because HMAC with a known, committed key is collision resistant.
    """
    msg = _PT_LABEL + _name_field(name) + size.to_bytes(8, "big") + b"".join(chunk_digests)
    return _hmac(commit_key, msg)


def ciphertext_digest(chunk_digests: list[bytes]) -> bytes:
    """SHA-256 over the SHA-256 of every stored chunk (ciphertext || tag)."""
    h = hashlib.sha256(_CT_LABEL)
    h.update(len(chunk_digests).to_bytes(8, "big"))
    for d in chunk_digests:
        h.update(d)
    return h.digest()
