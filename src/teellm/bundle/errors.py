"""Typed errors of sealed bundles; each failure mode has its own stable ``code``."""

from __future__ import annotations

from teellm.errors import TeellmError


class BundleError(TeellmError):
    """Base class: the bundle cannot be sealed, read or loaded."""

    code = "bundle_error"


class BundleFormatError(BundleError):
    """The bundle layout, the manifest or a plaintext file is malformed."""

    code = "bundle_malformed"


class KeyFileError(BundleError):
    """A key file is missing, malformed or of the wrong type."""

    code = "key_file_invalid"


class SignatureInvalidError(BundleError):
    """The manifest signature does not verify."""

    code = "signature_invalid"


class UntrustedPublisherError(BundleError):
    """The manifest is signed by a key that is not among the trusted publishers."""

    code = "untrusted_publisher"


class RollbackError(BundleError):
    """The bundle version is below the minimum accepted version (anti-rollback)."""

    code = "version_rollback"


class WrongContentKeyError(BundleError):
    """The content key does not match the key commitment in the manifest."""

    code = "wrong_content_key"


class FileMissingError(BundleError):
    """A file named in the manifest is absent from the bundle."""

    code = "file_missing"


class FileTruncatedError(BundleError):
    """An encrypted file is shorter than the manifest says (chunks removed or cut)."""

    code = "file_truncated"


class FileExtendedError(BundleError):
    """An encrypted file is longer than the manifest says (chunks added or appended)."""

    code = "file_extended"


class ChunkAuthError(BundleError):
    """A chunk fails AES-GCM authentication (modified, moved, spliced or swapped)."""

    code = "chunk_auth_failed"


class ContentCommitmentError(BundleError):
    """Decryption succeeded but the content differs from what the manifest commits to.

    Only a holder of the content key can produce this: it is the check that stops
    them substituting weights under the publisher's signature.
    """

    code = "content_commitment_mismatch"


class ManifestChangedError(BundleError):
    """The bundle's manifest is not the one the caller released the key for."""

    code = "manifest_changed"


class BundleExistsError(BundleError):
    """The output directory of ``seal`` already holds files."""

    code = "bundle_exists"
