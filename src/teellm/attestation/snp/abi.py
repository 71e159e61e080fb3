"""The SEV-SNP ATTESTATION_REPORT layout (AMD SEV-SNP firmware ABI spec, Table 22).

No maintained Python library parses it; the layout is a fixed struct, so this
module is a small table of offsets over ``struct``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from teellm.attestation.types import AttestationError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIG_ALGO_ECDSA_P384_SHA384 = 1
POLICY_DEBUG_BIT = 19
POLICY_RESERVED_ONE_BIT = 17
SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION u64; component order differs on Turin (FMC first)."""

    raw: int
    turin: bool = False

    def _byte(self, i: int) -> int:
        return (self.raw >> (8 * i)) & 0xFF

    @property
    def components(self) -> dict[str, int]:
        if self.turin:
            return {
                "fmc": self._byte(0),
                "bootloader": self._byte(1),
                "tee": self._byte(2),
                "snp": self._byte(3),
                "microcode": self._byte(7),
            }
        return {
            "bootloader": self._byte(0),
            "tee": self._byte(1),
            "snp": self._byte(6),
            "microcode": self._byte(7),
        }


@dataclass(frozen=True)
class Report:
    """A parsed SEV-SNP attestation report (every field of versions 2, 3 and 5)."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    launch_mit_vector: int
    current_mit_vector: int
    signature_r: bytes
    signature_s: bytes

    @property
    def debug(self) -> bool:
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    @property
    def signing_key(self) -> int:
        """0 = VCEK, 1 = VLEK, 7 = none."""
        return (self.key_info >> 2) & 0x7

    @property
    def mask_chip_id(self) -> bool:
        return bool(self.key_info >> 1 & 1)

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]


def _u8(b: bytes, o: int) -> int:
    return b[o]


def _u32(b: bytes, o: int) -> int:
    return int(struct.unpack_from("<I", b, o)[0])


def _u64(b: bytes, o: int) -> int:
    return int(struct.unpack_from("<Q", b, o)[0])


def parse_report(raw: bytes) -> Report:
    """Parse an ATTESTATION_REPORT; typed ``AttestationError`` on anything malformed."""
    if len(raw) != REPORT_SIZE:
        raise AttestationError(
            f"SNP report must be {REPORT_SIZE} bytes, got {len(raw)}", code="evidence_malformed"
        )
    version = _u32(raw, 0x00)
    if version not in (2, 3, 4, 5):
        raise AttestationError(
            f"unsupported SNP report version {version}", code="evidence_malformed"
        )
    algo = _u32(raw, 0x34)
    if algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise AttestationError(
            f"unsupported SNP signature algorithm {algo}", code="evidence_malformed"
        )
    if any(raw[0x330:REPORT_SIZE]):
        # unsigned bytes after r and s must be zero, so no two accepted reports differ
        raise AttestationError("SNP signature reserved bytes not zero", code="evidence_malformed")
    v3 = version >= 3
    return Report(
        raw=bytes(raw),
        version=version,
        guest_svn=_u32(raw, 0x04),
        policy=_u64(raw, 0x08),
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=_u32(raw, 0x30),
        signature_algo=algo,
        current_tcb=_u64(raw, 0x38),
        platform_info=_u64(raw, 0x40),
        key_info=_u32(raw, 0x48),
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=_u64(raw, 0x180),
        cpuid_fam_id=_u8(raw, 0x188) if v3 else 0,
        cpuid_mod_id=_u8(raw, 0x189) if v3 else 0,
        cpuid_step=_u8(raw, 0x18A) if v3 else 0,
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=_u64(raw, 0x1E0),
        current_build=_u8(raw, 0x1E8),
        current_minor=_u8(raw, 0x1E9),
        current_major=_u8(raw, 0x1EA),
        committed_build=_u8(raw, 0x1EC),
        committed_minor=_u8(raw, 0x1ED),
        committed_major=_u8(raw, 0x1EE),
        launch_tcb=_u64(raw, 0x1F0),
        launch_mit_vector=_u64(raw, 0x1F8) if version >= 5 else 0,
        current_mit_vector=_u64(raw, 0x200) if version >= 5 else 0,
        signature_r=raw[0x2A0:0x2E8],
        signature_s=raw[0x2E8:0x330],
    )


def product_from_cpuid(report: Report) -> str | None:
    """Product line from CPUID family/model (report v3+), or None if unknown."""
    if report.cpuid_fam_id == 0x19:
        return "milan" if report.cpuid_mod_id < 0x10 else "genoa"
    if report.cpuid_fam_id == 0x1A:
        return "turin"
    return None
