"""The key-broker benchmark runs (--quick) and prints one JSON object; no timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_json() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "key_broker.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
        cwd=ROOT,
    )
    data = json.loads(out.stdout)
    assert data["bench"] == "key_broker"
    cases = {c["case"]: c for c in data["cases"]}
    assert "simulated" in cases
    for c in cases.values():
        for side in ("teellm", "peer"):
            assert set(c[side]) == {"p50_ms", "p99_ms", "releases_per_s"}
        assert c["ratio_throughput"] > 0 and c["ratio_p50"] > 0
