"""The engine benchmark runs (--quick --json) and prints one JSON object; no timings asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_engine_bench_quick_json() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    data = json.loads(out.stdout)
    assert set(data["ratios"]) >= {"decode_vs_generate_1", "decode_vs_generate_8"}
    for name in ("teellm_1", "teellm_8", "generate_1", "generate_8"):
        assert data["figures"][name]["decode_tokens_per_s"] > 0
    assert data["roofline"]["default"]["weight_bytes_per_token"] > 0
    assert (
        data["roofline"]["int8"]["weight_bytes_per_token"]
        < data["roofline"]["default"]["weight_bytes_per_token"]
    )
