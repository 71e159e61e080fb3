"""Every parser meets hostile bytes with a typed error, never a crash."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teellm.attestation import (
    AppraisalPolicy,
    AttestationError,
    Evidence,
    TeeType,
    nitro,
    nvidia,
    simulated,
    verify_and_appraise,
    verify_evidence,
)
from teellm.attestation.evidence_io import read_evidence
from teellm.attestation.snp import abi, certs

NOW = datetime(2025, 1, 1, tzinfo=UTC)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _typed(fn, *args, **kw) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kw)
    except AttestationError as exc:
        assert exc.code and exc.code != "error"


@FUZZ
@given(st.binary(max_size=2048))
def test_snp_parsers(data: bytes) -> None:
    _typed(abi.parse_report, data)
    _typed(certs.parse_cert_table, data)


@FUZZ
@given(st.binary(min_size=abi.REPORT_SIZE, max_size=abi.REPORT_SIZE))
def test_snp_full_size_reports(data: bytes) -> None:
    _typed(abi.parse_report, data)
    _typed(verify_evidence, Evidence(TeeType.SNP, data, {"vcek": data[:100]}), now=NOW)


@FUZZ
@given(st.binary(max_size=4096))
def test_raw_bytes_every_verifier(data: bytes) -> None:
    for tee in TeeType:
        _typed(verify_evidence, Evidence(tee, data, {"collateral": b"{}"}), now=NOW)
    _typed(nitro.parse_document, data)
    _typed(nvidia.parse_report, data)
    _typed(simulated.parse_body, data)
    _typed(read_evidence, data)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=64) | st.text(max_size=16),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5)
    ),
    max_leaves=20,
)


@FUZZ
@given(cbor_values, cbor_values)
def test_nitro_structured(payload: object, header: object) -> None:
    import cbor2

    doc = cbor2.dumps([cbor2.dumps({1: -35}), {}, cbor2.dumps(payload), b"\x00" * 96])
    _typed(nitro.parse_document, doc)
    _typed(nitro.parse_document, cbor2.dumps([cbor2.dumps(header), {}, b"", b""]))
    _typed(verify_evidence, Evidence(TeeType.NITRO, doc), now=NOW)


@FUZZ
@given(st.dictionaries(st.text(max_size=12), cbor_values, max_size=8))
def test_json_inputs(obj: dict) -> None:
    text = json.dumps(obj, default=lambda b: base64.b64encode(b).decode()).encode()
    _typed(Evidence.from_json, obj)
    _typed(read_evidence, text)
    _typed(simulated.parse_body, text)
    _typed(AppraisalPolicy.from_yaml, text.decode())


def _mutations(blob: bytes, count: int) -> st.SearchStrategy[bytes]:
    return st.lists(
        st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255)), min_size=1, max_size=count
    ).map(lambda edits: _apply(blob, edits))


def _apply(blob: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(blob)
    for offset, mask in edits:
        out[offset] ^= mask
    return bytes(out)


@pytest.mark.parametrize("kind", ["tdx", "snp", "nitro", "nvidia"])
def test_mutated_real_evidence_is_rejected_with_a_reason(vectors: Path, kind: str) -> None:
    """Random corruptions of genuine evidence: never accepted, never a crash."""
    if kind == "tdx":
        raw = (vectors / "tdx/tdx_v4_quote.bin").read_bytes()[: 0x278 + 0x300]  # body + signature
        full = (vectors / "tdx/tdx_v4_quote.bin").read_bytes()
        aux = {"collateral": (vectors / "tdx/tdx_v4_collateral.json").read_bytes()}
        tee, at = TeeType.TDX, datetime(2025, 7, 1, tzinfo=UTC)
    elif kind == "snp":
        raw = full = (vectors / "snp/milan_report2.bin").read_bytes()
        aux = {"vcek": (vectors / "snp/milan_vcek2.der").read_bytes()}
        tee, at = TeeType.SNP, NOW
    elif kind == "nitro":
        raw = full = base64.b64decode((vectors / "nitro/nitro_attestation.b64").read_bytes())
        aux, tee, at = {}, TeeType.NITRO, datetime(2024, 9, 7, 14, 37, 39, tzinfo=UTC)
    else:
        raw = full = bytes.fromhex((vectors / "nvidia/hopper_report.hex.txt").read_text().strip())
        aux = {"cert_chain": (vectors / "nvidia/hopper_cert_chain.pem").read_bytes()}
        tee, at = TeeType.NVIDIA, NOW
    policy = AppraisalPolicy(
        allow_any_measurement=True, require_report_data=False, allow_debug=True
    )

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(_mutations(raw, 4))
    def run(mutated_prefix: bytes) -> None:
        mutated = mutated_prefix + full[len(mutated_prefix) :]
        d = verify_and_appraise(
            Evidence(tee, mutated, aux), policy, expected_report_data=None, now=at
        )
        if mutated != full:
            assert not d.accepted
        assert all(c.reason for c in d.checks)
        if not d.accepted:
            assert d.failures and not d.failures[0].reason.startswith("internal_error")

    run()


@FUZZ
@given(st.text(max_size=300), st.binary(max_size=300))
def test_collateral_response_parsers(text: str, body: bytes) -> None:
    from teellm.attestation import collateral

    _typed(collateral._signed_part, text, "tcbInfo")
    _typed(collateral._signed_part, '{"tcbInfo":' + text + "}", "tcbInfo")
    _typed(collateral._der, body)
    _typed(collateral._der, b"-----BEGIN X509 CRL-----\n" + body)


def test_deeply_nested_json_is_a_typed_error() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    for data in (deep, b'{"tee_type":' + deep + b"}"):
        _typed(read_evidence, data)
        _typed(simulated.parse_body, data)
    from teellm.attestation.runtime import SimulatedRuntime

    sim = SimulatedRuntime().evidence(bytes(64))
    d = verify_and_appraise(
        Evidence(TeeType.SIMULATED, sim.raw, {**sim.aux, "gpu": deep}),
        AppraisalPolicy(allow_simulated=True),
        expected_report_data=bytes(64),
    )
    assert not d.accepted and "gpu_malformed" in d.failures[0].reason
