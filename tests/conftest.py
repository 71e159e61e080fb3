"""Shared fixtures. Real attestation evidence lives in ../shared/vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The real hardware evidence folder; tests that need it skip without it."""
    if not (VECTORS / "README.md").is_file():
        pytest.skip("real attestation vectors (../shared/vectors) are not present in this clone")
    return VECTORS
