"""NVIDIA H100 attestation reports: SPDM 1.1 GET_MEASUREMENTS request + response.

The GPU signs (ECDSA P-384 / SHA-384, raw r||s) the request followed by the
response without its signature; the signing key is the leaf of the GPU
certificate chain, which must end at the NVIDIA Device Identity CA shipped with
the package. The requester nonce in the signed request is the freshness binding.
SPDM message layouts per DMTF DSP0274 (no Python library parses them).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from teellm.attestation import roots
from teellm.attestation.types import AttestationError, Claims, Evidence, TeeType
from teellm.attestation.x509util import load_certs, verify_chain

GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
NONCE_SIZE = 32
SIGNATURE_SIZE = 96  # P-384 r||s
MAX_REPORT = 1 << 16
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6


@dataclass(frozen=True)
class SpdmReport:
    request: bytes
    response_unsigned: bytes
    signature: bytes
    requester_nonce: bytes
    responder_nonce: bytes
    measurements: dict[int, bytes]
    opaque: dict[int, bytes]
    spdm_version: int


def _malformed(what: str) -> AttestationError:
    return AttestationError(f"SPDM report malformed: {what}", code="evidence_malformed")


def _take(data: bytes, offset: int, size: int, what: str) -> bytes:
    if size < 0 or offset + size > len(data):
        raise _malformed(f"{what} truncated")
    return data[offset : offset + size]


def _parse_records(record: bytes, count: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    for _ in range(count):
        index, _spec, size = struct.unpack("<BBH", _take(record, offset, 4, "block header"))
        block = _take(record, offset + 4, size, "block")
        if size < 3:
            raise _malformed("block too short")
        _value_type, value_size = struct.unpack_from("<BH", block, 0)
        out[index] = _take(block, 3, value_size, "block value")
        offset += 4 + size
    if offset != len(record):
        raise _malformed("measurement record length")
    return out


def _parse_opaque(opaque: bytes) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(opaque):
        kind, size = struct.unpack_from("<HH", opaque, offset)
        fields[kind] = _take(opaque, offset + 4, size, "opaque field")
        offset += 4 + size
    return fields


def parse_report(raw: bytes) -> SpdmReport:
    """Split and parse GET_MEASUREMENTS request || MEASUREMENTS response."""
    if len(raw) > MAX_REPORT:
        raise _malformed("too large")
    version, code, attributes, _operation = struct.unpack("<BBBB", _take(raw, 0, 4, "request"))
    if code != GET_MEASUREMENTS or version < 0x10:
        raise _malformed("not a GET_MEASUREMENTS request")
    if not attributes & 0x01:
        raise _malformed("signature was not requested")
    request_size = 4 + NONCE_SIZE + (1 if version >= 0x11 else 0)
    request = _take(raw, 0, request_size, "request")
    response = raw[request_size:]
    r_version, r_code, _p1, _p2, count = struct.unpack("<BBBBB", _take(response, 0, 5, "response"))
    if r_code != MEASUREMENTS or r_version != version:
        raise _malformed("not a matching MEASUREMENTS response")
    record_len = int.from_bytes(_take(response, 5, 3, "record length"), "little")
    record = _take(response, 8, record_len, "measurement record")
    offset = 8 + record_len
    responder_nonce = _take(response, offset, NONCE_SIZE, "nonce")
    offset += NONCE_SIZE
    opaque_len = int.from_bytes(_take(response, offset, 2, "opaque length"), "little")
    opaque = _take(response, offset + 2, opaque_len, "opaque data")
    offset += 2 + opaque_len
    if len(response) - offset != SIGNATURE_SIZE:
        raise _malformed("signature size")
    return SpdmReport(
        request=request,
        response_unsigned=response[:offset],
        signature=response[offset:],
        requester_nonce=request[4 : 4 + NONCE_SIZE],
        responder_nonce=responder_nonce,
        measurements=_parse_records(record, count),
        opaque=_parse_opaque(opaque),
        spdm_version=version,
    )


def _verify_signature(report: SpdmReport, leaf: x509.Certificate) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AttestationError("GPU attestation key is not P-384", code="cert_malformed")
    r = int.from_bytes(report.signature[:48], "big")
    s = int.from_bytes(report.signature[48:], "big")
    try:
        key.verify(
            encode_dss_signature(r, s),
            report.request + report.response_unsigned,
            ec.ECDSA(hashes.SHA384()),
        )
    except (InvalidSignature, ValueError):
        raise AttestationError("GPU report signature invalid", code="signature_invalid") from None


def verify_nvidia(evidence: Evidence, *, now: datetime) -> Claims:
    """Verify an SPDM GPU report with ``aux["cert_chain"]`` (PEM, leaf first) at ``now``."""
    report = parse_report(evidence.raw)
    chain_pem = evidence.aux.get("cert_chain")
    if not chain_pem:
        raise AttestationError("no GPU certificate chain supplied", code="cert_chain_missing")
    chain = load_certs(chain_pem)
    anchor = roots.nvidia_device_identity_root()
    if chain and chain[-1] == anchor:
        chain = chain[:-1]
    if not chain or len(chain) > 8:
        raise AttestationError("GPU certificate chain is empty", code="cert_chain_invalid")
    verify_chain(chain, anchor, now, "NVIDIA")
    _verify_signature(report, chain[0])
    driver = report.opaque.get(OPAQUE_DRIVER_VERSION, b"").split(b"\0")[0]
    return Claims(
        tee_type=TeeType.NVIDIA,
        measurements={f"MEASUREMENT{i}": v.hex() for i, v in sorted(report.measurements.items())},
        report_data=report.requester_nonce.hex(),
        extra={
            "spdm_version": f"{report.spdm_version >> 4}.{report.spdm_version & 0xF}",
            "responder_nonce": report.responder_nonce.hex(),
            "driver_version": driver.decode("ascii", errors="replace"),
            "vbios_version": report.opaque.get(OPAQUE_VBIOS_VERSION, b"").hex(),
            "device": chain[0].subject.rfc4514_string(),
        },
    )
