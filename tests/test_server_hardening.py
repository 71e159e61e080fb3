"""Security regressions: server, boot, local proxy, key broker, verification report.

The first tests use an engine stand-in that fails on purpose with the prompt in its
error message (the real engine cannot be made to fail on demand); everything else
is real: uvicorn on loopback, the envelope, access control, receipts, sealed
bundles, SQLite.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from teellm.attestation.runtime import SimulatedRuntime
from teellm.crypto import envelope
from teellm.kbs.server import ServerThread
from teellm.server.access import AccessPolicy, Tenant, new_token
from teellm.server.app import ServerContext, create_app
from teellm.server.boot import Attestor, DocumentSource
from teellm.server.document import ModelInfo
from teellm.server.identity import ServerIdentity

CANARY = "okapi-canary-7d21e9"
MODEL = "m"


class FailingEngine:
    """Fails with the request's content in the message, where ``where`` says."""

    model_id = MODEL
    max_input_length = 1000

    def __init__(self) -> None:
        self.where = "count"

    def count_prompt_tokens(self, req: Any) -> int:
        if self.where == "count":
            raise RuntimeError(f"cannot tokenize {req['messages']}")
        return 1

    async def stream(self, req: Any) -> AsyncGenerator[Any, None]:
        raise KeyError(f"no slot for {req['messages']}")
        yield  # pragma: no cover - makes this an async generator


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, str, ServerIdentity, FailingEngine]]:
    token, token_hash = new_token()
    identity = ServerIdentity.generate()
    info = ModelInfo(id=MODEL, version=1, digest="00" * 32, publisher_key_id="ab" * 32)
    docs = DocumentSource(
        Attestor(SimulatedRuntime(), identity),
        manifest=info,
        serving_config={},
        memory_protection={},
        plain_mode=False,
    )
    engine = FailingEngine()
    ctx = ServerContext(
        engine=engine,
        access=AccessPolicy(tenants=[Tenant(name="t", token_hashes=[token_hash], models=["*"])]),
        identity=identity,
        model_digest=bytes(32),
        attestation=docs,
        ready=True,
        make_request=lambda **kw: kw,
        make_sampling=lambda **kw: kw,
    )
    with ServerThread(create_app(ctx)) as thread:
        yield thread.url, token, identity, engine


