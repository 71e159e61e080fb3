"""Every row of the real-hardware vectors README, plus tampered copies of each."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from teellm.attestation import AppraisalPolicy, Decision, Evidence, TeeType, verify_and_appraise
from teellm.attestation.snp.certs import build_cert_table

LAX = AppraisalPolicy(allow_any_measurement=True, require_report_data=False)
DEBUG_OK = AppraisalPolicy(allow_any_measurement=True, require_report_data=False, allow_debug=True)
STRICT = AppraisalPolicy(allow_any_measurement=True, require_report_data=False)
TDX_AT = datetime(2025, 7, 1, tzinfo=UTC)
TDX_EXPIRED_AT = datetime(2026, 11, 26, tzinfo=UTC)
TDX5_AT = datetime(2026, 3, 1, tzinfo=UTC)
SNP_AT = datetime(2025, 1, 1, tzinfo=UTC)
NITRO_AT = datetime(2024, 9, 7, 14, 37, 39, tzinfo=UTC)
NITRO_DEBUG_AT = datetime(2024, 9, 7, 14, 38, 6, tzinfo=UTC)
GPU_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")


def _read(vectors: Path, name: str) -> bytes:
    return (vectors / name).read_bytes()


def _tdx(vectors: Path, version: int = 4) -> tuple[Evidence, bytes]:
    ev = Evidence(TeeType.TDX, _read(vectors, f"tdx/tdx_v{version}_quote.bin"))
    return ev, _read(vectors, f"tdx/tdx_v{version}_collateral.json")


def _sgx(vectors: Path) -> tuple[Evidence, bytes]:
    ev = Evidence(TeeType.SGX, _read(vectors, "sgx/sgx_v3_quote.bin"))
    return ev, _read(vectors, "sgx/sgx_v3_collateral.json")


def _snp(vectors: Path, report: str = "milan_report2.bin", vcek: str = "milan_vcek2.der"):
    return Evidence(
        TeeType.SNP, _read(vectors, f"snp/{report}"), {"vcek": _read(vectors, f"snp/{vcek}")}
    )


def _nitro(vectors: Path, name: str = "nitro_attestation.b64") -> Evidence:
    return Evidence(TeeType.NITRO, base64.b64decode(_read(vectors, f"nitro/{name}")))


def _gpu(vectors: Path) -> Evidence:
    raw = bytes.fromhex(_read(vectors, "nvidia/hopper_report.hex.txt").decode().strip())
    return Evidence(
        TeeType.NVIDIA, raw, {"cert_chain": _read(vectors, "nvidia/hopper_cert_chain.pem")}
    )


def _failed(decision: Decision) -> dict[str, str]:
    return {c.name: c.reason for c in decision.failures}


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


# ---- the README rows ------------------------------------------------------------------


def test_tdx_v4_valid_up_to_date(vectors: Path) -> None:
    ev, col = _tdx(vectors)
    d = verify_and_appraise(ev, STRICT, expected_report_data=None, now=TDX_AT, collateral=col)
    assert d.accepted, d.reasons
    assert d.claims and d.claims.tcb_status == "UpToDate" and d.claims.advisories == []
    assert d.claims.measurements["MRTD"].startswith("91eb2b44d141d4ec")
    assert not d.claims.debug


def test_tdx_v4_rejected_when_collateral_expired(vectors: Path) -> None:
    ev, col = _tdx(vectors)
    d = verify_and_appraise(ev, LAX, expected_report_data=None, now=TDX_EXPIRED_AT, collateral=col)
    assert not d.accepted
    assert "collateral_expired" in _failed(d)["evidence"]


def test_tdx_v4_wall_clock_rejects_expired_collateral(vectors: Path) -> None:
    ev, col = _tdx(vectors)
    d = verify_and_appraise(ev, LAX, expected_report_data=None, collateral=col)
    assert not d.accepted and "evidence" in _failed(d)


def test_tdx_v5_no_matching_tcb_level(vectors: Path) -> None:
    ev, col = _tdx(vectors, 5)
    d = verify_and_appraise(ev, LAX, expected_report_data=None, now=TDX5_AT, collateral=col)
    assert not d.accepted
    assert "tcb_unmatched" in _failed(d)["evidence"]


def test_sgx_v3_signature_valid_strict_policy_rejects(vectors: Path) -> None:
    ev, col = _sgx(vectors)
    d = verify_and_appraise(ev, STRICT, expected_report_data=None, now=TDX_AT, collateral=col)
    assert not d.accepted
    assert d.claims and d.claims.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert d.claims.advisories == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert set(_failed(d)) == {"tcb_status", "advisories"}
    lenient = AppraisalPolicy(
        allow_any_measurement=True,
        require_report_data=False,
        accepted_tcb_statuses=["UpToDate", "ConfigurationAndSWHardeningNeeded"],
        allowed_advisories=["INTEL-SA-00289", "INTEL-SA-00615"],
    )
    d2 = verify_and_appraise(ev, lenient, expected_report_data=None, now=TDX_AT, collateral=col)
    assert d2.accepted, d2.reasons
    assert d2.claims and d2.claims.report_data.startswith(b"Hello, world!".hex())


def test_snp_milan_debug_report(vectors: Path) -> None:
    ev = _snp(vectors, "milan_report.bin", "milan_vcek.der")
    d = verify_and_appraise(ev, STRICT, expected_report_data=None, now=SNP_AT)
    assert not d.accepted and set(_failed(d)) == {"debug"}
    assert d.claims and d.claims.debug and d.claims.extra["policy"] == "0xb0000"
    assert d.claims.report_data == "0102030405" + "00" * 59
    ok = verify_and_appraise(ev, DEBUG_OK, expected_report_data=None, now=SNP_AT)
    assert ok.accepted and ok.claims and ok.claims.debug


def test_snp_milan_report2_valid(vectors: Path) -> None:
    ev = _snp(vectors)
    d = verify_and_appraise(ev, STRICT, expected_report_data=None, now=SNP_AT)
    assert d.accepted, d.reasons
    assert d.claims and d.claims.extra["policy"] == "0x3001f" and d.claims.tcb["vmpl"] == 0
    assert d.claims.extra["product_line"] == "milan"
    assert d.claims.tcb["snp"] == 8 and d.claims.tcb["microcode"] == 0x73
    expected = bytes.fromhex(d.claims.report_data)
    pinned = AppraisalPolicy(
        measurements={"snp": {"MEASUREMENT": [d.claims.measurements["MEASUREMENT"]]}}
    )
    bound = verify_and_appraise(ev, pinned, expected_report_data=expected, now=SNP_AT)
    assert bound.accepted, bound.reasons
    # The default policy pins no code, so it refuses hardware evidence outright.
    unpinned = verify_and_appraise(ev, AppraisalPolicy(), expected_report_data=expected, now=SNP_AT)
    assert set(_failed(unpinned)) == {"measurements"}


@pytest.mark.parametrize("vcek", ["milan_vcek2_invalid_legacy.der", "milan_vcek2_invalid_new.der"])
def test_snp_vceks_not_chaining_rejected(vectors: Path, vcek: str) -> None:
    d = verify_and_appraise(_snp(vectors, vcek=vcek), LAX, expected_report_data=None, now=SNP_AT)
    assert not d.accepted and "cert_chain_invalid" in _failed(d)["evidence"]


def test_snp_validity_window(vectors: Path) -> None:
    ev = _snp(vectors, "milan_report.bin", "milan_vcek.der")
    for at in (datetime(2022, 9, 1, tzinfo=UTC), datetime(2029, 10, 1, tzinfo=UTC)):
        d = verify_and_appraise(ev, DEBUG_OK, expected_report_data=None, now=at)
        assert not d.accepted and "cert_expired" in _failed(d)["evidence"]


def test_snp_other_roots_do_not_anchor_milan(vectors: Path) -> None:
    from cryptography import x509 as _x509

    from teellm.attestation import AttestationError
    from teellm.attestation.snp.verify import _chain_to_ark, verify_snp

    ev = _snp(vectors)
    # a product hint only orders the search; the Milan ARK is still found
    assert verify_snp(ev, now=SNP_AT, product="genoa").extra["product_line"] == "milan"
    from teellm.attestation.x509util import load_cert

    leaf = load_cert(ev.aux["vcek"])
    genoa_ask = _x509.load_pem_x509_certificates(_read(vectors, "snp/ask_ark_genoa.pem"))[0]
    with pytest.raises(AttestationError) as exc:
        _chain_to_ark(leaf, [genoa_ask], ["genoa", "turin"], SNP_AT)
    assert exc.value.code == "cert_chain_invalid"


def test_snp_certificate_table_from_auxblob(vectors: Path) -> None:
    ask_ark = _read(vectors, "snp/ask_ark_milan.pem")
    ask, ark = x509.load_pem_x509_certificates(ask_ark)
    table = build_cert_table(
        {
            "vcek": _read(vectors, "snp/milan_vcek2.der"),
            "ask": ask.public_bytes(serialization.Encoding.DER),
            "ark": ark.public_bytes(serialization.Encoding.DER),
        }
    )
    ev = Evidence(TeeType.SNP, _read(vectors, "snp/milan_report2.bin"), {"certs": table})
    assert verify_and_appraise(ev, STRICT, expected_report_data=None, now=SNP_AT).accepted


def test_nitro_valid(vectors: Path) -> None:
    d = verify_and_appraise(_nitro(vectors), STRICT, expected_report_data=None, now=NITRO_AT)
    assert d.accepted, d.reasons
    assert d.claims is not None
    assert d.claims.extra["nonce"] == "01" * 1024
    assert d.claims.extra["public_key"] == "01" * 1024
    assert d.claims.report_data == "01" * 1024
    assert d.claims.measurements["PCR0"].startswith("e72a46ca80a260fb")


def test_nitro_debug_document(vectors: Path) -> None:
    ev = _nitro(vectors, "nitro_attestation_debug.b64")
    d = verify_and_appraise(ev, STRICT, expected_report_data=None, now=NITRO_DEBUG_AT)
    assert not d.accepted and set(_failed(d)) == {"debug"}
    ok = verify_and_appraise(ev, DEBUG_OK, expected_report_data=None, now=NITRO_DEBUG_AT)
    assert ok.accepted and ok.claims and ok.claims.debug


def test_nitro_outside_validity_window(vectors: Path) -> None:
    for at in (datetime(2024, 9, 7, 14, 30, tzinfo=UTC), datetime(2024, 9, 7, 17, 40, tzinfo=UTC)):
        d = verify_and_appraise(_nitro(vectors), LAX, expected_report_data=None, now=at)
        assert not d.accepted and "cert_expired" in _failed(d)["evidence"]


def test_nvidia_hopper_report(vectors: Path) -> None:
    gpu_ok = AppraisalPolicy(allowed_tee_types=[TeeType.NVIDIA], allow_any_measurement=True)
    d = verify_and_appraise(_gpu(vectors), gpu_ok, expected_report_data=GPU_NONCE, now=SNP_AT)
    assert d.accepted, d.reasons
    assert d.claims and d.claims.report_data == GPU_NONCE.hex()
    assert d.claims.extra["driver_version"] == "550.90.07"
    assert len(d.claims.measurements) == 64
    wrong = verify_and_appraise(_gpu(vectors), gpu_ok, expected_report_data=bytes(32), now=SNP_AT)
    assert not wrong.accepted and "report_data" in _failed(wrong)


# ---- tampered copies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (0xB8, "signature_invalid"),  # MRTD (measured body)
        (0x238, "signature_invalid"),  # REPORTDATA
        (0x30 + 0x248 + 4 + 10, "signature_invalid"),  # quote signature
    ],
)
def test_tdx_tampered(vectors: Path, offset: int, code: str) -> None:
    ev, col = _tdx(vectors)
    bad = Evidence(TeeType.TDX, _flip(ev.raw, offset))
    d = verify_and_appraise(bad, LAX, expected_report_data=None, now=TDX_AT, collateral=col)
    assert not d.accepted and code in _failed(d)["evidence"]


def test_tdx_tampered_collateral_and_wrong_type(vectors: Path) -> None:
    ev, col = _tdx(vectors)
    data = json.loads(col)
    data["tcb_info"] = data["tcb_info"].replace('"UpToDate"', '"OutOfDate"', 1)
    d = verify_and_appraise(
        ev, LAX, expected_report_data=None, now=TDX_AT, collateral=json.dumps(data).encode()
    )
    assert not d.accepted and "evidence" in _failed(d)
    sgx_claiming = Evidence(TeeType.SGX, ev.raw)
    d = verify_and_appraise(
        sgx_claiming, LAX, expected_report_data=None, now=TDX_AT, collateral=col
    )
    assert not d.accepted and "tee_mismatch" in _failed(d)["evidence"]
    no_col = verify_and_appraise(ev, LAX, expected_report_data=None, now=TDX_AT)
    assert "collateral_missing" in _failed(no_col)["evidence"]


@pytest.mark.parametrize("offset", [0x08, 0x50, 0x90, 0xC0, 0x180, 0x1A0, 0x2A0, 0x2E8])
def test_snp_tampered_report(vectors: Path, offset: int) -> None:
    ev = _snp(vectors)
    bad = Evidence(TeeType.SNP, _flip(ev.raw, offset), ev.aux)
    d = verify_and_appraise(bad, DEBUG_OK, expected_report_data=None, now=SNP_AT)
    assert not d.accepted
    assert (
        "signature_invalid" in _failed(d)["evidence"]
        or "evidence_malformed" in _failed(d)["evidence"]
    )


def test_snp_tampered_certificate_and_foreign_vcek(vectors: Path) -> None:
    ev = _snp(vectors)
    vcek = ev.aux["vcek"]
    bad = Evidence(TeeType.SNP, ev.raw, {"vcek": _flip(vcek, len(vcek) - 20)})  # signature
    d = verify_and_appraise(bad, LAX, expected_report_data=None, now=SNP_AT)
    assert not d.accepted
    other = _snp(vectors, vcek="milan_vcek.der")  # genuine VCEK of another chip
    d = verify_and_appraise(other, LAX, expected_report_data=None, now=SNP_AT)
    assert not d.accepted and "signature_invalid" in _failed(d)["evidence"]


def test_snp_self_made_chain_rejected(vectors: Path) -> None:
    """A VCEK signed by an attacker's own ASK/ARK never chains to a shipped ARK."""
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-Milan")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA384())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    ev = Evidence(
        TeeType.SNP, _read(vectors, "snp/milan_report2.bin"), {"vcek": pem, "cert_chain": pem}
    )
    d = verify_and_appraise(ev, LAX, expected_report_data=None, now=SNP_AT)
    assert not d.accepted and "cert_chain_invalid" in _failed(d)["evidence"]


