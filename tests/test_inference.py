"""The in-process public API: LLMInference.load() and infer(), sealed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teellm.attestation.policy import AppraisalPolicy
from teellm.bundle.keys import generate_signing_key
from teellm.bundle.seal import SealResult, seal_model
from teellm.crypto import envelope, receipts
from teellm.crypto.hpke import HpkePublicKey
from teellm.crypto.secret import SecretBytes
from teellm.devmodel import make_model_dir
from teellm.inference import (
    InferenceError,
    InferenceRequest,
    LLMInference,
    RequestMetadata,
    Sampling,
    SecurityContext,
)
from teellm.kbs.local import LocalBroker
from teellm.kbs.policy import ReleasePolicy
from teellm.server.access import AccessError, AccessPolicy, Tenant, new_token
from teellm.server.document import AttestationDocument, ClientPolicy, verify_document
from teellm.settings import ModelSettings

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SealResult, object]:
    root = tmp_path_factory.mktemp("inference")
    key = generate_signing_key()
    result = seal_model(
        make_model_dir(root / "model"), root / "bundle", model_id=MODEL, version=1, signing_key=key
    )
    return root / "bundle", result, key.public_key()


@pytest.fixture(scope="module")
def llm(sealed: tuple[Path, SealResult, object]) -> Iterator[LLMInference]:
    bundle, result, pub = sealed
    settings = ModelSettings(
        precision="float32",
        max_input_length=256,
        encryption_key=SecretBytes(result.content_key.reveal()),
    )
    with LLMInference(MODEL, settings, runtime="simulated") as llm:
        llm.load(bundle, trusted_publishers=[pub])  # type: ignore[list-item]
        yield llm
    assert settings.encryption_key is not None and settings.encryption_key.wiped


def _req(text: str = "Hello", **meta: object) -> InferenceRequest:
    return InferenceRequest(
        input=text.encode(),
        metadata=RequestMetadata(sampling=Sampling(max_tokens=8), **meta),  # type: ignore[arg-type]
    )


def test_plain_infer_and_receipt(llm: LLMInference) -> None:
    result = llm.infer(_req())
    assert not result.sealed and result.completion_tokens >= 1
    again = llm.infer(_req())
    assert again.text == result.text  # greedy by default
    receipts.verify_receipt(
        result.receipt,
        llm.public_keys["signing"],
        request_body=b"Hello",
        response_body=result.output,
    )


def test_chat_input(llm: LLMInference) -> None:
    messages = json.dumps([{"role": "user", "content": "hi"}]).encode()
    result = llm.infer(InferenceRequest(input=messages, metadata=RequestMetadata(kind="chat")))
    assert result.finish_reason in ("stop", "length")
    for bad in (b"not json", b"[]", b'[{"role": 1}]', b"\xff"):
        with pytest.raises(InferenceError):
            llm.infer(InferenceRequest(input=bad, metadata=RequestMetadata(kind="chat")))


def test_sealed_input_and_output(llm: LLMInference) -> None:
    keys = llm.public_keys
    sealed = envelope.seal_request(
        b"Hello",
        path="/inference",
        public_key=HpkePublicKey.from_bytes(keys["hpke"]),
        server_key_id=keys["key_id"],
    )
    req = InferenceRequest(
        input=sealed.wire,
        metadata=RequestMetadata(sampling=Sampling(max_tokens=8)),
        security_context=SecurityContext(sealed_input=True),
    )
    result = llm.infer(req)
    assert result.sealed
    opened = sealed.open_response(result.output)
    assert opened.data.decode() == llm.infer(_req()).text
    receipts.verify_receipt(opened.receipt, keys["signing"], request_body=b"Hello")
    with pytest.raises(InferenceError):
        llm.infer(req.model_copy(update={"input": sealed.wire[:-1] + bytes([sealed.wire[-1] ^ 1])}))


def test_response_key_seals_output(llm: LLMInference) -> None:
    key = SecretBytes.random(32)
    req = _req().model_copy(
        update={"security_context": SecurityContext(response_key=SecretBytes(key.reveal()))}
    )
    result = llm.infer(req)
    opened = envelope.open_response(key, envelope.sha256(b"Hello"), result.output)
    assert opened.data.decode() == llm.infer(_req()).text


def test_stream_matches_infer(llm: LLMInference) -> None:
    import asyncio

    async def collect() -> bytes:
        return b"".join([piece async for piece in llm.stream(_req())])

    assert asyncio.run(collect()).decode() == llm.infer(_req()).text


def test_attestation_nonce(llm: LLMInference) -> None:
    nonce = b"\x07" * 32
    result = llm.infer(
        _req().model_copy(update={"security_context": SecurityContext(attestation_nonce=nonce)})
    )
    assert result.attestation is not None
    doc = AttestationDocument.model_validate(result.attestation)
    assert doc.simulated and doc.model.id == MODEL
    policy = ClientPolicy(
        attestation=AppraisalPolicy(allow_simulated=True),
        trusted_publishers=[doc.model.publisher_key_id],
    )
    assert verify_document(doc, policy, nonce=nonce).accepted


def test_too_long_input(llm: LLMInference) -> None:
    with pytest.raises(Exception) as ei:
        llm.infer(_req("word " * 400))
    assert getattr(ei.value, "code", None) == "context_length_exceeded"


def test_load_refusals(sealed: tuple[Path, SealResult, object]) -> None:
    bundle, result, pub = sealed
    with pytest.raises(InferenceError) as ei:
        LLMInference("other-model", ModelSettings(), runtime="simulated").load(
            bundle,
            trusted_publishers=[pub],  # type: ignore[list-item]
        )
    assert ei.value.code == "model_mismatch"
    with pytest.raises(InferenceError) as ei:
        LLMInference(MODEL, ModelSettings(), runtime="simulated").load(
            bundle,
            trusted_publishers=[pub],  # type: ignore[list-item]
        )
    assert ei.value.code == "usage"
    with pytest.raises(InferenceError):
        LLMInference(MODEL).infer(_req())


def test_key_from_broker_and_access_control(sealed: tuple[Path, SealResult, object]) -> None:
    bundle, result, pub = sealed
    token, token_hash = new_token()
    access = AccessPolicy(tenants=[Tenant(name="t", token_hashes=[token_hash], models=[MODEL])])
    with LocalBroker() as kbs:
        kbs.broker.put_key(
            MODEL,
            1,
            SecretBytes(result.content_key.reveal()),
            manifest_digest=result.manifest.digest(),
        )
        kbs.broker.set_policy(MODEL, ReleasePolicy(appraisal=AppraisalPolicy(allow_simulated=True)))
        settings = ModelSettings(precision="float32", access_control=access)
        with LLMInference(MODEL, settings, runtime="simulated") as llm:
            llm.load(bundle, trusted_publishers=[pub], kbs_url=kbs.url)  # type: ignore[list-item]
            assert settings.encryption_key is not None and len(settings.encryption_key) == 32
            ok = _req().model_copy(update={"security_context": SecurityContext(caller=token)})
            assert llm.infer(ok).completion_tokens >= 1
            with pytest.raises(AccessError) as ei:
                llm.infer(_req())
            assert ei.value.status == 401
    # A broker that refuses the simulated TEE releases nothing.
    with LocalBroker() as kbs:
        kbs.broker.put_key(MODEL, 1, SecretBytes(result.content_key.reveal()))
        kbs.broker.set_policy(MODEL, ReleasePolicy())
        with pytest.raises(Exception) as ei:
            LLMInference(MODEL, ModelSettings(), runtime="simulated").load(
                bundle,
                trusted_publishers=[pub],  # type: ignore[list-item]
                kbs_url=kbs.url,
            )
        assert "denied" in getattr(ei.value, "code", "") or "Denied" in type(ei.value).__name__


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["chat", "completion"]))
def test_fuzz_input_decoding(data: bytes, kind: str) -> None:
    from teellm.inference import _decode_input

    try:
        prompt, messages = _decode_input(data, kind)
    except InferenceError as exc:
        assert exc.code == "invalid_request"
    else:
        assert (prompt is None) == (kind == "chat") and (messages is None) == (kind != "chat")


def test_deeply_nested_chat_input() -> None:
    from teellm.inference import _decode_input

    with pytest.raises(InferenceError):
        _decode_input(b"[" * 200_000 + b"]" * 200_000, "chat")
