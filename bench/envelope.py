"""Cost of the end-to-end envelope per request and per streamed chunk (median of many runs).

teellm = ``seal_request`` + ``open_request`` (HPKE, padding, key id, binding hash)
and, per chunk, ``ResponseSealer.seal`` + ``ResponseOpener.feed`` (padding,
framing, sequence numbers, response hash).
peer   = the bare primitives from pyca/cryptography with no envelope around them:
one HPKE single-shot encrypt/decrypt of the body, one AES-256-GCM
encrypt/decrypt of the chunk. The difference is what the protocol adds.

    python bench/envelope.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teellm.crypto import envelope
from teellm.crypto.hpke import HpkePrivateKey, Kem, suite
from teellm.crypto.secret import SecretBytes

BODY = json.dumps(
    {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Explain attestation in one paragraph. " * 8}],
        "max_tokens": 256,
        "stream": True,
    }
).encode()
CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,'
    b'"model":"tiny-llama","choices":[{"index":0,"delta":{"content":" token"},'
    b'"finish_reason":null}]}\n\n'
)


def _median_us(fn: Callable[[], object], runs: int) -> float:
    fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def _request_case(kem: Kem, runs: int) -> dict[str, Any]:
    sk = HpkePrivateKey.generate(kem)
    kid = envelope.key_id(sk.public_key.raw, bytes(32))

    def teellm() -> None:
        sealed = envelope.seal_request(
            BODY, path="/v1/chat/completions", public_key=sk.public_key, server_key_id=kid
        )
        envelope.open_request(sealed.wire, sk, server_key_id=kid)

    raw_suite = suite(kem)
    pub, priv = sk.public_key._obj, sk._obj

    def peer() -> None:
        ct = raw_suite.encrypt(BODY, pub, info=b"peer")
        raw_suite.decrypt(ct, priv, info=b"peer")

    t, p = _median_us(teellm, runs), _median_us(peer, runs)
    return {"teellm_us": round(t, 1), "peer_us": round(p, 1), "ratio": round(t / p, 3)}


def _chunk_case(runs: int) -> dict[str, Any]:
    key = SecretBytes(os.urandom(32))
    binding = os.urandom(32)
    sealer = envelope.ResponseSealer(key, binding, envelope.ResponseContent.EVENT_STREAM)
    opener = envelope.ResponseOpener(key, binding)
    opener.feed(sealer.header)

    def teellm() -> None:
        opener.feed(sealer.seal(CHUNK))

    aead = AESGCM(os.urandom(32))
    counter = [0]

    def peer() -> None:
        nonce = counter[0].to_bytes(12, "big")
        counter[0] += 1
        aead.decrypt(nonce, aead.encrypt(nonce, CHUNK, None), None)

    t, p = _median_us(teellm, runs), _median_us(peer, runs)
    return {
        "teellm_us": round(t, 2),
        "peer_us": round(p, 2),
        "ratio": round(t / p, 3),
        "chunk_bytes": len(CHUNK),
        "sealed_bytes": len(sealer.seal(CHUNK)),
    }


def run(quick: bool) -> dict[str, Any]:
    runs = 30 if quick else 500
    result: dict[str, Any] = {
        "request_bytes": len(BODY),
        "runs": runs,
        "request": {kem.value: _request_case(kem, runs) for kem in Kem},
        "chunk": _chunk_case(runs * 10),
    }
    hybrid = result["request"][Kem.MLKEM768_X25519.value]
    result["overhead_per_request_ms"] = round(
        hybrid["teellm_us"] / 1000 + 256 * result["chunk"]["teellm_us"] / 1000, 3
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few runs (smoke test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.quick)
    if args.json:
        print(json.dumps(result))
        return
    print(f"request body {result['request_bytes']} bytes, {result['runs']} runs (median)")
    for kem, r in result["request"].items():
        print(
            f"  seal+open request {kem:16s} teellm {r['teellm_us']:8.1f} us"
            f"   peer (bare HPKE) {r['peer_us']:8.1f} us   ratio {r['ratio']:.2f}"
        )
    c = result["chunk"]
    print(
        f"  seal+open chunk   ({c['chunk_bytes']} B -> {c['sealed_bytes']} B) teellm "
        f"{c['teellm_us']:.2f} us   peer (bare AES-GCM) {c['peer_us']:.2f} us"
        f"   ratio {c['ratio']:.2f}"
    )
    print(
        f"  envelope cost of a 256-token streamed request: "
        f"{result['overhead_per_request_ms']:.3f} ms (client + server CPU)"
    )


if __name__ == "__main__":
    main()
