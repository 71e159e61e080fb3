"""The sealed-load benchmark runs and prints one JSON object (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sealed_load_bench_quick_json() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sealed_load.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    data = json.loads(out.stdout)
    assert data["bench"] == "sealed_load" and data["size_bytes"] > 32 * 1024 * 1024
    assert {"plain_read_frombuffer", "sealed_memfd_secret", "sealed_locked", "seal"} <= set(
        data["mib_per_s"]
    )
    assert all(v > 0 for v in data["ratios"].values())