@pytest.fixture
def server_log() -> Iterator[io.StringIO]:
    """Everything the app and uvicorn log (uvicorn's loggers do not propagate)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    loggers = [
        logging.getLogger(),
        logging.getLogger("uvicorn"),
        logging.getLogger("uvicorn.error"),
    ]
    for lg in loggers:
        lg.addHandler(handler)
    yield buf
    for lg in loggers:
        lg.removeHandler(handler)


@pytest.mark.parametrize(
    ("where", "stream"), [("count", False), ("stream", False), ("stream", True)]
)
def test_unexpected_error_is_sealed_and_not_logged(
    server: tuple[str, str, ServerIdentity, FailingEngine],
    server_log: io.StringIO,
    where: str,
    stream: bool,
) -> None:
    url, token, identity, engine = server
    engine.where = where
    body = {"model": MODEL, "messages": [{"role": "user", "content": CANARY}], "stream": stream}
    sealed = envelope.seal_request(
        json.dumps(body).encode(),
        path="/v1/chat/completions",
        public_key=identity.hpke.public_key,
        server_key_id=identity.key_id,
    )
    r = httpx.post(
        url + "/v1/chat/completions",
        content=sealed.wire,
        headers={"Content-Type": envelope.MEDIA_TYPE, "Authorization": f"Bearer {token}"},
        timeout=30,
    )
    # The answer is sealed like any other, and says only "internal error".
    assert r.headers["content-type"].startswith(envelope.MEDIA_TYPE)
    opened = sealed.open_response(r.content)
    assert CANARY.encode() not in r.content
    assert b"internal_error" in opened.data and CANARY.encode() not in opened.data
    assert r.status_code == (200 if stream else 500)
    # Nothing the server logged quotes the prompt.
    assert "RuntimeError" in server_log.getvalue() or "KeyError" in server_log.getvalue()
    assert CANARY not in server_log.getvalue()


@pytest.fixture
def swapped_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Any]:
    """Versions 1 and 2 sealed under one key; storage answers the boot's first manifest
    read with version 2's genuine manifest while the bundle itself is version 1.
    Returns (bundle dir, publisher key file, content key)."""
    from teellm.bundle.keys import generate_signing_key, write_signing_key
    from teellm.bundle.manifest import read_manifest
    from teellm.bundle.seal import seal_model
    from teellm.crypto.secret import SecretBytes
    from teellm.devmodel import make_model_dir
    from teellm.server import boot as boot_mod

    model_dir = make_model_dir(tmp_path / "model")
    signing_key = generate_signing_key()
    publisher = write_signing_key(tmp_path / "publisher.pem", signing_key)
    key = SecretBytes.random(32)
    for version in (1, 2):
        seal_model(
            model_dir,
            tmp_path / f"v{version}",
            model_id=MODEL,
            version=version,
            signing_key=signing_key,
            content_key=SecretBytes(key.reveal()),
        )
    newer = read_manifest(tmp_path / "v2")
    monkeypatch.setattr(boot_mod, "read_manifest", lambda _dir: newer)
    return tmp_path / "v1", publisher, key


def test_boot_refuses_a_manifest_swapped_under_it(swapped_bundle: tuple[Path, Path, Any]) -> None:
    """The server must not attest version 2 while serving version 1."""
    from teellm.bundle.errors import ManifestChangedError
    from teellm.server import boot as boot_mod
    from teellm.settings import ModelSettings

    bundle, publisher, key = swapped_bundle
    opts = boot_mod.BootOptions(
        bundle=bundle,
        trusted_publishers=[publisher],
        access=AccessPolicy(),
        content_key=key,
        settings=ModelSettings(precision="float32", batch_size=1, max_input_length=64),
    )
    with pytest.raises(ManifestChangedError) as info:
        booted = boot_mod.boot(opts, runtime=SimulatedRuntime())
        booted.close()
    assert info.value.code == "manifest_changed"


def test_in_process_load_refuses_a_manifest_swapped_under_it(
    swapped_bundle: tuple[Path, Path, Any],
) -> None:
    """The same swap, through ``LLMInference.load``."""
    from teellm.bundle.errors import ManifestChangedError
    from teellm.inference import LLMInference
    from teellm.settings import ModelSettings

    bundle, publisher, key = swapped_bundle
    settings = ModelSettings(
        precision="float32", batch_size=1, max_input_length=64, encryption_key=key
    )
    llm = LLMInference(MODEL, settings, runtime=SimulatedRuntime())
    with pytest.raises(ManifestChangedError):
        llm.load(bundle, trusted_publishers=[publisher])
        llm.close()


def test_local_proxy_refuses_requests_a_web_page_could_make() -> None:
    """DNS rebinding (foreign Host) or a cross-site POST (foreign Origin) must not reach
    the upstream server with the API key the proxy adds."""
    from teellm.client.proxy import build_proxy_app
    from teellm.server.document import ClientPolicy

    policy = ClientPolicy(trusted_publishers=["ab" * 32])
    app = build_proxy_app("http://127.0.0.1:9", policy, api_key="tk-user-secret")
    with ServerThread(app) as thread:
        port = thread.port
        refused = [
            {"Host": "evil.example"},
            {"Host": f"rebind.evil.example:{port}"},
            {"Host": f"127.0.0.1:{port}", "Origin": "https://evil.example"},
            {"Host": f"127.0.0.1:{port}", "Origin": "null"},
        ]
        for headers in refused:
            for method, path in (("GET", "/teellm/report"), ("POST", "/v1/chat/completions")):
                r = httpx.request(method, thread.url + path, headers=headers, content=b"{}")
                assert r.status_code == 403, (headers, path)
                assert r.json()["error"]["code"] == "proxy_foreign_origin"
        allowed = [
            {},
            {"Host": f"localhost:{port}"},
            {"Host": f"127.0.0.1:{port}", "Origin": f"http://localhost:{port}"},
        ]
        for headers in allowed:
            r = httpx.get(thread.url + "/teellm/report", headers=headers)
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_verified"


def test_audit_verification_reports_garbage_rows_instead_of_crashing(tmp_path: Path) -> None:
    """Whoever edits the broker's audit table may write anything: verification must
    report the damage, not raise on it."""
    from teellm.kbs.audit import AuditEvent
    from teellm.kbs.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'kbs.db'}")
    try:
        for i in range(3):
            store.append_audit(AuditEvent(event="challenge", decision="issued", model_id=f"m{i}"))
        with store._tx(write=True) as tx:
            tx.execute("UPDATE audit SET prev_hash = 'not hex' WHERE seq = 2")
        report = store.verify_audit()
        assert not report.ok and any("row 2" in p for p in report.problems)
        with store._tx(write=True) as tx:
            tx.execute("UPDATE meta SET v = 'x:y' WHERE k = 'audit_head'")
        report = store.verify_audit()
        assert not report.ok and any("chain head" in p for p in report.problems)
    finally:
        store.close()


def test_verification_report_prints_server_text_inertly() -> None:
    """Escape sequences or rich markup in a hostile document's fields must not reach
    the terminal as such: they could hide the REFUSED verdict printed after them."""
    from datetime import UTC, datetime

    from rich.console import Console

    from teellm.server.document import ReportCheck, VerificationReport

    hostile = "tiny\x1b[8m\x1b[41m[conceal]VERIFIED: every check passed"
    report = VerificationReport(
        accepted=False,
        checks=[ReportCheck(name="model_id", passed=False, reason=hostile, measured=hostile)],
        model=ModelInfo(id=hostile, version=1, digest="00" * 32, publisher_key_id="ab" * 32),
        tee_type="tdx",
        measurements={"MRTD": hostile},
        verified_at=datetime.now(UTC),
    )
    out = io.StringIO()
    report.render(Console(file=out, force_terminal=True, width=400))
    text = out.getvalue()
    assert "\x1b[8m" not in text and "\x1b[41m" not in text
    assert "[conceal]" in text  # shown as text, not applied as markup
    assert "REFUSED" in text


def test_broker_admin_api_answers_out_of_range_versions_with_400(tmp_path: Path) -> None:
    """Integers beyond the database's 64 bits were an OverflowError (500 and a traceback)."""
    from teellm.kbs.admin import new_token
    from teellm.kbs.app import create_app as kbs_app
    from teellm.kbs.broker import KeyBroker
    from teellm.kbs.masterkey import MasterKeyRing, generate_master_key_file
    from teellm.kbs.store import open_store

    generate_master_key_file(tmp_path / "master.key")
    store = open_store(f"sqlite:///{tmp_path / 'kbs.db'}")
    broker = KeyBroker(store, MasterKeyRing.from_file(tmp_path / "master.key"))
    token, token_hash = new_token()
    huge = 10**20
    try:
        with ServerThread(kbs_app(broker, admin_token_hashes=[token_hash])) as thread:
            auth = {"Authorization": f"Bearer {token}"}
            base = thread.url + "/v1/admin"
            answers = [
                httpx.put(f"{base}/keys/m/{huge}", json={"key": "00" * 32}, headers=auth),
                httpx.put(f"{base}/policies/m", json={"policy": {}, "version": huge}, headers=auth),
                httpx.put(
                    f"{base}/policies/m", json={"policy": {"min_version": huge}}, headers=auth
                ),
            ]
            assert [r.status_code for r in answers] == [400, 400, 400]
            assert httpx.get(f"{base}/audit", params={"after": huge}, headers=auth).json() == []
    finally:
        store.close()
