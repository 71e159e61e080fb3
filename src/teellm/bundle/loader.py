"""Open a sealed bundle into protected memory, verifying everything on the way."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teellm.bundle import stream
from teellm.bundle._chunks import ScratchBuffers, chunk_ranges, pread_exact, run_parallel
from teellm.bundle.audit import open_data
from teellm.bundle.errors import (
    BundleError,
    BundleFormatError,
    ChunkAuthError,
    ContentCommitmentError,
    FileTruncatedError,
    ManifestChangedError,
    RollbackError,
    UntrustedPublisherError,
    WrongContentKeyError,
)
from teellm.bundle.keys import key_id
from teellm.bundle.manifest import FileEntry, Manifest, read_manifest
from teellm.bundle.tensors import tensors_from_buffer
from teellm.closing import Closing
from teellm.crypto.secret import SecretBytes
from teellm.memory import ProtectedBuffer, ProtectedMemoryError, ProtectionReport

ALIGN = 4096  # every file starts page-aligned, so tensor data is aligned too

# progress(nbytes) after each decrypted chunk
Progress = Callable[[int], None]


class LoadedBundle(Closing):
    """A verified bundle in protected memory.

    ``files`` maps every file name to a read-only view of its plaintext; ``tensors``
    holds every tensor of every ``*.safetensors`` file as a view of the same memory
    (no copies). ``close()`` zeroizes and releases it all; views kept past that read
    zeros.
    """

    def __init__(
        self,
        manifest: Manifest,
        buffer: ProtectedBuffer,
        files: dict[str, memoryview],
        tensors: dict[str, torch.Tensor],
    ) -> None:
        self.manifest = manifest
        self._buffer = buffer
        self.files = files
        self.tensors = tensors

    @property
    def protection(self) -> ProtectionReport:
        """Exactly which memory and process protections hold for the plaintext."""
        return self._buffer.protections

    @property
    def closed(self) -> bool:
        return self._buffer.closed

    def close(self) -> None:
        """Zeroize and release the plaintext (idempotent)."""
        self.files = {}
        self.tensors = {}
        self._buffer.close()

    def __repr__(self) -> str:
        m = self.manifest
        return f"LoadedBundle({m.model_id} v{m.version}, {len(self.tensors)} tensors)"


@dataclass(frozen=True)
class _Job:
    entry: FileEntry
    index: int
    offset: int  # plaintext offset in the file
    length: int
    chunks: int


def check_trust(
    manifest: Manifest,
    trusted_publishers: Sequence[Ed25519PublicKey],
    min_version: int | None,
) -> None:
    """Signature by a trusted publisher, and no rollback below ``min_version``."""
    by_id = {key_id(k): k for k in trusted_publishers}
    key = by_id.get(manifest.publisher_key_id)
    if key is None:
        raise UntrustedPublisherError(
            f"publisher {manifest.publisher_key_id[:16]}... is not trusted"
        )
    manifest.verify_signature(key)
    if min_version is not None and manifest.version < min_version:
        raise RollbackError(
            f"{manifest.model_id} version {manifest.version} is below the minimum {min_version}"
        )


def check_key(manifest: Manifest, content_key: SecretBytes) -> None:
    if content_key.wiped:
        raise WrongContentKeyError("the content key was already zeroized")
    if len(content_key) != 32 or not constant_time.bytes_eq(
        stream.key_commitment(content_key.reveal()), bytes.fromhex(manifest.key_commitment)
    ):
        raise WrongContentKeyError("the content key does not match this bundle")


def load_bundle(
    bundle_dir: str | Path,
    *,
    content_key: SecretBytes,
    trusted_publishers: Sequence[Ed25519PublicKey],
    min_version: int | None = None,
    expected_digest: bytes | None = None,
    verify_plaintext: bool = False,
    prefer_secret: bool = True,
    progress: Progress | None = None,
    workers: int | None = None,
) -> LoadedBundle:
    """Verify and decrypt a bundle straight into protected memory.

    Order: manifest signature by a trusted publisher, anti-rollback, key commitment,
    exact file sizes, then every chunk (ciphertext digest, AES-GCM tag, plaintext
    digest) and the per-file commitments. Any failure raises a typed
    :class:`~teellm.bundle.errors.BundleError` and leaves nothing loaded.
    The plaintext commitments are re-checked only with ``verify_plaintext=True``
    (``teellm verify`` does): the key commitment and the ciphertext digests already
    fix the plaintext uniquely (see docs/sealed-format.md), so a load need not pay a
    second SHA-256 pass.
    ``expected_digest`` is the manifest digest the caller attested and released the key
    for: storage is untrusted and may swap in another genuine manifest between that
    read and this one.
    ``prefer_secret=False`` uses locked anonymous memory instead of memfd_secret
    (whose first-touch page faults are slow on some kernels; see docs/benchmarks.md);
    ``protection`` reports which one holds.
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    if expected_digest is not None and not hmac.compare_digest(manifest.digest(), expected_digest):
        raise ManifestChangedError("the bundle's manifest is not the one the key was released for")
    check_trust(manifest, trusted_publishers, min_version)
    check_key(manifest, content_key)
    fds = open_data(root, manifest)
    buffer: ProtectedBuffer | None = None
    try:
        layout: dict[str, int] = {}
        total = 0
        for entry in manifest.files:
            layout[entry.name] = total
            total += -(-entry.size // ALIGN) * ALIGN
        try:
            buffer = ProtectedBuffer(total, prefer_secret=prefer_secret, lock_lazily=True)
        except ProtectedMemoryError:
            raise BundleError(
                f"cannot map {total} bytes of protected memory for this bundle",
                code="insufficient_memory",
            ) from None
        mem = buffer.view
        _decrypt_all(
            manifest, content_key, fds, buffer, layout, verify_plaintext, progress, workers
        )
        buffer.finish_lock()
        files = {
            e.name: mem[layout[e.name] : layout[e.name] + e.size].toreadonly()
            for e in manifest.files
        }
        tensors: dict[str, torch.Tensor] = {}
        for e in manifest.files:
            if not e.name.endswith(".safetensors"):
                continue
            view = mem[layout[e.name] : layout[e.name] + e.size]
            for name, tensor in tensors_from_buffer(view, e.name).items():
                if name in tensors:
                    raise BundleFormatError(f"tensor {name!r} appears in two files")
                tensors[name] = tensor
        return LoadedBundle(manifest, buffer, files, tensors)
    except BaseException:
        if buffer is not None:
            buffer.close()
        raise
    finally:
        for fd in fds.values():
            os.close(fd)


def _decrypt_all(
    manifest: Manifest,
    content_key: SecretBytes,
    fds: dict[str, int],
    buffer: ProtectedBuffer,
    layout: dict[str, int],
    verify_plaintext: bool,
    progress: Progress | None,
    workers: int | None,
) -> None:
    cs = manifest.chunk_size
    mem = buffer.view
    key = content_key.reveal()
    aead = AESGCM(key)
    binding = manifest.binding_digest()
    prefixes = {e.name: bytes.fromhex(e.nonce_prefix) for e in manifest.files}
    jobs = [
        _Job(e, i, off, n, count)
        for e in manifest.files
        for count in [stream.chunk_count(e.size, cs)]
        for i, off, n in chunk_ranges(e.size, cs, count)
    ]
    scratch = ScratchBuffers(cs + stream.TAG_SIZE, protected=False)

    def one(job: _Job) -> tuple[bytes, bytes]:
        e = job.entry
        ct = scratch.get()[: job.length + stream.TAG_SIZE]
        stored_at = job.offset + job.index * stream.TAG_SIZE
        if pread_exact(fds[e.name], ct, stored_at) != len(ct):
            raise FileTruncatedError(f"{e.name}: file shrank while loading")
        ct_digest = hashlib.sha256(ct).digest()
        at = layout[e.name] + job.offset
        dest = mem[at : at + job.length]
        # Lock before the plaintext lands; each worker populates its own pages.
        buffer.lock_range(at, job.length)
        nonce = stream.chunk_nonce(prefixes[e.name], job.index, job.index == job.chunks - 1)
        try:
            aead.decrypt_into(nonce, ct, stream.chunk_aad(binding, e.name, job.index), dest)
        except InvalidTag:
            raise ChunkAuthError(
                f"{e.name}: chunk {job.index} failed authentication "
                "(modified, moved, spliced or from another bundle)"
            ) from None
        pt_digest = hashlib.sha256(dest).digest() if verify_plaintext else b""
        if progress:
            progress(job.length)
        return ct_digest, pt_digest

    try:
        results = run_parallel(one, jobs, workers)
    finally:
        scratch.close()
    commit_key = stream.plaintext_commitment_key(key) if verify_plaintext else b""
    start = 0
    for e in manifest.files:
        count = stream.chunk_count(e.size, cs)
        mine = results[start : start + count]
        start += count
        ct_root = stream.ciphertext_digest([r[0] for r in mine])
        if not constant_time.bytes_eq(ct_root, bytes.fromhex(e.ciphertext_sha256)):
            raise ContentCommitmentError(
                f"{e.name}: ciphertext differs from the manifest's commitment"
            )
        if verify_plaintext:
            pt = stream.plaintext_commitment(commit_key, e.name, e.size, [r[1] for r in mine])
            if not constant_time.bytes_eq(pt, bytes.fromhex(e.plaintext_commitment)):
                raise ContentCommitmentError(
                    f"{e.name}: plaintext differs from the manifest's commitment"
                )