def test_nitro_tampered(vectors: Path) -> None:
    import cbor2

    ev = _nitro(vectors)
    outer = cbor2.loads(ev.raw)
    payload = cbor2.loads(outer[2])
    tampered_payload = dict(payload, user_data=b"\x02" * 64)
    forged = cbor2.dumps([outer[0], outer[1], cbor2.dumps(tampered_payload), outer[3]])
    d = verify_and_appraise(
        Evidence(TeeType.NITRO, forged), LAX, expected_report_data=None, now=NITRO_AT
    )
    assert not d.accepted and "signature_invalid" in _failed(d)["evidence"]
    pcrs = dict(payload["pcrs"])
    pcrs[0] = _flip(pcrs[0], 0)
    forged = cbor2.dumps([outer[0], outer[1], cbor2.dumps(dict(payload, pcrs=pcrs)), outer[3]])
    d = verify_and_appraise(
        Evidence(TeeType.NITRO, forged), LAX, expected_report_data=None, now=NITRO_AT
    )
    assert not d.accepted and "signature_invalid" in _failed(d)["evidence"]
    bad_sig = cbor2.dumps([outer[0], outer[1], outer[2], _flip(outer[3], 5)])
    d = verify_and_appraise(
        Evidence(TeeType.NITRO, bad_sig), LAX, expected_report_data=None, now=NITRO_AT
    )
    assert not d.accepted and "signature_invalid" in _failed(d)["evidence"]
    tagged = cbor2.dumps(cbor2.CBORTag(18, outer))
    assert verify_and_appraise(
        Evidence(TeeType.NITRO, tagged), LAX, expected_report_data=None, now=NITRO_AT
    ).accepted
    # a certificate in the bundle altered
    bundle = list(payload["cabundle"])
    bundle[2] = _flip(bundle[2], len(bundle[2]) - 10)
    forged = cbor2.dumps(
        [outer[0], outer[1], cbor2.dumps(dict(payload, cabundle=bundle)), outer[3]]
    )
    d = verify_and_appraise(
        Evidence(TeeType.NITRO, forged), LAX, expected_report_data=None, now=NITRO_AT
    )
    assert not d.accepted


