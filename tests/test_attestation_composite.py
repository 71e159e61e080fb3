"""Composite CPU+GPU evidence: the GPU nonce must derive from the CPU report data.

A genuine NVIDIA report cannot be made for a chosen nonce, so the positive path
uses a test GPU certificate chain (real ECDSA P-384 keys and signatures) put in
place of the shipped NVIDIA root for the duration of the test.
"""

from __future__ import annotations

import os
import struct
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from teellm.attestation import (
    AppraisalPolicy,
    Evidence,
    TeeType,
    gpu_nonce,
    roots,
    verify_and_appraise,
)
from teellm.attestation.composite import CompositeRuntime, composite_evidence
from teellm.attestation.runtime import SimulatedRuntime
from teellm.attestation.transcript import report_data

POLICY = AppraisalPolicy(allow_simulated=True, require_gpu=True)


def _cert(subject: str, issuer: str, key, signer) -> x509.Certificate:  # type: ignore[no-untyped-def]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2099, 1, 1, tzinfo=UTC))
        .sign(signer, hashes.SHA384())
    )


@pytest.fixture
def gpu_ca(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    root_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    root = _cert("test GPU root", "test GPU root", root_key, root_key)
    leaf = _cert("test GPU", "test GPU root", leaf_key, root_key)
    monkeypatch.setattr(roots, "nvidia_device_identity_root", lambda: root)
    chain = leaf.public_bytes(serialization.Encoding.PEM) + root.public_bytes(
        serialization.Encoding.PEM
    )
    return leaf_key, chain


def _spdm(nonce: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    value = os.urandom(48)
    block = struct.pack("<BBH", 1, 1, 3 + 48) + struct.pack("<BH", 1, 48) + value
    response = bytes([0x11, 0x60, 0x00, 0x00, 0x01]) + len(block).to_bytes(3, "little") + block
    response += os.urandom(32) + b"\x00\x00"
    r, s = decode_dss_signature(key.sign(request + response, ec.ECDSA(hashes.SHA384())))
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def test_composite_accepted_when_nonce_derives_from_cpu(gpu_ca) -> None:  # type: ignore[no-untyped-def]
    key, chain = gpu_ca
    runtime = CompositeRuntime(
        SimulatedRuntime(),
        lambda nonce: Evidence(TeeType.NVIDIA, _spdm(nonce, key), {"cert_chain": chain}),
    )
    rd = report_data("test", nonce=b"x" * 32)
    evidence = runtime.evidence(rd)
    d = verify_and_appraise(evidence, POLICY, expected_report_data=rd)
    assert d.accepted, d.reasons
    assert d.claims is not None and "GPU_MEASUREMENT1" in d.claims.measurements
    assert d.claims.extra["gpu"]["report_data"] == gpu_nonce(rd).hex()
    assert any(c.name == "gpu" and c.passed for c in d.checks)


def test_composite_spliced_gpu_rejected(gpu_ca) -> None:  # type: ignore[no-untyped-def]
    key, chain = gpu_ca
    rd = report_data("test", nonce=b"x" * 32)
    other = report_data("test", nonce=b"y" * 32)
    cpu = SimulatedRuntime().evidence(rd)
    gpu = Evidence(TeeType.NVIDIA, _spdm(gpu_nonce(other), key), {"cert_chain": chain})
    d = verify_and_appraise(composite_evidence(cpu, gpu), POLICY, expected_report_data=rd)
    assert not d.accepted and "gpu_nonce_mismatch" in d.failures[0].reason
    raw_nonce = Evidence(TeeType.NVIDIA, _spdm(rd[:32], key), {"cert_chain": chain})
    d = verify_and_appraise(composite_evidence(cpu, raw_nonce), POLICY, expected_report_data=rd)
    assert not d.accepted


def test_composite_gpu_forged_signature_rejected(gpu_ca) -> None:  # type: ignore[no-untyped-def]
    _key, chain = gpu_ca
    rd = report_data("test", nonce=b"x" * 32)
    cpu = SimulatedRuntime().evidence(rd)
    impostor = ec.generate_private_key(ec.SECP384R1())
    gpu = Evidence(TeeType.NVIDIA, _spdm(gpu_nonce(rd), impostor), {"cert_chain": chain})
    d = verify_and_appraise(composite_evidence(cpu, gpu), POLICY, expected_report_data=rd)
    assert not d.accepted and "signature_invalid" in d.failures[0].reason
    with pytest.raises(Exception):  # noqa: B017
        composite_evidence(cpu, cpu)
