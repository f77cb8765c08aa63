"""``auq evaluate``: every reported number equals a hand computation from ``rm.score``.

The expected figures are computed here, row by row, from ``rm.score`` of each row's
responses alone (member rewards ``samples`` (S, k+1), their means): RewardBench's
credit rules, its section weights written out as numbers, and the pairs'
probabilities, ECE, NLL, Brier, error AUROC and AURC with NumPy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import auq
from auq.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

RB_SUBSETS = [  # two of Chat, one each of Chat Hard and Safety, two of Reasoning
    "alpacaeval-easy",
    "mt-bench-easy",
    "llmbar-natural",
    "xstest-should-refuse",
    "math-prm",
    "hep-go",
]
#: RewardBench's weights of those subsets, and their sections, written out by hand
WEIGHTS = {
    "alpacaeval-easy": 100,
    "mt-bench-easy": 28,
    "llmbar-natural": 100,
    "xstest-should-refuse": 154,
    "math-prm": 984,
    "hep-go": 164,
}
SECTIONS = {
    "Chat": ["alpacaeval-easy", "mt-bench-easy"],
    "Chat Hard": ["llmbar-natural"],
    "Safety": ["xstest-should-refuse"],
    "Reasoning": ["math-prm", "hep-go"],
}
N_BINS = 15


def cli(capsys, *argv):
    """Run ``auq argv`` in-process; returns (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, prefix: str = "auq evaluate: error: ") -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in err
    return lines[0][len(prefix) :]


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tiny_bert_dir, tmp_path_factory):
    from auq.data.builtin import load_builtin_preferences

    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=3, max_length=96)
    rm.fit(load_builtin_preferences(40, seed=5), epochs=2, progress=False)
    path = tmp_path_factory.mktemp("eval-rm")
    rm.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return auq.RewardModel.from_pretrained(model_dir)


@pytest.fixture
def damaged_model_dir(model_dir, tmp_path):
    """A copy whose head weights are truncated: a command that loads it fails."""
    path = tmp_path / "damaged"
    shutil.copytree(model_dir, path)
    weights = path / "head" / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:16])
    return path


@pytest.fixture(scope="module")
def texts():
    from auq.data.builtin import load_builtin_preferences

    ds = load_builtin_preferences(24, seed=9)
    return ds.prompts, ds.chosen, ds.rejected


def pair_rows(texts, n, subsets=None):
    prompts, chosen, rejected = texts
    rows = [{"prompt": prompts[i], "chosen": chosen[i], "rejected": rejected[i]} for i in range(n)]
    for i, row in enumerate(rows):
        row["id"] = f"pair-{i}"
        if subsets:
            row["subset"] = subsets[i % len(subsets)]
    return rows


def list_rows(texts, n, subsets=None, *, chosen_as_list=False):
    """RewardBench 2 style: one chosen against three rejected (other rows' responses too)."""
    prompts, chosen, rejected = texts
    rows = []
    for j in range(n):
        i = 12 + j
        others = [rejected[i], rejected[(i + 1) % 24], chosen[(i + 5) % 24]]
        rows.append(
            {
                "id": f"list-{j}",
                "prompt": prompts[i],
                "chosen": [chosen[i]] if chosen_as_list else chosen[i],
                "rejected": others,
            }
        )
        if subsets:
            rows[-1]["subset"] = subsets[j % len(subsets)]
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- the hand computation ---------------------------------------------------------------------


def hand(rm, rows, *, temperature=None):
    """Every reported number, from ``rm.score`` of each row alone."""
    credit, p, u = [], [], []
    for row in rows:
        chosen = row["chosen"][0] if isinstance(row["chosen"], list) else row["chosen"]
        many = isinstance(row["rejected"], list)
        rejected = row["rejected"] if many else [row["rejected"]]
        rp = rm.score(row["prompt"], [chosen, *rejected], progress=False)
        samples = rp.samples.double()  # (S, 1 + k)
        mean = rp.mean.double().numpy()
        c, r = mean[0], mean[1:]
        if many:  # RewardBench 2: the top response wins; a tie at the top shares the credit
            credit.append(0.0 if c < r.max() else 1.0 / (1 + int((r == c).sum())))
            continue
        credit.append(1.0 if c > r[0] else 0.0)  # RewardBench: a tie is wrong
        delta = samples[:, 0] - samples[:, 1]  # (S,) margin draws of the heads
        prob = float(torch.sigmoid(delta).mean())  # the ensemble's predictive P(c > r)
        if temperature is not None:
            prob = float(torch.sigmoid(torch.logit(torch.tensor(prob).double()) / temperature))
        p.append(prob)
        u.append(float(delta.std(unbiased=False)))  # margin_std
    out = {"credit": np.array(credit), "p": np.array(p), "u": np.array(u)}
    if p:
        out |= calibration_by_hand(out["p"], out["u"])
    return out


