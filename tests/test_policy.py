"""Appraisal policy and verify_and_appraise over simulated evidence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from teellm.attestation import (
    AppraisalPolicy,
    AttestationError,
    Claims,
    Evidence,
    TeeType,
    appraise,
    verify_and_appraise,
)
from teellm.attestation.runtime import SimulatedRuntime
from teellm.attestation.simulated import DEFAULT_MEASUREMENT
from teellm.attestation.transcript import report_data

RD = report_data("test", nonce=b"n" * 32)
SIM_OK = AppraisalPolicy(allow_simulated=True)


@pytest.fixture(scope="module")
def sim_evidence() -> Evidence:
    return SimulatedRuntime().evidence(RD)


def _names(decision) -> dict[str, bool]:
    return {c.name: c.passed for c in decision.checks}


def test_default_policy_rejects_simulated(sim_evidence: Evidence) -> None:
    decision = verify_and_appraise(sim_evidence, AppraisalPolicy(), expected_report_data=RD)
    assert not decision.accepted
    checks = _names(decision)
    assert checks["evidence"] is True
    assert checks["simulated"] is False
    assert checks["tee_type"] is False
    assert decision.claims is not None and decision.claims.simulated


def test_allow_simulated_accepts_with_every_check(sim_evidence: Evidence) -> None:
    decision = verify_and_appraise(sim_evidence, SIM_OK, expected_report_data=RD)
    assert decision.accepted, decision.reasons
    assert {"evidence", "tee_type", "simulated", "debug", "measurements", "report_data"} <= set(
        _names(decision)
    )
    assert all(c.reason for c in decision.checks)


def test_wrong_report_data_rejected(sim_evidence: Evidence) -> None:
    other = report_data("test", nonce=b"m" * 32)
    decision = verify_and_appraise(sim_evidence, SIM_OK, expected_report_data=other)
    assert not decision.accepted
    assert _names(decision)["report_data"] is False


def test_missing_expected_report_data_rejected_unless_not_required(sim_evidence: Evidence) -> None:
    assert not verify_and_appraise(sim_evidence, SIM_OK, expected_report_data=None).accepted
    lax = AppraisalPolicy(allow_simulated=True, require_report_data=False)
    assert verify_and_appraise(sim_evidence, lax, expected_report_data=None).accepted


def test_tampered_body_and_signature_rejected(sim_evidence: Evidence) -> None:
    body = json.loads(sim_evidence.raw)
    body["measurement"] = "00" * 48
    forged = Evidence(
        TeeType.SIMULATED,
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
        sim_evidence.aux,
    )
    decision = verify_and_appraise(forged, SIM_OK, expected_report_data=RD)
    assert not decision.accepted
    assert decision.checks[0].name == "evidence"
    assert "signature_invalid" in decision.checks[0].reason
    sig = bytearray(sim_evidence.aux["signature"])
    sig[3] ^= 1
    bad = Evidence(TeeType.SIMULATED, sim_evidence.raw, {"signature": bytes(sig)})
    assert not verify_and_appraise(bad, SIM_OK, expected_report_data=RD).accepted
    nosig = Evidence(TeeType.SIMULATED, sim_evidence.raw)
    assert not verify_and_appraise(nosig, SIM_OK, expected_report_data=RD).accepted


def test_garbage_evidence_never_raises() -> None:
    for raw in (b"", b"{}", b"\xff" * 10, b'{"format":"teellm-simulated/v1"}'):
        for tee in TeeType:
            d = verify_and_appraise(Evidence(tee, raw), SIM_OK, expected_report_data=RD)
            assert not d.accepted and d.checks[0].name == "evidence"


def test_measurement_allowlist(sim_evidence: Evidence) -> None:
    good = AppraisalPolicy(
        allow_simulated=True,
        measurements={"simulated": {"measurement": ["0x" + DEFAULT_MEASUREMENT.hex().upper()]}},
    )
    assert verify_and_appraise(sim_evidence, good, expected_report_data=RD).accepted
    bad = AppraisalPolicy(allow_simulated=True, measurements={"simulated": {"MEASUREMENT": ["ab"]}})
    d = verify_and_appraise(sim_evidence, bad, expected_report_data=RD)
    assert not d.accepted and _names(d)["measurements"] is False


def test_evidence_age(sim_evidence: Evidence) -> None:
    policy = AppraisalPolicy(allow_simulated=True, max_evidence_age_s=60)
    assert verify_and_appraise(sim_evidence, policy, expected_report_data=RD).accepted
    later = datetime.now(UTC) + timedelta(minutes=5)
    d = verify_and_appraise(sim_evidence, policy, expected_report_data=RD, now=later)
    assert not d.accepted and _names(d)["evidence_age"] is False
    earlier = datetime.now(UTC) - timedelta(minutes=5)
    d = verify_and_appraise(sim_evidence, SIM_OK, expected_report_data=RD, now=earlier)
    assert not d.accepted and _names(d)["evidence_age"] is False  # from the future


def _claims(**kw) -> Claims:
    base = {"tee_type": TeeType.TDX, "report_data": RD.hex()}
    base.update(kw)
    return Claims(**base)


def _appraise(claims: Claims, policy: AppraisalPolicy) -> dict[str, bool]:
    now = datetime.now(UTC)
    return {c.name: c.passed for c in appraise(claims, policy, expected_report_data=RD, now=now)}


def test_hardware_evidence_without_a_measurement_allowlist_is_refused() -> None:
    # Without an allowlist any code in an operator-controlled VM would pass.
    for tee in ["tdx", "sgx", "snp", "nitro"]:
        assert _appraise(_claims(tee_type=tee), AppraisalPolicy())["measurements"] is False
    opted_out = AppraisalPolicy(allow_any_measurement=True)
    assert _appraise(_claims(), opted_out)["measurements"] is True
    pinned = AppraisalPolicy(measurements={"tdx": {"MRTD": ["aa" * 48]}})
    assert _appraise(_claims(measurements={"MRTD": "aa" * 48}), pinned)["measurements"] is True
    assert _appraise(_claims(measurements={"MRTD": "bb" * 48}), pinned)["measurements"] is False


def test_tcb_status_advisories_min_tcb_debug() -> None:
    policy = AppraisalPolicy(allow_any_measurement=True)
    assert all(_appraise(_claims(tcb_status="UpToDate"), policy).values())
    assert _appraise(_claims(tcb_status="OutOfDate"), policy)["tcb_status"] is False
    assert _appraise(_claims(advisories=["INTEL-SA-1"]), policy)["advisories"] is False
    allowing = AppraisalPolicy(allowed_advisories=["INTEL-SA-1"])
    assert _appraise(_claims(advisories=["INTEL-SA-1"]), allowing)["advisories"] is True
    assert _appraise(_claims(debug=True), policy)["debug"] is False
    assert _appraise(_claims(debug=True), AppraisalPolicy(allow_debug=True))["debug"] is True
    mins = AppraisalPolicy(min_tcb={"tdx": {"tee_tcb_svn0": 5}})
    assert _appraise(_claims(tcb={"tee_tcb_svn0": 4}), mins)["min_tcb"] is False
    assert _appraise(_claims(tcb={"tee_tcb_svn0": 5}), mins)["min_tcb"] is True
    assert _appraise(_claims(), mins)["min_tcb"] is False
    only_snp = AppraisalPolicy(allowed_tee_types=["snp"])
    assert _appraise(_claims(), only_snp)["tee_type"] is False


def test_bare_gpu_evidence_needs_an_explicit_policy() -> None:
    """A GPU report alone says nothing of the CPU code holding the bound keys: a host
    with any GPU could otherwise pass a default policy and receive prompts or keys."""
    from teellm.attestation.policy import gpu_nonce
    from teellm.kbs.policy import ReleasePolicy

    gpu = _claims(tee_type=TeeType.NVIDIA, report_data=gpu_nonce(RD).hex())
    assert _appraise(gpu, AppraisalPolicy())["tee_type"] is False
    assert not ReleasePolicy().allows_tee_type("nvidia")
    explicit = AppraisalPolicy(allowed_tee_types=[TeeType.NVIDIA], allow_any_measurement=True)
    assert all(_appraise(gpu, explicit).values())
    assert ReleasePolicy(appraisal=explicit).allows_tee_type("nvidia")
    # The CPU TEE types stay allowed by default.
    assert all(
        _appraise(_claims(tee_type=tee), AppraisalPolicy())["tee_type"]
        for tee in ["tdx", "sgx", "snp", "nitro"]
    )


def test_yaml_policy_roundtrip(tmp_path) -> None:
    text = """
