"""Calibrators attached to reward models, and the ``auq calibrate`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

import auq
from auq.cli import main
from auq.cli.inputs import load_preference_data


@pytest.fixture(scope="module")
def saved_model(tiny_bert_dir, builtin_small, tmp_path_factory):
    train, _ = builtin_small
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=3, max_length=96)
    rm.fit(train, epochs=3, progress=False)
    path = tmp_path_factory.mktemp("rm")
    rm.save_pretrained(path)
    return path


def test_calibrator_is_used_saved_and_loaded(saved_model, builtin_small, tmp_path):
    _, test = builtin_small
    rm = auq.RewardModel.from_pretrained(saved_model)
    assert rm.calibrator_ is None
    np.testing.assert_allclose(rm.predict_proba(test), rm.predict(test).prob.numpy())
    cal = rm.calibrate(test, method="temperature")
    assert cal.temperature_ > 0 and rm.calibrator_ is cal
    probs = rm.predict_proba(test)
    rm.save_pretrained(tmp_path)
    loaded = auq.RewardModel.from_pretrained(tmp_path)
    assert loaded.calibrator_.temperature_ == pytest.approx(cal.temperature_)
    np.testing.assert_allclose(loaded.predict_proba(test), probs, rtol=1e-5)


def test_cli_calibrate_writes_report_plots_and_calibrator(saved_model, tmp_path):
    out = tmp_path / "report"
    assert (
        main(["calibrate", str(saved_model), "builtin:60", "--method", "platt", "--out", str(out)])
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["n_calibration"] + report["n_evaluation"] == 60
    for stage in ("before", "after"):
        assert {"ece", "nll", "brier", "accuracy", "symmetrized"} <= set(report[stage])
    assert (out / "reliability_before_after.png").stat().st_size > 1000
    assert (saved_model / "calibrator.json").is_file()
    assert type(auq.RewardModel.from_pretrained(saved_model).calibrator_).__name__ == "PlattScaler"


def test_cli_calibrate_rejects_unknown_method(saved_model, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "calibrate",
                str(saved_model),
                "builtin:20",
                "--method",
                "magic",
                "--out",
                str(tmp_path),
            ]
        )
    assert "invalid choice: 'magic'" in capsys.readouterr().err


def test_data_sources():
    assert len(load_preference_data("builtin:30")) == 30
    with pytest.raises(FileNotFoundError, match="DATA: data file 'nope.jsonl' not found"):
        load_preference_data("nope.jsonl")
    with pytest.raises(FileNotFoundError, match="data file 'builtin-x:3' not found; .* builtin"):
        load_preference_data("builtin-x:3")


def test_cli_report_is_swap_symmetrised_by_the_metrics(saved_model, tmp_path):
    """The report equals calibration_report on the model's own predictions, symmetrised."""
    out = tmp_path / "report"
    assert main(["calibrate", str(saved_model), "builtin:60", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    data = load_preference_data("builtin:60")
    _, eval_set = data.split(test_size=0.5, seed=0)
    rm = auq.RewardModel.from_pretrained(saved_model)
    pred = rm.predict(eval_set, calibrated=False)
    expected = auq.metrics.calibration_report(
        np.ones(len(eval_set)), pred.prob.numpy(), uncertainty=pred.margin_std.numpy()
    )
    assert expected["symmetrized"] is True and report["before"]["symmetrized"] is True
    for key in ("n", "accuracy", "ece", "brier", "aurc"):
        assert report["before"][key] == pytest.approx(expected[key], rel=1e-5), key
    assert report["before"]["nll"] == pytest.approx(expected["nll"], rel=1e-4)
