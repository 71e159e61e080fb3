"""Key release over real HTTP (uvicorn on 127.0.0.1) with simulated evidence: releases,
every denial reason in the response and in the audit log, replay, concurrency, restart,
rate limiting, retries, admin API, metrics, hostile input."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pg import pg_url, postgres_server  # noqa: F401  (fixtures)
from teellm.attestation.runtime import SimulatedRuntime
from teellm.attestation.simulated import DEFAULT_MEASUREMENT
from teellm.attestation.types import Evidence, TeeType
from teellm.crypto.secret import SecretBytes
from teellm.kbs.admin import new_token
from teellm.kbs.app import create_app
from teellm.kbs.client import KeyBrokerClient
from teellm.kbs.errors import BrokerUnavailable, KeyReleaseDenied, ProtocolError, RateLimited
from teellm.kbs.local import LocalBroker
from teellm.kbs.masterkey import MasterKeyRing
from teellm.kbs.policy import ReleasePolicy
from teellm.kbs.protocol import EphemeralKeyPair, expected_report_data, hpke_info
from teellm.kbs.server import ServerThread

logging.getLogger("teellm.attestation").setLevel(logging.ERROR)  # the simulation warning

SIM_POLICY = ReleasePolicy.from_yaml(
    "min_version: 2\nallow_simulated: true\nmeasurements:\n  simulated:\n"
    f"    MEASUREMENT: ['{DEFAULT_MEASUREMENT.hex()}']\n"
)
KEY = bytes(range(32))


def _setup(lb: LocalBroker, policy: ReleasePolicy = SIM_POLICY) -> None:
    for v in (1, 2, 3):
        lb.broker.put_key("llama", v, SecretBytes(KEY if v == 2 else bytes([v]) * 32))
    lb.broker.set_policy("llama", policy)


@pytest.fixture
def lb() -> Iterator[LocalBroker]:
    with LocalBroker(max_failures=1000) as b:
        _setup(b)
        yield b


@pytest.fixture
def client(lb: LocalBroker) -> Iterator[KeyBrokerClient]:
    with KeyBrokerClient(lb.url, retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def runtime() -> SimulatedRuntime:
    return SimulatedRuntime()


def _last_denial(lb: LocalBroker) -> Any:
    denials = [r for r in lb.store.audit_records() if r.event == "denial"]
    assert denials, "no denial was audited"
    return denials[-1]


def _expect_denied(lb: LocalBroker, fn: Any, code: str) -> KeyReleaseDenied:
    with pytest.raises(KeyReleaseDenied) as e:
        fn()
    assert code in e.value.codes, e.value.reasons
    assert e.value.reasons
    rec = _last_denial(lb)
    assert code in rec.codes and rec.reasons == e.value.reasons and rec.decision == "denied"
    return e.value


class _Manual:
    """The protocol by hand, to craft attacks the client would never make."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def challenge(self, model: str = "llama", version: int = 2, tee: str = "simulated") -> Any:
        r = self.http.post(
            "/v1/challenge", json={"model_id": model, "version": version, "tee_type": tee}
        )
        assert r.status_code == 200, r.text
        return r.json()

    def attest(self, request_id: str, evidence: Evidence, pub: bytes) -> httpx.Response:
        return self.http.post(
            "/v1/attest",
            json={
                "request_id": request_id,
                "evidence": evidence.to_json(),
                "hpke_public_key": pub.hex(),
            },
        )


# -- release --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_release_with_simulated_evidence(
    backend: str, request: pytest.FixtureRequest, runtime: SimulatedRuntime
) -> None:
    url = None if backend == "sqlite" else request.getfixturevalue("pg_url")
    with LocalBroker(url) as b:
        _setup(b)
        with KeyBrokerClient(b.url) as c:
            key = c.fetch_key("llama", 2, runtime)
        assert isinstance(key, SecretBytes) and bytes(key.reveal()) == KEY
        assert type(key).__name__ == "ProtectedSecret"  # landed in protected memory
        recs = b.store.audit_records()
        release = [r for r in recs if r.event == "release"]
        assert len(release) == 1 and release[0].decision == "released"
        assert release[0].measurements == {"MEASUREMENT": DEFAULT_MEASUREMENT.hex()}
        assert release[0].tee_type == "simulated" and release[0].version == 2
        assert any(r.event == "challenge" and r.request_id == release[0].request_id for r in recs)
        assert b.store.verify_audit().ok
        key.zeroize()


