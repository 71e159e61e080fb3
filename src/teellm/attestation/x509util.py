"""Small certificate helpers shared by the SNP, Nitro and NVIDIA verifiers."""

from __future__ import annotations

import warnings
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

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


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer`` signed ``cert`` (names and signature; RSA-PSS and ECDSA)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def verify_chain(
    chain: list[x509.Certificate], root: x509.Certificate, now: datetime, what: str
) -> None:
    """``chain`` is leaf first, up to (not including) ``root``; each link and validity."""
    links = [*chain, root]
    for index, (cert, issuer) in enumerate(zip(links, links[1:], strict=False)):
        if not issued_by(cert, issuer):
            raise AttestationError(
                f"{what} certificate chain broken at link {index}", code="cert_chain_invalid"
            )
    if not issued_by(root, root):
        raise AttestationError(f"{what} root is not self-signed", code="cert_chain_invalid")
    for index, cert in enumerate(links):
        check_validity(cert, now, f"{what} chain[{index}]")
