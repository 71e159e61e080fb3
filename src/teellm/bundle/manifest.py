"""The signed manifest: what a bundle contains, who published it, and its identity."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from teellm.bundle.errors import BundleFormatError, FileMissingError, SignatureInvalidError
from teellm.bundle.stream import NONCE_PREFIX_SIZE, TAG_SIZE, chunk_count

FORMAT = "teellm-bundle/1"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
DATA_DIR = "data"
DATA_SUFFIX = ".enc"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILES = 10_000
MIN_CHUNK = 4096
MAX_CHUNK = 256 * 1024 * 1024
SIGNATURE_SIZE = 64
_SIGN_LABEL = b"teellm/v1/manifest\x00"
_BINDING_LABEL = b"teellm/v1/binding\x00"

Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$")
CREATED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


class FileEntry(BaseModel):
    """One sealed file: its name, plaintext size, nonce prefix and commitments."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    size: int = Field(ge=0, le=2**50)
    nonce_prefix: str = Field(pattern=rf"^[0-9a-f]{{{2 * NONCE_PREFIX_SIZE}}}$")
    plaintext_commitment: Hex32
    ciphertext_sha256: Hex32

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not FILE_NAME.match(v) or ".." in v:
            raise ValueError("file names are plain names: letters, digits, '._-'")
        return v


class Manifest(BaseModel):
    """The manifest of a sealed bundle (see docs/sealed-format.md).

    ``digest()`` (SHA-256 of the exact signed bytes) is the model's identity, the
    "model measurement" bound into attestation. Instances made by
    :func:`read_manifest` or by sealing carry those bytes and the signature.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal["teellm-bundle/1"]
    model_id: str
    version: int = Field(ge=1, le=2**53 - 1)
    created: str
    publisher_key: Hex32
    publisher_key_id: Hex32
    cipher_suite: Literal["AES-256-GCM-STREAM/SHA-256"]
    chunk_size: int = Field(ge=MIN_CHUNK, le=MAX_CHUNK)
    key_commitment: Hex32
    files: list[FileEntry] = Field(min_length=1, max_length=MAX_FILES)

    _raw: bytes = PrivateAttr(default=b"")
    _signature: bytes = PrivateAttr(default=b"")

    @field_validator("model_id")
    @classmethod
    def _model_id(cls, v: str) -> str:
        if not MODEL_ID.match(v):
            raise ValueError("model id: letters, digits, '._-', at most one '/'")
        return v

    @field_validator("created")
    @classmethod
    def _created(cls, v: str) -> str:
        if not CREATED.match(v):
            raise ValueError("created must be YYYY-MM-DDTHH:MM:SSZ")
        datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ")
        return v

    @field_validator("chunk_size")
    @classmethod
    def _chunk_size(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("chunk size must be a power of two")
        return v

    def model_post_init(self, __context: Any) -> None:
        names = [f.name for f in self.files]
        if names != sorted(set(names)):
            raise ValueError("files must be sorted by name and unique")
        prefixes = {f.nonce_prefix for f in self.files}
        if len(prefixes) != len(self.files):
            raise ValueError("nonce prefixes must be unique")
        if hashlib.sha256(bytes.fromhex(self.publisher_key)).hexdigest() != self.publisher_key_id:
            raise ValueError("publisher_key_id is not the SHA-256 of publisher_key")
        for f in self.files:
            if chunk_count(f.size, self.chunk_size) > 2**32:
                raise ValueError("file has too many chunks")

    # -- identity ---------------------------------------------------------------

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed (canonical JSON, see the format doc)."""
        return self._raw or canonical_json(self.model_dump())

    def digest(self) -> bytes:
        """SHA-256 of the signed manifest bytes: the model measurement."""
        return hashlib.sha256(self.canonical_bytes()).digest()

    def digest_hex(self) -> str:
        return self.digest().hex()

    def binding_digest(self) -> bytes:
        """What every chunk's AAD binds: the manifest minus the ciphertext digests.

        Ciphertext digests depend on the AAD, so they cannot be inside it; all the
        rest (model, version, publisher, key commitment, names, sizes, nonce
        prefixes, plaintext commitments) is.
        """
        return binding_digest(self.model_dump())

    @property
    def signature(self) -> bytes:
        return self._signature

    @property
    def created_at(self) -> datetime:
        return datetime.strptime(self.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, name: str) -> FileEntry:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)

    def encrypted_size(self, entry: FileEntry) -> int:
        return entry.size + TAG_SIZE * chunk_count(entry.size, self.chunk_size)

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.publisher_key))

    def verify_signature(self, public_key: Ed25519PublicKey | None = None) -> None:
        """Check the signature (with ``public_key``, else the embedded publisher key)."""
        key = public_key or self.public_key()
        if len(self._signature) != SIGNATURE_SIZE:
            raise SignatureInvalidError("manifest signature is missing or malformed")
        try:
            key.verify(self._signature, _SIGN_LABEL + self.canonical_bytes())
        except InvalidSignature:
            raise SignatureInvalidError("manifest signature does not verify") from None

    def summary(self) -> dict[str, Any]:
        """The manifest as JSON-ready data, plus its digest."""
        return {"digest": self.digest_hex(), **self.model_dump()}


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII only: one byte string per value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def binding_digest(body: dict[str, Any]) -> bytes:
    """SHA-256 of label || canonical JSON of ``body`` without any ``ciphertext_sha256``."""
    stripped = dict(body)
    stripped["files"] = [
        {k: v for k, v in f.items() if k != "ciphertext_sha256"} for f in body["files"]
    ]
    return hashlib.sha256(_BINDING_LABEL + canonical_json(stripped)).digest()


