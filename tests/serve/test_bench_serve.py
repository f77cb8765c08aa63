"""benchmarks/bench_serve.py smoke-run in --quick mode (figures come from full runs only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.minilm


def test_bench_serve_quick(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_serve.py"),
            "--quick",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "lost responses: 0; mismatched rows: 0" in out.stdout
    result = json.loads((tmp_path / "bench_serve_cpu.json").read_text())
    cases = {(r["batching"], r["clients"]) for r in result["rows"]}
    assert cases == {("on", 1), ("on", 8), ("off", 1), ("off", 8)}
    for row in result["rows"]:
        assert row["requests"] > 0 and row["lost"] == 0 and row["bad_rows"] == 0
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    off = [r for r in result["rows"] if r["batching"] == "off"]
    assert all(r["batches"] == r["requests"] for r in off)  # batching off: one call per request
    assert (tmp_path / "bench_serve_cpu.txt").read_text().startswith("bench_serve:")
