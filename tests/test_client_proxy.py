# ruff: noqa: F811  (the shared server fixtures are imported by name)
"""The local proxy, driven by the unmodified ``openai`` package and plain HTTP."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import openai
import pytest

from teellm.client.proxy import ProxyError, build_proxy_app, check_loopback, serve
from teellm.client.transport import ServerSession
from teellm.server.document import ClientPolicy, VerificationFailed
from test_client_server import (  # noqa: F401 (fixtures)
    POLICY_YAML,
    EchoServer,
    Running,
    echo,
    fresh,
)

MESSAGES = [{"role": "user", "content": "through the proxy"}]


@pytest.fixture(scope="module")
def proxy(echo: EchoServer) -> Iterator[str]:
    session = ServerSession(echo.url, POLICY_YAML)
    with httpx.HTTPTransport() as transport:
        session.verify_with(transport)
    running = Running(build_proxy_app(echo.url, session.policy, session=session, api_key="k"))
    yield running.url
    running.stop()


def test_openai_through_proxy(fresh: EchoServer, proxy: str) -> None:
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0)
    out = client.chat.completions.create(model="echo-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert out.choices[0].message.content == "echo: through the proxy"
    stream = client.chat.completions.create(
        model="echo-model",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "echo: through the proxy"
    assert [m.id for m in client.models.list()] == ["echo-model"]
    # Upstream saw only ciphertext.
    assert fresh.posts and all(b"through the proxy" not in p for p in fresh.posts)


def test_plain_http_and_report(fresh: EchoServer, proxy: str) -> None:
    r = httpx.post(
        proxy + "/v1/completions", json={"model": "echo-model", "prompt": "curl"}, timeout=30
    )
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "echo: curl"
    report = httpx.get(proxy + "/teellm/report", timeout=30).json()
    assert report["accepted"] is True
    missing = httpx.post(
        proxy + "/v1/chat/completions", json={"model": "nope", "messages": MESSAGES}, timeout=30
    )
    assert missing.status_code == 404 and "error" in missing.json()


@pytest.mark.parametrize("mode", ["reorder", "truncate", "bad_receipt"])
def test_tampered_upstream_never_reaches_the_client(
    fresh: EchoServer, proxy: str, mode: str
) -> None:
    fresh.tamper = mode
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0)
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        stream = client.chat.completions.create(
            model="echo-model",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
        for _ in stream:
            pass
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        client.chat.completions.create(model="echo-model", messages=MESSAGES)  # type: ignore[arg-type]


def test_loopback_only() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_loopback(host)
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.com"):
        with pytest.raises(ProxyError):
            check_loopback(host)


def test_proxy_refuses_to_start_for_unverified_server(fresh: EchoServer) -> None:
    policy = ClientPolicy.from_yaml(POLICY_YAML).model_copy(update={"model_id": "other"})
    with pytest.raises(VerificationFailed):
        serve(fresh.url, policy, port=1)  # raises before it would listen
    with pytest.raises(ProxyError):
        serve(fresh.url, policy, host="0.0.0.0", port=1)


def test_no_plaintext_in_logs(
    fresh: EchoServer, proxy: str, caplog: pytest.LogCaptureFixture
) -> None:
    canary = "proxy-canary-41d9 do not log me"
    caplog.set_level(logging.DEBUG)
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0)
    msgs = [{"role": "user", "content": canary}]
    out = client.chat.completions.create(model="echo-model", messages=msgs)  # type: ignore[arg-type]
    assert out.choices[0].message.content == "echo: " + canary
    fresh.tamper = "reorder"  # the error path logs too
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _ in client.chat.completions.create(
            model="echo-model",
            messages=msgs,  # type: ignore[arg-type]
            stream=True,
        ):
            pass
    assert caplog.records  # something was logged, and none of it is the text
    assert canary not in caplog.text and "do not log" not in caplog.text
