"""End to end with real processes on loopback: key broker (SQLite) + server (simulated
TEE, sealed tiny model) + the verifying client and the real ``openai`` package."""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import teellm
from teellm.attestation.policy import AppraisalPolicy
from teellm.attestation.simulated import DEFAULT_MEASUREMENT
from teellm.client.client import session_of
from teellm.crypto import envelope, receipts
from teellm.server.document import VerificationFailed
from teellm.server.stack import LocalStack

MODEL = "tiny-llama"
CANARY = "okapi-canary-93e1d7"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack(
        tmp_path_factory.mktemp("e2e"),
        model_id=MODEL,
        tenants={"alpha": [MODEL], "beta": ["other-model"]},
        batch_size=16,
    )
    s.prepare()
    try:
        s.start()
        yield s
    finally:
        statuses = s.stop()
    assert all(code in (0, -15) for code in statuses.values()), statuses


def _chat_requests(url: str) -> float:
    """How many chat requests the server has counted, from its Prometheus metrics."""
    text = httpx.get(url + "/metrics").text
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^teellm_requests_total\{[^}]*endpoint="chat"[^}]*\} (\S+)$', text, re.M
        )
    )


def _messages(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


# ---------------------------------------------------------------- openai drop-in


def test_openai_drop_in_stream_and_not(stack: LocalStack) -> None:
    counted = _chat_requests(stack.url)
    client = teellm.openai_client(stack.url, stack.client_policy(), api_key=stack.token("alpha"))
    full = client.chat.completions.create(
        model=MODEL, messages=_messages("Hello there"), temperature=0, max_tokens=12
    )
    text = full.choices[0].message.content
    assert isinstance(text, str) and full.usage is not None and full.usage.completion_tokens >= 1
    session = session_of(client)
    receipt = session.last_receipt
    assert receipt is not None
    receipts.verify_receipt(
        receipt,
        session.pinned.signing,  # type: ignore[union-attr]
        model_digest=stack.manifest.digest(),
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=_messages("Hello there"), temperature=0, max_tokens=12, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == text
    assert session.last_receipt is not receipt  # the stream's own receipt was checked
    comp = client.completions.create(model=MODEL, prompt="Once", max_tokens=4, temperature=0)
    assert comp.choices[0].text is not None
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert _chat_requests(stack.url) == counted + 2  # the metric the refusal test relies on


def test_sdk_client(stack: LocalStack) -> None:
    with teellm.Client(stack.url, stack.client_policy(), api_key=stack.token("alpha")) as c:
        assert c.report is not None and c.report.accepted
        answer = c.chat(_messages("Hi"), temperature=0, max_tokens=6)
        events = list(c.stream_chat(_messages("Hi"), temperature=0, max_tokens=6))
        streamed = "".join(
            e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices")
        )
        assert streamed == answer["choices"][0]["message"]["content"]


# ---------------------------------------------------------------- refusals before any prompt


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "attestation": AppraisalPolicy(
                allow_simulated=True, measurements={"simulated": {"MEASUREMENT": ["00" * 48]}}
            )
        },
        {"trusted_publishers": [], "model_digests": ["11" * 32]},
        {"trusted_publishers": ["22" * 32]},
        {"model_id": "another-model"},
        {"attestation": AppraisalPolicy()},  # simulated evidence not allowed
    ],
    ids=["measurement", "model_digest", "publisher", "model_id", "simulated"],
)
def test_client_refuses_before_sending(stack: LocalStack, overrides: dict[str, Any]) -> None:
    before = _chat_requests(stack.url)
    with pytest.raises(VerificationFailed) as ei:
        client = teellm.openai_client(
            stack.url, stack.client_policy(**overrides), api_key=stack.token("alpha")
        )
        client.chat.completions.create(model=MODEL, messages=_messages(CANARY), max_tokens=2)
    assert not ei.value.report.accepted
    assert _chat_requests(stack.url) == before  # no request reached the API


def test_pinned_measurement_accepted(stack: LocalStack) -> None:
    policy = stack.client_policy(
        attestation=AppraisalPolicy(
            allow_simulated=True,
            measurements={"simulated": {"MEASUREMENT": [DEFAULT_MEASUREMENT.hex()]}},
        ),
        model_digests=[stack.manifest.digest_hex()],
    )
    with teellm.Client(stack.url, policy, api_key=stack.token("alpha")) as c:
        assert c.report is not None and c.report.accepted