def calibration_by_hand(p, u):
    # swap-symmetrised: each pair as (p, 1) and as (1 - p, 0)
    y2, p2 = np.r_[np.ones_like(p), np.zeros_like(p)], np.r_[p, 1 - p]
    bins = np.minimum((p2 * N_BINS).astype(int), N_BINS - 1)
    ece = sum(
        (bins == b).mean() * abs(y2[bins == b].mean() - p2[bins == b].mean())
        for b in np.unique(bins)
    )
    errors = (p <= 0.5).astype(float)
    assert 0 < errors.sum() < len(p), "the fixture should have both hits and errors"
    bad, good = u[errors == 1], u[errors == 0]
    auroc = (bad[:, None] > good[None, :]).mean() + 0.5 * (bad[:, None] == good[None, :]).mean()
    ranked = errors[np.argsort(u)]
    aurc = (np.cumsum(ranked) / np.arange(1, len(p) + 1)).mean()
    return {
        "ece": ece,
        "nll": np.mean(-np.log(p)),
        "brier": np.mean((1 - p) ** 2),
        "error_auroc": auroc,
        "aurc": aurc,
        "accuracy_prob": (p > 0.5).mean(),
    }


def check(report, rows, h):
    approx = lambda x: pytest.approx(x, rel=1e-5, abs=1e-6)  # noqa: E731
    is_list = np.array([isinstance(r["rejected"], list) for r in rows])
    credit = h["credit"]
    assert report["n_rows"] == len(rows)
    assert report["n_pairs"] == int((~is_list).sum())
    assert report["n_best_of_k"] == int(is_list.sum())
    acc = report["accuracy"]
    assert acc["overall"] == approx(credit.mean())
    assert acc["pairs"] == (approx(credit[~is_list].mean()) if (~is_list).any() else None)
    assert acc["best_of_k"] == (approx(credit[is_list].mean()) if is_list.any() else None)
    subsets = [r.get("subset") for r in rows]
    if subsets[0] is None:
        assert report["subsets"] is None and report["rewardbench"] is None
    else:
        expected = {s: credit[[t == s for t in subsets]].mean() for s in dict.fromkeys(subsets)}
        assert {k: v["accuracy"] for k, v in report["subsets"].items()} == approx(expected)
        assert {k: v["n"] for k, v in report["subsets"].items()} == {
            s: subsets.count(s) for s in expected
        }
        assert acc["subset_mean"] == approx(np.mean(list(expected.values())))
        if set(expected) <= set(WEIGHTS):
            sections = {
                name: sum(WEIGHTS[s] * expected[s] for s in members if s in expected)
                / sum(WEIGHTS[s] for s in members if s in expected)
                for name, members in SECTIONS.items()
                if any(s in expected for s in members)
            }
            rb = report["rewardbench"]
            assert rb["sections"] == approx(sections)
            assert rb["score"] == approx(np.mean(list(sections.values())))
            assert rb["complete"] == (len(sections) == 4)
        else:
            assert report["rewardbench"] is None
    cal = report["calibration"]
    if not (~is_list).any():
        assert cal is None and report["risk_coverage"] is None
        return
    for key in ("ece", "nll", "brier", "error_auroc", "aurc"):
        assert cal[key] == approx(h[key]), key
    assert cal["accuracy"] == approx(h["accuracy_prob"])
    assert report["risk_coverage"]["aurc"] == approx(h["aurc"])
    assert report["risk_coverage"]["risk"][-1] == approx((h["p"] <= 0.5).mean())


def run(capsys, model_dir, data, *extra):
    code, out, err = cli(capsys, "evaluate", model_dir, data, "--no-progress", *extra)
    assert code == 0, err
    return out


# -- runs that equal the hand computation ------------------------------------------------------


