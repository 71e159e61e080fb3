"""``teellm kbs`` commands on a real SQLite store, and ``serve`` as a real process."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from teellm.attestation.runtime import SimulatedRuntime
from teellm.cli import app
from teellm.kbs.client import KeyBrokerClient
from teellm.kbs.errors import KeyReleaseDenied
from teellm.kbs.local import LocalBroker
from teellm.kbs.masterkey import MasterKeyRing

logging.getLogger("teellm.attestation").setLevel(logging.ERROR)
KEY_HEX = "ab" * 32


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "content.key").write_text(KEY_HEX + "\n")
    (tmp_path / "policy.yaml").write_text("min_version: 1\nallow_simulated: true\n")
    return {"TEELLM_KBS_DB": f"sqlite:///{tmp_path / 'kbs.db'}"}


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["kbs", *args], env=env)
    return res.exit_code, res.output


def _setup(tmp_path: Path, env: dict[str, str]) -> None:
    assert run(["init-master-key", str(tmp_path / "master.key")], env)[0] == 0
    assert oct((tmp_path / "master.key").stat().st_mode & 0o777) == "0o600"
    code, out = run(
        [
            "put-key",
            "--model-id",
            "m",
            "--version",
            "1",
            "--key-file",
            str(tmp_path / "content.key"),
            "--master-key-file",
            str(tmp_path / "master.key"),
        ],
        env,
    )
    assert code == 0, out
    code, out = run(
        ["policy", "set", "--model-id", "m", "--file", str(tmp_path / "policy.yaml")], env
    )
    assert code == 0, out


def test_admin_commands_and_audit_verify(tmp_path: Path, env: dict[str, str]) -> None:
    _setup(tmp_path, env)
    code, out = run(["keys", "--json"], env)
    assert code == 0 and json.loads(out)[0]["model_id"] == "m" and KEY_HEX not in out
    code, out = run(["policy", "show"], env)
    assert code == 0 and json.loads(out)[0]["policy"]["appraisal"]["allow_simulated"] is True
    code, out = run(["audit", "--json"], env)
    records = json.loads(out)
    assert code == 0 and [r["decision"] for r in records] == ["put_key", "set_policy"]
    assert KEY_HEX not in out
    code, out = run(["audit", "--verify"], env)
    assert code == 0 and "intact" in out
    # A database administrator edits a past record: verify fails with exit 1.
    db = tmp_path / "kbs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit SET body = replace(body, 'put_key', 'nothing') WHERE seq = 1")
    code, out = run(["audit", "--verify", "--json"], env)
    assert code == 1 and json.loads(out)["ok"] is False


def test_put_key_errors_are_reported(tmp_path: Path, env: dict[str, str]) -> None:
    _setup(tmp_path, env)
    code, out = run(
        [
            "put-key",
            "--model-id",
            "m",
            "--version",
            "1",
            "--key-file",
            str(tmp_path / "content.key"),
            "--master-key-file",
            str(tmp_path / "master.key"),
        ],
        env,
    )
    assert code == 1 and "key_exists" in out
    (tmp_path / "bad.yaml").write_text("allow_simulated: [")
    code, out = run(["policy", "set", "--model-id", "m", "--file", str(tmp_path / "bad.yaml")], env)
    assert code == 1 and "policy_invalid" in out
    code, out = run(
        [
            "put-key",
            "--model-id",
            "m",
            "--version",
            "2",
            "--key-file",
            str(tmp_path / "content.key"),
        ],
        {**env, "TEELLM_KBS_MASTER_KEY": ""},
    )
    assert code == 1 and "master_key_missing" in out


def test_rotate_master_key(tmp_path: Path, env: dict[str, str]) -> None:
    _setup(tmp_path, env)
    assert run(["init-master-key", str(tmp_path / "new.key")], env)[0] == 0
    code, out = run(
        [
            "rotate-master-key",
            "--new-master-key-file",
            str(tmp_path / "new.key"),
            "--master-key-file",
            str(tmp_path / "master.key"),
        ],
        env,
    )
    assert code == 0 and "re-wrapped 1 keys" in out
    runtime = SimulatedRuntime()
    # Only the new master key opens the stored key now.
    with (
        LocalBroker(
            env["TEELLM_KBS_DB"], master_keys=MasterKeyRing.from_file(tmp_path / "new.key")
        ) as b,
        KeyBrokerClient(b.url) as c,
    ):
        assert c.fetch_key("m", 1, runtime).reveal().hex() == KEY_HEX
    with (
        LocalBroker(
            env["TEELLM_KBS_DB"], master_keys=MasterKeyRing.from_file(tmp_path / "master.key")
        ) as b,
        KeyBrokerClient(b.url, retries=0) as c,
    ):
        with pytest.raises(KeyReleaseDenied) as e:
            c.fetch_key("m", 1, runtime)
        assert "master_key_unknown" in e.value.codes


def test_serve_process_releases_keys(tmp_path: Path, env: dict[str, str]) -> None:
    _setup(tmp_path, env)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "kbs_test_token"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "teellm.cli",
            "kbs",
            "serve",
            "--port",
            str(port),
            "--master-key-file",
            str(tmp_path / "master.key"),
            "--admin-socket",
            str(tmp_path / "admin.sock"),
        ],
        env={**os.environ, **env, "TEELLM_KBS_ADMIN_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        with KeyBrokerClient(url) as c:
            assert c.fetch_key("m", 1, SimulatedRuntime()).reveal().hex() == KEY_HEX
        r = httpx.get(url + "/v1/admin/audit/verify", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["ok"] is True
        assert httpx.get(url + "/v1/admin/keys").status_code == 401  # TCP: token required
        # The local admin socket: only this user may connect (0600), no token needed.
        sock = tmp_path / "admin.sock"
        assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as local:
            keys = local.get("http://kbs/v1/admin/keys")
            assert keys.status_code == 200 and keys.json()[0]["model_id"] == "m"
            assert KEY_HEX not in keys.text
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode()
    assert KEY_HEX not in out


def test_admin_token_command_stores_only_a_hash(tmp_path: Path, env: dict[str, str]) -> None:
    _setup(tmp_path, env)
    code, out = run(["admin-token"], env)
    token = out.strip()
    assert code == 0 and token.startswith("kbs_") and len(token) > 40
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("kbs.db*"))
    assert token.encode() not in raw
    with LocalBroker(env["TEELLM_KBS_DB"]) as b:
        ok = httpx.get(b.url + "/v1/admin/keys", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()[0]["model_id"] == "m"
        bad = httpx.get(b.url + "/v1/admin/keys", headers={"Authorization": f"Bearer {token}x"})
        assert bad.status_code == 401
    # A new token replaces the old one.
    assert run(["admin-token"], env)[0] == 0
    with LocalBroker(env["TEELLM_KBS_DB"]) as b:
        old = httpx.get(b.url + "/v1/admin/keys", headers={"Authorization": f"Bearer {token}"})
        assert old.status_code == 401
