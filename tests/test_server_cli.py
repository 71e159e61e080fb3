"""``teellm serve`` refuses to start outside a TEE unless --tee simulated; ``teellm tenant``."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

from teellm.server.access import AccessPolicy


def _teellm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "teellm.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_serve_refuses_without_tee_hardware(tmp_path: Path) -> None:
    access = tmp_path / "access.yaml"
    access.write_text("tenants: []\n")
    done = _teellm(
        "serve", "--tee", "auto",
        "--bundle", str(tmp_path / "bundle"),
        "--trusted-publisher", str(tmp_path / "publisher.pub"),
        "--access", str(access),
        "--kbs", "http://127.0.0.1:9",
    )  # fmt: skip
    assert done.returncode == 2
    assert "refused to start (no_tee)" in done.stderr
    assert "--tee simulated" in done.stderr


def test_serve_refuses_malformed_access_policy(tmp_path: Path) -> None:
    access = tmp_path / "access.yaml"
    access.write_text("tenants: [\n")
    done = _teellm(
        "serve", "--tee", "simulated",
        "--bundle", str(tmp_path / "bundle"),
        "--trusted-publisher", str(tmp_path / "publisher.pub"),
        "--access", str(access),
        "--kbs", "http://127.0.0.1:9",
    )  # fmt: skip
    assert done.returncode == 2 and "access_policy_invalid" in done.stderr


def test_tenant_add_prints_token_once_and_stores_hash(tmp_path: Path) -> None:
    policy_file = tmp_path / "access.yaml"
    first = _teellm("tenant", "add", str(policy_file), "--name", "acme", "--model", "m")
    second = _teellm("tenant", "add", str(policy_file), "--name", "beta", "--model", "*")
    assert first.returncode == 0 and second.returncode == 0
    token_a, token_b = first.stdout.strip(), second.stdout.strip()
    text = policy_file.read_text()
    assert token_a not in text and token_b not in text
    assert policy_file.stat().st_mode & 0o077 == 0
    policy = AccessPolicy.from_yaml(policy_file)
    assert policy.authenticate(token_a).name == "acme"
    assert policy.authenticate(token_b).may_use("anything")


def test_serve_is_live_while_booting_then_refuses_when_no_key(tmp_path: Path) -> None:
    """HTTP answers during boot (/healthz 200, /readyz 503); a broker that cannot be
    reached means no key, and the server exits 2 with the reason."""
    import time

    import httpx

    from teellm.server.stack import LocalStack, free_port, spawn, teellm_command

    stack = LocalStack(tmp_path / "stack").prepare()
    port = free_port()
    proc = spawn(
        "server",
        teellm_command(
            "serve", "--tee", "simulated",
            "--bundle", str(stack.bundle_dir),
            "--trusted-publisher", str(stack.publisher_pub),
            "--access", str(stack.access_file),
            "--kbs", f"http://127.0.0.1:{free_port()}",
            "--port", str(port),
        ),
        tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + 60
    while proc.alive() and time.monotonic() < deadline:
        for path in ("/healthz", "/readyz", "/v1/models"):
            with contextlib.suppress(httpx.HTTPError):
                seen.add((path, httpx.get(url + path, timeout=2).status_code))
        time.sleep(0.05)
    assert proc.stop() == 2
    assert ("/healthz", 200) in seen and ("/readyz", 503) in seen and ("/v1/models", 503) in seen
    assert ("/readyz", 200) not in seen
    assert "refused to start" in proc.log_text()
