"""Keyless checks of a bundle's encrypted data (for storage and transparency audits)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import constant_time

from teellm.bundle import stream
from teellm.bundle._chunks import ScratchBuffers, pread_exact, run_parallel
from teellm.bundle.errors import (
    ContentCommitmentError,
    FileExtendedError,
    FileMissingError,
    FileTruncatedError,
)
from teellm.bundle.manifest import Manifest, data_path, open_regular


def check_ciphertext(
    bundle_dir: str | Path,
    manifest: Manifest,
    *,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> None:
    """Check sizes and ciphertext digests of every file without the content key.

    Detects any change to the stored bytes; it cannot say anything about the
    plaintext (that needs the key: ``teellm verify``).
    """
    fds = open_data(Path(bundle_dir), manifest)
    step = manifest.chunk_size + stream.TAG_SIZE
    scratch = ScratchBuffers(step, protected=False)
    try:
        for entry in manifest.files:
            fd = fds[entry.name]
            size = manifest.encrypted_size(entry)
            count = stream.chunk_count(entry.size, manifest.chunk_size)

            def digest(i: int, fd: int = fd, size: int = size) -> bytes:
                n = min(step, size - i * step)
                view = scratch.get()[:n]
                pread_exact(fd, view, i * step)
                if progress:
                    progress(n)
                return hashlib.sha256(view).digest()

            root = stream.ciphertext_digest(run_parallel(digest, list(range(count)), workers))
            if not constant_time.bytes_eq(root, bytes.fromhex(entry.ciphertext_sha256)):
                raise ContentCommitmentError(
                    f"{entry.name}: ciphertext differs from the manifest's commitment"
                )
    finally:
        scratch.close()
        for fd in fds.values():
            os.close(fd)


def open_data(bundle_dir: Path, manifest: Manifest) -> dict[str, int]:
    """Open every data file and check its exact size before any decryption."""
    fds: dict[str, int] = {}
    try:
        for entry in manifest.files:
            path = data_path(bundle_dir, entry.name)
            try:
                fd = open_regular(path)
            except FileNotFoundError:
                raise FileMissingError(f"{entry.name}: encrypted file is missing") from None
            except OSError as exc:
                raise FileMissingError(f"{entry.name}: cannot open ({exc.strerror})") from None
            fds[entry.name] = fd
            actual = os.fstat(fd).st_size
            expected = manifest.encrypted_size(entry)
            if actual < expected:
                raise FileTruncatedError(
                    f"{entry.name}: {expected - actual} bytes missing (truncated or chunk removed)"
                )
            if actual > expected:
                raise FileExtendedError(
                    f"{entry.name}: {actual - expected} extra bytes (extended or chunk added)"
                )
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds
