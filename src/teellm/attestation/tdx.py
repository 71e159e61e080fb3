"""Intel TDX (quote v4/v5) and SGX (quote v3) verification through dcap-qvl.

dcap-qvl checks the quote signature, the QE report, the PCK chain to Intel's
root, CRLs and the TCB info/QE identity collateral at an explicit ``now``;
this module turns its result into normalised claims and typed errors.
"""

from __future__ import annotations

import functools
import json
import struct
from datetime import datetime
from typing import Any

import dcap_qvl

from teellm.attestation.collateral import CollateralSource
from teellm.attestation.types import AttestationError, Claims, Evidence, TeeType

QUOTE_TEE_SGX = 0x00000000
QUOTE_TEE_TDX = 0x00000081
HEADER_SIZE = 48
MAX_QUOTE = 1 << 16

# dcap-qvl reports failures as text; map the stable parts onto check names.
_ERROR_CODES = (
    ("expired", "collateral_expired"),
    ("Expired", "collateral_expired"),
    ("in the future", "collateral_not_yet_valid"),
    ("No matching TCB level", "tcb_unmatched"),
    ("Revoked", "tcb_revoked"),
    ("revoked", "tcb_revoked"),
    ("certificate chain", "cert_chain_invalid"),
    ("ignature", "signature_invalid"),
    ("decode", "evidence_malformed"),
    ("Unknown QE vendor", "evidence_malformed"),
)


def quote_tee_type(raw: bytes) -> TeeType:
    """TDX or SGX from the quote header (typed error if it is neither)."""
    if len(raw) < HEADER_SIZE:
        raise AttestationError("quote shorter than its header", code="evidence_malformed")
    version, _key_type, tee = struct.unpack_from("<HHI", raw, 0)
    if version == 3 and tee == QUOTE_TEE_SGX:
        return TeeType.SGX
    if version in (4, 5) and tee == QUOTE_TEE_TDX:
        return TeeType.TDX
    if version in (4, 5) and tee == QUOTE_TEE_SGX:
        return TeeType.SGX
    raise AttestationError(
        f"unsupported quote version {version} / TEE type {tee:#x}", code="evidence_malformed"
    )


@functools.lru_cache(maxsize=16)
def _parse_collateral(blob: bytes) -> Any:
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(blob.decode())
    except (ValueError, UnicodeDecodeError, TypeError):
        raise AttestationError("collateral is malformed", code="collateral_malformed") from None


def _error_code(message: str) -> str:
    for needle, code in _ERROR_CODES:
        if needle in message:
            return code
    return "quote_invalid"


def verify_quote(
    evidence: Evidence,
    *,
    now: datetime,
    collateral: bytes | None = None,
    collateral_source: CollateralSource | None = None,
) -> Claims:
    """Verify a TDX/SGX quote with DCAP collateral (dcap-qvl JSON) at ``now``.

    Collateral comes from the argument, else ``evidence.aux["collateral"]``, else
    ``collateral_source`` (or one configured by ``TEELLM_PCCS_URL``), fetched and cached.
    """
    raw = evidence.raw
    if len(raw) > MAX_QUOTE:
        raise AttestationError("quote too large", code="evidence_malformed")
    tee = quote_tee_type(raw)
    if tee is not evidence.tee_type:
        raise AttestationError(
            f"quote is {tee.value}, evidence says {evidence.tee_type.value}", code="tee_mismatch"
        )
    blob = collateral if collateral is not None else evidence.aux.get("collateral")
    if not blob:
        source = collateral_source or CollateralSource.from_env()
        if source is not None:
            blob = source.get(raw, now=now)
    if not blob:
        raise AttestationError("no DCAP collateral supplied", code="collateral_missing")
    parsed = _parse_collateral(bytes(blob))
    try:
        report = dcap_qvl.verify(raw, parsed, int(now.timestamp()))
    except ValueError as exc:
        message = str(exc).split("\n", 1)[0][:200]
        raise AttestationError(message, code=_error_code(str(exc))) from None
    except BaseException as exc:
        # a Rust panic surfaces as pyo3's PanicException, a BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        raise AttestationError("quote verifier failed", code="quote_invalid") from None
    result = json.loads(report.to_json())
    return _claims(tee, result)


def _claims(tee: TeeType, result: dict[str, Any]) -> Claims:
    body: dict[str, Any] = next(iter(result["report"].values()))
    common = {
        "tee_type": tee,
        "tcb_status": result["status"],
        "advisories": list(result.get("advisory_ids", [])),
        "report_data": body["report_data"],
    }
    if "mr_td" in body:  # TD10 / TD15 report
        measurements = {
            "MRTD": body["mr_td"],
            "RTMR0": body["rt_mr0"],
            "RTMR1": body["rt_mr1"],
            "RTMR2": body["rt_mr2"],
            "RTMR3": body["rt_mr3"],
            "MRSEAM": body["mr_seam"],
            "MRCONFIGID": body["mr_config_id"],
            "MROWNER": body["mr_owner"],
            "MROWNERCONFIG": body["mr_owner_config"],
        }
        td_attributes = bytes.fromhex(body["td_attributes"])
        svn = bytes.fromhex(body["tee_tcb_svn"])
        tcb = {f"tee_tcb_svn_{i}": b for i, b in enumerate(svn)}
        return Claims(
            **common,
            measurements=measurements,
            debug=bool(td_attributes[0] & 0x01),  # TUD.DEBUG
            tcb=tcb,
            extra={"td_attributes": body["td_attributes"], "xfam": body["xfam"]},
        )
    attributes = bytes.fromhex(body["attributes"])
    cpu_svn = bytes.fromhex(body["cpu_svn"])
    tcb = {f"cpu_svn_{i}": b for i, b in enumerate(cpu_svn)}
    tcb.update(isv_svn=body["isv_svn"], isv_prod_id=body["isv_prod_id"])
    return Claims(
        **common,
        measurements={"MRENCLAVE": body["mr_enclave"], "MRSIGNER": body["mr_signer"]},
        debug=bool(attributes[0] & 0x02),  # SECS.ATTRIBUTES.DEBUG
        tcb=tcb,
        extra={"attributes": body["attributes"]},
    )
