"""The envelope benchmark runs and prints one JSON object (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_json() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "envelope.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    assert set(result["request"]) == {"mlkem768-x25519", "x25519"}
    assert result["chunk"]["ratio"] > 0 and result["chunk"]["sealed_bytes"] > 256
