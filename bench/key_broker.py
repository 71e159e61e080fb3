"""Key broker: releases per second and latency over loopback HTTP.

Two evidence kinds: simulated (Ed25519-signed) and the real TDX v4 vector
verified with its DCAP collateral at a fixed ``now`` (recorded evidence cannot
bind this exchange's nonce, so that run uses a broker and policy that
explicitly skip the binding check; the verification work is unchanged).

teellm = the full broker (SQLite store, policy lookup, single-use nonces in the
database, hash-chained audit, rate limiter, metrics).
peer   = the same HTTP exchange and the same verify + HPKE seal, with nonces in a
dict and no policy store, audit or limiter: what the broker's durable layers cost.
Both are driven by the same KeyBrokerClient in this process.

    python bench/key_broker.py [--quick] [--json] [--concurrency N]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import secrets
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from teellm.attestation.policy import AppraisalPolicy
from teellm.attestation.runtime import SimulatedRuntime
from teellm.attestation.types import Evidence, TEERuntime, TeeType
from teellm.attestation.verify import verify_and_appraise
from teellm.crypto.secret import SecretBytes
from teellm.kbs.client import KeyBrokerClient
from teellm.kbs.local import LocalBroker
from teellm.kbs.policy import ReleasePolicy
from teellm.kbs.protocol import (
    DEFAULT_SUITE,
    AttestRequest,
    AttestResponse,
    ChallengeRequest,
    ChallengeResponse,
    expected_report_data,
    get_suite,
    hpke_info,
    load_public_key,
    seal,
)
from teellm.kbs.server import ServerThread

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors"
TDX_AT = datetime(2025, 7, 1, tzinfo=UTC)
KEY = SecretBytes(bytes(range(32)))


class RecordedRuntime:
    """Replays recorded hardware evidence (for timing verification, not for trust)."""

    def __init__(self, evidence: Evidence) -> None:
        self._evidence = evidence

    @property
    def kind(self) -> TeeType:
        return self._evidence.tee_type

    @property
    def description(self) -> str:
        return "recorded evidence"

    def evidence(self, report_data: bytes) -> Evidence:
        return self._evidence


def peer_app(policy: AppraisalPolicy, now: datetime | None, bound: bool) -> FastAPI:
    """The bare exchange: same messages, verify and seal, nonces in memory only."""
    app = FastAPI()
    spec = get_suite(DEFAULT_SUITE)
    pending: dict[str, bytes] = {}
    lock = threading.Lock()

    @app.post("/v1/challenge")
    def challenge(body: ChallengeRequest) -> ChallengeResponse:
        rid, nonce = secrets.token_hex(16), secrets.token_bytes(32)
        with lock:
            pending[rid] = nonce
        return ChallengeResponse(request_id=rid, nonce=nonce.hex(), expires_at="", suite=spec.name)

    @app.post("/v1/attest")
    def attest(body: AttestRequest) -> AttestResponse:
        with lock:
            nonce = pending.pop(body.request_id)
        pub = bytes.fromhex(body.hpke_public_key)
        expected = expected_report_data(nonce, pub, b"") if bound else None
        decision = verify_and_appraise(
            Evidence.from_json(body.evidence), policy, expected_report_data=expected, now=now
        )
        assert decision.accepted, decision.reasons
        sealed = seal(
            spec,
            load_public_key(spec, pub),
            bytes(KEY.reveal()),
            hpke_info("m", 1, body.request_id, spec.name),
        )
        return AttestResponse(sealed_key=sealed.hex(), suite=spec.name, model_id="m", version=1)

    return app


def _runtime(kind: str) -> TEERuntime:
    if kind == "simulated":
        return SimulatedRuntime()
    return RecordedRuntime(
        Evidence(
            TeeType.TDX,
            (VECTORS / "tdx" / "tdx_v4_quote.bin").read_bytes(),
            {"collateral": (VECTORS / "tdx" / "tdx_v4_collateral.json").read_bytes()},
        )
    )


def _load_worker(url: str, kind: str, n: int, threads: int, barrier: Any, out: Any) -> None:
    """One load-generating process: ``n`` fetches over ``threads`` threads after the barrier."""
    logging.getLogger("teellm.attestation").setLevel(logging.ERROR)
    runtime = _runtime(kind)
    with KeyBrokerClient(url, retries=0) as client:
        client.fetch_key("m", 1, runtime).zeroize()  # warm-up
        barrier.wait()
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for k in pool.map(lambda _: client.fetch_key("m", 1, runtime), range(n)):
                k.zeroize()
        out.put((t, time.perf_counter()))


def measure(url: str, kind: str, n: int, concurrency: int, procs: int) -> dict[str, float]:
    """Sequential latency (p50/p99) from this process, then throughput with ``procs``
    client processes of ``concurrency`` threads each (clients off the server's GIL)."""
    runtime = _runtime(kind)
    with KeyBrokerClient(url, retries=0) as client:
        for _ in range(3):
            client.fetch_key("m", 1, runtime).zeroize()  # warm-up
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            client.fetch_key("m", 1, runtime).zeroize()
            lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    if procs == 0:  # quick: threads in this process (the clients share the server's GIL)
        t = time.perf_counter()
        with KeyBrokerClient(url, retries=0) as client, ThreadPoolExecutor(concurrency) as pool:
            for k in pool.map(lambda _: client.fetch_key("m", 1, runtime), range(n)):
                k.zeroize()
        return {
            "p50_ms": round(statistics.median(lat), 3),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
            "releases_per_s": round(n / (time.perf_counter() - t), 1),
        }
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    per = max(1, n // procs)
    workers = [
        ctx.Process(target=_load_worker, args=(url, kind, per, concurrency, barrier, out))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    # perf_counter is CLOCK_MONOTONIC: comparable across processes on one machine.
    spans = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    rate = per * procs / (max(e for _, e in spans) - min(s for s, _ in spans))
    if any(w.exitcode != 0 for w in workers):
        raise RuntimeError("a load-generating process failed")
    return {
        "p50_ms": round(statistics.median(lat), 3),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
        "releases_per_s": round(rate, 1),
    }


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}


def run_case(
    name: str,
    policy: ReleasePolicy,
    now: datetime | None,
    bound: bool,
    n: int,
    concurrency: int,
    procs: int,
    rounds: int,
) -> dict[str, Any]:
    """Both servers up side by side; measurements interleaved, median of ``rounds``."""
    with (
        LocalBroker(
            verify_clock=(lambda: now) if now else None,
            allow_unbound_evidence=not bound,
            max_failures=10**9,
        ) as lb,
        ServerThread(peer_app(policy.appraisal, now, bound)) as srv,
    ):
        lb.broker.put_key("m", 1, KEY)
        lb.broker.set_policy("m", policy)
        ours_runs, peer_runs = [], []
        for _ in range(rounds):
            ours_runs.append(measure(lb.url, name, n, concurrency, procs))
            peer_runs.append(measure(srv.url, name, n, concurrency, procs))
        audit = lb.store.verify_audit()
        assert audit.ok
    ours, peer = _median(ours_runs), _median(peer_runs)
    return {
        "case": name,
        "teellm": ours,
        "peer": peer,
        "rounds": rounds,
        "audit_records": audit.count,
        "ratio_throughput": round(ours["releases_per_s"] / peer["releases_per_s"], 3),
        "ratio_p50": round(ours["p50_ms"] / peer["p50_ms"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--concurrency", type=int, default=4, help="threads per client process")
    ap.add_argument("--procs", type=int, default=2, help="client processes for throughput")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("-n", type=int, default=None, help="releases per measurement")
    args = ap.parse_args()
    logging.getLogger("teellm.attestation").setLevel(logging.ERROR)
    logging.getLogger("teellm.kbs").setLevel(logging.ERROR)
    n = args.n or (10 if args.quick else 300)
    rounds = 1 if args.quick else args.rounds
    procs = 0 if args.quick else args.procs

    cases = []
    sim_policy = ReleasePolicy.from_data({"min_version": 1, "allow_simulated": True})
    cases.append(run_case("simulated", sim_policy, None, True, n, args.concurrency, procs, rounds))
    tdx_quote = VECTORS / "tdx" / "tdx_v4_quote.bin"
    if tdx_quote.is_file():
        mrtd = tdx_quote.read_bytes()[0xB8 : 0xB8 + 48].hex()  # the TD's launch measurement
        tdx_policy = ReleasePolicy.from_data(
            {
                "min_version": 1,
                "allowed_tee_types": ["tdx"],
                "measurements": {"tdx": {"MRTD": [mrtd]}},
                "require_report_data": False,
            }
        )
        cases.append(run_case("tdx", tdx_policy, TDX_AT, False, n, args.concurrency, procs, rounds))
    result = {
        "bench": "key_broker",
        "n": n,
        "concurrency": args.concurrency,
        "client_processes": procs,
        "rounds": rounds,
        "suite": DEFAULT_SUITE,
        "store": "sqlite",
        "cases": cases,
        "tdx_vector": tdx_quote.is_file(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"key broker over loopback HTTP, {n} releases; throughput with {procs} client"
        f" processes x {args.concurrency} threads"
    )
    for c in cases:
        o, p = c["teellm"], c["peer"]
        print(
            f"  {c['case']:9s} teellm: {o['releases_per_s']:7.1f}/s p50 {o['p50_ms']:6.2f} ms "
            f"p99 {o['p99_ms']:6.2f} ms | peer: {p['releases_per_s']:7.1f}/s "
            f"p50 {p['p50_ms']:6.2f} ms | throughput ratio {c['ratio_throughput']:.2f}, "
            f"p50 ratio {c['ratio_p50']:.2f}"
        )
    if not result["tdx_vector"]:
        print("  (TDX vector not found: TDX case skipped)", file=sys.stderr)


if __name__ == "__main__":
    main()