def test_nitro_foreign_root_rejected(vectors: Path) -> None:
    import cbor2

    from teellm.attestation.nitro import verify_nitro

    ev = _nitro(vectors)
    key = ec.generate_private_key(ec.SECP384R1())
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aws.nitro-enclaves")])
    fake_root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA384())
    )
    outer = cbor2.loads(ev.raw)
    payload = cbor2.loads(outer[2])
    bundle = [fake_root.public_bytes(serialization.Encoding.DER), *payload["cabundle"][1:]]
    forged = cbor2.dumps(
        [outer[0], outer[1], cbor2.dumps(dict(payload, cabundle=bundle)), outer[3]]
    )
    d = verify_and_appraise(
        Evidence(TeeType.NITRO, forged), LAX, expected_report_data=None, now=NITRO_AT
    )
    assert not d.accepted and "cert_chain_invalid" in _failed(d)["evidence"]
    with pytest.raises(Exception):  # noqa: B017
        verify_nitro(ev, now=NITRO_AT, root=fake_root)


def test_nvidia_tampered(vectors: Path) -> None:
    ev = _gpu(vectors)
    for offset in (10, 37 + 20, len(ev.raw) - 200, len(ev.raw) - 5):
        bad = Evidence(TeeType.NVIDIA, _flip(ev.raw, offset), ev.aux)
        d = verify_and_appraise(bad, LAX, expected_report_data=None, now=SNP_AT)
        assert not d.accepted, offset
    chain = ev.aux["cert_chain"]
    certs = x509.load_pem_x509_certificates(chain)
    der = bytearray(certs[1].public_bytes(serialization.Encoding.DER))
    der[-5] ^= 1
    broken = b"".join(
        [certs[0].public_bytes(serialization.Encoding.PEM)]
        + [x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)]
        + [c.public_bytes(serialization.Encoding.PEM) for c in certs[2:]]
    )
    d = verify_and_appraise(
        Evidence(TeeType.NVIDIA, ev.raw, {"cert_chain": broken}),
        LAX,
        expected_report_data=None,
        now=SNP_AT,
    )
    assert not d.accepted and "cert_chain_invalid" in _failed(d)["evidence"]
    no_chain = Evidence(TeeType.NVIDIA, ev.raw)
    assert not verify_and_appraise(no_chain, LAX, expected_report_data=None, now=SNP_AT).accepted


