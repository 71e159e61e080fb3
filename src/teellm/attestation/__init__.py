"""TEE runtimes (evidence generation) and verifiers (parse -> verify -> appraise)."""

from teellm.attestation.policy import AppraisalPolicy, appraise, gpu_nonce
from teellm.attestation.types import (
    AttestationError,
    Check,
    Claims,
    Decision,
    Evidence,
    TEERuntime,
    TeeType,
)
from teellm.attestation.verify import verify_and_appraise, verify_evidence

__all__ = [
    "AppraisalPolicy",
    "AttestationError",
    "Check",
    "Claims",
    "Decision",
    "Evidence",
    "TEERuntime",
    "TeeType",
    "appraise",
    "gpu_nonce",
    "verify_and_appraise",
    "verify_evidence",
]