CASES = {
    # name: (suffix, rows builder)
    "jsonl-pairs-and-lists-rewardbench": (
        ".jsonl",
        lambda t: pair_rows(t, 12, RB_SUBSETS) + list_rows(t, 6, RB_SUBSETS),
    ),
    "jsonl-pairs-no-subsets": (".jsonl", lambda t: pair_rows(t, 12)),
    "jsonl-mixed-plain-subsets": (
        ".jsonl",
        lambda t: pair_rows(t, 8, ["helpful", "harmless"]) + list_rows(t, 4, ["helpful"]),
    ),
    "parquet-pairs-rewardbench": (".parquet", lambda t: pair_rows(t, 12, RB_SUBSETS[:4])),
    "parquet-lists-rewardbench2": (
        ".parquet",
        lambda t: list_rows(t, 8, ["Factuality", "Math"], chosen_as_list=True),
    ),
    "parquet-pairs-no-subsets": (".parquet", lambda t: pair_rows(t, 10)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_evaluate_equals_the_hand_computation(capsys, model_dir, loaded, texts, tmp_path, case):
    suffix, build = CASES[case]
    rows = build(texts)
    data = write(tmp_path / f"data{suffix}", rows)
    out_dir = tmp_path / "report"
    stdout = run(capsys, model_dir, data, "--out", out_dir)
    report = json.loads((out_dir / "report.json").read_text())
    check(report, rows, hand(loaded, rows))
    assert report["calibrator"] is None and report["uncertainty"] == "margin_std"

    written = [json.loads(line) for line in (out_dir / "rows.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == [r["id"] for r in rows]
    assert [r["kind"] for r in written] == [
        "best_of_k" if isinstance(r["rejected"], list) else "pair" for r in rows
    ]
    np.testing.assert_allclose([r["correct"] for r in written], hand(loaded, rows)["credit"])
    has_pairs = any(not isinstance(r["rejected"], list) for r in rows)
    pngs = {"reliability.png", "risk_coverage.png"} if has_pairs else set()
    assert {p.name for p in out_dir.glob("*.png")} == pngs

    lines = stdout.splitlines()
    assert lines[0].startswith(f"evaluated {len(rows)} rows: ")
    overall = next(line for line in lines if line.startswith("overall"))
    assert overall.split() == ["overall", str(len(rows)), f"{report['accuracy']['overall']:.4f}"]
    if report["rewardbench"] is not None:
        rb = next(line for line in lines if line.startswith("RewardBench"))
        assert rb.split()[1] == f"{report['rewardbench']['score']:.4f}"
    assert any(line.startswith("pairs (") for line in lines) == has_pairs


def test_a_stored_calibrator_is_applied_and_compared(capsys, model_dir, loaded, texts, tmp_path):
    from auq.data.builtin import load_builtin_preferences

    calibrated_dir = tmp_path / "calibrated"
    shutil.copytree(model_dir, calibrated_dir)
    rm = auq.RewardModel.from_pretrained(calibrated_dir)
    cal = rm.calibrate(load_builtin_preferences(30, seed=11), method="temperature")
    rm.save_calibrator(calibrated_dir)
    rows = pair_rows(texts, 12, RB_SUBSETS)
    data = write(tmp_path / "data.jsonl", rows)

    run(capsys, calibrated_dir, data, "--out", tmp_path / "after")
    report = json.loads((tmp_path / "after" / "report.json").read_text())
    assert report["calibrator"] == "temperature"
    check(report, rows, hand(loaded, rows, temperature=cal.temperature_))
    before = hand(loaded, rows)
    assert report["calibration_uncalibrated"]["ece"] == pytest.approx(before["ece"], rel=1e-5)
    assert (tmp_path / "after" / "reliability_before_after.png").is_file()

    run(capsys, calibrated_dir, data, "--uncalibrated", "--out", tmp_path / "raw")
    raw = json.loads((tmp_path / "raw" / "report.json").read_text())
    assert raw["calibrator"] is None and raw["calibration_uncalibrated"] is None
    check(raw, rows, before)


def test_other_uncertainty_scores_and_no_out(capsys, model_dir, loaded, texts, tmp_path):
    rows = pair_rows(texts, 12)
    data = write(tmp_path / "data.jsonl", rows)
    before = set(tmp_path.iterdir())
    stdout = run(capsys, model_dir, data, "--uncertainty", "response_std")
    assert set(tmp_path.iterdir()) == before  # nothing written without --out
    assert "error AUROC (response_std)" in stdout
    # response_std = chosen std + rejected std, by hand
    h = hand(loaded, rows)
    u = []
    for row in rows:
        std = loaded.score(row["prompt"], [row["chosen"], row["rejected"]], progress=False).std
        u.append(float(std.double().sum()))
    expected = calibration_by_hand(h["p"], np.array(u))["error_auroc"]
    shown = stdout.split("error AUROC (response_std) ")[1].split()[0]
    assert shown == f"{expected:.4f}"


def test_builtin_source(capsys, model_dir, tmp_path):
    run(capsys, model_dir, "builtin:12", "--out", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n_pairs"] == 12 and report["subsets"] is None


# -- bad input: one line naming the row and field, before the model loads ----------------------


GOOD = {"prompt": "q", "chosen": "good answer", "rejected": "bad answer"}
BAD_JSONL = {
    "invalid-json": (
        [json.dumps(GOOD), '{"prompt": "q", "chosen": ', json.dumps(GOOD)],
        "row 1 ({path}, line 2): invalid JSON",
    ),
    "empty-rejected-list": (
        [json.dumps(GOOD | {"rejected": []})],
        "row 0 ({path}, line 1), field 'rejected': empty list",
    ),
    "empty-item": (
        [json.dumps(GOOD), json.dumps(GOOD | {"rejected": ["bad", "  "]})],
        "row 1 ({path}, line 2), field 'rejected': item 1 of the list is empty text",
    ),
    "item-is-chosen": (
        [json.dumps(GOOD | {"rejected": ["good answer", "bad"]})],
        "row 0 ({path}, line 1), field 'rejected': item 0 of the list is identical to 'chosen'",
    ),
    "non-str-item": (
        [json.dumps(GOOD | {"rejected": ["bad", 3]})],
        "row 0 ({path}, line 1), field 'rejected': item 1 of the list is not a str (got int)",
    ),
    "two-chosen": (
        [json.dumps(GOOD | {"chosen": ["a", "b"], "rejected": ["c"]})],
        "row 0 ({path}, line 1), field 'chosen': 2 chosen responses; give one",
    ),
    "missing-subset": (
        [json.dumps(GOOD | {"subset": "hep-go"}), json.dumps(GOOD)],
        "row 1 ({path}, line 2), field 'subset': expected a non-empty str (the column exists), "
        "got missing",
    ),
    "list-without-prompt": (
        [json.dumps({"chosen": "q good", "rejected": ["q bad", "q worse"]})],
        "row 0 ({path}, line 1), field 'prompt': a list of rejected responses needs an "
        "explicit 'prompt' column",
    ),
    "first-bad-row-wins-validation": (
        [json.dumps(GOOD), json.dumps(GOOD | {"chosen": ""}), json.dumps(GOOD | {"rejected": []})],
        "row 1 ({path}, line 2), field 'chosen': empty text",
    ),
    "first-bad-row-wins-lists": (
        [json.dumps(GOOD | {"rejected": []}), json.dumps(GOOD | {"chosen": ""})],
        "row 0 ({path}, line 1), field 'rejected': empty list",
    ),
    "missing-column": (
        [json.dumps({"prompt": "q", "chosen": "a"})],
        "missing required column 'rejected'; columns present: 'prompt', 'chosen'",
    ),
    "empty-file": ([""], "no rows: a preference dataset needs at least one pair"),
}


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_bad_jsonl_is_one_line(capsys, damaged_model_dir, tmp_path, case):
    lines, message = BAD_JSONL[case]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = cli(capsys, "evaluate", damaged_model_dir, path, "--out", tmp_path / "o")
    assert code == 2 and out == ""
    assert one_error_line(err).startswith(message.format(path=path))
    assert not (tmp_path / "o").exists()


def test_bad_parquet_row_names_the_file_row_and_field(capsys, damaged_model_dir, tmp_path):
    path = write(tmp_path / "d.parquet", [GOOD, GOOD | {"chosen": "  "}])
    code, _, err = cli(capsys, "evaluate", damaged_model_dir, path)
    assert code == 2
    assert one_error_line(err) == f"row 1 ({path}), field 'chosen': empty text (whitespace only)"


def test_damaged_parquet_file(capsys, damaged_model_dir, tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    code, _, err = cli(capsys, "evaluate", damaged_model_dir, path)
    assert code == 2
    assert one_error_line(err).startswith(f"DATA {str(path)!r} is not a readable Parquet file (")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.jsonl", "DATA: data file {src!r} not found"),
        (lambda d: d, "DATA {src!r} is a directory; give a JSONL or Parquet file"),
    ],
    ids=["missing", "directory"],
)
def test_missing_data_or_directory(capsys, damaged_model_dir, tmp_path, make, message):
    src = str(make(tmp_path))
    code, _, err = cli(capsys, "evaluate", damaged_model_dir, src)
    assert code == 2 and one_error_line(err).startswith(message.format(src=src))


def test_out_under_a_file_is_refused_before_the_data_is_read(capsys, damaged_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli(
        capsys, "evaluate", damaged_model_dir, tmp_path / "missing.jsonl", "--out", blocker / "o"
    )
    assert code == 2
    assert "cannot be created" in one_error_line(err)


def test_a_damaged_model_is_one_line_after_good_data(capsys, damaged_model_dir, tmp_path):
    data = write(tmp_path / "d.jsonl", [GOOD])
    code, _, err = cli(capsys, "evaluate", damaged_model_dir, data, "--out", tmp_path / "o")
    assert code == 2
    assert one_error_line(err).startswith("cannot load the reward model in ")
    assert not (tmp_path / "o").exists()


def test_bad_uncertainty_option_is_one_line(capsys, model_dir, tmp_path):
    code, _, err = cli(capsys, "evaluate", model_dir, "builtin", "--uncertainty", "variance")
    assert code == 2
    assert one_error_line(err, "auq evaluate: error: ").startswith(
        "argument --uncertainty: invalid choice: 'variance'"
    )


def test_evaluate_is_listed_in_help(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "evaluate" in out
