"""Sealed model bundles: seal, open, manifest, signatures."""

from teellm.bundle.errors import BundleError
from teellm.bundle.manifest import Manifest, read_manifest

__all__ = ["BundleError", "Manifest", "read_manifest"]
