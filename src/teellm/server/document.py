"""The attestation document a server publishes, and its verification by a client.

The document carries the TEE evidence and everything that evidence binds: the
server's identity keys (HPKE + Ed25519), the model manifest (id, version,
digest, publisher key id), the memory-protection report, build information and
the plain-mode flag. The evidence's report data is

    transcript.report_data("teellm/server", nonce=nonce,
        public_keys={"hpke": hpke_public, "signing": ed25519_public},
        manifest_digest=model digest, config=bound_config(document))

so none of those fields can be changed by the host without verification failing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from teellm import __version__
from teellm.attestation import transcript
from teellm.attestation.policy import AppraisalPolicy
from teellm.attestation.types import Evidence, TEERuntime, TeeType
from teellm.crypto import envelope
from teellm.crypto.hpke import HpkeError, HpkePrivateKey, HpkePublicKey, Kem
from teellm.errors import TeellmError

if TYPE_CHECKING:
    from rich.console import Console

FORMAT: Literal["teellm-attestation/v1"] = "teellm-attestation/v1"
PURPOSE = "teellm/server"
MAX_DOCUMENT_SIZE = 1024 * 1024


class DocumentError(TeellmError):
    """An attestation document or client policy is malformed."""

    code = "document_malformed"


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes both sides hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------ identity keys


class IdentityLike(Protocol):
    """The public side of a server identity (see ``teellm.server.identity``)."""

    @property
    def hpke(self) -> HpkePrivateKey: ...

    @property
    def hpke_public(self) -> bytes: ...

    @property
    def signing_public(self) -> bytes: ...

    @property
    def key_id(self) -> bytes: ...


# ----------------------------------------------------------------------------- document


class PublicKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kem: Kem
    hpke: str  # base64 of the raw HPKE public key
    signing: str  # base64 of the raw Ed25519 public key
    key_id: str  # hex, see envelope.key_id

    def hpke_bytes(self) -> bytes:
        return _decode_b64(self.hpke, "hpke public key")

    def signing_bytes(self) -> bytes:
        return _decode_b64(self.signing, "signing public key")


class ManifestLike(Protocol):
    model_id: str
    version: int
    publisher_key_id: str

    def digest(self) -> bytes: ...


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    version: int
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    publisher_key_id: str

    @classmethod
    def from_manifest(cls, manifest: ManifestLike) -> ModelInfo:
        return cls(
            id=manifest.model_id,
            version=manifest.version,
            digest=manifest.digest().hex(),
            publisher_key_id=manifest.publisher_key_id,
        )


class BuildInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teellm_version: str
    serving_config: dict[str, Any] = Field(default_factory=dict)


class AttestationDocument(BaseModel):
    """What ``GET /v1/attestation`` returns (as JSON)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["teellm-attestation/v1"] = FORMAT
    tee_type: TeeType
    simulated: bool
    plain_mode: bool
    nonce: str = ""  # hex; empty for the boot document
    evidence: dict[str, Any]
    public_keys: PublicKeys
    model: ModelInfo
    memory_protection: dict[str, Any] = Field(default_factory=dict)
    build: BuildInfo
    issued_at: datetime

    @classmethod
    def from_json(cls, data: bytes | str) -> AttestationDocument:
        """Parse a document (hostile input: :class:`DocumentError` only)."""
        if len(data) > MAX_DOCUMENT_SIZE:
            raise DocumentError("attestation document too large")
        try:
            return cls.model_validate_json(data)
        except (ValidationError, ValueError):
            raise DocumentError("attestation document is malformed") from None

    def to_json(self) -> str:
        return self.model_dump_json()


def bound_config(doc: AttestationDocument) -> bytes:
    """The configuration bytes the report data binds (everything but keys and nonce)."""
    return canonical_json(
        {
            "format": doc.format,
            "model": doc.model.model_dump(mode="json"),
            "build": doc.build.model_dump(mode="json"),
            "memory_protection": doc.memory_protection,
            "plain_mode": doc.plain_mode,
            "kem": doc.public_keys.kem.value,
        }
    )


def expected_report_data(doc: AttestationDocument, nonce: bytes) -> bytes:
    """The report data honest evidence for ``doc`` must carry."""
    return transcript.report_data(
        PURPOSE,
        nonce=nonce,
        public_keys={
            "hpke": doc.public_keys.hpke_bytes(),
            "signing": doc.public_keys.signing_bytes(),
        },
        manifest_digest=bytes.fromhex(doc.model.digest),
        config=bound_config(doc),
    )


