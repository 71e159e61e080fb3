"""Types shared by every runtime, verifier and policy.

Evidence is what a TEE produced; Claims are what a verifier proved from it,
normalised across TEE types; a Decision is the policy's verdict with every
check listed, so a client can show a readable report.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from teellm.errors import TeellmError

REPORT_DATA_SIZE = 64


class TeeType(StrEnum):
    TDX = "tdx"
    SGX = "sgx"
    SNP = "snp"
    NITRO = "nitro"
    NVIDIA = "nvidia"
    SIMULATED = "simulated"


class AttestationError(TeellmError):
    """Evidence could not be parsed or verified. ``code`` names the failed check."""

    code = "attestation_failed"


@dataclass(frozen=True)
class Evidence:
    """Raw evidence as the hardware produced it, plus what a verifier needs.

    ``aux`` holds named blobs: certificates (``"vcek"``, ``"cert_chain"``),
    collateral, or nested evidence (``"gpu"`` for composite CPU+GPU evidence).
    """

    tee_type: TeeType
    raw: bytes
    aux: dict[str, bytes] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tee_type": self.tee_type.value,
            "raw": base64.b64encode(self.raw).decode(),
            "aux": {k: base64.b64encode(v).decode() for k, v in sorted(self.aux.items())},
        }

    @classmethod
    def from_json(cls, obj: Any) -> Evidence:
        if not isinstance(obj, dict):
            raise AttestationError("evidence must be a JSON object", code="evidence_malformed")
        try:
            tee = TeeType(obj["tee_type"])
            raw = base64.b64decode(obj["raw"], validate=True)
            aux_in = obj.get("aux") or {}
            if not isinstance(aux_in, dict):
                raise TypeError("aux")
            aux = {str(k): base64.b64decode(v, validate=True) for k, v in aux_in.items()}
        except (KeyError, ValueError, TypeError) as exc:
            raise AttestationError(
                f"evidence JSON is malformed ({type(exc).__name__})", code="evidence_malformed"
            ) from None
        return cls(tee_type=tee, raw=raw, aux=aux)


@runtime_checkable
class TEERuntime(Protocol):
    """What every TEE backend implements: who it is, and evidence on demand."""

    @property
    def kind(self) -> TeeType: ...

    @property
    def description(self) -> str: ...

    def evidence(self, report_data: bytes) -> Evidence:
        """Evidence whose report data field holds exactly ``report_data`` (64 bytes)."""
        ...


class Claims(BaseModel):
    """What verification proved, normalised across TEE types.

    ``measurements`` maps a register name (``MRTD``, ``RTMR0``, ``MEASUREMENT``,
    ``HOST_DATA``, ``PCR0``...) to its lowercase hex value.
    """

    tee_type: TeeType
    measurements: dict[str, str] = Field(default_factory=dict)
    debug: bool = False
    simulated: bool = False
    tcb_status: str | None = None
    advisories: list[str] = Field(default_factory=list)
    tcb: dict[str, int] = Field(default_factory=dict)
    report_data: str = ""  # hex
    timestamp: datetime | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class Check(BaseModel):
    name: str
    passed: bool
    reason: str = ""


class Decision(BaseModel):
    """A policy verdict: accepted only if every check passed."""

    accepted: bool
    claims: Claims | None = None
    checks: list[Check] = Field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.reason}" for c in self.failures]
