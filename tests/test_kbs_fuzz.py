"""Hostile input to the key broker's parsers: only typed errors, never a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teellm.attestation.runtime import SimulatedRuntime
from teellm.crypto.secret import SecretBytes
from teellm.errors import TeellmError
from teellm.kbs.client import KeyBrokerClient
from teellm.kbs.errors import BrokerUnavailable
from teellm.kbs.local import LocalBroker
from teellm.kbs.masterkey import parse_master_keys
from teellm.kbs.policy import ReleasePolicy
from teellm.kbs.protocol import SUITES, decode_hex, load_public_key

logging.getLogger("teellm.attestation").setLevel(logging.ERROR)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_policy_yaml_text(text: str) -> None:
    try:
        ReleasePolicy.from_yaml(text)
    except TeellmError as exc:
        assert exc.code == "policy_invalid"


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "min_version",
                "allow_simulated",
                "allowed_tee_types",
                "measurements",
                "appraisal",
                "x",
            ]
        ),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=10)
        | st.lists(st.text(max_size=5), max_size=3)
        | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
        max_size=4,
    )
)
def test_policy_data(data: dict[str, object]) -> None:
    try:
        ReleasePolicy.from_data(data)
    except TeellmError as exc:
        assert exc.code == "policy_invalid"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_master_key_text(text: str) -> None:
    try:
        parse_master_keys(text)
    except TeellmError as exc:
        assert exc.code in ("master_key_bad", "master_key_missing")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SUITES)), st.binary(max_size=1300))
def test_public_key_bytes(suite: str, data: bytes) -> None:
    try:
        load_public_key(SUITES[suite], data)
    except TeellmError as exc:
        assert exc.code == "public_key_invalid"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_hex_fields(text: str) -> None:
    try:
        decode_hex(text, "field", max_bytes=32)
    except TeellmError as exc:
        assert exc.code == "bad_request"


def test_database_outage_is_a_typed_503_and_the_client_gives_up(tmp_path: Path) -> None:
    """A broker whose PostgreSQL goes away answers 503 store errors, never a key."""
    from pg import PostgresServer

    server = PostgresServer()
    try:
        with LocalBroker(server.create_database(), max_failures=1000) as b:
            b.broker.put_key("m", 1, SecretBytes.random(32))
            b.broker.set_policy("m", ReleasePolicy.from_data({"allow_simulated": True}))
            runtime = SimulatedRuntime()
            with KeyBrokerClient(b.url, retries=1, backoff_s=0.01) as c:
                assert len(c.fetch_key("m", 1, runtime)) == 32
                server.stop()
                r = httpx.post(
                    b.url + "/v1/challenge",
                    json={"model_id": "m", "version": 1, "tee_type": "simulated"},
                )
                assert r.status_code == 503 and r.json()["error"]["code"].startswith("store")
                with pytest.raises(BrokerUnavailable):
                    c.fetch_key("m", 1, runtime)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "answer",
    [
        {"request_id": 1},
        {
            "request_id": "r",
            "nonce": "zz",
            "expires_at": "",
            "suite": "MLKEM768-X25519/HKDF-SHA256/AES-256-GCM",
        },
        {
            "request_id": "r",
            "nonce": "00" * 8,
            "expires_at": "",
            "suite": "MLKEM768-X25519/HKDF-SHA256/AES-256-GCM",
        },
        {
            "request_id": "r",
            "nonce": "00" * 32,
            "expires_at": "",
            "suite": "X25519/HKDF-SHA256/AES-256-GCM",
        },
        {
            "request_id": "r",
            "nonce": "00" * 32,
            "expires_at": "",
            "suite": "MLKEM768-X25519/HKDF-SHA256/AES-256-GCM",
        },
        [1, 2],
    ],
)
def test_hostile_broker_answers_are_typed_errors(answer: object) -> None:
    """The client treats the broker's answers as input: a lying broker gets typed errors."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from teellm.kbs.server import ServerThread

    app = FastAPI()

    @app.post("/v1/challenge")
    def challenge() -> JSONResponse:
        return JSONResponse(answer)

    @app.post("/v1/attest")
    def attest() -> JSONResponse:  # a well-formed answer whose sealed key is garbage
        return JSONResponse(
            {
                "sealed_key": "00" * 100,
                "suite": "MLKEM768-X25519/HKDF-SHA256/AES-256-GCM",
                "model_id": "m",
                "version": 1,
            }
        )

    with (
        ServerThread(app) as srv,
        KeyBrokerClient(srv.url, retries=0) as c,
        pytest.raises(TeellmError),
    ):
        c.fetch_key("m", 1, SimulatedRuntime())