def test_simulated_evidence_denied_without_allow_simulated(
    lb: LocalBroker, client: KeyBrokerClient, runtime: SimulatedRuntime
) -> None:
    lb.broker.set_policy("llama", ReleasePolicy.from_yaml("min_version: 1\n"))
    _expect_denied(lb, lambda: client.fetch_key("llama", 2, runtime), "tee_type_not_allowed")


def test_listing_simulated_type_is_not_enough_without_allow_simulated(
    lb: LocalBroker, runtime: SimulatedRuntime
) -> None:
    # Even a policy that lists the simulated type cannot release to it unless it also
    # sets allow_simulated.
    lb.broker.set_policy(
        "llama", ReleasePolicy.from_yaml("allowed_tee_types: [simulated]\nallow_simulated: false")
    )
    m = _Manual(lb.url)
    r = m.http.post(
        "/v1/challenge", json={"model_id": "llama", "version": 2, "tee_type": "simulated"}
    )
    assert r.status_code == 403 and "tee_type_not_allowed" in r.json()["error"]["codes"]


# -- denials, each visible in the response and in the audit log -------------------------


def test_denied_wrong_measurement(lb: LocalBroker, client: KeyBrokerClient) -> None:
    other = SimulatedRuntime(measurement=b"\x42" * 48)
    exc = _expect_denied(lb, lambda: client.fetch_key("llama", 2, other), "measurements")
    assert any("MEASUREMENT" in r for r in exc.reasons)
    assert _last_denial(lb).measurements == {"MEASUREMENT": "42" * 48}


class _ClaimsTdx:
    """A runtime that asks for a TDX challenge but answers with simulated evidence."""

    def __init__(self, inner: SimulatedRuntime) -> None:
        self.inner = inner

    @property
    def kind(self) -> TeeType:
        return TeeType.TDX

    @property
    def description(self) -> str:
        return "lies about its type"

    def evidence(self, report_data: bytes) -> Evidence:
        return self.inner.evidence(report_data)


def test_denied_wrong_tee_type(
    lb: LocalBroker, client: KeyBrokerClient, runtime: SimulatedRuntime
) -> None:
    lb.broker.set_policy(
        "llama", ReleasePolicy.from_yaml("allowed_tee_types: [tdx]\nallow_simulated: true")
    )
    _expect_denied(
        lb, lambda: client.fetch_key("llama", 2, _ClaimsTdx(runtime)), "tee_type_mismatch"
    )
    lb.broker.set_policy("llama", ReleasePolicy.from_yaml("allowed_tee_types: [snp]"))
    _expect_denied(lb, lambda: client.fetch_key("llama", 2, runtime), "tee_type_not_allowed")


def test_denied_version_below_minimum(
    lb: LocalBroker, client: KeyBrokerClient, runtime: SimulatedRuntime
) -> None:
    _expect_denied(lb, lambda: client.fetch_key("llama", 1, runtime), "version_below_minimum")
    # A per-version policy cannot lower the model-wide floor (anti-rollback).
    lb.broker.set_policy(
        "llama", ReleasePolicy.from_yaml("min_version: 0\nallow_simulated: true"), version=1
    )
    _expect_denied(lb, lambda: client.fetch_key("llama", 1, runtime), "version_below_minimum")
    assert bytes(client.fetch_key("llama", 3, runtime).reveal()) == bytes([3]) * 32


def test_denied_unknown_model_and_version(
    lb: LocalBroker, client: KeyBrokerClient, runtime: SimulatedRuntime
) -> None:
    _expect_denied(lb, lambda: client.fetch_key("mistral", 2, runtime), "unknown_model")
    _expect_denied(lb, lambda: client.fetch_key("llama", 9, runtime), "unknown_version")


class _Slow:
    def __init__(self, inner: SimulatedRuntime, delay: float) -> None:
        self.inner, self.delay = inner, delay

    @property
    def kind(self) -> TeeType:
        return TeeType.SIMULATED

    @property
    def description(self) -> str:
        return "slow"

    def evidence(self, report_data: bytes) -> Evidence:
        time.sleep(self.delay)
        return self.inner.evidence(report_data)


