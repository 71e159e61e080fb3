"""The attestation benchmark runs and prints one JSON object (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_json() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "attestation.py"),
            "--quick",
            "--json",
            "--runs",
            "2",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    body = json.loads(out.stdout)
    assert body["bench"] == "attestation"
    assert "simulated" in body["results"]
    for row in body["results"].values():
        assert {"teellm_ms", "teellm_cold_ms", "peer_ms", "ratio"} <= set(row)
