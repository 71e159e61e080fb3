"""Seal a Hugging Face style model directory into an encrypted, signed bundle."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teellm.bundle import stream
from teellm.bundle._chunks import (
    ScratchBuffers,
    chunk_ranges,
    pread_exact,
    pwrite_all,
    run_parallel,
)
from teellm.bundle.errors import BundleError, BundleExistsError, BundleFormatError
from teellm.bundle.keys import CONTENT_KEY_SIZE, generate_content_key, key_id, raw_public_key
from teellm.bundle.manifest import (
    DATA_DIR,
    FILE_NAME,
    FORMAT,
    MANIFEST_FILE,
    MAX_CHUNK,
    MAX_FILES,
    MIN_CHUNK,
    MODEL_ID,
    SIGNATURE_FILE,
    Manifest,
    binding_digest,
    data_path,
    sign_manifest,
)
from teellm.crypto.secret import SecretBytes

DEFAULT_CHUNK_SIZE = stream.DEFAULT_CHUNK_SIZE

# progress(phase, nbytes): phase is "hash" (first pass) or "encrypt" (second pass).
Progress = Callable[[str, int], None]


@dataclass
class SealResult:
    """What sealing produced. ``content_key`` must go to the key broker, then be wiped."""

    manifest: Manifest
    content_key: SecretBytes
    bundle_dir: Path

    def __repr__(self) -> str:
        return f"SealResult({self.manifest.model_id} v{self.manifest.version}, {self.bundle_dir})"


@dataclass
class _Source:
    name: str
    path: Path
    size: int
    chunks: int


def model_files(model_dir: Path) -> list[Path]:
    """Regular top-level files (symlinks followed, as in the HF cache), no dotfiles."""
    if not model_dir.is_dir():
        raise BundleFormatError(f"model directory {model_dir.name!r} does not exist")
    files = sorted(p for p in model_dir.iterdir() if not p.name.startswith(".") and p.is_file())
    if not files:
        raise BundleFormatError("model directory holds no files")
    if len(files) > MAX_FILES:
        raise BundleFormatError("too many files in the model directory")
    for p in files:
        if not FILE_NAME.match(p.name) or ".." in p.name:
            raise BundleFormatError(f"unsupported file name {p.name!r}")
    return files


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleExistsError(f"output {out.name!r} exists and is not an empty directory")
    (out / DATA_DIR).mkdir(parents=True, exist_ok=True)


def seal_model(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    model_id: str,
    version: int,
    signing_key: Ed25519PrivateKey,
    content_key: SecretBytes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    created: datetime | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> SealResult:
    """Encrypt every file of ``model_dir`` into ``out_dir`` and sign the manifest.

    A fresh random 256-bit content key is made unless ``content_key`` is given.
    Only ciphertext is ever written; plaintext is staged in protected memory.
    """
    src_dir, out = Path(model_dir), Path(out_dir)
    if not (MIN_CHUNK <= chunk_size <= MAX_CHUNK) or chunk_size & (chunk_size - 1):
        raise BundleFormatError("chunk size must be a power of two in [4 KiB, 256 MiB]")
    if not MODEL_ID.match(model_id):
        raise BundleFormatError("model id: letters, digits, '._-', at most one '/'")
    if isinstance(version, bool) or not 1 <= version < 2**53:
        raise BundleFormatError("version must be an integer >= 1")
    if content_key is not None and len(content_key) != CONTENT_KEY_SIZE:
        raise BundleError("content key must be 32 bytes", code="key_file_invalid")
    sources = [
        _Source(p.name, p, size, stream.chunk_count(size, chunk_size))
        for p in model_files(src_dir)
        for size in [p.stat().st_size]
    ]
    key = content_key if content_key is not None else generate_content_key()
    when = (created or datetime.now(UTC)).astimezone(UTC)
    _prepare_out(out)
    written: list[Path] = []
    plain = ScratchBuffers(chunk_size, protected=True)
    cipher = ScratchBuffers(chunk_size + stream.TAG_SIZE, protected=False)
    try:
        key_view = key.reveal()
        aead = AESGCM(key_view)
        commit_key = stream.plaintext_commitment_key(key_view)
        fds = {s.name: os.open(s.path, os.O_RDONLY) for s in sources}
        try:
            # Pass 1: plaintext commitments (they are inside the AAD of pass 2).
            def hash_chunk(job: tuple[_Source, int, int, int]) -> bytes:
                src, _, off, n = job
                view = plain.get()[:n]
                if pread_exact(fds[src.name], view, off) != n:
                    raise BundleFormatError(f"{src.name} changed while sealing")
                if progress:
                    progress("hash", n)
                return hashlib.sha256(view).digest()

            jobs = [(s, *r) for s in sources for r in chunk_ranges(s.size, chunk_size, s.chunks)]
            digests = run_parallel(hash_chunk, jobs, workers)
            per_file: dict[str, list[bytes]] = {s.name: [] for s in sources}
            for (src, *_), d in zip(jobs, digests, strict=True):
                per_file[src.name].append(d)

            prefixes: set[bytes] = set()
            while len(prefixes) < len(sources):
                prefixes.add(secrets.token_bytes(stream.NONCE_PREFIX_SIZE))
            prefix_of = dict(zip((s.name for s in sources), sorted(prefixes), strict=True))
            public = signing_key.public_key()
            body: dict[str, Any] = {
                "format": FORMAT,
                "model_id": model_id,
                "version": version,
                "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "publisher_key": raw_public_key(public).hex(),
                "publisher_key_id": key_id(public),
                "cipher_suite": stream.CIPHER_SUITE,
                "chunk_size": chunk_size,
                "key_commitment": stream.key_commitment(key_view).hex(),
                "files": [
                    {
                        "name": s.name,
                        "size": s.size,
                        "nonce_prefix": prefix_of[s.name].hex(),
                        "plaintext_commitment": stream.plaintext_commitment(
                            commit_key, s.name, s.size, per_file[s.name]
                        ).hex(),
                        "ciphertext_sha256": "0" * 64,
                    }
                    for s in sources
                ],
            }
            binding = binding_digest(body)

            # Pass 2: encrypt every chunk into place in the output files.
            outs: dict[str, int] = {}
            for s in sources:
                path = data_path(out, s.name)
                outs[s.name] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                written.append(path)
            try:

                def encrypt_chunk(job: tuple[_Source, int, int, int]) -> bytes:
                    src, i, off, n = job
                    view = plain.get()[:n]
                    if pread_exact(fds[src.name], view, off) != n:
                        raise BundleFormatError(f"{src.name} changed while sealing")
                    ct = cipher.get()[: n + stream.TAG_SIZE]
                    nonce = stream.chunk_nonce(prefix_of[src.name], i, i == src.chunks - 1)
                    aead.encrypt_into(nonce, view, stream.chunk_aad(binding, src.name, i), ct)
                    pwrite_all(outs[src.name], ct, off + i * stream.TAG_SIZE)
                    if progress:
                        progress("encrypt", n)
                    return hashlib.sha256(ct).digest()

                ct_digests = run_parallel(encrypt_chunk, jobs, workers)
            finally:
                for fd in outs.values():
                    os.close(fd)
        finally:
            for fd in fds.values():
                os.close(fd)
        ct_per_file: dict[str, list[bytes]] = {s.name: [] for s in sources}
        for (src, *_), d in zip(jobs, ct_digests, strict=True):
            ct_per_file[src.name].append(d)
        for f in body["files"]:
            f["ciphertext_sha256"] = stream.ciphertext_digest(ct_per_file[f["name"]]).hex()
        manifest = sign_manifest(body, signing_key)
        # Content before the manifest: a bundle with a manifest is complete.
        (out / SIGNATURE_FILE).write_bytes(manifest.signature)
        (out / MANIFEST_FILE).write_bytes(manifest.canonical_bytes())
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        if content_key is None:
            key.zeroize()
        raise
    finally:
        plain.close()
        cipher.close()
    return SealResult(manifest=manifest, content_key=key, bundle_dir=out)
