"""``make demo`` runs unattended and exits 0 (python -m teellm.demo)."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_clean() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "teellm.demo", "--max-tokens", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "VERIFIED: every check passed" in out
    assert "plain_mode_disabled" in out  # plaintext refused by the server
    assert "server (clean), kbs (clean)" in out
