"""``teellm attest``: exit codes, input decoding, JSON output."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teellm.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["attest", *args])


def test_report_then_verify_simulated(tmp_path: Path) -> None:
    out = tmp_path / "ev.json"
    result = _run("report", "--tee", "simulated", "--report-data", "ab" * 64, "--out", str(out))
    assert result.exit_code == 0, result.output
    rejected = _run("verify", str(out), "--report-data", "ab" * 64)
    assert rejected.exit_code == 1 and "REJECTED" in rejected.output
    policy = tmp_path / "p.yaml"
    policy.write_text("allow_simulated: true\n")
    ok = _run("verify", str(out), "--report-data", "ab" * 64, "--policy", str(policy), "--json")
    assert ok.exit_code == 0, ok.output
    body = json.loads(ok.output)
    assert body["accepted"] and body["claims"]["simulated"]
    wrong = _run("verify", str(out), "--report-data", "cd" * 64, "--policy", str(policy))
    assert wrong.exit_code == 1


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _run("verify", str(tmp_path / "missing")).exit_code == 2
    f = tmp_path / "x"
    f.write_bytes(b"\x00" * 10)
    assert _run("verify", str(f), "--at", "not-a-time").exit_code == 2
    assert _run("verify", str(f), "--type", "quantum").exit_code == 2
    assert _run("verify", str(f), "--report-data", "zz").exit_code == 2
    bad_policy = tmp_path / "p.yaml"
    bad_policy.write_text("allow_debug: maybe-not\n")
    assert _run("verify", str(f), "--policy", str(bad_policy)).exit_code == 2
    assert _run("report", "--tee", "simulated", "--report-data", "00" * 65).exit_code == 2


def test_garbage_evidence_exit_1(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"\x00\x01garbage")
    result = _run("verify", str(f), "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["accepted"] is False


def test_auto_report_refuses_without_tee(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEELLM_TSM_ROOT", str(tmp_path / "no-tsm"))
    monkeypatch.setenv("TEELLM_NSM_DEVICE", str(tmp_path / "no-nsm"))
    result = _run("report", "--report-data", "00")
    assert result.exit_code == 1 and "no_tee" in result.output


@pytest.mark.parametrize("encoding", ["raw", "hex", "base64"])
def test_verify_vectors_in_any_encoding(vectors: Path, tmp_path: Path, encoding: str) -> None:
    raw = (vectors / "snp/milan_report2.bin").read_bytes()
    data = {"raw": raw, "hex": raw.hex().encode(), "base64": base64.b64encode(raw)}[encoding]
    f = tmp_path / "report"
    f.write_bytes(data)
    args = [
        "verify",
        str(f),
        "--vcek",
        str(vectors / "snp/milan_vcek2.der"),
        "--at",
        "2025-01-01T00:00:00Z",
    ]
    assert _run(*args).exit_code == 0
    assert _run(*args, "--type", "snp", "--json").exit_code == 0
    assert _run(*args, "--type", "tdx").exit_code == 1


def test_verify_vectors_cli_rows(vectors: Path) -> None:
    v = str(vectors)
    tdx = ["verify", f"{v}/tdx/tdx_v4_quote.bin", "--collateral", f"{v}/tdx/tdx_v4_collateral.json"]
    assert _run(*tdx, "--at", "2025-07-01T00:00:00Z").exit_code == 0
    assert _run(*tdx, "--at", "2026-11-26T00:00:00Z").exit_code == 1
    nitro = ["verify", f"{v}/nitro/nitro_attestation.b64", "--type", "nitro"]
    assert _run(*nitro, "--at", "2024-09-07T14:37:39Z").exit_code == 0
    debug = ["verify", f"{v}/nitro/nitro_attestation_debug.b64", "--at", "2024-09-07T14:38:06Z"]
    assert _run(*debug).exit_code == 1
    snp_debug = ["verify", f"{v}/snp/milan_report.bin", "--vcek", f"{v}/snp/milan_vcek.der"]
    assert _run(*snp_debug, "--report-data", "0102030405").exit_code == 1
    gpu = [
        "verify",
        f"{v}/nvidia/hopper_report.hex.txt",
        "--cert-chain",
        f"{v}/nvidia/hopper_cert_chain.pem",
        "--report-data",
        "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
    ]
    assert _run(*gpu).exit_code == 0