def build_document(
    *,
    runtime: TEERuntime,
    identity: IdentityLike,
    model: ModelInfo | ManifestLike,
    memory_protection: Mapping[str, Any] | BaseModel | None = None,
    serving_config: Mapping[str, Any] | None = None,
    nonce: bytes = b"",
    plain_mode: bool = False,
    now: datetime | None = None,
) -> AttestationDocument:
    """A document with evidence from ``runtime`` binding all of its contents."""
    info = model if isinstance(model, ModelInfo) else ModelInfo.from_manifest(model)
    if isinstance(memory_protection, BaseModel):
        protection = memory_protection.model_dump(mode="json")
    else:
        protection = dict(memory_protection or {})
    draft = AttestationDocument(
        tee_type=runtime.kind,
        simulated=runtime.kind is TeeType.SIMULATED,
        plain_mode=plain_mode,
        nonce=nonce.hex(),
        evidence={},
        public_keys=PublicKeys(
            kem=identity.hpke.kem,
            hpke=_b64(identity.hpke_public),
            signing=_b64(identity.signing_public),
            key_id=identity.key_id.hex(),
        ),
        model=info,
        memory_protection=json.loads(canonical_json(protection)),
        build=BuildInfo(
            teellm_version=__version__,
            serving_config=json.loads(canonical_json(dict(serving_config or {}))),
        ),
        issued_at=now or datetime.now(UTC),
    )
    evidence = runtime.evidence(expected_report_data(draft, nonce))
    return draft.model_copy(update={"evidence": evidence.to_json()})


def _decode_b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise DocumentError(f"{what} is not base64") from None


# ------------------------------------------------------------------------ client policy


class ClientPolicy(BaseModel):
    """What a client demands of a server before sending it anything.

    ``attestation`` appraises the evidence; the other fields pin the model and
    the serving mode. At least one of ``model_digests`` / ``trusted_publishers``
    must be set: a policy that accepts any model is refused at verification.
    """

    model_config = ConfigDict(extra="forbid")

    attestation: AppraisalPolicy = Field(default_factory=AppraisalPolicy)
    model_id: str | None = None
    min_model_version: int | None = None
    model_digests: list[str] = Field(default_factory=list)
    trusted_publishers: list[str] = Field(default_factory=list)
    allow_plain_mode: bool = False
    require_receipts: bool = True
    require_memory_protection: list[str] = Field(default_factory=list)

    @classmethod
    def from_yaml(cls, source: str | Path) -> ClientPolicy:
        """Load from a YAML file path or YAML text."""
        if isinstance(source, Path) or ("\n" not in source and ":" not in source):
            try:
                text = Path(source).read_text()
            except OSError as exc:
                raise DocumentError(
                    f"cannot read policy file ({exc.strerror})", code="policy_invalid"
                ) from None
        else:
            text = source
        try:
            data = yaml.safe_load(text) or {}
            return cls.model_validate(data)
        except (yaml.YAMLError, ValidationError, ValueError) as exc:
            raise DocumentError(f"invalid client policy: {exc}", code="policy_invalid") from None


# --------------------------------------------------------------------------- report


class ReportCheck(BaseModel):
    name: str
    passed: bool
    reason: str = ""
    measured: str | None = None


class VerificationReport(BaseModel):
    """Every check made on a server, with what was measured; accepted iff all passed."""

    url: str | None = None
    accepted: bool
    checks: list[ReportCheck]
    tee_type: str | None = None
    simulated: bool | None = None
    plain_mode: bool | None = None
    model: ModelInfo | None = None
    key_id: str | None = None
    measurements: dict[str, str] = Field(default_factory=dict)
    verified_at: datetime

    @property
    def failures(self) -> list[ReportCheck]:
        return [c for c in self.checks if not c.passed]

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.reason}" for c in self.failures]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def render(self, console: Console | None = None) -> None:
        """Print as a rich table."""
        from teellm.client.report import render_report

        render_report(self, console)

    def raise_for_failure(self) -> None:
        if not self.accepted:
            raise VerificationFailed(self)


class VerificationFailed(TeellmError):
    """The server did not pass verification; nothing was sent. ``.report`` says why."""

    code = "verification_failed"

    def __init__(self, report: VerificationReport) -> None:
        failed = "; ".join(report.reasons) or "no checks"
        super().__init__(f"server verification failed: {failed}")
        self.report = report


@dataclass(frozen=True)
class PinnedKeys:
    """The verified server keys a client seals to and checks receipts with."""

    hpke: HpkePublicKey
    signing: Ed25519PublicKey
    key_id: bytes
    model_digest: bytes


def pinned_keys(doc: AttestationDocument) -> PinnedKeys:
    """Keys from a document (call only after it verified)."""
    keys = doc.public_keys
    try:
        return PinnedKeys(
            hpke=HpkePublicKey.from_bytes(keys.hpke_bytes()),
            signing=Ed25519PublicKey.from_public_bytes(keys.signing_bytes()),
            key_id=bytes.fromhex(keys.key_id),
            model_digest=bytes.fromhex(doc.model.digest),
        )
    except (HpkeError, ValueError):
        raise DocumentError("attestation document public keys are malformed") from None