# ---------------------------------------------------------------- tenants


def test_tenants_are_separated(stack: LocalStack) -> None:
    policy = stack.client_policy()
    beta = teellm.openai_client(stack.url, policy, api_key=stack.token("beta"))
    with pytest.raises(openai.PermissionDeniedError):
        beta.chat.completions.create(model=MODEL, messages=_messages("x"), max_tokens=2)
    assert beta.models.list().data == []
    alpha = teellm.openai_client(stack.url, policy, api_key=stack.token("alpha"))
    with pytest.raises(openai.NotFoundError):
        alpha.chat.completions.create(model="other-model", messages=_messages("x"), max_tokens=2)
    forged = teellm.openai_client(stack.url, policy, api_key=stack.token("alpha") + "x")
    with pytest.raises(openai.AuthenticationError):
        forged.chat.completions.create(model=MODEL, messages=_messages("x"), max_tokens=2)


# ---------------------------------------------------------------- tampering on the wire


class _Tamper(httpx.BaseTransport):
    """Sits between client and server (a hostile proxy) and alters the sealed answer."""

    def __init__(self, how: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.how = how

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        ctype = response.headers.get("content-type", "")
        if not ctype.startswith(envelope.MEDIA_TYPE):
            return response
        wire = response.read()
        header, frames = wire[: envelope.RESPONSE_HEADER_SIZE], []
        rest = wire[envelope.RESPONSE_HEADER_SIZE :]
        while rest:
            (n,) = struct.unpack_from(">I", rest)
            frames.append(rest[: 4 + n])
            rest = rest[4 + n :]
        if self.how == "flip":
            f = bytearray(frames[1])
            f[-1] ^= 1
            frames[1] = bytes(f)
        elif self.how == "reorder":
            frames[1], frames[2] = frames[2], frames[1]
        elif self.how == "truncate":
            frames = frames[:-1]
        elif self.how == "drop":
            del frames[1]
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return httpx.Response(
            response.status_code, headers=headers, content=header + b"".join(frames)
        )


@pytest.mark.parametrize("how", ["flip", "reorder", "truncate", "drop"])
def test_tampered_stream_is_detected(stack: LocalStack, how: str) -> None:
    c = teellm.Client(
        stack.url, stack.client_policy(), api_key=stack.token("alpha"), inner=_Tamper(how)
    )
    with pytest.raises(Exception) as ei:
        list(c.stream_chat(_messages("Hello"), temperature=0, max_tokens=8))
    assert isinstance(ei.value, envelope.EnvelopeError), repr(ei.value)


# ---------------------------------------------------------------- concurrency


def test_32_concurrent_streams_get_their_own_answers(stack: LocalStack) -> None:
    prompts = [f"Question {i}: what is {i} plus {i * 3}?" for i in range(32)]
    policy = stack.client_policy()
    sync = teellm.openai_client(stack.url, policy, api_key=stack.token("alpha"))
    reference = [
        sync.chat.completions.create(
            model=MODEL, messages=_messages(p), temperature=0, max_tokens=10
        )
        .choices[0]
        .message.content
        for p in prompts
    ]

    async def run() -> list[str]:
        client = teellm.async_openai_client(stack.url, policy, api_key=stack.token("alpha"))

        async def one(prompt: str) -> str:
            stream = await client.chat.completions.create(
                model=MODEL, messages=_messages(prompt), temperature=0, max_tokens=10, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        try:
            return list(await asyncio.gather(*(one(p) for p in prompts)))
        finally:
            await client.close()

    assert asyncio.run(run()) == reference
    assert len(set(reference)) > 1  # distinct prompts, distinct answers: a mix-up would show


# ---------------------------------------------------------------- no plaintext in logs


def test_canary_never_in_server_or_broker_logs(stack: LocalStack) -> None:
    client = teellm.openai_client(stack.url, stack.client_policy(), api_key=stack.token("alpha"))
    out = client.chat.completions.create(
        model=MODEL, messages=_messages(f"{CANARY} {CANARY}"), temperature=0, max_tokens=16
    )
    list(
        client.chat.completions.create(
            model=MODEL, messages=_messages(CANARY), max_tokens=8, stream=True
        )
    )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=_messages(CANARY * 500), max_tokens=8)
    answer = out.choices[0].message.content or ""
    logs = stack.logs()
    assert "SIMULATED TEE" in logs  # the logs were captured
    assert CANARY not in logs
    if len(answer.strip()) >= 8:
        assert answer not in logs
    metrics = httpx.get(stack.url + "/metrics").text
    assert CANARY not in metrics and "teellm_requests_total" in metrics


# ---------------------------------------------------------------- local proxy


def test_openai_through_the_proxy(stack: LocalStack, tmp_path: Path) -> None:
    import yaml

    from teellm.server.stack import free_port, spawn, teellm_command, wait_http

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(stack.client_policy().model_dump(mode="json")))
    port = free_port()
    args = ["proxy", "--url", stack.url, "--policy", str(policy_file), "--port", str(port)]
    proxy = spawn("proxy", teellm_command(*args, "--api-key", stack.token("alpha")), tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/teellm/report", proxy, timeout=60)
        client = openai.OpenAI(base_url=base + "/v1", api_key=stack.token("alpha"))
        full = client.chat.completions.create(
            model=MODEL, messages=_messages("Hi proxy"), temperature=0, max_tokens=8
        )
        stream = client.chat.completions.create(
            model=MODEL, messages=_messages("Hi proxy"), temperature=0, max_tokens=8, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed == full.choices[0].message.content
        # curl-style: no Authorization header, the proxy adds its configured token.
        r = httpx.post(
            base + "/v1/chat/completions",
            json={"model": MODEL, "messages": _messages("Hi"), "max_tokens": 4},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    finally:
        proxy.stop()
    assert CANARY not in proxy.log_text()


def test_proxy_refuses_to_start_for_a_failing_server(stack: LocalStack, tmp_path: Path) -> None:
    import subprocess

    import yaml

    from teellm.server.stack import free_port, teellm_command

    policy = stack.client_policy(attestation=AppraisalPolicy())  # simulation not allowed
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy.model_dump(mode="json")))
    before = _chat_requests(stack.url)
    args = ["proxy", "--url", stack.url, "--policy", str(policy_file)]
    done = subprocess.run(
        teellm_command(*args, "--port", str(free_port())), capture_output=True, timeout=60
    )
    assert done.returncode == 1 and b"refusing to start" in done.stderr
    assert _chat_requests(stack.url) == before


def test_document_reports_memory_protection(stack: LocalStack) -> None:
    doc = httpx.get(stack.url + "/v1/attestation").json()
    assert doc["simulated"] is True and doc["plain_mode"] is False
    protection = doc["memory_protection"]
    assert {"memfd_secret", "mlock", "dontdump"} <= set(protection)
    held = [name for name in ("memfd_secret", "mlock", "dontdump") if protection[name] is True]
    assert held, protection  # the weights sit in protected memory of some kind
    policy = stack.client_policy(require_memory_protection=held)
    with teellm.Client(stack.url, policy, api_key=stack.token("alpha")) as c:
        assert c.report is not None and c.report.accepted
    config = doc["build"]["serving_config"]
    assert config["e2e_required"] is True and config["tee"] == "simulated"


# ---------------------------------------------------------------- server restart (new keys)


def test_client_reverifies_after_server_restart(stack: LocalStack) -> None:
    """Runs last: the restarted server has new identity keys (same port, same model)."""
    client = teellm.openai_client(stack.url, stack.client_policy(), api_key=stack.token("alpha"))
    session = session_of(client)
    old_key = session.pinned.key_id  # type: ignore[union-attr]
    first = client.chat.completions.create(
        model=MODEL, messages=_messages("Same question"), temperature=0, max_tokens=8
    )
    assert stack.restart_server() in (0, -15)
    new_doc = httpx.get(stack.url + "/v1/attestation").json()
    assert new_doc["public_keys"]["key_id"] != old_key.hex()
    # The old pinned key is refused by the new server; the client re-verifies and resends.
    again = client.chat.completions.create(
        model=MODEL, messages=_messages("Same question"), temperature=0, max_tokens=8
    )
    assert (
        session.pinned is not None
        and session.pinned.key_id.hex() == new_doc["public_keys"]["key_id"]
    )
    assert again.choices[0].message.content == first.choices[0].message.content
    metrics = httpx.get(stack.url + "/metrics").text
    refused = re.search(
        r'teellm_requests_total\{endpoint="chat",mode="-",status="400"\} (\S+)', metrics
    )
    assert refused is not None and float(refused.group(1)) == 1.0  # the stale-key attempt
