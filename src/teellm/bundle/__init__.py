"""Sealed model bundles: seal, open, manifest, signatures."""
