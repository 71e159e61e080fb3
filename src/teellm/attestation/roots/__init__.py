"""Vendor trust anchors shipped with the package (public certificates)."""

from __future__ import annotations

import functools
import warnings
from importlib import resources

from cryptography import x509

AMD_PRODUCT_LINES = ("milan", "genoa", "turin")


@functools.cache
def load_pem(name: str) -> tuple[x509.Certificate, ...]:
    """All certificates in the shipped PEM file ``name``."""
    data = resources.files(__package__).joinpath(name).read_bytes()
    with warnings.catch_warnings():
        # some vendor certificates carry non-positive serials; they are the anchors regardless
        warnings.simplefilter("ignore")
        return tuple(x509.load_pem_x509_certificates(data))


def amd_ask_ark(product_line: str) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK, ARK) for an AMD product line (milan, genoa, turin)."""
    ask, ark = load_pem(f"amd_{product_line}_ask_ark.pem")
    return ask, ark


def aws_nitro_root() -> x509.Certificate:
    return load_pem("aws_nitro_root_g1.pem")[0]


def nvidia_device_identity_root() -> x509.Certificate:
    return load_pem("nvidia_device_identity_root.pem")[0]
