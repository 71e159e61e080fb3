# ruff: noqa: F811  (the shared server fixtures are imported by name)
"""The verifying client against a real envelope server on loopback: SDK, openai drop-in,
refusal before sending, tamper detection, key rotation, receipts."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

import teellm
from teellm.client.client import ApiResponseError, session_of
from teellm.client.transport import ServerProtocolError
from teellm.crypto import envelope
from teellm.crypto.receipts import ReceiptError, verify_receipt
from teellm.server.document import ClientPolicy, VerificationFailed
from test_client_server import (  # noqa: F401 (fixtures)
    DIGEST,
    MODEL,
    POLICY_YAML,
    EchoServer,
    echo,
    fresh,
)

CANARY = "canary-7f3a9 please keep this secret"
MESSAGES = [{"role": "user", "content": CANARY}]


def _policy(**overrides: Any) -> ClientPolicy:
    policy = ClientPolicy.from_yaml(POLICY_YAML)
    return policy.model_copy(update=overrides)


def test_client_verifies_then_chats_encrypted(fresh: EchoServer) -> None:
    with teellm.Client(fresh.url, POLICY_YAML) as client:
        assert client.report is not None and client.report.accepted
        assert client.model_id == "echo-model"
        out = client.chat(MESSAGES)
        assert out["choices"][0]["message"]["content"] == "echo: " + CANARY
        receipt = client.last_receipt
        assert receipt is not None and receipt.model_digest == DIGEST
        assert client.complete("hello there")["choices"][0]["text"] == "echo: hello there"
        assert client.models() == ["echo-model"]
    # Nothing readable crossed the wire in either direction.
    assert fresh.posts and fresh.responses
    for blob in fresh.posts + fresh.responses:
        assert CANARY.encode() not in blob and b"echo:" not in blob


def test_stream_chat_and_receipt(fresh: EchoServer) -> None:
    with teellm.Client(fresh.url, POLICY_YAML) as client:
        chunks = list(client.stream_chat(MESSAGES))
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == "echo: " + CANARY
        assert client.last_receipt is not None
        key = client.session.pinned
        assert key is not None
        verify_receipt(client.last_receipt, key.signing, model_digest=bytes.fromhex(DIGEST))


def test_openai_drop_in(fresh: EchoServer) -> None:
    client = teellm.openai_client(fresh.url, POLICY_YAML, api_key="tok")
    assert isinstance(client, openai.OpenAI)
    out = client.chat.completions.create(model="echo-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert out.choices[0].message.content == "echo: " + CANARY
    stream = client.chat.completions.create(
        model="echo-model",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "echo: " + CANARY
    assert session_of(client).last_receipt is not None
    comp = client.completions.create(model="echo-model", prompt="hi")
    assert comp.choices[0].text == "echo: hi"


async def test_async_openai_drop_in(fresh: EchoServer) -> None:
    client = teellm.async_openai_client(fresh.url, POLICY_YAML)
    assert isinstance(client, openai.AsyncOpenAI)
    stream = await client.chat.completions.create(
        model="echo-model",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "echo: " + CANARY
    out = await client.chat.completions.create(model="echo-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert out.choices[0].message.content == "echo: " + CANARY
    await client.close()


async def test_async_client(fresh: EchoServer) -> None:
    async with teellm.AsyncClient(fresh.url, POLICY_YAML) as client:
        out = await client.chat(MESSAGES)
        assert out["choices"][0]["message"]["content"] == "echo: " + CANARY
        parts = [
            c["choices"][0]["delta"].get("content") or ""
            async for c in client.stream_chat(MESSAGES)
        ]
        assert "".join(parts) == "echo: " + CANARY
        assert client.last_receipt is not None


@pytest.mark.parametrize(
    ("overrides", "failed"),
    [
        ({"model_id": "other-model"}, "model_id"),
        ({"min_model_version": 3}, "model_version"),
        ({"model_digests": ["00" * 32], "trusted_publishers": []}, "model_digest"),
        ({"trusted_publishers": ["cd" * 32]}, "publisher"),
    ],
)
def test_refuses_before_sending_anything(
    fresh: EchoServer, overrides: dict[str, Any], failed: str
) -> None:
    policy = _policy(**overrides)
    with pytest.raises(VerificationFailed) as info:
        teellm.Client(fresh.url, policy)
    assert failed in {c.name for c in info.value.report.failures}
    with pytest.raises(VerificationFailed):
        teellm.openai_client(fresh.url, policy)
    with pytest.raises(VerificationFailed):
        teellm.async_openai_client(fresh.url, policy)
    assert fresh.posts == []  # not a single request body reached the server


def test_simulated_evidence_refused_unless_allowed(fresh: EchoServer) -> None:
    policy = _policy(attestation=ClientPolicy().attestation)
    with pytest.raises(VerificationFailed) as info:
        teellm.Client(fresh.url, policy)
    assert "evidence.simulated" in {c.name for c in info.value.report.failures}
    assert fresh.posts == []


def test_deferred_verification_refuses_on_first_request(fresh: EchoServer) -> None:
    client = teellm.Client(fresh.url, _policy(model_id="nope"), verify=False)
    with pytest.raises(VerificationFailed):
        client.chat(MESSAGES, model="echo-model")
    assert fresh.posts == []


def test_plain_mode_server_refused_by_default(fresh: EchoServer) -> None:
    fresh.plain_mode = True
    with pytest.raises(VerificationFailed) as info:
        teellm.Client(fresh.url, POLICY_YAML)
    assert {c.name for c in info.value.report.failures} == {"plain_mode"}
    client = teellm.Client(fresh.url, _policy(allow_plain_mode=True))
    assert client.chat(MESSAGES)["choices"][0]["message"]["content"].startswith("echo:")


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("flip", envelope.ResponseTamperedError),
        ("drop", envelope.ResponseTamperedError),
        ("reorder", envelope.ResponseTamperedError),
        ("replay", envelope.ResponseTamperedError),
        ("foreign", envelope.ResponseTamperedError),
        ("truncate", envelope.ResponseTruncatedError),
        ("plain", ServerProtocolError),
        ("bad_receipt", ReceiptError),
        ("no_receipt", ReceiptError),
    ],
)
def test_tampered_stream_is_detected(fresh: EchoServer, mode: str, error: type[Exception]) -> None:
    client = teellm.Client(fresh.url, POLICY_YAML)
    fresh.tamper = mode
    with pytest.raises(error):
        list(client.stream_chat(MESSAGES))
    # The openai drop-in surfaces the same typed error while iterating the stream.
    oai = client.openai(max_retries=0)
    with pytest.raises((error, openai.APIConnectionError)) as info:
        for _ in oai.chat.completions.create(
            model="echo-model",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        ):
            pass
    if isinstance(info.value, openai.APIConnectionError):
        assert isinstance(info.value.__cause__, error)
    # Non-streamed answers are checked the same way.
    with pytest.raises((error, httpx.HTTPError)):
        client.chat(MESSAGES)


def test_key_rotation_reverifies(fresh: EchoServer) -> None:
    client = teellm.Client(fresh.url, POLICY_YAML)
    old = client.session.pinned
    before = fresh.attestations
    fresh.rotate()
    out = client.chat(MESSAGES)
    assert out["choices"][0]["message"]["content"] == "echo: " + CANARY
    assert client.session.pinned is not None and client.session.pinned != old
    assert fresh.attestations == before + 1


def test_model_swap_after_verification_is_refused(fresh: EchoServer) -> None:
    client = teellm.Client(fresh.url, POLICY_YAML)
    fresh.model = MODEL.model_copy(update={"id": "swapped-model"})
    fresh.rotate()  # a restarted server with another model has new keys
    with pytest.raises(VerificationFailed):
        client.chat(MESSAGES)
    assert len(fresh.posts) == 1  # only the first (refused by key id) ever arrived


def test_encrypted_error_is_decrypted(fresh: EchoServer) -> None:
    client = teellm.Client(fresh.url, POLICY_YAML)
    with pytest.raises(ApiResponseError) as info:
        client.chat(MESSAGES, model="unknown-model")
    assert info.value.status == 404 and info.value.code == "nf"


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("reorder", envelope.ResponseTamperedError),
        ("truncate", envelope.ResponseTruncatedError),
        ("bad_receipt", ReceiptError),
        ("plain", ServerProtocolError),
    ],
)
async def test_async_tamper_detected(fresh: EchoServer, mode: str, error: type[Exception]) -> None:
    async with teellm.AsyncClient(fresh.url, POLICY_YAML) as client:
        fresh.tamper = mode
        with pytest.raises(error):
            async for _ in client.stream_chat(MESSAGES):
                pass
        with pytest.raises(error):
            await client.chat(MESSAGES)


def test_openai_from_client_shares_the_verified_session(fresh: EchoServer) -> None:
    with teellm.Client(fresh.url, POLICY_YAML) as client:
        before = fresh.attestations
        oai = client.openai()
        out = oai.chat.completions.create(model="echo-model", messages=MESSAGES)  # type: ignore[arg-type]
        assert out.choices[0].message.content == "echo: " + CANARY
        oai.close()  # its own connections: the SDK client keeps working
        assert client.chat(MESSAGES)["choices"][0]["message"]["content"] == "echo: " + CANARY
        assert fresh.attestations == before  # no second verification was needed


def test_import_teellm_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, teellm; "
        "heavy = [m for m in ('httpx', 'openai', 'fastapi', 'torch') if m in sys.modules]; "
        "assert not heavy, heavy; assert callable(teellm.openai_client)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
