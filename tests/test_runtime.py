"""Runtimes: simulated signing, runtime selection."""

from __future__ import annotations

import logging

import pytest

from teellm.attestation import AttestationError, TEERuntime, TeeType
from teellm.attestation.runtime import NitroRuntime, SimulatedRuntime, TsmRuntime, select
from teellm.attestation.simulated import verify_simulated


def test_simulated_runtime_warns_and_binds(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="teellm.attestation"):
        runtime = SimulatedRuntime()
        evidence = runtime.evidence(b"\x07" * 64)
    assert sum("SIMULATED TEE" in r.getMessage() for r in caplog.records) >= 2
    assert isinstance(runtime, TEERuntime)
    assert runtime.kind is TeeType.SIMULATED and evidence.tee_type is TeeType.SIMULATED
    from datetime import UTC, datetime

    claims = verify_simulated(evidence, now=datetime.now(UTC))
    assert claims.simulated and claims.report_data == "07" * 64
    with pytest.raises(AttestationError):
        runtime.evidence(b"short")


def test_select_explicit_kinds(tmp_path) -> None:
    assert isinstance(select("simulated"), SimulatedRuntime)
    assert isinstance(select("tsm", tsm_root=tmp_path), TsmRuntime)
    assert isinstance(select("nitro", nsm_device=tmp_path / "nsm"), NitroRuntime)
    with pytest.raises(AttestationError) as exc:
        select("sgx-magic")
    assert exc.value.code == "usage"


def test_auto_refuses_without_hardware(tmp_path) -> None:
    with pytest.raises(AttestationError) as exc:
        select("auto", tsm_root=tmp_path / "none", nsm_device=tmp_path / "nsm")
    assert exc.value.code == "no_tee"


def test_auto_picks_present_backend(tmp_path) -> None:
    assert isinstance(select("auto", tsm_root=tmp_path, nsm_device=tmp_path / "x"), TsmRuntime)
    (tmp_path / "nsm").touch()
    got = select("auto", tsm_root=tmp_path / "none", nsm_device=tmp_path / "nsm")
    assert isinstance(got, NitroRuntime)
