"""Small certificate helpers shared by the SNP, Nitro and NVIDIA verifiers."""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from teellm.attestation.types import AttestationError


def _checked(cert: x509.Certificate) -> x509.Certificate:
    # cryptography parses names, extensions and keys lazily: force it now so a
    # malformed field is a typed error here, not a ValueError deep in verification
    _ = (cert.issuer, cert.subject, cert.not_valid_before_utc, cert.not_valid_after_utc)
    _ = (cert.extensions, cert.public_key(), cert.signature_hash_algorithm)
    return cert


def load_cert(data: bytes) -> x509.Certificate:
    """One certificate from DER or PEM bytes (typed error otherwise)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # vendor certs with non-positive serials
            if data.lstrip().startswith(b"-----BEGIN"):
                return _checked(x509.load_pem_x509_certificate(data))
            return _checked(x509.load_der_x509_certificate(data))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AttestationError("certificate is malformed", code="cert_malformed") from None


def load_certs(data: bytes) -> list[x509.Certificate]:
    """All certificates in PEM bytes, or the single DER certificate."""
    if b"-----BEGIN" not in data:
        return [load_cert(data)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [_checked(c) for c in x509.load_pem_x509_certificates(data)]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AttestationError("certificate chain is malformed", code="cert_malformed") from None


def check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationError(
            f"{what} certificate not valid at {now.isoformat()} "
            f"(valid {cert.not_valid_before_utc.isoformat()} .. "
            f"{cert.not_valid_after_utc.isoformat()})",
            code="cert_expired",
        )


_LINK_CACHE_SIZE = 512
_verified_links: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
_links_lock = threading.Lock()


def clear_link_cache() -> None:
    """Forget every verified certificate link (benchmarks measure the cold path)."""
    with _links_lock:
        _verified_links.clear()


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer`` signed ``cert`` (names and signature; RSA-PSS and ECDSA).

    A successful check is remembered by the two certificates' SHA-256 fingerprints:
    the same intermediates come with every report, and a signature over fixed bytes
    does not change its verdict. Validity dates are still checked on every use.
    """
    if cert.issuer != issuer.subject:
        return False
    link = (cert.fingerprint(hashes.SHA256()), issuer.fingerprint(hashes.SHA256()))
    with _links_lock:
        if link in _verified_links:
            _verified_links.move_to_end(link)
            return True
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    with _links_lock:
        _verified_links[link] = None
        if len(_verified_links) > _LINK_CACHE_SIZE:
            _verified_links.popitem(last=False)
    return True


def verify_chain(
    chain: list[x509.Certificate], root: x509.Certificate, now: datetime, what: str
) -> None:
    """``chain`` is leaf first, up to (not including) the trusted ``root``.

    Every link's signature and every certificate's validity at ``now``. The root is
    a shipped anchor, trusted by identity, so its self-signature is not re-checked.
    """
    links = [*chain, root]
    for index, (cert, issuer) in enumerate(zip(links, links[1:], strict=False)):
        if not issued_by(cert, issuer):
            raise AttestationError(
                f"{what} certificate chain broken at link {index}", code="cert_chain_invalid"
            )
    for index, cert in enumerate(links):
        check_validity(cert, now, f"{what} chain[{index}]")
