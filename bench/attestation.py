"""Attestation verification time per evidence type (median of many runs).

teellm = ``verify_and_appraise``: parse, signature, certificate chain to the
shipped vendor root, TCB checks, claims normalisation and every policy check.
``teellm_ms`` is the steady state (verified certificate links remembered, as in
a long-running broker); ``teellm_cold_ms`` forgets them before every run.
peer   = the naive baseline: the same library calls for the cryptography alone
(dcap-qvl's ``verify`` for TDX/SGX; for SNP, Nitro and NVIDIA the report
signature plus each chain link with ``cryptography``), no parsing checks, no
claims, no policy. Collateral is parsed once and cached; ``now`` is fixed.

    python bench/attestation.py [--quick] [--json] [--vectors DIR]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from teellm.attestation import AppraisalPolicy, Evidence, TeeType, verify_and_appraise
from teellm.attestation.policy import HARDWARE_TYPES
from teellm.attestation.runtime import SimulatedRuntime
from teellm.attestation.x509util import clear_link_cache, load_cert, load_certs

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors"
GOALS_MS = {"tdx": 20.0, "sgx": 20.0, "snp": 5.0, "nitro": 5.0}


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm caches (collateral parse, imports)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _chain_ok(chain: list[x509.Certificate]) -> None:
    for cert, issuer in zip(chain, chain[1:], strict=False):
        cert.verify_directly_issued_by(issuer)


def _cases(vectors: Path) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    lax = AppraisalPolicy(
        allow_any_measurement=True,
        require_report_data=False,
        allow_debug=True,
        allowed_tee_types=list(HARDWARE_TYPES),
    )
    cases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {}

    sim_policy = AppraisalPolicy(allow_simulated=True)
    rd = bytes(64)
    sim = SimulatedRuntime().evidence(rd)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    sim_pub = bytes.fromhex(json.loads(sim.raw)["public_key"])
    cases["simulated"] = (
        lambda: _accepted(verify_and_appraise(sim, sim_policy, expected_report_data=rd)),
        lambda: Ed25519PublicKey.from_public_bytes(sim_pub).verify(sim.aux["signature"], sim.raw),
    )
    if not (vectors / "README.md").is_file():
        return cases

    for name, quote, col_file, tee in (
        ("tdx", "tdx/tdx_v4_quote.bin", "tdx/tdx_v4_collateral.json", TeeType.TDX),
        ("sgx", "sgx/sgx_v3_quote.bin", "sgx/sgx_v3_collateral.json", TeeType.SGX),
    ):
        raw = (vectors / quote).read_bytes()
        col = (vectors / col_file).read_bytes()
        parsed = dcap_qvl.QuoteCollateralV3.from_json(col.decode())
        at = datetime(2025, 7, 1, tzinfo=UTC)
        ev = Evidence(tee, raw)
        policy = lax.model_copy(
            update={
                "accepted_tcb_statuses": ["UpToDate", "ConfigurationAndSWHardeningNeeded"],
                "allowed_advisories": ["INTEL-SA-00289", "INTEL-SA-00615"],
            }
        )
        cases[name] = (
            lambda ev=ev, col=col, at=at, policy=policy: _accepted(
                verify_and_appraise(ev, policy, expected_report_data=None, now=at, collateral=col)
            ),
            lambda raw=raw, parsed=parsed, at=at: dcap_qvl.verify(raw, parsed, int(at.timestamp())),
        )

    report = (vectors / "snp/milan_report2.bin").read_bytes()
    vcek_der = (vectors / "snp/milan_vcek2.der").read_bytes()
    snp_ev = Evidence(TeeType.SNP, report, {"vcek": vcek_der})
    snp_at = datetime(2025, 1, 1, tzinfo=UTC)
    vcek = load_cert(vcek_der)
    ask, ark = load_certs((vectors / "snp/ask_ark_milan.pem").read_bytes())

    def snp_peer() -> None:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
        for cert, issuer in ((vcek, ask), (ask, ark)):
            issuer.public_key().verify(  # type: ignore[call-arg,union-attr]
                cert.signature, cert.tbs_certificate_bytes, pss, hashes.SHA384()
            )
        r = int.from_bytes(report[0x2A0:0x2E8], "little")
        s = int.from_bytes(report[0x2E8:0x330], "little")
        vcek.public_key().verify(  # type: ignore[call-arg,union-attr]
            encode_dss_signature(r, s), report[:0x2A0], ec.ECDSA(hashes.SHA384())
        )

    cases["snp"] = (
        lambda: _accepted(verify_and_appraise(snp_ev, lax, expected_report_data=None, now=snp_at)),
        snp_peer,
    )

    doc = base64.b64decode((vectors / "nitro/nitro_attestation.b64").read_bytes())
    nitro_ev = Evidence(TeeType.NITRO, doc)
    nitro_at = datetime(2024, 9, 7, 14, 37, 39, tzinfo=UTC)

    def nitro_peer() -> None:
        protected, _u, payload, sig = cbor2.loads(doc)
        body = cbor2.loads(payload)
        leaf = x509.load_der_x509_certificate(body["certificate"])
        bundle = [x509.load_der_x509_certificate(c) for c in body["cabundle"]]
        _chain_ok([leaf, *reversed(bundle)])
        to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
        der = encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
        leaf.public_key().verify(der, to_sign, ec.ECDSA(hashes.SHA384()))  # type: ignore[call-arg,union-attr]

    cases["nitro"] = (
        lambda: _accepted(
            verify_and_appraise(nitro_ev, lax, expected_report_data=None, now=nitro_at)
        ),
        nitro_peer,
    )

    spdm = bytes.fromhex((vectors / "nvidia/hopper_report.hex.txt").read_text().strip())
    chain_pem = (vectors / "nvidia/hopper_cert_chain.pem").read_bytes()
    gpu_ev = Evidence(TeeType.NVIDIA, spdm, {"cert_chain": chain_pem})

    def gpu_peer() -> None:
        chain = x509.load_pem_x509_certificates(chain_pem)
        _chain_ok(chain)
        sig = spdm[-96:]
        der = encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
        chain[0].public_key().verify(der, spdm[:-96], ec.ECDSA(hashes.SHA384()))  # type: ignore[call-arg,union-attr]

    cases["nvidia"] = (
        lambda: _accepted(verify_and_appraise(gpu_ev, lax, expected_report_data=None, now=snp_at)),
        gpu_peer,
    )
    return cases


def _accepted(decision: Any) -> None:
    if not decision.accepted:
        raise SystemExit(f"benchmark evidence was rejected: {decision.reasons}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few runs, for a smoke test")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--vectors", type=Path, default=VECTORS)
    args = parser.parse_args()
    logging.getLogger("teellm.attestation").setLevel(logging.ERROR)  # simulated warnings
    runs = args.runs or (5 if args.quick else 200)
    results: dict[str, dict[str, float | bool | None]] = {}
    for name, (teellm_fn, peer_fn) in _cases(args.vectors).items():
        ours = _median_ms(teellm_fn, runs)
        cold = _median_ms(lambda fn=teellm_fn: (clear_link_cache(), fn()), runs)
        peer = _median_ms(peer_fn, runs)
        goal = GOALS_MS.get(name)
        results[name] = {
            "teellm_ms": round(ours, 4),
            "teellm_cold_ms": round(cold, 4),
            "peer_ms": round(peer, 4),
            "ratio": round(ours / peer, 3) if peer else None,
            "cold_ratio": round(cold / peer, 3) if peer else None,
            "goal_ms": goal,
            "meets_goal": (ours < goal) if goal else None,
        }
    if args.json:
        print(json.dumps({"bench": "attestation", "runs": runs, "results": results}))
        return
    print(f"attestation verification, median of {runs} runs (ms)")
    widths = (-10, 9, 9, 9, 7, 7, 6)
    head = ("evidence", "teellm", "cold", "peer", "ratio", "cold/p", "goal")
    print(
        " ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(head, widths, strict=True))
    )
    for name, r in results.items():
        goal = f"<{r['goal_ms']:.0f}" if r["goal_ms"] else "-"
        print(
            f"{name:<10} {r['teellm_ms']:>9.3f} {r['teellm_cold_ms']:>9.3f} {r['peer_ms']:>9.3f}"
            f" {r['ratio']:>7.2f} {r['cold_ratio']:>7.2f} {goal:>6}"
        )


if __name__ == "__main__":
    main()