def test_composite_rejects_spliced_gpu_report(vectors: Path) -> None:
    """A genuine GPU report whose nonce is not derived from the CPU report data."""
    cpu = _snp(vectors)
    gpu = _gpu(vectors)
    composite = Evidence(
        TeeType.SNP, cpu.raw, {**cpu.aux, "gpu": json.dumps(gpu.to_json()).encode()}
    )
    d = verify_and_appraise(composite, LAX, expected_report_data=None, now=SNP_AT)
    assert not d.accepted and "gpu_nonce_mismatch" in _failed(d)["evidence"]
    require = AppraisalPolicy(
        allow_any_measurement=True, require_report_data=False, require_gpu=True
    )
    d = verify_and_appraise(cpu, require, expected_report_data=None, now=SNP_AT)
    assert not d.accepted and "gpu" in _failed(d)


# ---- checks that signatures alone would not catch --------------------------------------


def test_snp_vcek_tcb_and_chip_id_must_match_report(vectors: Path) -> None:
    from teellm.attestation import AttestationError
    from teellm.attestation.snp.abi import parse_report
    from teellm.attestation.snp.verify import _check_tcb_extensions
    from teellm.attestation.x509util import load_cert

    raw = _read(vectors, "snp/milan_report2.bin")
    leaf = load_cert(_read(vectors, "snp/milan_vcek2.der"))
    _check_tcb_extensions(parse_report(raw), leaf, turin=False)  # genuine pair agrees
    newer_snp = bytearray(raw)
    newer_snp[0x186] += 1  # REPORTED_TCB.SNP
    with pytest.raises(AttestationError) as exc:
        _check_tcb_extensions(parse_report(bytes(newer_snp)), leaf, turin=False)
    assert exc.value.code == "tcb_mismatch"
    other_chip = bytearray(raw)
    other_chip[0x1A0] ^= 1
    with pytest.raises(AttestationError) as exc:
        _check_tcb_extensions(parse_report(bytes(other_chip)), leaf, turin=False)
    assert exc.value.code == "chip_id_mismatch"
    masked = bytearray(other_chip)
    masked[0x48] |= 0x02  # MASK_CHIP_ID: the report carries no chip id to compare
    _check_tcb_extensions(parse_report(bytes(masked)), leaf, turin=False)


