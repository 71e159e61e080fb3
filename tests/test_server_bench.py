"""bench/server.py runs (--quick --json) and prints one JSON object; no timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_server_bench_quick_json() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "server.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["bench"] == "server" and report["quick"] is True
    for level in ("c1", "c16"):
        assert set(report["results"][level]) == {"e2e", "plain"}
        for mode in ("e2e", "plain"):
            assert report["results"][level][mode]["requests"] > 0
            assert report["results"][level][mode]["tokens_per_s"] > 0
        assert "req_per_s_e2e_over_plain" in report["ratios"][level]
