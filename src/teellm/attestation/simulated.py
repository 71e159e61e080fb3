"""The simulated TEE's evidence format and its verifier.

Simulated evidence is a canonical JSON body signed with Ed25519 by a local key.
It proves nothing about hardware: the verifier checks only that the body is
well formed and self-consistent, marks the claims ``simulated``, and the policy
rejects it unless ``allow_simulated`` is set.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from teellm.attestation.types import REPORT_DATA_SIZE, AttestationError, Claims, Evidence, TeeType

FORMAT = "teellm-simulated/v1"
WARNING_TEXT = "SIMULATED TEE: software-signed evidence, no hardware protection"
DEFAULT_MEASUREMENT = hashlib.sha384(b"teellm/simulated-measurement/v1").digest()
MAX_BODY = 4096


def encode_body(
    *, report_data: bytes, measurement: bytes, timestamp_ms: int, public_key: bytes
) -> bytes:
    """Canonical JSON bytes that the simulated key signs."""
    body = {
        "format": FORMAT,
        "warning": WARNING_TEXT,
        "report_data": report_data.hex(),
        "measurement": measurement.hex(),
        "timestamp_ms": timestamp_ms,
        "public_key": public_key.hex(),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _hex_field(body: dict[str, Any], name: str, size: int | None = None) -> bytes:
    value = body.get(name)
    if not isinstance(value, str):
        raise AttestationError(f"simulated evidence: {name} missing", code="evidence_malformed")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise AttestationError(
            f"simulated evidence: {name} is not hex", code="evidence_malformed"
        ) from None
    if size is not None and len(raw) != size:
        raise AttestationError(
            f"simulated evidence: {name} must be {size} bytes", code="evidence_malformed"
        )
    return raw


def parse_body(raw: bytes) -> dict[str, Any]:
    """Parse and validate a simulated evidence body (typed errors only)."""
    if len(raw) > MAX_BODY:
        raise AttestationError("simulated evidence too large", code="evidence_malformed")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AttestationError(
            "simulated evidence is not JSON", code="evidence_malformed"
        ) from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise AttestationError("not simulated evidence", code="evidence_malformed")
    ts = body.get("timestamp_ms")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**53:
        raise AttestationError("simulated evidence: bad timestamp", code="evidence_malformed")
    _hex_field(body, "report_data", REPORT_DATA_SIZE)
    _hex_field(body, "measurement")
    _hex_field(body, "public_key", 32)
    return body


def verify_simulated(evidence: Evidence, *, now: datetime) -> Claims:
    """Check the simulated body and its Ed25519 signature; claims are marked simulated."""
    body = parse_body(evidence.raw)
    public_key = _hex_field(body, "public_key", 32)
    signature = evidence.aux.get("signature", b"")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, evidence.raw)
    except (InvalidSignature, ValueError):
        raise AttestationError(
            "simulated evidence signature invalid", code="signature_invalid"
        ) from None
    return Claims(
        tee_type=TeeType.SIMULATED,
        measurements={"MEASUREMENT": _hex_field(body, "measurement").hex()},
        debug=False,
        simulated=True,
        report_data=_hex_field(body, "report_data", REPORT_DATA_SIZE).hex(),
        timestamp=datetime.fromtimestamp(body["timestamp_ms"] / 1000, tz=UTC),
        extra={"signing_key": public_key.hex(), "warning": WARNING_TEXT},
    )
