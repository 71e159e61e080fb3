"""Confidential server: end-to-end encryption on vs off, same server, same model.

One run starts the key broker and one ``teellm serve --plain`` (simulated TEE, tiny
sealed Llama model) as real processes, then streams chat completions at 1 and 16
concurrent clients, interleaving two modes: E2E (request HPKE-sealed to the attested
key, every response frame opened and checked in order, receipt verified: all the
cryptography the verifying client does) and plain (the same JSON in the clear).
Both modes use one lean httpx client, so the figures show the cost of the
encryption rather than of a heavier client library. Reports requests/s, tokens/s,
p50/p99 latency and time to first token, and the E2E/plain ratios (goal: under 3%
throughput cost, under 1 ms of p50 latency).

    python bench/server.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from teellm.crypto import envelope, receipts
from teellm.crypto.hpke import HpkePublicKey
from teellm.server.document import AttestationDocument
from teellm.server.stack import LocalStack

MODEL = "tiny-llama"
PATH = "/v1/chat/completions"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _Target:
    """The server's pinned keys and the API token."""

    def __init__(self, stack: LocalStack) -> None:
        doc = AttestationDocument.model_validate(httpx.get(stack.url + "/v1/attestation").json())
        self.hpke = HpkePublicKey.from_bytes(doc.public_keys.hpke_bytes())
        self.signing = doc.public_keys.signing_bytes()
        self.key_id = bytes.fromhex(doc.public_keys.key_id)
        self.digest = bytes.fromhex(doc.model.digest)
        self.auth = {"Authorization": f"Bearer {stack.token()}"}
        self.pid = next(p.popen.pid for p in stack.procs if p.name == "server")


def _scan(data: bytes, state: dict[str, Any]) -> None:
    """Note the first content delta and the usage in SSE bytes (both modes alike)."""
    if state["first"] is None and b'"content":"' in data and b'"content":""' not in data:
        state["first"] = time.perf_counter()
    if b'"usage"' in data:
        for line in data.split(b"\n"):
            if line.startswith(b"data: {") and b'"usage"' in line:
                state["tokens"] = json.loads(line[6:])["usage"]["completion_tokens"]


async def _one(
    http: httpx.AsyncClient, target: _Target, prompt: str, max_tokens: int, sealed: bool
) -> dict[str, float]:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    state: dict[str, Any] = {"first": None, "tokens": 0}
    start = time.perf_counter()
    if sealed:
        req = envelope.seal_request(
            body, path=PATH, public_key=target.hpke, server_key_id=target.key_id
        )
        headers = {**target.auth, "Content-Type": envelope.MEDIA_TYPE}
        opener = req.opener()
        async with http.stream("POST", PATH, content=req.wire, headers=headers) as r:
            async for raw in r.aiter_raw():
                for frame in opener.feed(raw):
                    _scan(frame, state)
        opener.close()
        receipt = receipts.verify_receipt(
            opener.receipt or b"", target.signing, model_digest=target.digest
        )
        assert bytes.fromhex(receipt.response_hash) == opener.response_hash
    else:
        headers = {**target.auth, "Content-Type": "application/json"}
        async with http.stream("POST", PATH, content=body, headers=headers) as r:
            async for raw in r.aiter_raw():
                _scan(raw, state)
    end = time.perf_counter()
    first = state["first"] or end
    return {"latency": end - start, "ttft": first - start, "tokens": state["tokens"]}


async def _run_level(
    http: httpx.AsyncClient,
    target: _Target,
    prompts: list[str],
    concurrency: int,
    max_tokens: int,
    sealed: bool,
) -> dict[str, Any]:
    queue = list(prompts)
    results: list[dict[str, float]] = []

    async def worker() -> None:
        while queue:
            prompt = queue.pop()
            results.append(await _one(http, target, prompt, max_tokens, sealed))

    start, cpu0, own0 = time.perf_counter(), _cpu_s(target.pid), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    server_cpu, client_cpu = _cpu_s(target.pid) - cpu0, time.process_time() - own0
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results]
    return {
        "requests": len(results),
        "wall_s": wall,
        "req_per_s": len(results) / wall,
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "p50_ms": _pct(lat, 0.5) * 1e3,
        "p99_ms": _pct(lat, 0.99) * 1e3,
        "ttft_p50_ms": _pct(ttft, 0.5) * 1e3,
        # CPU time is far less sensitive than wall time to other load on the machine.
        "server_cpu_ms_per_req": server_cpu / len(results) * 1e3,
        "client_cpu_ms_per_req": client_cpu / len(results) * 1e3,
    }


