"""Release decisions on real hardware evidence (TDX, SEV-SNP, Nitro vectors), over HTTP,
verified at the vectors' valid times.

Recorded evidence cannot carry this exchange's nonce and key, so under a normal
policy the only failing check is the report-data binding: every hardware check
(signatures, chains, collateral, TCB, measurements, debug) passed. With binding
explicitly switched off (policy AND broker, never in production) the same
evidence releases the key; wrong measurements, debug evidence, a wrong TEE type
and expired collateral are denied on the real evidence's own claims.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from teellm.attestation.types import Evidence, TeeType
from teellm.attestation.verify import verify_evidence
from teellm.crypto.secret import SecretBytes
from teellm.kbs.client import KeyBrokerClient
from teellm.kbs.errors import KeyReleaseDenied
from teellm.kbs.local import LocalBroker
from teellm.kbs.policy import ReleasePolicy

TDX_AT = datetime(2025, 7, 1, tzinfo=UTC)
SNP_AT = datetime(2025, 1, 1, tzinfo=UTC)
NITRO_AT = datetime(2024, 9, 7, 14, 37, 39, tzinfo=UTC)
NITRO_DEBUG_AT = datetime(2024, 9, 7, 14, 38, 6, tzinfo=UTC)
KEY = bytes(range(100, 132))


class RecordedRuntime:
    """Replays one piece of recorded hardware evidence, whatever report data is asked for."""

    def __init__(self, evidence: Evidence) -> None:
        self._evidence = evidence

    @property
    def kind(self) -> TeeType:
        return self._evidence.tee_type

    @property
    def description(self) -> str:
        return "recorded hardware evidence"

    def evidence(self, report_data: bytes) -> Evidence:
        return self._evidence


def _tdx(vectors: Path) -> Evidence:
    return Evidence(
        TeeType.TDX,
        (vectors / "tdx/tdx_v4_quote.bin").read_bytes(),
        {"collateral": (vectors / "tdx/tdx_v4_collateral.json").read_bytes()},
    )


def _snp(vectors: Path, report: str, vcek: str) -> Evidence:
    return Evidence(
        TeeType.SNP,
        (vectors / f"snp/{report}").read_bytes(),
        {"vcek": (vectors / f"snp/{vcek}").read_bytes()},
    )


def _nitro(vectors: Path, name: str) -> Evidence:
    return Evidence(TeeType.NITRO, base64.b64decode((vectors / f"nitro/{name}").read_bytes()))


CASES: dict[str, tuple[Any, datetime, list[str]]] = {
    "tdx": (_tdx, TDX_AT, ["MRTD", "RTMR0"]),
    "snp": (lambda v: _snp(v, "milan_report2.bin", "milan_vcek2.der"), SNP_AT, ["MEASUREMENT"]),
    "nitro": (lambda v: _nitro(v, "nitro_attestation.b64"), NITRO_AT, ["PCR0", "PCR1"]),
}


def _policy(tee: str, measurements: dict[str, str], **extra: Any) -> ReleasePolicy:
    data: dict[str, Any] = {
        "min_version": 1,
        "allowed_tee_types": [tee],
        "measurements": {tee: {k: [v] for k, v in measurements.items()}},
    }
    data.update(extra)
    return ReleasePolicy.from_data(data)


@pytest.fixture
def broker_at() -> Iterator[Any]:
    started: list[LocalBroker] = []

    def make(at: datetime | None, *, unbound: bool = False) -> LocalBroker:
        b = LocalBroker(
            verify_clock=(lambda: at) if at else None,
            allow_unbound_evidence=unbound,
            max_failures=1000,
        ).start()
        b.broker.put_key("llama", 1, SecretBytes(KEY))
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


def _registers(evidence: Evidence, at: datetime, names: list[str]) -> dict[str, str]:
    claims = verify_evidence(evidence, now=at)
    return {n: claims.measurements[n] for n in names}


@pytest.mark.parametrize("tee", sorted(CASES))
def test_real_evidence_passes_every_hardware_check_and_fails_only_binding(
    tee: str, vectors: Path, broker_at: Any
) -> None:
    make, at, regs = CASES[tee]
    evidence = make(vectors)
    b = broker_at(at)
    b.broker.set_policy("llama", _policy(tee, _registers(evidence, at, regs)))
    with KeyBrokerClient(b.url, retries=0) as c, pytest.raises(KeyReleaseDenied) as e:
        c.fetch_key("llama", 1, RecordedRuntime(evidence))
    assert e.value.codes == ["report_data"], e.value.reasons
    denial = [r for r in b.store.audit_records() if r.event == "denial"][-1]
    assert denial.tee_type == tee and denial.codes == ["report_data"]
    assert set(regs) <= set(denial.measurements)  # the real registers are audited


@pytest.mark.parametrize("tee", sorted(CASES))
def test_real_evidence_releases_when_binding_is_explicitly_off(
    tee: str, vectors: Path, broker_at: Any
) -> None:
    make, at, regs = CASES[tee]
    evidence = make(vectors)
    measurements = _registers(evidence, at, regs)
    policy = _policy(tee, measurements, require_report_data=False)
    # The opt-out in the policy alone is ignored by a normal broker.
    strict = broker_at(at)
    strict.broker.set_policy("llama", policy)
    with KeyBrokerClient(strict.url, retries=0) as c, pytest.raises(KeyReleaseDenied) as e:
        c.fetch_key("llama", 1, RecordedRuntime(evidence))
    assert e.value.codes == ["report_data"]
    lax = broker_at(at, unbound=True)
    lax.broker.set_policy("llama", policy)
    with KeyBrokerClient(lax.url, retries=0) as c:
        assert bytes(c.fetch_key("llama", 1, RecordedRuntime(evidence)).reveal()) == KEY
    release = [r for r in lax.store.audit_records() if r.event == "release"][-1]
    assert release.measurements[regs[0]] == measurements[regs[0]]
    assert release.detail["bound"] is False
    # Wrong measurement: the same evidence against another allowlist is denied.
    wrong = {k: "00" * (len(v) // 2) for k, v in measurements.items()}
    lax.broker.set_policy("llama", _policy(tee, wrong, require_report_data=False))
    with KeyBrokerClient(lax.url, retries=0) as c, pytest.raises(KeyReleaseDenied) as e:
        c.fetch_key("llama", 1, RecordedRuntime(evidence))
    assert e.value.codes == ["measurements"]


@pytest.mark.parametrize(
    ("tee", "make", "at"),
    [
        ("snp", lambda v: _snp(v, "milan_report.bin", "milan_vcek.der"), SNP_AT),
        ("nitro", lambda v: _nitro(v, "nitro_attestation_debug.b64"), NITRO_DEBUG_AT),
    ],
)
def test_real_debug_evidence_denied(
    tee: str, make: Any, at: datetime, vectors: Path, broker_at: Any
) -> None:
    b = broker_at(at, unbound=True)
    b.broker.set_policy("llama", _policy(tee, {}, require_report_data=False))
    with KeyBrokerClient(b.url, retries=0) as c, pytest.raises(KeyReleaseDenied) as e:
        c.fetch_key("llama", 1, RecordedRuntime(make(vectors)))
    assert "debug" in e.value.codes
    assert "debug" in [r for r in b.store.audit_records() if r.event == "denial"][-1].codes


def test_real_tdx_evidence_for_an_snp_only_policy_denied(vectors: Path, broker_at: Any) -> None:
    b = broker_at(TDX_AT, unbound=True)
    b.broker.set_policy("llama", _policy("snp", {}, require_report_data=False))
    with KeyBrokerClient(b.url, retries=0) as c, pytest.raises(KeyReleaseDenied) as e:
        c.fetch_key("llama", 1, RecordedRuntime(_tdx(vectors)))
    assert e.value.codes == ["tee_type_not_allowed"]


def test_real_tdx_evidence_denied_at_wall_clock_collateral_expired(
    vectors: Path, broker_at: Any
) -> None:
    b = broker_at(None, unbound=True)  # today: the collateral is out of date
    b.broker.set_policy("llama", _policy("tdx", {}, require_report_data=False))
    with KeyBrokerClient(b.url, retries=0) as c, pytest.raises(KeyReleaseDenied) as e:
        c.fetch_key("llama", 1, RecordedRuntime(_tdx(vectors)))
    assert e.value.codes == ["evidence"]
