"""The server app on a real loopback socket: envelope, receipts, access, bad input, logs.

The engine serves a tiny random Llama model from a plain directory (the sealed path
is covered end to end in test_e2e.py); requests are sealed with the real envelope.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teellm.attestation.policy import AppraisalPolicy
from teellm.attestation.runtime import SimulatedRuntime
from teellm.crypto import envelope, receipts
from teellm.crypto.hpke import HpkePublicKey
from teellm.devmodel import make_model_dir
from teellm.engine import Engine, GenerationRequest, ModelSource, SamplingParams
from teellm.kbs.server import ServerThread
from teellm.server.access import AccessPolicy, Tenant, new_token
from teellm.server.app import ServerContext, ServerLimits, create_app
from teellm.server.boot import Attestor, DocumentSource
from teellm.server.document import AttestationDocument, ClientPolicy, ModelInfo, verify_document
from teellm.server.identity import ServerIdentity
from teellm.settings import ModelSettings

CANARY = "zebra-canary-51f0c2"
MODEL = "tiny-llama"
DIGEST = hashlib.sha256(b"test model").digest()


@dataclass
class Srv:
    url: str
    ctx: ServerContext
    tokens: dict[str, str]
    doc: AttestationDocument

    def sealed(self, path: str, body: dict[str, Any] | bytes) -> envelope.SealedRequest:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return envelope.seal_request(
            raw,
            path=path,
            public_key=HpkePublicKey.from_bytes(self.doc.public_keys.hpke_bytes()),
            server_key_id=bytes.fromhex(self.doc.public_keys.key_id),
        )

    def post_sealed(
        self, path: str, body: dict[str, Any] | bytes, token: str | None = "alpha"
    ) -> tuple[httpx.Response, envelope.SealedRequest]:
        sealed = self.sealed(path, body)
        headers = {"Content-Type": envelope.MEDIA_TYPE}
        if token:
            headers["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        r = httpx.post(self.url + path, content=sealed.wire, headers=headers, timeout=60)
        return r, sealed


def _error(r: httpx.Response, sealed: envelope.SealedRequest | None) -> tuple[dict[str, Any], bool]:
    """The OpenAI error object of a response, and whether it came sealed."""
    if r.headers.get("content-type", "").startswith(envelope.MEDIA_TYPE):
        assert sealed is not None
        return json.loads(sealed.open_response(r.content).data)["error"], True
    return r.json()["error"], False


def _tenants() -> tuple[AccessPolicy, dict[str, str]]:
    tok_a, h_a = new_token()
    tok_b, h_b = new_token()
    tok_c, h_c = new_token()
    policy = AccessPolicy(
        tenants=[
            Tenant(
                name="alpha",
                token_hashes=[h_a],
                models=[MODEL],
                max_tokens=64,
                requests_per_minute=100_000,
            ),
            Tenant(name="beta", token_hashes=[h_b], models=["other-model"]),
            Tenant(
                name="gamma",
                token_hashes=[h_c],
                models=[MODEL],
                requests_per_minute=2,
                max_input_length=40,
            ),
        ]
    )
    return policy, {"alpha": tok_a, "beta": tok_b, "gamma": tok_c}


def _start(tmp: Path, *, plain: bool, attest_rpm: int = 120) -> tuple[ServerThread, Srv, Engine]:
    model_dir = make_model_dir(tmp / "model")
    settings = ModelSettings(precision="float32", batch_size=8, max_input_length=200)
    engine = Engine(ModelSource.from_dir(model_dir), settings, model_id=MODEL).start()
    identity = ServerIdentity.generate()
    access, tokens = _tenants()
    attestor = Attestor(SimulatedRuntime(), identity)
    info = ModelInfo(id=MODEL, version=1, digest=DIGEST.hex(), publisher_key_id="ab" * 32)
    docs = DocumentSource(
        attestor,
        manifest=info,
        serving_config={"plain_mode": plain},
        memory_protection={},
        plain_mode=plain,
    )
    ctx = ServerContext(
        engine=engine,
        access=access,
        identity=identity,
        model_digest=DIGEST,
        attestation=docs,
        plain_allowed=plain,
        limits=ServerLimits(max_body_bytes=64 * 1024, attestation_per_minute=attest_rpm),
        simulated=True,
        make_request=GenerationRequest,
        make_sampling=SamplingParams,
        ready=True,
    )
    thread = ServerThread(create_app(ctx)).start()
    doc = AttestationDocument.model_validate(httpx.get(thread.url + "/v1/attestation").json())
    return thread, Srv(thread.url, ctx, tokens, doc), engine


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srv]:
    thread, s, engine = _start(tmp_path_factory.mktemp("srv"), plain=False, attest_rpm=3)
    yield s
    thread.stop()
    engine.stop()


@pytest.fixture(scope="module")
def plain_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srv]:
    thread, s, engine = _start(tmp_path_factory.mktemp("plain"), plain=True)
    yield s
    thread.stop()
    engine.stop()


def _chat(content: str = "hello", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 8,
    }
    body.update(kw)
    return body


def _sse_events(data: bytes) -> list[str]:
    return [
        line[len("data: ") :]
        for block in data.decode().split("\n\n")
        for line in block.splitlines()
        if line.startswith("data: ")
    ]


# ---------------------------------------------------------------- health, attestation


def test_health_and_metrics(srv: Srv) -> None:
    assert httpx.get(srv.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(srv.url + "/readyz").status_code == 200
    r = httpx.get(srv.url + "/metrics")
    assert r.status_code == 200 and "teellm_requests" in r.text


def test_attestation_document_verifies(srv: Srv) -> None:
    nonce = bytes(range(32))
    doc = AttestationDocument.model_validate(
        httpx.get(srv.url + "/v1/attestation", params={"nonce": nonce.hex()}).json()
    )
    assert doc.simulated and doc.nonce == nonce.hex() and not doc.plain_mode
    policy = ClientPolicy(
        attestation=AppraisalPolicy(allow_simulated=True),
        model_id=MODEL,
        model_digests=[DIGEST.hex()],
    )
    report = verify_document(doc, policy, nonce=nonce)
    assert report.accepted, report.reasons
    # The same document under a policy that refuses simulation fails.
    strict = ClientPolicy(model_id=MODEL, model_digests=[DIGEST.hex()])
    assert not verify_document(doc, strict, nonce=nonce).accepted


def test_attestation_bad_nonce_and_rate_limit(srv: Srv) -> None:
    for bad in ("zz", "", "00" * 65):
        r = httpx.get(srv.url + "/v1/attestation", params={"nonce": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_nonce"
    codes = [
        httpx.get(srv.url + "/v1/attestation", params={"nonce": "01" * 16}).status_code
        for _ in range(5)
    ]
    assert 429 in codes
    # The limit is per client address: another caller still gets fresh evidence.
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with other:
        r = other.get(srv.url + "/v1/attestation", params={"nonce": "02" * 16})
    assert r.status_code == 200
    # The boot document (no nonce) is cached and never rate limited.
    assert httpx.get(srv.url + "/v1/attestation").status_code == 200


# ---------------------------------------------------------------- E2E envelope


def test_sealed_chat_and_receipt(srv: Srv) -> None:
    body = _chat()
    r, sealed = srv.post_sealed("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(envelope.MEDIA_TYPE)
    assert b"chat.completion" not in r.content  # ciphertext only
    opened = sealed.open_response(r.content)
    data = json.loads(opened.data)
    assert data["object"] == "chat.completion" and data["model"] == MODEL
    assert data["usage"]["completion_tokens"] >= 1
    signing = srv.doc.public_keys.signing_bytes()
    receipts.verify_receipt(
        opened.receipt,
        signing,
        request_body=json.dumps(body).encode(),
        response_body=opened.data,
        model_digest=DIGEST,
    )
    # The receipt's plaintext hashes never travel in the clear in E2E mode.
    assert "X-Teellm-Receipt" not in r.headers
    with pytest.raises(receipts.ReceiptError):
        receipts.verify_receipt(opened.receipt, signing, response_body=opened.data + b" ")


def test_sealed_stream_matches_non_stream(srv: Srv) -> None:
    r, sealed = srv.post_sealed("/v1/chat/completions", _chat("tell me", max_tokens=12))
    reference = json.loads(sealed.open_response(r.content).data)["choices"][0]["message"]
    body = _chat("tell me", max_tokens=12, stream=True, stream_options={"include_usage": True})
    r, sealed = srv.post_sealed("/v1/chat/completions", body)
    assert r.status_code == 200
    opened = sealed.open_response(r.content)
    assert opened.content is envelope.ResponseContent.EVENT_STREAM
    events = _sse_events(opened.data)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == reference["content"]
    assert chunks[-1]["usage"]["completion_tokens"] >= 1
    receipts.verify_receipt(
        opened.receipt,
        srv.doc.public_keys.signing_bytes(),
        request_body=json.dumps(body).encode(),
        response_body=opened.data,
    )


def test_sealed_completions(srv: Srv) -> None:
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 4, "temperature": 0}
    r, sealed = srv.post_sealed("/v1/completions", body)
    assert r.status_code == 200
    data = json.loads(sealed.open_response(r.content).data)
    assert data["object"] == "text_completion" and isinstance(data["choices"][0]["text"], str)


def test_plain_refused_unless_enabled(srv: Srv, plain_srv: Srv) -> None:
    headers = {"Authorization": f"Bearer {srv.tokens['alpha']}"}
    r = httpx.post(srv.url + "/v1/chat/completions", json=_chat(), headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "plain_mode_disabled"
    assert plain_srv.doc.plain_mode
    headers = {"Authorization": f"Bearer {plain_srv.tokens['alpha']}"}
    r = httpx.post(plain_srv.url + "/v1/chat/completions", json=_chat(), headers=headers)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    receipts.verify_receipt(
        r.headers["X-Teellm-Receipt"]
        and receipts.Receipt.from_header(r.headers["X-Teellm-Receipt"]),
        plain_srv.doc.public_keys.signing_bytes(),
        response_body=r.content,
    )


def test_plain_stream_ends_with_receipt(plain_srv: Srv) -> None:
    headers = {"Authorization": f"Bearer {plain_srv.tokens['alpha']}"}
    r = httpx.post(plain_srv.url + "/v1/chat/completions", json=_chat(stream=True), headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    head, _, tail = r.content.rpartition(b"event: receipt\ndata: ")
    assert head.endswith(b"data: [DONE]\n\n")
    receipts.verify_receipt(
        tail.strip(), plain_srv.doc.public_keys.signing_bytes(), response_body=head
    )


# ---------------------------------------------------------------- access control


def test_models_per_tenant(srv: Srv) -> None:
    def ids(tok: str) -> list[str]:
        r = httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {tok}"})
        return [m["id"] for m in r.json()["data"]]

    assert ids(srv.tokens["alpha"]) == [MODEL]
    assert ids(srv.tokens["beta"]) == []
    assert httpx.get(srv.url + "/v1/models").status_code == 401


def test_access_errors(srv: Srv) -> None:
    cases = [
        (None, _chat(), 401, "missing_api_key"),
        ("tk-not-a-token", _chat(), 401, "invalid_api_key"),
        ("beta", _chat(), 403, "model_not_allowed"),
        ("alpha", _chat(max_tokens=65), 403, "max_tokens_exceeded"),
        ("gamma", _chat("word " * 20), 403, "input_length_exceeded"),
    ]
    for token, body, status, code in cases:
        r, sealed = srv.post_sealed("/v1/chat/completions", body, token=token)
        err, was_sealed = _error(r, sealed)
        assert (r.status_code, err["code"]) == (status, code), err
        assert err["type"] in ("authentication_error", "permission_error")
        # 401 comes before the envelope is opened; 403 after, so it is sealed.
        assert was_sealed == (status == 403)


def test_rate_limit_429(srv: Srv) -> None:
    statuses = [
        srv.post_sealed("/v1/chat/completions", _chat(max_tokens=1), token="gamma")[0]
        for _ in range(4)
    ]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert limited[0].json()["error"]["type"] == "rate_limit_error"
    assert int(limited[0].headers["Retry-After"]) >= 1


# ---------------------------------------------------------------- bad input


def test_bad_input_is_clean_4xx_and_server_keeps_serving(srv: Srv) -> None:
    auth = {"Authorization": f"Bearer {srv.tokens['alpha']}"}
    sealed_ct = {**auth, "Content-Type": envelope.MEDIA_TYPE}
    url = srv.url + "/v1/chat/completions"

    def sealed_post(body: Any, path: str = "/v1/chat/completions") -> Any:
        return (*srv.post_sealed(path, body), True)

    def raw_post(content: bytes) -> Any:
        return httpx.post(url, content=content, headers=sealed_ct), None, False

    wire = srv.sealed("/v1/chat/completions", _chat()).wire
    cases: list[tuple[Any, int, str]] = [
        (raw_post(b"\x01garbage"), 400, "envelope_malformed"),
        (raw_post(b""), 400, "envelope_malformed"),
        (raw_post(wire[:-1] + bytes([wire[-1] ^ 1])), 400, "envelope_decrypt_failed"),
        (raw_post(b"x" * (65 * 1024)), 413, "payload_too_large"),
        # A request sealed for one endpoint cannot be replayed against another.
        (raw_post(srv.sealed("/v1/completions", _chat()).wire), 400, "envelope_path_mismatch"),
        # After decryption: errors are sealed answers.
        (sealed_post(b"{not json"), 400, "invalid_json"),
        (sealed_post(b"[1,2]"), 400, "invalid_request"),
        (sealed_post(_chat(temperature="hot")), 400, "invalid_request"),
        (sealed_post(_chat(seed=-1)), 400, "invalid_request"),
        (sealed_post(_chat(model="nope")), 404, "model_not_found"),
        (sealed_post(_chat("word " * 300)), 400, "context_length_exceeded"),
        (sealed_post(_chat(), "/v1/completions"), 400, "invalid_request"),
    ]
    for (r, sealed, expect_sealed), status, code in cases:
        assert r.status_code == status, (code, r.text)
        err, was_sealed = _error(r, sealed if expect_sealed else None)
        assert err["code"] == code and isinstance(err["message"], str)
        assert was_sealed == expect_sealed, code
    r = httpx.get(srv.url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r, sealed = srv.post_sealed("/v1/chat/completions", _chat())
    assert r.status_code == 200 and json.loads(sealed.open_response(r.content).data)["choices"]


def test_request_for_another_server_key(srv: Srv) -> None:
    other = ServerIdentity.generate()
    sealed = envelope.seal_request(
        json.dumps(_chat()).encode(),
        path="/v1/chat/completions",
        public_key=other.hpke.public_key,
        server_key_id=other.key_id,
    )
    r = httpx.post(
        srv.url + "/v1/chat/completions",
        content=sealed.wire,
        headers={
            "Authorization": f"Bearer {srv.tokens['alpha']}",
            "Content-Type": envelope.MEDIA_TYPE,
        },
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "key_id_mismatch"
    assert r.headers[envelope.KEY_ID_HEADER] == srv.doc.public_keys.key_id


# ---------------------------------------------------------------- no plaintext in logs


def test_no_prompt_or_output_in_logs_or_metrics(
    srv: Srv, plain_srv: Srv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []
    with caplog.at_level(logging.DEBUG):
        r, sealed = srv.post_sealed("/v1/chat/completions", _chat(CANARY))
        outputs.append(
            json.loads(sealed.open_response(r.content).data)["choices"][0]["message"]["content"]
        )
        r, sealed = srv.post_sealed("/v1/chat/completions", _chat(CANARY, stream=True))
        sealed.open_response(r.content)
        # Refused requests must not echo content either.
        srv.post_sealed("/v1/chat/completions", _chat(CANARY, model=CANARY))
        srv.post_sealed("/v1/chat/completions", _chat(CANARY * 80))
        srv.post_sealed("/v1/chat/completions", {"model": MODEL, "messages": CANARY})
        headers = {"Authorization": f"Bearer {plain_srv.tokens['alpha']}"}
        r = httpx.post(
            plain_srv.url + "/v1/completions",
            headers=headers,
            json={
                "model": MODEL,
                "prompt": CANARY,
                "max_tokens": 8,
                "temperature": 0,
            },
        )
        outputs.append(r.json()["choices"][0]["text"])
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "request refused" in logged  # the capture does see the server's log lines
    metrics = httpx.get(srv.url + "/metrics").text + httpx.get(plain_srv.url + "/metrics").text
    for text in (logged, metrics):
        assert CANARY not in text
        for out in outputs:
            if len(out.strip()) >= 8:
                assert out not in text
    assert "teellm_request_tokens" in metrics
    # Only padded size buckets: no exact token totals, no tenant names.
    assert "teellm_request_tokens_total{" in metrics and 'bucket="' in metrics
    assert "tenant=" not in metrics


def test_token_metric_buckets_hide_exact_lengths() -> None:
    from teellm.server.metrics import token_bucket

    assert [token_bucket(n) for n in (0, 1, 16, 17, 33, 1000, 8192, 8193)] == [
        "16",
        "16",
        "16",
        "32",
        "64",
        "1024",
        "8192",
        "more",
    ]


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.fixed_dictionaries(
        {"model": st.just(MODEL) | _json_values},
        optional={
            "messages": _json_values
            | st.lists(
                st.fixed_dictionaries({"role": st.just("user"), "content": _json_values}),
                max_size=2,
            ),
            "max_tokens": _json_values | st.integers(1, 4),
            "temperature": _json_values,
            "stream": _json_values,
            "stop": _json_values,
        },
    )
)
def test_fuzz_http_bodies_never_5xx(plain_srv: Srv, body: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {plain_srv.tokens['alpha']}"}
    for path in ("/v1/chat/completions", "/v1/completions"):
        r = httpx.post(plain_srv.url + path, json=body, headers=headers, timeout=60)
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            assert set(r.json()["error"]) >= {"message", "type", "code"}


def test_client_hang_up_mid_stream(plain_srv: Srv) -> None:
    """A client that hangs up mid-stream leaves nothing in flight; the server keeps serving."""
    import time

    headers = {"Authorization": f"Bearer {plain_srv.tokens['alpha']}"}
    body = _chat("tell me a long story", stream=True, max_tokens=64)
    with httpx.stream(
        "POST", plain_srv.url + "/v1/chat/completions", json=body, headers=headers
    ) as r:
        assert r.status_code == 200
        next(r.iter_raw())  # the first event, then hang up

    def in_flight() -> float:
        text = httpx.get(plain_srv.url + "/metrics").text
        line = next(ln for ln in text.splitlines() if ln.startswith("teellm_requests_in_flight "))
        return float(line.split()[1])

    deadline = time.monotonic() + 20
    while in_flight() != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight() == 0
    finished = plain_srv.ctx.engine.stats.finished  # type: ignore[attr-defined]
    r = httpx.post(plain_srv.url + "/v1/chat/completions", json=_chat(), headers=headers)
    assert r.status_code == 200
    assert plain_srv.ctx.engine.stats.finished == finished + 1  # type: ignore[attr-defined]