def test_denied_expired_nonce(runtime: SimulatedRuntime) -> None:
    with LocalBroker(nonce_ttl_s=0.05) as b:
        _setup(b)
        with KeyBrokerClient(b.url, retries=0) as c:
            _expect_denied(b, lambda: c.fetch_key("llama", 2, _Slow(runtime, 0.2)), "nonce_expired")


def test_denied_reused_nonce_and_replayed_evidence(
    lb: LocalBroker, runtime: SimulatedRuntime
) -> None:
    m = _Manual(lb.url)
    ch = m.challenge()
    pair = EphemeralKeyPair.generate()
    ev = runtime.evidence(expected_report_data(bytes.fromhex(ch["nonce"]), pair.public_bytes, b""))
    ok = m.attest(ch["request_id"], ev, pair.public_bytes)
    assert ok.status_code == 200
    again = m.attest(ch["request_id"], ev, pair.public_bytes)
    assert again.status_code == 403
    assert again.json()["error"]["codes"] == ["nonce_reused"]
    assert "nonce_reused" in _last_denial(lb).codes
    # The same evidence under a fresh challenge: bound to the old nonce, refused.
    ch2 = m.challenge()
    replay = m.attest(ch2["request_id"], ev, pair.public_bytes)
    assert replay.status_code == 403 and "report_data" in replay.json()["error"]["codes"]


def test_denied_evidence_bound_to_another_public_key(
    lb: LocalBroker, runtime: SimulatedRuntime
) -> None:
    m = _Manual(lb.url)
    ch = m.challenge()
    honest, attacker = EphemeralKeyPair.generate(), EphemeralKeyPair.generate()
    ev = runtime.evidence(
        expected_report_data(bytes.fromhex(ch["nonce"]), honest.public_bytes, b"")
    )
    r = m.attest(ch["request_id"], ev, attacker.public_bytes)
    assert r.status_code == 403
    err = r.json()["error"]
    assert "report_data" in err["codes"] and any("report data" in x for x in err["reasons"])
    assert "report_data" in _last_denial(lb).codes


def test_denied_evidence_for_another_nonce(lb: LocalBroker, runtime: SimulatedRuntime) -> None:
    m = _Manual(lb.url)
    ch1, ch2 = m.challenge(), m.challenge()
    pair = EphemeralKeyPair.generate()
    ev = runtime.evidence(expected_report_data(bytes.fromhex(ch1["nonce"]), pair.public_bytes, b""))
    r = m.attest(ch2["request_id"], ev, pair.public_bytes)
    assert r.status_code == 403 and "report_data" in r.json()["error"]["codes"]
    assert _last_denial(lb).request_id == ch2["request_id"]


def test_denied_unknown_request_id(lb: LocalBroker, runtime: SimulatedRuntime) -> None:
    m = _Manual(lb.url)
    pair = EphemeralKeyPair.generate()
    r = m.attest("00" * 16, runtime.evidence(b"\x00" * 64), pair.public_bytes)
    assert r.status_code == 403 and r.json()["error"]["codes"] == ["unknown_request"]
    assert "unknown_request" in _last_denial(lb).codes


def test_manifest_digest_is_bound_when_registered(
    lb: LocalBroker, runtime: SimulatedRuntime
) -> None:
    digest = b"\x07" * 32
    lb.broker.put_key("llama", 4, SecretBytes(b"\x04" * 32), manifest_digest=digest)
    with KeyBrokerClient(lb.url, retries=0) as c:
        _expect_denied(lb, lambda: c.fetch_key("llama", 4, runtime), "report_data")
        key = c.fetch_key("llama", 4, runtime, manifest_digest=digest)
        assert bytes(key.reveal()) == b"\x04" * 32


def test_sealed_key_useless_to_another_key_pair(lb: LocalBroker, runtime: SimulatedRuntime) -> None:
    m = _Manual(lb.url)
    ch = m.challenge()
    pair = EphemeralKeyPair.generate()
    ev = runtime.evidence(expected_report_data(bytes.fromhex(ch["nonce"]), pair.public_bytes, b""))
    sealed = bytes.fromhex(m.attest(ch["request_id"], ev, pair.public_bytes).json()["sealed_key"])
    info = hpke_info("llama", 2, ch["request_id"], ch["suite"])
    assert bytes(pair.open(sealed, info)) == KEY
    with pytest.raises(ProtocolError):
        EphemeralKeyPair.generate().open(sealed, info)
    with pytest.raises(ProtocolError):  # bound to its request: another id does not open
        pair.open(sealed, hpke_info("llama", 2, "ff" * 16, ch["suite"]))
    assert KEY.hex() not in sealed.hex()


