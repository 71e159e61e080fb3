"""Generate the test vectors of docs/protocol.md from fixed keys, salts and nonces.

    python docs/protocol_vectors.py            # print the vectors as JSON
    python docs/protocol_vectors.py --write    # replace the block in docs/protocol.md

Everything is deterministic except the HPKE request ciphertexts: HPKE draws a
fresh ephemeral key per message, so a request vector is checked by opening it
with the documented private key (tests/test_envelope_vectors.py does).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from teellm.crypto import envelope
from teellm.crypto.hpke import HpkePrivateKey, Kem
from teellm.crypto.receipts import sign_receipt, signed_message
from teellm.crypto.secret import SecretBytes

DOC = Path(__file__).with_name("protocol.md")
BEGIN, END = "<!-- vectors:begin -->", "<!-- vectors:end -->"

X25519_PRIVATE = bytes(range(1, 33))
HYBRID_PRIVATE = bytes(range(100, 196))  # ML-KEM-768 seed (64) || X25519 private key (32)
SIGNING_SEED = bytes([2]) * 32
RESPONSE_KEY = bytes(range(0x40, 0x60))
SALT = bytes([0x55]) * 32
PATH = "/v1/chat/completions"
BODY = b'{"model":"tiny-llama","messages":[{"role":"user","content":"Hello"}],"stream":true}'
CHUNKS = [
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',
    b"data: [DONE]\n\n",
]
JSON_BODY = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"}}]}'
MODEL_DIGEST = bytes([0xD1]) * 32
TIME = 1_767_225_600  # 2026-01-01T00:00:00Z


def _request(kem: Kem, private: bytes, signing_public: bytes) -> dict[str, Any]:
    sk = HpkePrivateKey.from_private_bytes(kem, SecretBytes(private))
    kid = envelope.key_id(sk.public_key.raw, signing_public)
    sealed = envelope.seal_request(
        BODY,
        path=PATH,
        public_key=sk.public_key,
        server_key_id=kid,
        response_key=SecretBytes(RESPONSE_KEY),
    )
    return {
        "kem": kem.value,
        "server_private_key": private.hex(),
        "server_public_key": sk.public_key.raw.hex(),
        "signing_public_key": signing_public.hex(),
        "key_id": kid.hex(),
        "path": PATH,
        "body": BODY.decode(),
        "response_key": RESPONSE_KEY.hex(),
        "wire": sealed.wire.hex(),
        "binding": sealed.binding.hex(),
        "body_hash": sealed.body_hash.hex(),
    }


def _stream_response(binding: bytes) -> dict[str, Any]:
    sealer = envelope.ResponseSealer(
        SecretBytes(RESPONSE_KEY), binding, envelope.ResponseContent.EVENT_STREAM, salt=SALT
    )
    frames = [sealer.seal(c) for c in CHUNKS]
    final = sealer.finish(b"")
    return {
        "content": "event-stream",
        "response_key": RESPONSE_KEY.hex(),
        "binding": binding.hex(),
        "salt": SALT.hex(),
        "chunks": [c.decode() for c in CHUNKS],
        "receipt": "",
        "header": sealer.header.hex(),
        "frames": [f.hex() for f in frames] + [final.hex()],
        "response_hash": sealer.response_hash.hex(),
    }


def _json_response(binding: bytes) -> dict[str, Any]:
    sealer = envelope.ResponseSealer(
        SecretBytes(RESPONSE_KEY), binding, envelope.ResponseContent.JSON, salt=SALT
    )
    return {
        "content": "json",
        "response_key": RESPONSE_KEY.hex(),
        "binding": binding.hex(),
        "salt": SALT.hex(),
        "body": JSON_BODY.decode(),
        "receipt": "",
        "wire": sealer.seal_all(JSON_BODY).hex(),
    }


def _receipt(signing: Ed25519PrivateKey, body_hash: bytes, response_hash: bytes) -> dict[str, Any]:
    receipt = sign_receipt(
        signing,
        request_hash=body_hash,
        response_hash=response_hash,
        model_digest=MODEL_DIGEST,
        when=TIME,
    )
    return {
        "signing_seed": SIGNING_SEED.hex(),
        "signing_public_key": signing.public_key().public_bytes_raw().hex(),
        "request_hash": body_hash.hex(),
        "response_hash": response_hash.hex(),
        "model_digest": MODEL_DIGEST.hex(),
        "time": TIME,
        "signed_message": signed_message(
            request_hash=body_hash,
            response_hash=response_hash,
            model_digest=MODEL_DIGEST,
            time=TIME,
        ).hex(),
        "receipt": receipt.to_bytes().decode(),
    }


def vectors() -> dict[str, Any]:
    signing = Ed25519PrivateKey.from_private_bytes(SIGNING_SEED)
    signing_public = signing.public_key().public_bytes_raw()
    request_x = _request(Kem.X25519, X25519_PRIVATE, signing_public)
    binding = bytes.fromhex(request_x["binding"])
    stream = _stream_response(binding)
    return {
        "padding": {str(n): envelope.padded_size(n, 256) for n in (0, 4, 256, 257, 1000, 5000)},
        "request_x25519": request_x,
        "response_stream": stream,
        "response_json": _json_response(binding),
        "receipt": _receipt(
            signing,
            bytes.fromhex(request_x["body_hash"]),
            bytes.fromhex(stream["response_hash"]),
        ),
        "request_mlkem768_x25519": _request(Kem.MLKEM768_X25519, HYBRID_PRIVATE, signing_public),
    }


def read_documented(doc: Path = DOC) -> dict[str, Any]:
    """The vectors as docs/protocol.md documents them."""
    text = doc.read_text()
    match = re.search(re.escape(BEGIN) + r"\s*```json\n(.*?)```\s*" + re.escape(END), text, re.S)
    if match is None:
        raise ValueError("vector block not found")
    result: dict[str, Any] = json.loads(match.group(1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/protocol.md")
    args = parser.parse_args()
    block = json.dumps(vectors(), indent=2)
    if not args.write:
        print(block)
        return
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END)
    DOC.write_text(text[:start] + BEGIN + "\n```json\n" + block + "\n```\n" + text[end:])


if __name__ == "__main__":
    main()
