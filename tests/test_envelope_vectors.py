"""The test vectors documented in docs/protocol.md hold for the implementation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from teellm.crypto import envelope
from teellm.crypto.hpke import HpkePrivateKey, Kem
from teellm.crypto.receipts import Receipt, sign_receipt, signed_message, verify_receipt
from teellm.crypto.secret import SecretBytes

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("protocol_vectors", DOCS / "protocol_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
DOCUMENTED: dict[str, Any] = GEN.read_documented(DOCS / "protocol.md")
H = bytes.fromhex


def test_padding_vectors() -> None:
    for n, size in DOCUMENTED["padding"].items():
        assert envelope.padded_size(int(n), 256) == size


@pytest.mark.parametrize("name", ["request_x25519", "request_mlkem768_x25519"])
def test_request_vectors_open(name: str) -> None:
    v = DOCUMENTED[name]
    kem = Kem(v["kem"])
    sk = HpkePrivateKey.from_private_bytes(kem, SecretBytes(H(v["server_private_key"])))
    assert sk.public_key.raw.hex() == v["server_public_key"]
    kid = envelope.key_id(sk.public_key.raw, H(v["signing_public_key"]))
    assert kid.hex() == v["key_id"]
    opened = envelope.open_request(H(v["wire"]), sk, server_key_id=kid)
    assert opened.path == v["path"]
    assert opened.body == v["body"].encode()
    assert opened.response_key.bytes().hex() == v["response_key"]
    assert opened.binding.hex() == v["binding"] == envelope.sha256(H(v["wire"])).hex()
    assert opened.body_hash.hex() == v["body_hash"]


def test_stream_response_vector_is_reproduced_and_opens() -> None:
    v = DOCUMENTED["response_stream"]
    key, binding = SecretBytes(H(v["response_key"])), H(v["binding"])
    sealer = envelope.ResponseSealer(
        key, binding, envelope.ResponseContent.EVENT_STREAM, salt=H(v["salt"])
    )
    frames = [sealer.seal(c.encode()) for c in v["chunks"]]
    frames.append(sealer.finish(v["receipt"].encode()))
    assert sealer.header.hex() == v["header"]
    assert [f.hex() for f in frames] == v["frames"]
    assert sealer.response_hash.hex() == v["response_hash"]
    wire = H(v["header"]) + b"".join(H(f) for f in v["frames"])
    opened = envelope.open_response(key, binding, wire)
    assert opened.data == "".join(v["chunks"]).encode()
    assert opened.response_hash.hex() == v["response_hash"]


def test_json_response_vector() -> None:
    v = DOCUMENTED["response_json"]
    key, binding = SecretBytes(H(v["response_key"])), H(v["binding"])
    sealer = envelope.ResponseSealer(key, binding, envelope.ResponseContent.JSON, salt=H(v["salt"]))
    assert sealer.seal_all(v["body"].encode(), v["receipt"].encode()).hex() == v["wire"]
    opened = envelope.open_response(key, binding, H(v["wire"]))
    assert opened.data == v["body"].encode() and opened.content is envelope.ResponseContent.JSON


def test_receipt_vector() -> None:
    v = DOCUMENTED["receipt"]
    key = Ed25519PrivateKey.from_private_bytes(H(v["signing_seed"]))
    assert key.public_key().public_bytes_raw().hex() == v["signing_public_key"]
    msg = signed_message(
        request_hash=H(v["request_hash"]),
        response_hash=H(v["response_hash"]),
        model_digest=H(v["model_digest"]),
        time=v["time"],
    )
    assert msg.hex() == v["signed_message"]
    receipt = sign_receipt(
        key,
        request_hash=H(v["request_hash"]),
        response_hash=H(v["response_hash"]),
        model_digest=H(v["model_digest"]),
        when=v["time"],
    )
    assert receipt.to_bytes().decode() == v["receipt"]
    verify_receipt(Receipt.from_bytes(v["receipt"]), H(v["signing_public_key"]))


def test_documented_vectors_match_the_generator() -> None:
    """The document's inputs and deterministic outputs are what the generator makes today.

    HPKE ciphertexts are randomised, so a request's ``wire`` and ``binding`` (and
    the response frames keyed by that binding) legitimately differ per run.
    """
    fresh = json.loads(json.dumps(GEN.vectors()))
    randomised = {"wire", "binding", "header", "frames"}
    for name, documented in DOCUMENTED.items():
        if isinstance(documented, dict):
            documented = {k: x for k, x in documented.items() if k not in randomised}
            fresh[name] = {k: x for k, x in fresh[name].items() if k not in randomised}
        assert fresh[name] == documented, name