def _c(name: str, passed: bool, reason: str, measured: Any = None) -> ReportCheck:
    return ReportCheck(
        name=name,
        passed=passed,
        reason=reason,
        measured=None if measured is None else str(measured),
    )


def _key_checks(doc: AttestationDocument) -> list[ReportCheck]:
    try:
        keys = pinned_keys(doc)
    except DocumentError as exc:
        return [_c("public_keys", False, str(exc))]
    checks = [
        _c(
            "public_keys",
            keys.hpke.kem is doc.public_keys.kem,
            f"HPKE {keys.hpke.kem.value}, Ed25519 signing key",
            doc.public_keys.key_id,
        )
    ]
    kid = envelope.key_id(keys.hpke.raw, doc.public_keys.signing_bytes())
    checks.append(
        _c("key_id", kid == keys.key_id, "derived from the public keys", doc.public_keys.key_id)
    )
    return checks


def _model_checks(doc: AttestationDocument, policy: ClientPolicy) -> list[ReportCheck]:
    m = doc.model
    checks: list[ReportCheck] = []
    if policy.model_id is not None:
        ok = m.id == policy.model_id
        checks.append(_c("model_id", ok, f"expected {policy.model_id}", m.id))
    if policy.min_model_version is not None:
        ok = m.version >= policy.min_model_version
        checks.append(_c("model_version", ok, f"minimum {policy.min_model_version}", m.version))
    allowed = [d.lower() for d in policy.model_digests]
    if allowed:
        checks.append(
            _c("model_digest", m.digest in allowed, "in the policy's allowlist", m.digest)
        )
    publishers = [p.lower() for p in policy.trusted_publishers]
    if publishers:
        ok = m.publisher_key_id.lower() in publishers
        checks.append(_c("publisher", ok, "trusted by the policy", m.publisher_key_id))
    if not allowed and not publishers:
        checks.append(
            _c("model_pinned", False, "policy names no trusted publisher or model digest")
        )
    return checks


def _mode_checks(doc: AttestationDocument, policy: ClientPolicy) -> list[ReportCheck]:
    checks: list[ReportCheck] = []
    if doc.plain_mode:
        checks.append(
            _c(
                "plain_mode",
                policy.allow_plain_mode,
                "server runs without end-to-end encryption"
                + (" (allowed by policy)" if policy.allow_plain_mode else " (refused)"),
                True,
            )
        )
    else:
        checks.append(_c("plain_mode", True, "end-to-end encryption on", False))
    for name in policy.require_memory_protection:
        value = doc.memory_protection.get(name)
        checks.append(_c(f"memory.{name}", value is True, "required by policy", value))
    return checks


def verify_document(
    doc: AttestationDocument,
    policy: ClientPolicy,
    *,
    nonce: bytes,
    now: datetime | None = None,
    url: str | None = None,
) -> VerificationReport:
    """Verify evidence, bindings and policy; never raises on a bad document."""
    from teellm.attestation import verify_and_appraise

    when = now or datetime.now(UTC)
    checks: list[ReportCheck] = []
    fresh = doc.nonce == nonce.hex()
    checks.append(_c("nonce", fresh, "document answers our fresh nonce", doc.nonce or "(none)"))
    checks += _key_checks(doc)
    measurements: dict[str, str] = {}
    try:
        evidence = Evidence.from_json(doc.evidence)
        decision = verify_and_appraise(
            evidence,
            policy.attestation,
            expected_report_data=expected_report_data(doc, nonce),
            now=when,
        )
    except TeellmError as exc:  # malformed evidence or keys: a failed check, not a crash
        checks.append(_c("evidence", False, f"{exc.code}: {exc}"))
    else:
        for check in decision.checks:
            checks.append(_c(f"evidence.{check.name}", check.passed, check.reason))
        claims = decision.claims
        if claims is not None:
            measurements = dict(claims.measurements)
            same = claims.tee_type == doc.tee_type and claims.simulated == doc.simulated
            checks.append(
                _c(
                    "tee_type",
                    same,
                    "document agrees with the evidence",
                    claims.tee_type.value + (" (simulated)" if claims.simulated else ""),
                )
            )
        elif not decision.checks:
            checks.append(_c("evidence", False, "verifier returned no checks"))
    checks += _model_checks(doc, policy)
    checks += _mode_checks(doc, policy)
    return VerificationReport(
        url=url,
        accepted=all(c.passed for c in checks),
        checks=checks,
        tee_type=doc.tee_type.value,
        simulated=doc.simulated,
        plain_mode=doc.plain_mode,
        model=doc.model,
        key_id=doc.public_keys.key_id,
        measurements=measurements,
        verified_at=when,
    )
