"""Plots: each returns a Figure, draws on a given Axes, and writes a readable PNG."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from auq.plotting import (  # noqa: E402
    ReliabilityDisplay,
    plot_calibration_comparison,
    plot_reliability_diagram,
    plot_risk_coverage,
    plot_uncertainty_histograms,
)
from auq.types import PreferencePrediction, RewardPrediction  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    true = rng.normal(0, 2, 3000)
    y = (rng.uniform(size=true.size) < 1 / (1 + np.exp(-true))).astype(float)
    before = 1 / (1 + np.exp(-2.5 * true))
    after = 1 / (1 + np.exp(-true))
    return y, before, after


def _is_png(path) -> bool:
    return path.stat().st_size > 5000 and path.read_bytes()[:8] == PNG_MAGIC


def test_reliability_display(data, tmp_path):
    y, before, _ = data
    disp = ReliabilityDisplay.from_predictions(
        y, before, n_bins=10, name="raw", save_path=tmp_path / "rel.png"
    )
    assert isinstance(disp.figure_, Figure)
    assert disp.hist_ax_ is not None and disp.ece > 0.05
    assert disp.curve.counts.sum() == len(y)
    assert "raw (ECE = " in disp.ax_.get_legend().get_texts()[0].get_text()
    assert _is_png(tmp_path / "rel.png")


def test_reliability_diagram_on_given_axes_without_histogram(data):
    y, before, _ = data
    fig, ax = plt.subplots()
    out = plot_reliability_diagram(y, before, ax=ax, hist=False, strategy="quantile")
    assert out is fig
    assert len(fig.axes) == 1


def test_calibration_comparison(data, tmp_path):
    y, before, after = data
    fig = plot_calibration_comparison(y, before, after, save_path=tmp_path / "cmp.png")
    assert isinstance(fig, Figure)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("before (ECE") and labels[1].startswith("after (ECE")
    assert _is_png(tmp_path / "cmp.png")


def test_risk_coverage(data, tmp_path):
    y, before, _ = data
    errors = ((before > 0.5) != (y == 1)).astype(float)
    fig = plot_risk_coverage(errors, -np.abs(before - 0.5), save_path=tmp_path / "rc.png")
    assert len(fig.axes[0].get_lines()) == 3  # model, oracle, full-coverage risk
    assert _is_png(tmp_path / "rc.png")


def test_uncertainty_histograms(tmp_path):
    rng = np.random.default_rng(1)
    fig, ax = plt.subplots()
    out = plot_uncertainty_histograms(
        rng.normal(0, 1, 400), rng.normal(2, 1, 200), ax=ax, save_path=tmp_path / "h.png"
    )
    assert out is fig
    assert "OOD AUROC" in ax.get_title()
    assert _is_png(tmp_path / "h.png")


def test_plot_inputs_are_validated():
    with pytest.raises(ValueError, match="y_prob must contain probabilities"):
        plot_reliability_diagram([0, 1], [0.5, 2.0])


def _prediction(n: int, seed: int, scale: float = 1.0) -> PreferencePrediction:
    g = torch.Generator().manual_seed(seed)
    rc = RewardPrediction.from_samples(torch.randn(6, n, generator=g) * scale + 1.0)
    rr = RewardPrediction.from_samples(torch.randn(6, n, generator=g) * scale)
    return PreferencePrediction.from_margin_samples(
        rc.samples - rr.samples, chosen=rc, rejected=rr, method="heads"
    )


def test_reliability_display_takes_a_prediction_and_symmetrises(tmp_path):
    pp = _prediction(500, 0)
    disp = ReliabilityDisplay.from_predictions(None, pp, save_path=tmp_path / "pp.png")
    assert disp.symmetrized and disp.curve.counts.sum() == 1000  # each pair also swapped
    assert "swap-symmetrised" in disp.ax_.get_title()
    assert disp.ax_.get_legend().get_texts()[0].get_text().startswith("heads (ECE = ")
    assert _is_png(tmp_path / "pp.png")


def test_reliability_diagram_refuses_one_class_labels_without_symmetrisation():
    with pytest.raises(ValueError, match=r"y_true holds one class only \(every label is 1\)"):
        plot_reliability_diagram(None, _prediction(50, 1), symmetrize=False)


def test_calibration_comparison_with_predictions():
    pp = _prediction(400, 2)
    after = pp.calibrated(pp.logit.numpy() * 0.5, "temperature")
    fig = plot_calibration_comparison(None, pp, after)
    assert "swap-symmetrised" in fig.axes[0].get_title()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("before (ECE") and labels[1].startswith("after (ECE")


def test_risk_coverage_names_its_score():
    pp = _prediction(300, 3)
    fig = plot_risk_coverage(pp)
    ax = fig.axes[0]
    assert "response_std" in ax.get_xlabel() and "response_std" in ax.get_title()
    fig = plot_risk_coverage(pp, score="total")
    assert "ranked by total" in fig.axes[0].get_title()
    assert fig.axes[0].get_legend().get_texts()[0].get_text().startswith("heads (AURC")


def test_uncertainty_histograms_name_their_score():
    fig = plot_uncertainty_histograms(_prediction(300, 4), _prediction(200, 5, scale=3.0))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "response_std" and ax.get_title().startswith(
        "response_std (OOD AUROC"
    )
    fig = plot_uncertainty_histograms(_prediction(30, 6), _prediction(20, 7), score="epistemic")
    assert fig.axes[0].get_xlabel() == "epistemic"


def test_score_with_array_uncertainties_rejected():
    with pytest.raises(ValueError, match="score='total' names a score of a PreferencePrediction"):
        plot_uncertainty_histograms(np.ones(3), np.zeros(3), score="total")


def test_risk_coverage_needs_an_uncertainty_for_arrays():
    with pytest.raises(
        ValueError, match="uncertainty is required unless losses is a PreferencePrediction"
    ):
        plot_risk_coverage(np.zeros(3))


def test_importing_plotting_does_not_load_matplotlib():
    code = "import sys, auq.plotting; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
