"""SEV-SNP report verification with ``cryptography``.

report signature (ECDSA P-384 / SHA-384, r and s little-endian) by the VCEK or
VLEK; VCEK -> ASK (or VLEK -> ASVK) -> ARK with RSA-PSS, where only the ARKs
shipped with the package are trusted; the VCEK's TCB extensions must equal
REPORTED_TCB and its hwID the CHIP_ID.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from teellm.attestation import roots
from teellm.attestation.snp.abi import (
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    Report,
    TcbVersion,
    parse_report,
    product_from_cpuid,
)
from teellm.attestation.snp.certs import parse_cert_table
from teellm.attestation.types import AttestationError, Claims, Evidence, TeeType
from teellm.attestation.x509util import load_cert, load_certs, verify_chain

OID_TCB = {
    "bootloader": "1.3.6.1.4.1.3704.1.3.1",
    "tee": "1.3.6.1.4.1.3704.1.3.2",
    "snp": "1.3.6.1.4.1.3704.1.3.3",
    "microcode": "1.3.6.1.4.1.3704.1.3.8",
    "fmc": "1.3.6.1.4.1.3704.1.3.9",
}
OID_HWID = "1.3.6.1.4.1.3704.1.4"


def _der_value(raw: bytes, tag: int) -> bytes | None:
    """Content of a short DER TLV with ``tag`` (extension values are tiny; no library
    exposes AMD's unregistered extensions as typed values)."""
    if len(raw) < 2 or raw[0] != tag:
        return None
    length = raw[1]
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or len(raw) < 2 + count:
            return None
        length = int.from_bytes(raw[2 : 2 + count], "big")
        body = raw[2 + count :]
    else:
        body = raw[2:]
    return body if len(body) == length else None


def _extension(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _collect(evidence: Evidence) -> tuple[x509.Certificate | None, list[x509.Certificate]]:
    """(endorsement key cert, candidate intermediates) from the evidence."""
    leaf: x509.Certificate | None = None
    intermediates: list[x509.Certificate] = []
    if evidence.aux.get("certs"):
        table = parse_cert_table(evidence.aux["certs"])
        for name in ("vcek", "vlek"):
            if name in table:
                leaf = load_cert(table[name])
        if "ask" in table:
            intermediates.append(load_cert(table["ask"]))
    if evidence.aux.get("vcek"):
        leaf = load_cert(evidence.aux["vcek"])
    if evidence.aux.get("cert_chain"):
        intermediates += load_certs(evidence.aux["cert_chain"])
    return leaf, intermediates


def _product_order(report: Report, leaf: x509.Certificate, hint: str | None) -> list[str]:
    lines = list(roots.AMD_PRODUCT_LINES)
    issuer = leaf.issuer.rfc4514_string().lower()
    guesses = [hint, product_from_cpuid(report)] + [p for p in lines if p in issuer]
    ordered = [p for p in guesses if p in lines]
    return list(dict.fromkeys(ordered + lines))


def _chain_to_ark(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], order: list[str], now: datetime
) -> str:
    """The product line whose shipped ARK anchors ``leaf``; typed error if none does."""
    last: AttestationError | None = None
    for line in order:
        ask, ark = roots.amd_ask_ark(line)
        for inter in [*intermediates, ask]:
            if inter.issuer != ark.subject or leaf.issuer != inter.subject:
                continue
            try:
                verify_chain([leaf, inter], ark, now, f"SNP {line}")
                return line
            except AttestationError as exc:
                last = exc
    if last is not None and last.code == "cert_expired":
        raise last
    raise AttestationError(
        "SNP endorsement key does not chain to a shipped AMD ARK", code="cert_chain_invalid"
    )


def _verify_signature(report: Report, leaf: x509.Certificate) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AttestationError("SNP endorsement key is not P-384", code="cert_malformed")
    r = int.from_bytes(report.signature_r, "little")
    s = int.from_bytes(report.signature_s, "little")
    if not (0 < r < 1 << 384 and 0 < s < 1 << 384):
        raise AttestationError("SNP signature out of range", code="signature_invalid")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError("SNP report signature invalid", code="signature_invalid") from None


def _check_tcb_extensions(report: Report, leaf: x509.Certificate, turin: bool) -> None:
    reported = TcbVersion(report.reported_tcb, turin).components
    for name, value in reported.items():
        raw = _extension(leaf, OID_TCB[name])
        if raw is None:
            continue  # VLEKs and older certificates may omit a component
        content = _der_value(raw, 0x02)
        if content is None:
            raise AttestationError(f"VCEK {name} SPL malformed", code="cert_malformed")
        if int.from_bytes(content, "big") != value:
            raise AttestationError(
                f"REPORTED_TCB {name}={value} differs from the VCEK's", code="tcb_mismatch"
            )
    hwid = _extension(leaf, OID_HWID)
    if hwid is not None and not report.mask_chip_id:
        chip = _der_value(hwid, 0x04) if len(hwid) != 64 else hwid
        if chip != report.chip_id:
            raise AttestationError("CHIP_ID differs from the VCEK hwID", code="chip_id_mismatch")


def verify_snp(evidence: Evidence, *, now: datetime, product: str | None = None) -> Claims:
    """Verify an SEV-SNP report at ``now``; the VCEK comes from ``aux`` (``certs``
    table, ``vcek``), the product line from ``product``/``aux["product"]`` or is detected."""
    report = parse_report(evidence.raw)
    leaf, intermediates = _collect(evidence)
    if leaf is None:
        raise AttestationError("no VCEK/VLEK supplied with the SNP report", code="vcek_missing")
    if report.signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
        raise AttestationError("SNP report is not signed by a VCEK/VLEK", code="evidence_malformed")
    hint = product or evidence.aux.get("product", b"").decode(errors="replace").lower() or None
    line = _chain_to_ark(leaf, intermediates, _product_order(report, leaf, hint), now)
    _verify_signature(report, leaf)
    turin = line == "turin"
    _check_tcb_extensions(report, leaf, turin)
    tcb = {f"{k}": v for k, v in TcbVersion(report.reported_tcb, turin).components.items()}
    tcb.update(guest_svn=report.guest_svn, vmpl=report.vmpl)
    return Claims(
        tee_type=TeeType.SNP,
        measurements={
            "MEASUREMENT": report.measurement.hex(),
            "HOST_DATA": report.host_data.hex(),
            "ID_KEY_DIGEST": report.id_key_digest.hex(),
            "AUTHOR_KEY_DIGEST": report.author_key_digest.hex(),
            "FAMILY_ID": report.family_id.hex(),
            "IMAGE_ID": report.image_id.hex(),
        },
        debug=report.debug,
        tcb=tcb,
        report_data=report.report_data.hex(),
        extra={
            "product_line": line,
            "version": report.version,
            "policy": f"{report.policy:#x}",
            "signing_key": "vlek" if report.signing_key == SIGNING_KEY_VLEK else "vcek",
            "chip_id": report.chip_id.hex(),
            "report_id": report.report_id.hex(),
            "current_tcb": f"{report.current_tcb:#018x}",
            "committed_tcb": f"{report.committed_tcb:#018x}",
            "launch_tcb": f"{report.launch_tcb:#018x}",
            "firmware": f"{report.current_major}.{report.current_minor}.{report.current_build}",
        },
    )