def _server_envelope_work(events: int, iterations: int) -> dict[str, float]:
    """CPU ms per request of the server's own E2E work, measured in isolation:
    open the sealed request, seal every SSE event and the FINAL frame, sign the
    receipt; against plain mode's work (hash the events, sign the receipt).
    Independent of engine batching and of other load, unlike wall-clock figures."""
    import hashlib

    from teellm.server.identity import ServerIdentity

    ident = ServerIdentity.generate()
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * 60}], "stream": True}
    ).encode()
    event = b"data: " + json.dumps({"choices": [{"delta": {"content": "word "}}]}).encode() * 2
    wires = [
        envelope.seal_request(
            body, path=PATH, public_key=ident.hpke.public_key, server_key_id=ident.key_id
        ).wire
        for _ in range(iterations)
    ]
    digest = bytes(32)

    def receipt(h: bytes) -> None:
        receipts.sign_receipt(
            ident.signing, request_hash=envelope.sha256(body), response_hash=h, model_digest=digest
        ).to_bytes()

    t0 = time.process_time()
    for wire in wires:
        opened = envelope.open_request(wire, ident.hpke, server_key_id=ident.key_id)
        sealer = opened.sealer(envelope.ResponseContent.EVENT_STREAM)
        for _ in range(events):
            sealer.seal(event)
        receipt(sealer.response_hash)
        sealer.finish(b"r" * 300)
    e2e = (time.process_time() - t0) / iterations * 1e3
    t0 = time.process_time()
    for _ in range(iterations):
        h = hashlib.sha256()
        for _ in range(events):
            h.update(event)
        receipt(h.digest())
    plain = (time.process_time() - t0) / iterations * 1e3
    return {"events": events, "e2e_ms": e2e, "plain_ms": plain, "added_ms": e2e - plain}


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the rounds."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def _bench(stack: LocalStack, *, quick: bool) -> dict[str, Any]:
    target = _Target(stack)
    max_tokens = 8 if quick else 32
    rounds = 1 if quick else 5
    levels = {1: 6 if quick else 24, 16: 16 if quick else 96}
    prompts = [f"Request {i}: tell me about private inference." for i in range(200)]
    results: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=stack.url, timeout=120, limits=limits) as http:
        for sealed in (True, False):  # warm-up: connections, first-use paths
            await _run_level(http, target, prompts[:4], 2, 4, sealed)
        for conc, n in levels.items():
            runs: dict[str, list[dict[str, Any]]] = {"e2e": [], "plain": []}
            for _ in range(rounds):
                for mode in ("plain", "e2e"):
                    runs[mode].append(
                        await _run_level(http, target, prompts[:n], conc, max_tokens, mode == "e2e")
                    )
            results[f"c{conc}"] = {mode: _merge(r) for mode, r in runs.items()}
    ratios = {}
    for level, modes in results.items():
        e, p = modes["e2e"], modes["plain"]
        ratios[level] = {
            "req_per_s_e2e_over_plain": e["req_per_s"] / p["req_per_s"],
            "tokens_per_s_e2e_over_plain": e["tokens_per_s"] / p["tokens_per_s"],
            "p50_ms_added_by_e2e": e["p50_ms"] - p["p50_ms"],
            "ttft_p50_ms_added_by_e2e": e["ttft_p50_ms"] - p["ttft_p50_ms"],
            "server_cpu_ms_per_req_added_by_e2e": e["server_cpu_ms_per_req"]
            - p["server_cpu_ms_per_req"],
            "server_cpu_e2e_over_plain": e["server_cpu_ms_per_req"] / p["server_cpu_ms_per_req"],
        }
    work = _server_envelope_work(max_tokens + 3, 50 if quick else 400)
    plain_cpu = results["c1"]["plain"]["server_cpu_ms_per_req"]
    work["share_of_plain_request_cpu_c1"] = work["added_ms"] / plain_cpu if plain_cpu else 0.0
    return {
        "bench": "server",
        "quick": quick,
        "model": "tiny random Llama (2 layers, hidden 64), float32, CPU, 1 torch thread",
        "max_tokens": max_tokens,
        "rounds": rounds,
        "results": results,
        "ratios": ratios,
        "server_envelope_work": work,
    }


def _print(report: dict[str, Any]) -> None:
    print(f"server bench ({report['model']}, {report['max_tokens']} tokens/request)")
    cols = ("req/s", "tok/s", "p50 ms", "p99 ms", "TTFT ms", "srv CPU ms", "cli CPU ms")
    print(f"{'level':6} {'mode':6} " + " ".join(f"{c:>9}" for c in cols))
    for level, modes in report["results"].items():
        for mode, r in modes.items():
            print(
                f"{level:6} {mode:6} {r['req_per_s']:9.1f} {r['tokens_per_s']:9.1f} "
                f"{r['p50_ms']:9.2f} {r['p99_ms']:9.2f} {r['ttft_p50_ms']:9.2f} "
                f"{r['server_cpu_ms_per_req']:10.2f} {r['client_cpu_ms_per_req']:10.2f}"
            )
    for level, r in report["ratios"].items():
        print(
            f"{level}: E2E/plain req/s {r['req_per_s_e2e_over_plain']:.3f}, "
            f"tok/s {r['tokens_per_s_e2e_over_plain']:.3f}; "
            f"E2E adds {r['p50_ms_added_by_e2e']:+.2f} ms p50, "
            f"{r['ttft_p50_ms_added_by_e2e']:+.2f} ms TTFT, "
            f"{r['server_cpu_ms_per_req_added_by_e2e']:+.3f} ms server CPU per request "
            f"(x{r['server_cpu_e2e_over_plain']:.3f})"
        )
    w = report["server_envelope_work"]
    print(
        f"server E2E work per request ({w['events']} events), in isolation: "
        f"{w['e2e_ms']:.3f} ms vs plain {w['plain_ms']:.3f} ms, adds {w['added_ms']:.3f} ms "
        f"= {w['share_of_plain_request_cpu_c1'] * 100:.1f}% of a plain request's server CPU (c1)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="A fast smoke run.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="teellm-bench-server-") as tmp:
        # One torch thread: on a small shared machine OpenMP threads spinning against
        # the client and other jobs made the engine sporadically 20-40x slower, in
        # either mode, which drowned the difference this bench measures.
        stack = LocalStack(
            Path(tmp),
            model_id=MODEL,
            plain=True,
            batch_size=16,
            server_env={"OMP_NUM_THREADS": "1"},
        )
        stack.prepare()
        try:
            stack.start()
            report = asyncio.run(_bench(stack, quick=args.quick))
        finally:
            stack.stop()
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
