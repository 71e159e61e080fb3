"""AWS Nitro Enclaves attestation documents: COSE_Sign1 (RFC 9052) over CBOR.

ES384 signature over the Sig_structure by the enclave's leaf certificate, which
must chain through ``cabundle`` to the AWS Nitro root shipped with the package
(the bundle's own root is only accepted if it is that root), everything valid
at ``now``. A document whose PCR0-2 are all zero comes from a debug enclave.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from teellm.attestation import roots
from teellm.attestation.types import AttestationError, Claims, Evidence, TeeType
from teellm.attestation.x509util import load_cert, verify_chain

MAX_DOCUMENT = 1 << 16
COSE_SIGN1_TAG = 18
COSE_ALG_ES384 = -35


@dataclass(frozen=True)
class NitroDocument:
    """A parsed (not yet verified) Nitro attestation document."""

    protected: bytes
    payload: bytes
    signature: bytes
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: dict[int, bytes]
    certificate: bytes
    cabundle: list[bytes]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    @property
    def debug(self) -> bool:
        return all(not any(self.pcrs.get(i, b"")) for i in (0, 1, 2))


def _malformed(what: str) -> AttestationError:
    return AttestationError(f"Nitro document malformed: {what}", code="evidence_malformed")


def _loads(data: bytes) -> Any:
    try:
        return cbor2.loads(data)
    except Exception:  # cbor2 raises many types on hostile input; all mean malformed
        raise _malformed("not CBOR") from None


def _opt_bytes(doc: Mapping[Any, Any], key: str) -> bytes | None:
    value = doc.get(key)
    if value is None or isinstance(value, bytes):
        return value
    raise _malformed(key)


def parse_document(raw: bytes) -> NitroDocument:
    """Parse COSE_Sign1 (tagged or not) and its payload; typed errors only."""
    if len(raw) > MAX_DOCUMENT:
        raise _malformed("too large")
    outer = _loads(raw)
    if isinstance(outer, cbor2.CBORTag):
        if outer.tag != COSE_SIGN1_TAG:
            raise _malformed("unexpected CBOR tag")
        outer = outer.value
    if not isinstance(outer, list | tuple) or len(outer) != 4:
        raise _malformed("not a COSE_Sign1 array")
    protected, _unprotected, payload, signature = outer
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)):
        raise _malformed("COSE_Sign1 fields")
    header = _loads(protected)
    if not isinstance(header, Mapping) or header.get(1) != COSE_ALG_ES384:
        raise _malformed("algorithm is not ES384")
    doc = _loads(payload)
    if not isinstance(doc, Mapping):
        raise _malformed("payload is not a map")
    pcrs: Any = doc.get("pcrs")
    cabundle: Any = doc.get("cabundle")
    checks = (
        isinstance(doc.get("module_id"), str),
        doc.get("digest") == "SHA384",
        isinstance(doc.get("timestamp"), int) and 0 < doc["timestamp"] < 2**63,
        isinstance(pcrs, Mapping)
        and 0 < len(pcrs) <= 32
        and all(
            isinstance(k, int) and 0 <= k < 32 and isinstance(v, bytes) and len(v) in (32, 48, 64)
            for k, v in pcrs.items()
        ),
        isinstance(doc.get("certificate"), bytes),
        isinstance(cabundle, list | tuple)
        and 0 < len(cabundle) <= 8
        and all(isinstance(c, bytes) for c in cabundle),
    )
    if not all(checks):
        raise _malformed("required fields")
    return NitroDocument(
        protected=protected,
        payload=payload,
        signature=signature,
        module_id=doc["module_id"],
        digest=doc["digest"],
        timestamp_ms=doc["timestamp"],
        pcrs=dict(pcrs),
        certificate=doc["certificate"],
        cabundle=list(cabundle),
        public_key=_opt_bytes(doc, "public_key"),
        user_data=_opt_bytes(doc, "user_data"),
        nonce=_opt_bytes(doc, "nonce"),
    )


def _verify_signature(doc: NitroDocument, leaf: x509.Certificate) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AttestationError("Nitro leaf key is not P-384", code="cert_malformed")
    if len(doc.signature) != 96:
        raise AttestationError("Nitro signature has the wrong size", code="signature_invalid")
    sig_structure = cbor2.dumps(["Signature1", doc.protected, b"", doc.payload])
    r = int.from_bytes(doc.signature[:48], "big")
    s = int.from_bytes(doc.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), sig_structure, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise AttestationError(
            "Nitro document signature invalid", code="signature_invalid"
        ) from None


def verify_nitro(
    evidence: Evidence, *, now: datetime, root: x509.Certificate | None = None
) -> Claims:
    """Verify a Nitro attestation document at ``now`` against the shipped AWS root."""
    doc = parse_document(evidence.raw)
    anchor = root or roots.aws_nitro_root()
    bundle = [load_cert(c) for c in doc.cabundle]
    if bundle[0] != anchor:
        raise AttestationError(
            "Nitro cabundle root is not the AWS Nitro root", code="cert_chain_invalid"
        )
    leaf = load_cert(doc.certificate)
    verify_chain([leaf, *reversed(bundle[1:])], anchor, now, "Nitro")
    _verify_signature(doc, leaf)
    return Claims(
        tee_type=TeeType.NITRO,
        measurements={f"PCR{i}": v.hex() for i, v in sorted(doc.pcrs.items())},
        debug=doc.debug,
        report_data=(doc.user_data or b"").hex(),
        timestamp=datetime.fromtimestamp(doc.timestamp_ms / 1000, tz=UTC),
        extra={
            "module_id": doc.module_id,
            "nonce": (doc.nonce or b"").hex(),
            "public_key": (doc.public_key or b"").hex(),
        },
    )
