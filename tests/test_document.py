"""Attestation document: build with the simulated TEE, verify, and catch every substitution."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from teellm.attestation.runtime.simulated import SimulatedRuntime
from teellm.crypto import envelope
from teellm.crypto.hpke import HpkePrivateKey, Kem
from teellm.server import document as d

PUBLISHER = "ab" * 32
DIGEST = hashlib.sha256(b"manifest bytes").hexdigest()


@dataclass
class Identity:
    hpke: HpkePrivateKey
    signing: Ed25519PrivateKey

    @property
    def hpke_public(self) -> bytes:
        return self.hpke.public_key.raw

    @property
    def signing_public(self) -> bytes:
        return self.signing.public_key().public_bytes_raw()

    @property
    def key_id(self) -> bytes:
        return envelope.key_id(self.hpke_public, self.signing_public)


@pytest.fixture(scope="module")
def identity() -> Identity:
    return Identity(HpkePrivateKey.generate(Kem.X25519), Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def runtime() -> SimulatedRuntime:
    return SimulatedRuntime()


MODEL = d.ModelInfo(id="tiny-llama", version=3, digest=DIGEST, publisher_key_id=PUBLISHER)


def _doc(
    runtime: SimulatedRuntime, identity: Identity, nonce: bytes, **kw: Any
) -> d.AttestationDocument:
    args: dict[str, Any] = {
        "runtime": runtime,
        "identity": identity,
        "model": MODEL,
        "memory_protection": {"mlock": True, "dontdump": True, "memfd_secret": False},
        "serving_config": {"batch_size": 8, "precision": "bfloat16"},
        "nonce": nonce,
    }
    args.update(kw)
    return d.build_document(**args)


def _policy(**kw: Any) -> d.ClientPolicy:
    base: dict[str, Any] = {
        "attestation": {"allowed_tee_types": ["simulated"], "allow_simulated": True},
        "model_id": "tiny-llama",
        "min_model_version": 2,
        "trusted_publishers": [PUBLISHER],
    }
    base.update(kw)
    return d.ClientPolicy.model_validate(base)


def _failed(report: d.VerificationReport) -> set[str]:
    return {c.name for c in report.failures}


def test_honest_document_verifies(runtime: SimulatedRuntime, identity: Identity) -> None:
    nonce = secrets.token_bytes(32)
    doc = _doc(runtime, identity, nonce)
    again = d.AttestationDocument.from_json(doc.to_json())
    report = d.verify_document(again, _policy(), nonce=nonce, url="http://x")
    assert report.accepted, report.reasons
    names = {c.name for c in report.checks}
    assert {"nonce", "key_id", "evidence.report_data", "model_id", "publisher"} <= names
    assert report.simulated and report.tee_type == "simulated"
    assert report.measurements
    keys = d.pinned_keys(again)
    assert keys.key_id == identity.key_id and keys.hpke.raw == identity.hpke_public
    json.loads(report.to_json())
    buf = io.StringIO()
    report.render(Console(file=buf, width=200))
    assert "VERIFIED" in buf.getvalue()


def test_simulated_refused_by_default(runtime: SimulatedRuntime, identity: Identity) -> None:
    nonce = secrets.token_bytes(32)
    report = d.verify_document(_doc(runtime, identity, nonce), _policy(attestation={}), nonce=nonce)
    assert not report.accepted
    assert "evidence.simulated" in _failed(report)
    with pytest.raises(d.VerificationFailed) as info:
        report.raise_for_failure()
    assert info.value.code == "verification_failed" and info.value.report is report
    buf = io.StringIO()
    report.render(Console(file=buf, width=200))
    assert "REFUSED" in buf.getvalue()


def test_stale_nonce_is_refused(runtime: SimulatedRuntime, identity: Identity) -> None:
    doc = _doc(runtime, identity, b"old nonce")
    report = d.verify_document(doc, _policy(), nonce=b"fresh nonce")
    assert {"nonce", "evidence.report_data"} <= _failed(report)
    # Editing the nonce field alone does not help: the evidence binds the old one.
    forged = doc.model_copy(update={"nonce": b"fresh nonce".hex()})
    assert _failed(d.verify_document(forged, _policy(), nonce=b"fresh nonce")) == {
        "evidence.report_data"
    }


@pytest.mark.parametrize(
    "update",
    [
        pytest.param({"model": MODEL.model_copy(update={"digest": "00" * 32})}, id="digest"),
        pytest.param({"model": MODEL.model_copy(update={"version": 9})}, id="version"),
        pytest.param({"model": MODEL.model_copy(update={"id": "other"})}, id="model-id"),
        pytest.param({"plain_mode": True}, id="plain-mode"),
        pytest.param({"memory_protection": {"mlock": False}}, id="memory-report"),
        pytest.param(
            {"build": d.BuildInfo(teellm_version="0.1.0", serving_config={"batch_size": 1})},
            id="config",
        ),
    ],
)
def test_substituted_fields_break_the_binding(
    runtime: SimulatedRuntime, identity: Identity, update: dict[str, Any]
) -> None:
    nonce = b"n" * 32
    doc = _doc(runtime, identity, nonce).model_copy(update=update)
    report = d.verify_document(doc, _policy(allow_plain_mode=True), nonce=nonce)
    assert not report.accepted
    assert "evidence.report_data" in _failed(report)


def test_substituted_keys_are_refused(runtime: SimulatedRuntime, identity: Identity) -> None:
    nonce = b"n" * 32
    doc = _doc(runtime, identity, nonce)
    attacker = Identity(HpkePrivateKey.generate(Kem.X25519), Ed25519PrivateKey.generate())
    keys = d.PublicKeys(
        kem=Kem.X25519,
        hpke=d._b64(attacker.hpke_public),
        signing=d._b64(attacker.signing_public),
        key_id=attacker.key_id.hex(),
    )
    report = d.verify_document(doc.model_copy(update={"public_keys": keys}), _policy(), nonce=nonce)
    assert _failed(report) == {"evidence.report_data"}
    # A key id that does not match the keys is caught on its own.
    bad_id = doc.public_keys.model_copy(update={"key_id": "00" * 16})
    report = d.verify_document(
        doc.model_copy(update={"public_keys": bad_id}), _policy(), nonce=nonce
    )
    assert "key_id" in _failed(report)


@pytest.mark.parametrize(
    ("policy", "failed"),
    [
        ({"model_id": "another-model"}, "model_id"),
        ({"min_model_version": 4}, "model_version"),
        ({"model_digests": ["11" * 32]}, "model_digest"),
        ({"trusted_publishers": ["cd" * 32]}, "publisher"),
        ({"trusted_publishers": []}, "model_pinned"),
        ({"require_memory_protection": ["memfd_secret"]}, "memory.memfd_secret"),
        ({"attestation": {"allowed_tee_types": ["tdx"]}}, "evidence.tee_type"),
    ],
)
def test_policy_mismatches(
    runtime: SimulatedRuntime, identity: Identity, policy: dict[str, Any], failed: str
) -> None:
    nonce = b"n" * 32
    report = d.verify_document(_doc(runtime, identity, nonce), _policy(**policy), nonce=nonce)
    assert failed in _failed(report)


def test_exact_digest_pin_passes(runtime: SimulatedRuntime, identity: Identity) -> None:
    nonce = b"n" * 32
    policy = _policy(trusted_publishers=[], model_digests=[DIGEST.upper()])
    assert d.verify_document(_doc(runtime, identity, nonce), policy, nonce=nonce).accepted


def test_plain_mode_refused_unless_allowed(runtime: SimulatedRuntime, identity: Identity) -> None:
    nonce = b"n" * 32
    doc = _doc(runtime, identity, nonce, plain_mode=True)
    assert _failed(d.verify_document(doc, _policy(), nonce=nonce)) == {"plain_mode"}
    assert d.verify_document(doc, _policy(allow_plain_mode=True), nonce=nonce).accepted


def test_malformed_evidence_is_a_failed_check(
    runtime: SimulatedRuntime, identity: Identity
) -> None:
    nonce = b"n" * 32
    doc = _doc(runtime, identity, nonce)
    for evidence in ({}, {"tee_type": "tdx", "raw": "AAAA"}, {"tee_type": "simulated", "raw": "!"}):
        report = d.verify_document(
            doc.model_copy(update={"evidence": evidence}), _policy(), nonce=nonce
        )
        assert not report.accepted
        assert any(c.name.startswith("evidence") for c in report.failures)


def test_client_policy_yaml(tmp_path: Any) -> None:
    text = (
        "model_id: tiny-llama\n"
        "min_model_version: 2\n"
        f"trusted_publishers: ['{PUBLISHER}']\n"
        "attestation:\n  allowed_tee_types: [simulated]\n  allow_simulated: true\n"
    )
    policy = d.ClientPolicy.from_yaml(text)
    assert policy.attestation.allow_simulated and policy.model_id == "tiny-llama"
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    assert d.ClientPolicy.from_yaml(path) == policy
    assert d.ClientPolicy.from_yaml(str(path)) == policy
    with pytest.raises(d.DocumentError) as info:
        d.ClientPolicy.from_yaml(str(tmp_path / "missing.yaml"))
    assert info.value.code == "policy_invalid" and "cannot read" in str(info.value)
    for bad in (
        "model_id: [1, 2]\n",
        "unknown_field: 1\n",
        "a: [\n",
        "attestation: {allow_debug: x}\n",
    ):
        with pytest.raises(d.DocumentError):
            d.ClientPolicy.from_yaml(bad)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.text(max_size=2000)))
def test_fuzz_document_parser(data: bytes | str) -> None:
    with contextlib.suppress(d.DocumentError):
        d.AttestationDocument.from_json(data)
