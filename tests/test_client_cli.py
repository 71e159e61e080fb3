# ruff: noqa: F811  (the shared server fixtures are imported by name)
"""``teellm verify-server`` and ``teellm chat`` against a real server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from teellm.cli import app
from test_client_server import (  # noqa: F401 (fixtures)
    POLICY_YAML,
    EchoServer,
    echo,
    fresh,
)

runner = CliRunner()


def _policy_file(tmp_path: Path, text: str = POLICY_YAML) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_verify_server_json_and_table(fresh: EchoServer, tmp_path: Path) -> None:
    policy = _policy_file(tmp_path)
    result = runner.invoke(app, ["verify-server", fresh.url, "--policy", str(policy), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["accepted"] is True
    assert any(c["name"] == "evidence.report_data" and c["passed"] for c in report["checks"])
    result = runner.invoke(app, ["verify-server", fresh.url, "--policy", str(policy)])
    assert result.exit_code == 0 and "VERIFIED" in result.stdout


def test_verify_server_failure_exit_code(fresh: EchoServer, tmp_path: Path) -> None:
    policy = _policy_file(tmp_path, POLICY_YAML.replace("echo-model", "another-model"))
    result = runner.invoke(app, ["verify-server", fresh.url, "--policy", str(policy), "--json"])
    assert result.exit_code == 1
    failed = [c["name"] for c in json.loads(result.stdout)["checks"] if not c["passed"]]
    assert failed == ["model_id"]
    unreachable = runner.invoke(
        app, ["verify-server", "http://127.0.0.1:9", "--policy", str(_policy_file(tmp_path))]
    )
    assert unreachable.exit_code == 2


def test_chat_streams_and_shows_the_verified_model(fresh: EchoServer, tmp_path: Path) -> None:
    policy = _policy_file(tmp_path)
    result = runner.invoke(
        app,
        ["chat", fresh.url, "--policy", str(policy)],
        input="hello chat\n/report\nsecond turn\n/quit\n",
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "echo-model" in out and "SIMULATED" in out
    assert "echo: hello chat" in out and "echo: second turn" in out
    assert "VERIFIED" in out  # the /report command


def test_chat_refuses_unverified_server(fresh: EchoServer, tmp_path: Path) -> None:
    policy = _policy_file(tmp_path, POLICY_YAML.replace("allow_simulated: true", ""))
    result = runner.invoke(app, ["chat", fresh.url, "--policy", str(policy)], input="hi\n")
    assert result.exit_code == 1
    assert fresh.posts == []