def test_snp_tcb_layouts() -> None:
    from teellm.attestation.snp.abi import TcbVersion

    raw = int.from_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8]), "little")
    assert TcbVersion(raw).components == {"bootloader": 1, "tee": 2, "snp": 7, "microcode": 8}
    assert TcbVersion(raw, turin=True).components == {
        "fmc": 1,
        "bootloader": 2,
        "tee": 3,
        "snp": 4,
        "microcode": 8,
    }


def test_tdx_and_sgx_debug_bits() -> None:
    from teellm.attestation.tdx import _claims

    td = {
        "tee_tcb_svn": "00" * 16,
        "mr_seam": "00",
        "mr_signer_seam": "00",
        "seam_attributes": "00",
        "td_attributes": "0100000000000000",
        "xfam": "00",
        "mr_td": "aa",
        "mr_config_id": "00",
        "mr_owner": "00",
        "mr_owner_config": "00",
        "rt_mr0": "00",
        "rt_mr1": "00",
        "rt_mr2": "00",
        "rt_mr3": "00",
        "report_data": "00" * 64,
    }
    result = {"status": "UpToDate", "advisory_ids": [], "report": {"TD10": td}}
    assert _claims(TeeType.TDX, result).debug
    td["td_attributes"] = "0000001000000000"
    assert not _claims(TeeType.TDX, result).debug
    enclave = {
        "cpu_svn": "00" * 16,
        "attributes": "0700000000000000e700000000000000",
        "mr_enclave": "aa",
        "mr_signer": "bb",
        "isv_prod_id": 0,
        "isv_svn": 1,
        "report_data": "00" * 64,
    }
    sgx = {"status": "UpToDate", "advisory_ids": [], "report": {"SgxEnclave": enclave}}
    assert _claims(TeeType.SGX, sgx).debug
    enclave["attributes"] = "0500000000000000e700000000000000"
    assert not _claims(TeeType.SGX, sgx).debug