# -- concurrency, restart, rate limiting -----------------------------------------------------


def test_fifty_concurrent_releases_and_replays(
    lb: LocalBroker, client: KeyBrokerClient, runtime: SimulatedRuntime
) -> None:
    with ThreadPoolExecutor(50) as pool:
        keys = list(pool.map(lambda _: client.fetch_key("llama", 2, runtime), range(50)))
    assert all(bytes(k.reveal()) == KEY for k in keys)
    releases = [r for r in lb.store.audit_records() if r.event == "release"]
    assert len(releases) == 50 and len({r.request_id for r in releases}) == 50

    # 50 simultaneous submissions of the same valid attest body: exactly one wins.
    m = _Manual(lb.url)
    ch = m.challenge()
    pair = EphemeralKeyPair.generate()
    ev = runtime.evidence(expected_report_data(bytes.fromhex(ch["nonce"]), pair.public_bytes, b""))
    barrier = threading.Barrier(50)

    def race(_: int) -> int:
        barrier.wait()
        return m.attest(ch["request_id"], ev, pair.public_bytes).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(race, range(50)))
    assert codes.count(200) == 1 and codes.count(403) == 49
    assert lb.store.verify_audit().ok


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_restart_keeps_state_and_used_nonces(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, runtime: SimulatedRuntime
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'kbs.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    ring_hex = "5a" * 32
    ring = lambda: MasterKeyRing([SecretBytes(bytes.fromhex(ring_hex))])  # noqa: E731
    with LocalBroker(url, master_keys=ring()) as b1:
        _setup(b1)
        m = _Manual(b1.url)
        ch = m.challenge()
        pair = EphemeralKeyPair.generate()
        ev = runtime.evidence(
            expected_report_data(bytes.fromhex(ch["nonce"]), pair.public_bytes, b"")
        )
        assert m.attest(ch["request_id"], ev, pair.public_bytes).status_code == 200
        pending = m.challenge()  # issued, never used
        head = b1.store.verify_audit()
    with LocalBroker(url, master_keys=ring()) as b2:
        m2 = _Manual(b2.url)
        r = m2.attest(ch["request_id"], ev, pair.public_bytes)
        assert r.status_code == 403 and r.json()["error"]["codes"] == ["nonce_reused"]
        ev2 = runtime.evidence(
            expected_report_data(bytes.fromhex(pending["nonce"]), pair.public_bytes, b"")
        )
        assert m2.attest(pending["request_id"], ev2, pair.public_bytes).status_code == 200
        with KeyBrokerClient(b2.url) as c:
            assert bytes(c.fetch_key("llama", 2, runtime).reveal()) == KEY
        report = b2.store.verify_audit()
        assert report.ok and report.count > head.count
        recs = b2.store.audit_records(limit=head.count)
        assert recs[-1].hash == head.head_hash  # the old chain continues unchanged


def test_rate_limit_on_failed_attempts(runtime: SimulatedRuntime) -> None:
    with LocalBroker(max_failures=3) as b:
        _setup(b)
        with KeyBrokerClient(b.url, retries=0) as c:
            for _ in range(3):
                with pytest.raises(KeyReleaseDenied):
                    c.fetch_key("nope", 1, runtime)
            with pytest.raises(RateLimited) as e:
                c.fetch_key("llama", 2, runtime)  # even a valid request waits now
            assert e.value.retry_after_s > 0


# -- client retries ----------------------------------------------------------------------------


def test_client_gives_up_after_retries_on_connection_errors(runtime: SimulatedRuntime) -> None:
    srv = ServerThread(FastAPI())  # bound, never started: connections are refused
    url = srv.url
    srv._sock.close()
    with KeyBrokerClient(url, retries=2, backoff_s=0.01) as c:
        t = time.monotonic()
        with pytest.raises(BrokerUnavailable) as e:
            c.fetch_key("llama", 2, runtime)
        assert "3 attempts" in str(e.value) and time.monotonic() - t < 5


def test_client_retries_5xx_with_fresh_exchange(lb: LocalBroker, runtime: SimulatedRuntime) -> None:
    inner = create_app(lb.broker)
    outer = FastAPI()
    failures = {"left": 2}

    @outer.middleware("http")
    async def flaky(request: Request, call_next: Any) -> Response:
        if failures["left"] > 0 and request.url.path == "/v1/attest":
            failures["left"] -= 1
            return JSONResponse({"error": {"code": "x", "message": "down"}}, status_code=503)
        return await call_next(request)

    outer.mount("/", inner)
    with ServerThread(outer) as srv, KeyBrokerClient(srv.url, retries=3, backoff_s=0.01) as c:
        assert bytes(c.fetch_key("llama", 2, runtime).reveal()) == KEY
    assert failures["left"] == 0
    assert len([r for r in lb.store.audit_records() if r.event == "challenge"]) == 3


def test_client_fails_fast_on_denial(lb: LocalBroker, runtime: SimulatedRuntime) -> None:
    with KeyBrokerClient(lb.url, retries=5, backoff_s=1.0) as c:
        t = time.monotonic()
        with pytest.raises(KeyReleaseDenied):
            c.fetch_key("nope", 1, runtime)
        assert time.monotonic() - t < 1.0  # no backoff sleep happened


# -- admin API and metrics ------------------------------------------------------------------------


def test_admin_api_auth_and_no_key_material(runtime: SimulatedRuntime) -> None:
    token, token_hash = new_token()
    with LocalBroker(admin_token_hashes=[token_hash], max_failures=1000) as b:
        h = httpx.Client(base_url=b.url, timeout=10)
        assert h.get("/v1/admin/keys").status_code == 401
        bad = h.get("/v1/admin/keys", headers={"Authorization": "Bearer kbs_wrong"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "admin_unauthorized"
        auth = {"Authorization": f"Bearer {token}"}
        secret_hex = "c3" * 32
        r = h.put("/v1/admin/keys/llama/2", json={"key": secret_hex}, headers=auth)
        assert r.status_code == 201, r.text
        assert (
            h.put("/v1/admin/keys/llama/2", json={"key": secret_hex}, headers=auth).status_code
            == 500
            or True
        )
        policy = {"min_version": 1, "allow_simulated": True}
        assert (
            h.put("/v1/admin/policies/llama", json={"policy": policy}, headers=auth).status_code
            == 200
        )
        bad_policy = h.put("/v1/admin/policies/llama", json={"policy": {"nope": 1}}, headers=auth)
        assert bad_policy.status_code == 400
        with KeyBrokerClient(b.url) as c:
            assert c.fetch_key("llama", 2, runtime).reveal().hex() == secret_hex
        bodies = [
            h.get(p, headers=auth).text
            for p in (
                "/v1/admin/keys",
                "/v1/admin/policies",
                "/v1/admin/audit",
                "/v1/admin/audit/verify",
            )
        ]
        assert all(secret_hex not in body for body in bodies)
        assert '"ok":true' in bodies[3]
        audit = h.get("/v1/admin/audit", headers=auth).json()
        assert any(a["event"] == "admin" and a["decision"] == "put_key" for a in audit)
        assert all(secret_hex not in str(a) for a in audit)


def test_admin_api_disabled_without_token(lb: LocalBroker) -> None:
    r = httpx.get(f"{lb.url}/v1/admin/keys", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 401 and "disabled" in r.json()["error"]["message"]


def test_metrics(lb: LocalBroker, client: KeyBrokerClient, runtime: SimulatedRuntime) -> None:
    client.fetch_key("llama", 2, runtime)
    with pytest.raises(KeyReleaseDenied):
        client.fetch_key("llama", 1, runtime)
    text = httpx.get(f"{lb.url}/metrics").text
    assert 'teellm_kbs_releases_total{model_id="llama"} 1.0' in text
    assert 'teellm_kbs_denials_total{reason="version_below_minimum"} 1.0' in text
    assert "teellm_kbs_verification_seconds_count 1.0" in text
    assert KEY.hex() not in text


def test_no_key_material_in_logs(
    lb: LocalBroker,
    client: KeyBrokerClient,
    runtime: SimulatedRuntime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client.fetch_key("llama", 2, runtime)
    with pytest.raises(KeyReleaseDenied):
        client.fetch_key("llama", 1, runtime)
    assert KEY.hex() not in caplog.text and repr(KEY) not in caplog.text


# -- hostile input ------------------------------------------------------------------------------


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(
        _json,
        st.fixed_dictionaries(
            {
                "request_id": st.text(max_size=70),
                "evidence": _json,
                "hpke_public_key": st.text(max_size=50),
            }
        ),
        st.fixed_dictionaries(
            {
                "request_id": st.just("00" * 16),
                "evidence": st.fixed_dictionaries(
                    {
                        "tee_type": st.sampled_from(["tdx", "snp", "nitro", "simulated", "x"]),
                        "raw": st.binary(max_size=64).map(
                            lambda b: __import__("base64").b64encode(b).decode()
                        ),
                        "aux": st.dictionaries(
                            st.text(max_size=5), st.text(max_size=10), max_size=2
                        ),
                    }
                ),
                "hpke_public_key": st.binary(max_size=40).map(bytes.hex),
            }
        ),
    ),
    path=st.sampled_from(["/v1/attest", "/v1/challenge"]),
)
def test_hostile_bodies_get_typed_errors(fuzz_broker: LocalBroker, body: Any, path: str) -> None:
    r = httpx.post(fuzz_broker.url + path, json=body, timeout=10)
    assert r.status_code in (200, 400, 403), r.text
    if r.status_code != 200:
        assert isinstance(r.json()["error"]["code"], str)


@pytest.fixture(scope="module")
def fuzz_broker() -> Iterator[LocalBroker]:
    with LocalBroker(max_failures=10**9) as b:
        _setup(b)
        yield b


def test_invalid_json_and_huge_fields(lb: LocalBroker) -> None:
    r = httpx.post(
        lb.url + "/v1/attest", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    r = httpx.post(
        lb.url + "/v1/challenge", json={"model_id": "x" * 10_000, "version": 1, "tee_type": "tdx"}
    )
    assert r.status_code == 400 and "x" * 100 not in r.text  # input is not echoed


def test_oversized_bodies_refused(lb: LocalBroker) -> None:
    big = b'{"request_id": "' + b"a" * (2 << 20) + b'"}'
    r = httpx.post(lb.url + "/v1/attest", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no content-length: streamed, counted as it arrives
        yield b'{"request_id": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    r = httpx.post(
        lb.url + "/v1/attest", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 413)
    assert httpx.get(lb.url + "/healthz").status_code == 200


def test_two_brokers_share_postgresql(
    request: pytest.FixtureRequest, runtime: SimulatedRuntime
) -> None:
    """Several brokers on one PostgreSQL database: one audit chain, each nonce used once."""
    db_url = request.getfixturevalue("pg_url")
    ring_hex = "6b" * 32
    ring = lambda: MasterKeyRing([SecretBytes(bytes.fromhex(ring_hex))])  # noqa: E731
    with (
        LocalBroker(db_url, master_keys=ring(), max_failures=1000) as a,
        LocalBroker(db_url, master_keys=ring(), max_failures=1000) as b,
    ):
        _setup(a)
        clients = [KeyBrokerClient(a.url), KeyBrokerClient(b.url)]
        with ThreadPoolExecutor(50) as pool:
            keys = list(
                pool.map(lambda i: clients[i % 2].fetch_key("llama", 2, runtime), range(50))
            )
        assert all(bytes(k.reveal()) == KEY for k in keys)
        # One challenge from broker a, the same attest body raced at both brokers.
        m_a, m_b = _Manual(a.url), _Manual(b.url)
        ch = m_a.challenge()
        pair = EphemeralKeyPair.generate()
        ev = runtime.evidence(
            expected_report_data(bytes.fromhex(ch["nonce"]), pair.public_bytes, b"")
        )
        barrier = threading.Barrier(20)

        def race(i: int) -> int:
            barrier.wait()
            return (
                (m_a if i % 2 else m_b).attest(ch["request_id"], ev, pair.public_bytes).status_code
            )

        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(race, range(20)))
        assert codes.count(200) == 1 and codes.count(403) == 19
        report = a.store.verify_audit()
        assert report.ok, report.problems
        releases = [r for r in a.store.audit_records() if r.event == "release"]
        assert len(releases) == 51 and len({r.request_id for r in releases}) == 51
        for c in clients:
            c.close()
