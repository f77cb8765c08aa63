"""Benchmarks smoke-run in --quick mode (figures come from full runs, never from tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.minilm


def _run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_bench_heads_quick(tmp_path):
    stdout = _run("bench_heads.py", "--out", str(tmp_path / "r.json"))
    assert "batched heads / 1 head" in stdout
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["case"] for r in rows][:2] == ["1 head", "8 heads, batched"]


def test_bench_methods_quick(tmp_path):
    stdout = _run(
        "bench_methods.py", "--methods", "heads,laplace,lora", "--out", str(tmp_path / "m.json")
    )
    methods = [r["method"] for r in json.loads((tmp_path / "m.json").read_text())["rows"]]
    assert methods == ["heads", "laplace", "lora"] and "OOD AUROC" in stdout


def test_bench_calibration_quick(tmp_path):
    stdout = _run("bench_calibration.py", "--methods", "heads,laplace", "--out-dir", str(tmp_path))
    assert "goal ECE <= 0.02" in stdout
    assert (tmp_path / "bench_calibration_reliability.png").stat().st_size > 1000


def test_bench_scoring_quick(tmp_path):
    stdout = _run("bench_scoring.py", "--out", str(tmp_path / "s.json"))
    assert "goals (ratios within this run" in stdout
    result = json.loads((tmp_path / "s.json").read_text())
    methods = {r["method"] for r in result["rows"]}
    expected = {"one", "trl", "separate", "peft_loop", "bucketing", "prefix"}
    expected |= {"heads", "laplace", "pyro", "lora", "partial", "deep", "mc_dropout"}
    assert expected <= methods  # a row per method and comparison
    for row in result["rows"]:
        assert row["seconds"] > 0 and row["param_bytes"] > 0 and row["tok_per_s"] > 0
    goals = {g["goal"]: g for g in result["goals"]}
    assert any(text.startswith("heads <= 1.05x") for text in goals)
    assert all(g["met"] in (True, False, None) for g in goals.values())
    assert all("tiny" in g["figures"] for g in goals.values() if not g["goal"].startswith("MFU"))


def test_bench_overoptimization_quick(tmp_path):
    stdout = _run("bench_overoptimization.py", "--out-dir", str(tmp_path))
    assert "Coste et al. ordering at the largest n" in stdout and "cost vs protection" in stdout
    main = json.loads((tmp_path / "bench_overoptimization_cpu.json").read_text())
    deep = json.loads((tmp_path / "bench_overoptimization_cpu_deep.json").read_text())
    assert {r["seed"] for r in main["curves"]} == {0, 1}
    assert {r["label_noise"] for r in main["curves"]} == {0.0, 0.25}
    assert {"single", "mean", "wco", "uwo_0.5", "lcb", "laplace", "pyro"} <= {
        r["selector"] for r in main["curves"]
    }
    assert {"deep_mean", "deep_uwo_0.5"} <= {r["selector"] for r in deep["curves"]}
    assert {r["proxy"] for r in deep["costs"]} == {"single", "heads", "laplace", "deep"}
    pngs = sorted(tmp_path.glob("bench_overoptimization_cpu_*.png"))
    assert len(pngs) == 4 and all(p.stat().st_size > 1000 for p in pngs)


def test_bench_online_dpo_quick(tmp_path):
    stdout = _run("bench_online_dpo.py", "--out-dir", str(tmp_path))
    assert "gold at equal KL" in stdout and "step-time breakdown" in stdout
    result = json.loads((tmp_path / "bench_online_dpo_cpu.json").read_text())
    methods = ("online_mean", "online_lcb", "offline")
    assert {(r["method"], r["seed"]) for r in result["runs"]} == {
        (m, s) for m in methods for s in (0, 1)
    }
    for run in result["runs"]:  # the reference policy, then one point per chunk
        assert [c["step"] for c in run["curve"]] == [0, 1, 2] and run["curve"][0]["kl"] == 0
    assert set(result["timing"]["cases"]) == {"one RM (1 head)", "K heads", "Laplace"}
    assert all(g["met"] in (True, False, None) for g in result["goals"].values())
    pngs = sorted(tmp_path.glob("bench_online_dpo_cpu_*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs)