allowed_tee_types: [tdx, snp]
measurements:
  tdx:
    MRTD: ["AABB"]
allow_debug: false
accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]
allowed_advisories: [INTEL-SA-00615]
min_tcb:
  snp: {snp: 8}
max_evidence_age_s: 300
"""
    policy = AppraisalPolicy.from_yaml(text)
    assert policy.measurements[TeeType.TDX]["MRTD"] == ["aabb"]
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    assert AppraisalPolicy.from_yaml(path) == policy
    assert AppraisalPolicy.from_yaml(str(path)) == policy
    assert AppraisalPolicy.from_yaml("") == AppraisalPolicy()


@pytest.mark.parametrize(
    "text",
    [
        "allowed_tee_types: [quantum]",
        "measurements: {tdx: {MRTD: [zz]}}",
        "unknown_field: 1",
        "max_evidence_age_s: -1",
        "[1, 2",
        "- a list",
    ],
)
def test_invalid_policy_is_typed_error(text: str) -> None:
    with pytest.raises(AttestationError) as exc:
        AppraisalPolicy.from_yaml(text)
    assert exc.value.code == "policy_invalid"


def test_policy_source_edge_cases(tmp_path) -> None:
    with pytest.raises(AttestationError):
        AppraisalPolicy.from_yaml(tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(AttestationError):
        AppraisalPolicy.from_yaml(binary)
    with pytest.raises(AttestationError):
        AppraisalPolicy.from_yaml("x" * 5000)  # not a file name, not a mapping
    assert AppraisalPolicy.from_yaml("{}") == AppraisalPolicy()
