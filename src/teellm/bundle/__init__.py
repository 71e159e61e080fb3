"""Sealed model bundles: seal, open, manifest, signatures.

The main names are imported lazily so that ``teellm --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teellm.bundle.errors import BundleError
    from teellm.bundle.manifest import Manifest, read_manifest

__all__ = ["BundleError", "Manifest", "read_manifest"]


def __getattr__(name: str) -> Any:
    if name == "BundleError":
        from teellm.bundle.errors import BundleError

        return BundleError
    if name in ("Manifest", "read_manifest"):
        from teellm.bundle import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'teellm.bundle' has no attribute {name!r}")