def _error_text(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return f"{loc}: {first.get('msg', 'invalid')}" if loc else str(first.get("msg", "invalid"))


def parse_manifest(raw: bytes, signature: bytes = b"") -> Manifest:
    """Parse and validate manifest bytes; must be canonical. Does not check the signature."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleFormatError("manifest is too large")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleFormatError("manifest is not valid JSON") from None
    if not isinstance(data, dict):
        raise BundleFormatError("manifest must be a JSON object")
    if data.get("format") != FORMAT:
        raise BundleFormatError("unknown bundle format")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleFormatError(f"invalid manifest: {_error_text(exc)}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise BundleFormatError(f"invalid manifest: {exc}") from None
    if canonical_json(data) != raw:
        raise BundleFormatError("manifest is not in canonical form")
    manifest._raw = raw
    manifest._signature = signature
    return manifest


def sign_manifest(body: dict[str, Any], signing_key: Ed25519PrivateKey) -> Manifest:
    """Canonicalise, validate and sign a manifest body."""
    raw = canonical_json(body)
    manifest = parse_manifest(raw)
    manifest._signature = signing_key.sign(_SIGN_LABEL + raw)
    return manifest


def open_regular(path: Path) -> int:
    """Open a bundle file for reading; only regular files (a FIFO would block forever,
    a device would never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleFormatError(f"{path.name} is not a regular file")
    return fd


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise FileMissingError(f"bundle has no {what}") from None
    except OSError as exc:
        raise BundleFormatError(f"cannot read {what}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise BundleFormatError(f"{what} is too large")
    return data


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read a bundle's manifest and check its signature against the embedded key.

    This proves the manifest is intact and was signed by the key it names; whether
    that key is trusted is the caller's decision (see ``load_bundle``).
    """
    root = Path(bundle_dir)
    raw = _read_limited(root / MANIFEST_FILE, MAX_MANIFEST_BYTES, MANIFEST_FILE)
    sig = _read_limited(root / SIGNATURE_FILE, SIGNATURE_SIZE, SIGNATURE_FILE)
    manifest = parse_manifest(raw, sig)
    manifest.verify_signature()
    return manifest


def data_path(bundle_dir: str | Path, name: str) -> Path:
    return Path(bundle_dir) / DATA_DIR / (name + DATA_SUFFIX)
