"""Signed receipts: sign, verify, and reject every alteration with a typed error."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from teellm.crypto.receipts import Receipt, ReceiptError, sign_receipt, verify_receipt

REQ, RESP = b'{"prompt":"hi"}', b'{"text":"hello"}'
DIGEST = hashlib.sha256(b"manifest").digest()


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _receipt(key: Ed25519PrivateKey) -> Receipt:
    return sign_receipt(
        key,
        request_hash=hashlib.sha256(REQ).digest(),
        response_hash=hashlib.sha256(RESP).digest(),
        model_digest=DIGEST,
        when=1_700_000_000,
    )


def test_round_trip(key: Ed25519PrivateKey) -> None:
    r = _receipt(key)
    pub = key.public_key()
    assert verify_receipt(r, pub, request_body=REQ, response_body=RESP, model_digest=DIGEST) == r
    assert verify_receipt(r.to_bytes(), pub.public_bytes_raw()) == r
    assert Receipt.from_header(r.to_header()) == r


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("request_hash", "00" * 32),
        ("response_hash", "00" * 32),
        ("model_digest", "00" * 32),
        ("time", 1_700_000_001),
    ],
)
def test_altered_field_fails(key: Ed25519PrivateKey, field: str, value: object) -> None:
    bad = _receipt(key).model_copy(update={field: value})
    with pytest.raises(ReceiptError) as info:
        verify_receipt(bad, key.public_key())
    assert info.value.code == "receipt_signature"


def test_wrong_key_and_wrong_bodies(key: Ed25519PrivateKey) -> None:
    r = _receipt(key)
    with pytest.raises(ReceiptError):
        verify_receipt(r, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ReceiptError) as info:
        verify_receipt(r, key.public_key(), response_body=b"another answer")
    assert info.value.code == "receipt_mismatch"
    with pytest.raises(ReceiptError):
        verify_receipt(r, key.public_key(), request_body=b"another question")
    with pytest.raises(ReceiptError):
        verify_receipt(r, key.public_key(), model_digest=bytes(32))
    with pytest.raises(ReceiptError):
        verify_receipt(r, b"short key")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=600), st.text(max_size=600)))
def test_fuzz_parser(data: bytes | str) -> None:
    with contextlib.suppress(ReceiptError):
        Receipt.from_bytes(data)
    with contextlib.suppress(ReceiptError):
        Receipt.from_header(data if isinstance(data, str) else data.decode("latin-1"))
