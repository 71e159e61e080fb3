"""Appraisal policy: which verified claims are acceptable.

A policy is data (YAML validated by pydantic). ``appraise`` turns verified
claims into a list of checks, one per rule, each with pass/fail and a reason.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import constant_time
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from teellm.attestation.types import REPORT_DATA_SIZE, AttestationError, Check, Claims, TeeType

HARDWARE_TYPES = [TeeType.TDX, TeeType.SGX, TeeType.SNP, TeeType.NITRO, TeeType.NVIDIA]
# A bare GPU report attests the GPU, not the CPU-side code holding the keys it is
# bound to: accepted only where a policy names ``nvidia`` (composite CPU+GPU
# evidence is appraised under its CPU TEE type).
DEFAULT_TEE_TYPES = [TeeType.TDX, TeeType.SGX, TeeType.SNP, TeeType.NITRO]
CLOCK_SKEW = timedelta(seconds=60)


def _norm_hex(value: str) -> str:
    text = value.strip().lower().removeprefix("0x")
    bytes.fromhex(text)  # raises ValueError on bad hex
    return text


class AppraisalPolicy(BaseModel):
    """Rules a verified piece of evidence must satisfy (all of them).

    ``measurements`` maps a TEE type to register allowlists, e.g.
    ``{"tdx": {"MRTD": ["91eb..."], "RTMR1": [...]}}``; a register listed must
    equal one of its values. ``min_tcb`` maps a TEE type to minimum TCB
    component values (e.g. ``{"snp": {"snp": 8, "microcode": 115}}``).
    """

    model_config = ConfigDict(extra="forbid")

    allowed_tee_types: list[TeeType] = Field(default_factory=lambda: list(DEFAULT_TEE_TYPES))
    measurements: dict[TeeType, dict[str, list[str]]] = Field(default_factory=dict)
    # Without an allowlist any code in an operator-controlled VM would pass, so
    # hardware evidence with no measurement rules is refused unless this says so.
    allow_any_measurement: bool = False
    allow_debug: bool = False
    allow_simulated: bool = False
    accepted_tcb_statuses: list[str] = Field(default_factory=lambda: ["UpToDate"])
    allowed_advisories: list[str] = Field(default_factory=list)
    min_tcb: dict[TeeType, dict[str, int]] = Field(default_factory=dict)
    max_evidence_age_s: float | None = Field(default=None, gt=0)
    require_report_data: bool = True
    require_gpu: bool = False
    max_snp_vmpl: int = Field(default=0, ge=0, le=3)

    @field_validator("measurements")
    @classmethod
    def _normalise(cls, value: dict[TeeType, dict[str, list[str]]]) -> Any:
        return {
            tee: {reg.upper(): [_norm_hex(v) for v in vals] for reg, vals in regs.items()}
            for tee, regs in value.items()
        }

    @classmethod
    def from_yaml(cls, source: str | Path) -> AppraisalPolicy:
        """Load a policy from a YAML file path or YAML text."""
        text = source if isinstance(source, str) else None
        if isinstance(source, Path) or ("\n" not in source and ":" not in source):
            try:
                text = Path(source).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                if isinstance(source, Path):
                    raise AttestationError(
                        f"cannot read policy file ({type(exc).__name__})", code="policy_invalid"
                    ) from None
        assert text is not None
        try:
            data = yaml.safe_load(text) or {}
            return cls.model_validate(data)
        except (yaml.YAMLError, ValidationError, ValueError) as exc:
            raise AttestationError(f"invalid policy: {exc}", code="policy_invalid") from None


def _check(name: str, passed: bool, reason: str) -> Check:
    return Check(name=name, passed=passed, reason=reason)


def _report_data_check(claims: Claims, policy: AppraisalPolicy, expected: bytes | None) -> Check:
    if expected is None:
        if policy.require_report_data:
            return _check("report_data", False, "no expected report data supplied")
        return _check("report_data", True, "not required by policy")
    actual = bytes.fromhex(claims.report_data)
    if claims.tee_type is TeeType.NVIDIA and len(expected) == REPORT_DATA_SIZE:
        expected = gpu_nonce(expected)  # a bare GPU report binds the derived nonce
    if len(actual) == len(expected) and constant_time.bytes_eq(actual, expected):
        return _check("report_data", True, "matches the expected binding")
    return _check("report_data", False, "report data does not match the expected binding")


def gpu_nonce(report_data: bytes) -> bytes:
    """The 32-byte SPDM nonce a GPU report must carry next to CPU ``report_data``."""
    return hashlib.sha256(b"teellm/gpu-nonce/v1" + report_data).digest()


def appraise(
    claims: Claims,
    policy: AppraisalPolicy,
    *,
    expected_report_data: bytes | None,
    now: datetime,
) -> list[Check]:
    """Every policy check on verified ``claims``; accepted iff all pass."""
    checks: list[Check] = []
    tee = claims.tee_type
    type_ok = tee in policy.allowed_tee_types or (
        tee is TeeType.SIMULATED and policy.allow_simulated
    )
    checks.append(
        _check("tee_type", type_ok, f"{tee.value} {'allowed' if type_ok else 'not allowed'}")
    )
    if claims.simulated:
        checks.append(
            _check(
                "simulated",
                policy.allow_simulated,
                "simulated evidence allowed by policy"
                if policy.allow_simulated
                else "simulated evidence proves nothing; policy forbids it",
            )
        )
    else:
        checks.append(_check("simulated", True, "hardware evidence"))
    if claims.debug:
        checks.append(
            _check(
                "debug",
                policy.allow_debug,
                "debug mode" + (" allowed" if policy.allow_debug else " forbidden"),
            )
        )
    else:
        checks.append(_check("debug", True, "not in debug mode"))
    checks.append(_measurement_check(claims, policy))
    checks.append(_tcb_status_check(claims, policy))
    checks.append(_advisory_check(claims, policy))
    checks.append(_min_tcb_check(claims, policy))
    checks.append(_age_check(claims, policy, now))
    if tee is TeeType.SNP and "vmpl" in claims.tcb:
        vmpl = claims.tcb["vmpl"]
        checks.append(
            _check("vmpl", vmpl <= policy.max_snp_vmpl, f"VMPL {vmpl} (max {policy.max_snp_vmpl})")
        )
    checks.append(_report_data_check(claims, policy, expected_report_data))
    return checks


def _measurement_check(claims: Claims, policy: AppraisalPolicy) -> Check:
    rules = policy.measurements.get(claims.tee_type, {})
    if not rules:
        if claims.simulated or policy.allow_any_measurement:
            return _check("measurements", True, "no allowlist configured for this TEE type")
        return _check(
            "measurements",
            False,
            f"no allowlist configured for {claims.tee_type.value}: any code would pass "
            "(set measurements, or allow_any_measurement: true)",
        )
    bad = [
        reg
        for reg, allowed in rules.items()
        if claims.measurements.get(reg, "").lower() not in allowed
    ]
    if bad:
        return _check("measurements", False, f"not in allowlist: {', '.join(sorted(bad))}")
    return _check("measurements", True, f"allowlisted: {', '.join(sorted(rules))}")


def _tcb_status_check(claims: Claims, policy: AppraisalPolicy) -> Check:
    if claims.tcb_status is None:
        return _check("tcb_status", True, "evidence carries no TCB status")
    ok = claims.tcb_status in policy.accepted_tcb_statuses
    return _check("tcb_status", ok, f"{claims.tcb_status} {'accepted' if ok else 'not accepted'}")


def _advisory_check(claims: Claims, policy: AppraisalPolicy) -> Check:
    bad = [a for a in claims.advisories if a not in policy.allowed_advisories]
    if bad:
        return _check("advisories", False, f"advisories not allowed: {', '.join(bad)}")
    return _check("advisories", True, "none outstanding" if not claims.advisories else "allowed")


def _min_tcb_check(claims: Claims, policy: AppraisalPolicy) -> Check:
    rules = policy.min_tcb.get(claims.tee_type, {})
    if not rules:
        return _check("min_tcb", True, "no minimum configured")
    low = [
        f"{k} {claims.tcb.get(k, 'missing')} < {v}"
        for k, v in sorted(rules.items())
        if claims.tcb.get(k, -1) < v
    ]
    if low:
        return _check("min_tcb", False, "; ".join(low))
    return _check("min_tcb", True, "all components at or above minimum")


def _age_check(claims: Claims, policy: AppraisalPolicy, now: datetime) -> Check:
    if claims.timestamp is None:
        return _check("evidence_age", True, "evidence carries no time")
    if claims.timestamp > now + CLOCK_SKEW:
        return _check("evidence_age", False, "evidence time is in the future")
    if policy.max_evidence_age_s is None:
        return _check("evidence_age", True, "no maximum age configured")
    age = (now - claims.timestamp).total_seconds()
    ok = age <= policy.max_evidence_age_s
    return _check("evidence_age", ok, f"{age:.0f}s old (max {policy.max_evidence_age_s:.0f}s)")
