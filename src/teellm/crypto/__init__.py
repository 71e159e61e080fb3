"""Thin wrappers over pyca/cryptography. Nothing here re-implements a primitive."""
