"""Reading evidence files: raw bytes, base64 or hex text, or teellm's Evidence JSON,
and guessing the TEE type from the bytes."""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct

from teellm.attestation.types import AttestationError, Evidence, TeeType

_HEX = re.compile(rb"^(0x)?[0-9a-fA-F\s]+$")
_B64 = re.compile(rb"^[A-Za-z0-9+/=_\-\s]+$")


def decode_text(data: bytes) -> bytes:
    """Raw bytes as the hardware produced them: hex or base64 text is decoded."""
    stripped = data.strip()
    if not stripped:
        return b""
    if _HEX.match(stripped):
        digits = re.sub(rb"\s", b"", stripped.removeprefix(b"0x"))
        if len(digits) % 2 == 0:
            return bytes.fromhex(digits.decode())
    if _B64.match(stripped):
        text = re.sub(rb"\s", b"", stripped)
        try:
            if b"-" in text or b"_" in text:
                return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
            return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            pass
    return data


def guess_type(raw: bytes) -> TeeType:
    """The TEE type whose evidence format ``raw`` has (typed error when unknown)."""
    if raw.startswith(b"{") and b'"teellm-simulated/v1"' in raw:
        return TeeType.SIMULATED
    if len(raw) >= 8:
        version, _key, tee = struct.unpack_from("<HHI", raw, 0)
        if version == 3 and tee == 0 and len(raw) > 432:
            return TeeType.SGX
        if version in (4, 5) and tee == 0x81:
            return TeeType.TDX
        if version in (4, 5) and tee == 0:
            return TeeType.SGX
    if len(raw) == 0x4A0 and raw[0] in (2, 3, 4, 5) and raw[1:4] == b"\0\0\0":
        return TeeType.SNP
    if raw[:1] in (b"\x84", b"\xd2"):
        return TeeType.NITRO
    if len(raw) > 2 and 0x10 <= raw[0] <= 0x13 and raw[1] == 0xE0:
        return TeeType.NVIDIA
    raise AttestationError("cannot tell the evidence type; give --type", code="evidence_unknown")


def read_evidence(data: bytes, tee: TeeType | None = None) -> Evidence:
    """Evidence from a file's bytes: teellm Evidence JSON, or raw/hex/base64 evidence."""
    stripped = data.strip()
    if stripped.startswith(b"{") and b'"tee_type"' in stripped:
        try:
            obj = json.loads(stripped)
        except (ValueError, RecursionError):
            raise AttestationError(
                "evidence JSON is malformed", code="evidence_malformed"
            ) from None
        evidence = Evidence.from_json(obj)
        if tee is not None and evidence.tee_type is not tee:
            raise AttestationError(
                f"evidence is {evidence.tee_type.value}, not {tee.value}", code="tee_mismatch"
            )
        return evidence
    raw = data if stripped.startswith(b"{") else decode_text(data)
    return Evidence(tee or guess_type(raw), raw)
