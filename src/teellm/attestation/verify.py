"""Verification dispatch and the one entry point, ``verify_and_appraise``.

parse -> verify (signatures, chains, collateral) -> appraise (policy). Each
TEE's verifier lives in its own module and returns normalised ``Claims`` or
raises ``AttestationError`` naming the failed check.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from teellm.attestation.policy import AppraisalPolicy, appraise
from teellm.attestation.types import AttestationError, Check, Claims, Decision, Evidence, TeeType

if TYPE_CHECKING:
    from teellm.attestation.collateral import CollateralSource

log = logging.getLogger("teellm.attestation")


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def verify_evidence(
    evidence: Evidence,
    *,
    now: datetime | None = None,
    collateral: bytes | None = None,
    collateral_source: CollateralSource | None = None,
) -> Claims:
    """Cryptographically verify ``evidence`` at ``now``; raise ``AttestationError`` if not."""
    at = _utc(now)
    tee = evidence.tee_type
    if tee is TeeType.SIMULATED:
        from teellm.attestation.simulated import verify_simulated

        claims = verify_simulated(evidence, now=at)
    elif tee in (TeeType.TDX, TeeType.SGX):
        from teellm.attestation.tdx import verify_quote

        claims = verify_quote(
            evidence, now=at, collateral=collateral, collateral_source=collateral_source
        )
    elif tee is TeeType.SNP:
        from teellm.attestation.snp.verify import verify_snp

        claims = verify_snp(evidence, now=at)
    elif tee is TeeType.NITRO:
        from teellm.attestation.nitro import verify_nitro

        claims = verify_nitro(evidence, now=at)
    elif tee is TeeType.NVIDIA:
        from teellm.attestation.nvidia import verify_nvidia

        claims = verify_nvidia(evidence, now=at)
    else:  # pragma: no cover - TeeType is closed
        raise AttestationError(f"no verifier for {tee}", code="unsupported_tee")
    if "gpu" in evidence.aux and tee is not TeeType.NVIDIA:
        claims = _attach_gpu(claims, evidence.aux["gpu"], at)
    return claims


def _attach_gpu(cpu: Claims, gpu_blob: bytes, now: datetime) -> Claims:
    """Composite evidence: verify the GPU report and require its nonce to derive from
    the CPU report data, so a GPU report cannot be spliced in from another session."""
    import json

    from teellm.attestation.nvidia import verify_nvidia
    from teellm.attestation.policy import gpu_nonce

    try:
        gpu_evidence = Evidence.from_json(json.loads(gpu_blob))
    except (ValueError, RecursionError):
        raise AttestationError("composite GPU evidence is not JSON", code="gpu_malformed") from None
    if gpu_evidence.tee_type is not TeeType.NVIDIA:
        raise AttestationError("composite GPU evidence is not NVIDIA", code="gpu_malformed")
    gpu = verify_nvidia(gpu_evidence, now=now)
    if gpu.report_data != gpu_nonce(bytes.fromhex(cpu.report_data)).hex():
        raise AttestationError(
            "GPU nonce is not derived from the CPU report data", code="gpu_nonce_mismatch"
        )
    extra = dict(cpu.extra)
    extra["gpu"] = gpu.model_dump(mode="json")
    measurements = dict(cpu.measurements)
    measurements.update({f"GPU_{k}": v for k, v in gpu.measurements.items()})
    return cpu.model_copy(update={"extra": extra, "measurements": measurements})


def verify_and_appraise(
    evidence: Evidence,
    policy: AppraisalPolicy,
    *,
    expected_report_data: bytes | None,
    now: datetime | None = None,
    collateral: bytes | None = None,
    collateral_source: CollateralSource | None = None,
) -> Decision:
    """Verify evidence and appraise it against ``policy``; never raises on bad evidence.

    ``now=None`` means the wall clock (UTC). The decision lists every check.
    """
    at = _utc(now)
    try:
        claims = verify_evidence(
            evidence, now=at, collateral=collateral, collateral_source=collateral_source
        )
    except AttestationError as exc:
        return Decision(
            accepted=False,
            checks=[Check(name="evidence", passed=False, reason=f"{exc.code}: {exc}")],
        )
    except BaseException as exc:  # a verifier bug (or a Rust panic) must not crash the caller
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        log.exception("verifier error on %s evidence", evidence.tee_type.value)
        return Decision(
            accepted=False,
            checks=[
                Check(name="evidence", passed=False, reason=f"internal_error: {type(exc).__name__}")
            ],
        )
    checks = [Check(name="evidence", passed=True, reason=_summary(claims))]
    checks += appraise(claims, policy, expected_report_data=expected_report_data, now=at)
    if policy.require_gpu and "gpu" not in claims.extra and claims.tee_type is not TeeType.NVIDIA:
        checks.append(Check(name="gpu", passed=False, reason="policy requires GPU evidence"))
    elif "gpu" in claims.extra:
        checks.append(Check(name="gpu", passed=True, reason="GPU report verified and bound"))
    return Decision(accepted=all(c.passed for c in checks), claims=claims, checks=checks)


def _summary(claims: Claims) -> str:
    if claims.simulated:
        return "simulated evidence, signature valid (no hardware guarantee)"
    return f"{claims.tee_type.value} evidence: signature and certificate chain valid"
