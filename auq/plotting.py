"""Plots of calibration and uncertainty quality.

matplotlib is imported inside each function (it is an optional dependency,
``pip install auq[plot]``), nothing here calls ``plt.show()``, and every
function works under the non-interactive ``Agg`` backend. Each function takes
an optional ``ax``, returns the :class:`~matplotlib.figure.Figure`, and writes
a PNG when given ``save_path``.

Wherever a function takes probabilities or uncertainty scores it also takes a
:class:`~auq.types.PreferencePrediction` (labels then default to "chosen wins";
uncertainties are the score named by ``score=``, default ``"response_std"``).
Reliability diagrams swap-symmetrise one-class labels (``symmetrize="auto"``,
see :func:`auq.metrics.calibration_inputs`) or refuse them with
``symmetrize=False``, and say so in their title; axis labels and titles name the
uncertainty score shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from auq.metrics import (
    ReliabilityCurve,
    calibration_inputs,
    expected_calibration_error,
    ood_auroc,
    reliability_curve,
    risk_coverage_curve,
    uncertainty_values,
)
from auq.metrics.checks import as_float_array
from auq.types import PreferencePrediction

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ReliabilityDisplay",
    "plot_calibration_comparison",
    "plot_reliability_diagram",
    "plot_risk_coverage",
    "plot_uncertainty_histograms",
    "pyplot",
    "save_figure",
]


def pyplot():
    """``matplotlib.pyplot``, imported on first use (an ImportError naming the extra)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("auq.plotting needs matplotlib: pip install 'auq[plot]'") from err
    return plt


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = pyplot().subplots(figsize=figsize)
    return fig, ax


def save_figure(fig: Figure, save_path: str | Path | None) -> None:
    """Write ``fig`` to ``save_path`` (150 dpi, tight) unless it is None."""
    if save_path is not None:
        fig.savefig(save_path, dpi=150, bbox_inches="tight")


def _counts_axis(ax: Axes) -> Axes:
    """A short axis appended under ``ax`` sharing its x-axis (for count histograms)."""
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    hax = make_axes_locatable(ax).append_axes("bottom", size="28%", pad=0.08, sharex=ax)
    ax.tick_params(labelbottom=False)
    hax.set_xlabel(ax.get_xlabel() or "confidence")
    ax.set_xlabel("")
    hax.set_ylabel("count")
    return hax


def _draw_curve(
    ax: Axes, curve: ReliabilityCurve, label: str, color: Any = None, gaps: bool = True
):
    filled = curve.counts > 0
    (line,) = ax.plot(
        curve.confidence[filled], curve.accuracy[filled], "o-", color=color, label=label, ms=4
    )
    if gaps:
        lo, hi = curve.edges[:-1], curve.edges[1:]
        ax.bar(
            lo[filled],
            curve.accuracy[filled] - curve.confidence[filled],
            width=(hi - lo)[filled],
            bottom=curve.confidence[filled],
            align="edge",
            color=line.get_color(),
            alpha=0.15,
            edgecolor="none",
        )
    return line


def _draw_counts(hax: Axes, curve: ReliabilityCurve, color: Any, label: str | None = None) -> None:
    hax.stairs(curve.counts, curve.edges, color=color, fill=False, lw=1.5, label=label)


def _title(title: str, symmetrized: bool) -> str:
    return f"{title}\n(pairs swap-symmetrised)" if symmetrized else title


def _model_name(y_prob: Any) -> str | None:
    """A prediction's method (and calibrator) as a legend label; None for arrays."""
    if not isinstance(y_prob, PreferencePrediction):
        return None
    name = y_prob.method or "model"
    return f"{name} + {y_prob.calibrator}" if y_prob.calibrator else name


def _frame(ax: Axes, xlabel: str) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("observed frequency")
    ax.legend(loc="upper left", fontsize="small")


class ReliabilityDisplay:
    """Reliability diagram in scikit-learn's ``Display`` style.

    Create with :meth:`from_predictions`; the figure lives in ``figure_``,
    the main axes in ``ax_`` and the count histogram in ``hist_ax_``.

    Parameters
    ----------
    curve : ReliabilityCurve
    ece : float
    name : str, optional
        Legend label of the model.
    form : {"positive", "top_label"}
    symmetrized : bool
        Whether the pairs were swap-symmetrised (shown in the title).
    """

    def __init__(
        self,
        curve: ReliabilityCurve,
        *,
        ece: float,
        name: str | None = None,
        form: str = "positive",
        symmetrized: bool = False,
    ) -> None:
        self.curve = curve
        self.ece = ece
        self.name = name
        self.form = form
        self.symmetrized = symmetrized

    @classmethod
    def from_predictions(
        cls,
        y_true: Any,
        y_prob: Any,
        *,
        n_bins: int = 15,
        strategy: str = "uniform",
        form: str = "positive",
        name: str | None = None,
        hist: bool = True,
        symmetrize: Any = "auto",
        ax: Axes | None = None,
        save_path: str | Path | None = None,
    ) -> ReliabilityDisplay:
        """Bin the predictions and plot.

        Parameters
        ----------
        y_true : array-like or Tensor, shape (N,), or None
            Outcomes in {0, 1}; None with a prediction means "chosen wins".
        y_prob : array-like or Tensor, shape (N,), or PreferencePrediction
            Predicted P(chosen ≻ rejected).
        n_bins, strategy, form
            As in :func:`auq.metrics.reliability_curve`.
        name : str, optional
            Legend label; defaults to a prediction's method (and calibrator).
        hist : bool
            Draw the per-bin counts in a short panel under the diagram.
        symmetrize : {"auto", True, False}
            Swap-symmetrise the pairs; ``"auto"`` does so when the labels are one
            class, ``False`` refuses one-class labels.
        ax : matplotlib Axes, optional
        save_path : str or Path, optional

        Returns
        -------
        ReliabilityDisplay
        """
        inputs = calibration_inputs(y_true, y_prob, symmetrize=symmetrize)
        y, p = inputs.y_true, inputs.y_prob
        curve = reliability_curve(y, p, n_bins, strategy, form=form)
        ece = expected_calibration_error(y, p, n_bins, strategy, form=form)
        name = _model_name(y_prob) if name is None else name
        display = cls(curve, ece=ece, name=name, form=form, symmetrized=inputs.symmetrized)
        return display.plot(hist=hist, ax=ax, save_path=save_path)

    def plot(
        self, *, hist: bool = True, ax: Axes | None = None, save_path: str | Path | None = None
    ) -> ReliabilityDisplay:
        """Draw on ``ax`` (a new figure if None); returns ``self``."""
        fig, ax = _axes(ax, (5.0, 5.5 if hist else 4.5))
        label = f"{self.name or 'model'} (ECE = {self.ece:.3f})"
        line = _draw_curve(ax, self.curve, label)
        _frame(ax, "confidence" if self.form == "top_label" else "predicted P(chosen ≻ rejected)")
        ax.set_title(_title("Reliability diagram", self.symmetrized))
        self.hist_ax_ = None
        if hist:
            self.hist_ax_ = _counts_axis(ax)
            _draw_counts(self.hist_ax_, self.curve, line.get_color())
        self.figure_, self.ax_, self.line_ = fig, ax, line
        save_figure(fig, save_path)
        return self


def plot_reliability_diagram(
    y_true: Any,
    y_prob: Any,
    *,
    n_bins: int = 15,
    strategy: str = "uniform",
    form: str = "positive",
    name: str | None = None,
    hist: bool = True,
    symmetrize: Any = "auto",
    ax: Axes | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Reliability diagram with ECE in the legend and counts underneath.

    Parameters as in :meth:`ReliabilityDisplay.from_predictions` (``y_prob`` may be
    a PreferencePrediction).

    Returns
    -------
    matplotlib Figure
    """
    return ReliabilityDisplay.from_predictions(
        y_true, y_prob, n_bins=n_bins, strategy=strategy, form=form, name=name,
        hist=hist, symmetrize=symmetrize, ax=ax, save_path=save_path,
    ).figure_  # fmt: skip


def plot_calibration_comparison(
    y_true: Any,
    probs_before: Any,
    probs_after: Any,
    *,
    n_bins: int = 15,
    strategy: str = "uniform",
    labels: tuple[str, str] = ("before", "after"),
    symmetrize: Any = "auto",
    ax: Axes | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Before/after reliability curves on one diagram, counts of both underneath.

    Parameters
    ----------
    y_true : array-like or Tensor, shape (N,), or None
        None when both probabilities come as predictions: "chosen wins".
    probs_before, probs_after : array-like or Tensor, shape (N,), or PreferencePrediction
        Probabilities before and after calibration (e.g. ``pred`` and
        ``calibrator.calibrate(pred)``).
    n_bins, strategy
        As in :func:`auq.metrics.reliability_curve`.
    labels : (str, str)
    symmetrize : {"auto", True, False}
        As in :meth:`ReliabilityDisplay.from_predictions` (the same for both).
    ax : matplotlib Axes, optional
    save_path : str or Path, optional

    Returns
    -------
    matplotlib Figure
    """
    inputs = [
        calibration_inputs(y_true, probs, symmetrize=symmetrize)
        for probs in (probs_before, probs_after)
    ]
    fig, ax = _axes(ax, (5.0, 5.5))
    curves = []
    for inp, label, color in zip(inputs, labels, ("C3", "C0"), strict=True):
        curve = reliability_curve(inp.y_true, inp.y_prob, n_bins, strategy)
        ece = expected_calibration_error(inp.y_true, inp.y_prob, n_bins, strategy)
        _draw_curve(ax, curve, f"{label} (ECE = {ece:.3f})", color=color)
        curves.append((curve, label, color))
    _frame(ax, "predicted P(chosen ≻ rejected)")
    ax.set_title(_title("Calibration before and after", inputs[0].symmetrized))
    hax = _counts_axis(ax)
    for curve, label, color in curves:
        _draw_counts(hax, curve, color, label)
    save_figure(fig, save_path)
    return fig


def plot_risk_coverage(
    losses: Any,
    uncertainty: Any = None,
    *,
    score: str | None = None,
    name: str | None = None,
    oracle: bool = True,
    ax: Axes | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Selective risk against coverage, with the oracle ordering for reference.

    Parameters
    ----------
    losses : array-like or Tensor, shape (N,), or PreferencePrediction
        Per-prediction loss (0/1 errors or e.g. NLL); a prediction gives its 0/1
        errors against "chosen wins" (``1 − correct``).
    uncertainty : array-like or Tensor, shape (N,), or PreferencePrediction, optional
        Larger means less sure; defaults to ``losses`` when that is a prediction.
    score : str, optional
        The prediction's uncertainty score (default ``"response_std"``); named in
        the axis label.
    name : str, optional
    oracle : bool
        Also draw the curve of an oracle that ranks by the loss itself.
    ax : matplotlib Axes, optional
    save_path : str or Path, optional

    Returns
    -------
    matplotlib Figure
    """
    if isinstance(losses, PreferencePrediction):
        uncertainty = losses if uncertainty is None else uncertainty
        name = _model_name(losses) if name is None else name
        losses = (~losses.correct).double()
    if uncertainty is None:
        raise ValueError("uncertainty is required unless losses is a PreferencePrediction")
    u, score = uncertainty_values("uncertainty", uncertainty, score)
    loss = as_float_array("losses", losses)
    fig, ax = _axes(ax, (5.0, 4.0))
    coverage, risk = risk_coverage_curve(loss, u)
    ax.plot(coverage, risk, label=f"{name or 'model'} (AURC = {risk.mean():.3f})")
    if oracle:
        cov_o, risk_o = risk_coverage_curve(loss, loss)
        ax.plot(cov_o, risk_o, ls="--", color="grey", label=f"oracle (AURC = {risk_o.mean():.3f})")
    ax.axhline(risk[-1], color="grey", lw=0.8, ls=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"coverage (fraction kept, most certain by {score or 'uncertainty'} first)")
    ax.set_ylabel("risk (mean loss)")
    ax.set_title(f"Risk–coverage, ranked by {score or 'uncertainty'}")
    ax.legend(fontsize="small")
    save_figure(fig, save_path)
    return fig


def plot_uncertainty_histograms(
    in_uncertainty: Any,
    ood_uncertainty: Any,
    *,
    score: str | None = None,
    bins: int = 40,
    labels: tuple[str, str] = ("in-distribution", "out-of-distribution"),
    xlabel: str | None = None,
    ax: Axes | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Overlaid density histograms of an uncertainty score on two sets of inputs.

    Parameters
    ----------
    in_uncertainty : array-like or Tensor, shape (N_in,), or PreferencePrediction
    ood_uncertainty : array-like or Tensor, shape (N_ood,), or PreferencePrediction
    score : str, optional
        The predictions' score (default ``"response_std"``); only with predictions.
    bins : int
    labels : (str, str)
    xlabel : str, optional
        Defaults to the score's name (``"uncertainty"`` for arrays).
    ax : matplotlib Axes, optional
    save_path : str or Path, optional

    Returns
    -------
    matplotlib Figure
    """
    u_in, name_in = uncertainty_values("in_uncertainty", in_uncertainty, score)
    u_out, name_out = uncertainty_values("ood_uncertainty", ood_uncertainty, score)
    shown = name_in or name_out
    fig, ax = _axes(ax, (5.0, 3.5))
    edges = np.histogram_bin_edges(np.concatenate([u_in, u_out]), bins=bins)
    for values, label, color in zip((u_in, u_out), labels, ("C0", "C1"), strict=True):
        ax.hist(values, bins=edges, density=True, alpha=0.45, color=color, label=label)
        ax.hist(values, bins=edges, density=True, histtype="step", color=color)
    ax.set_xlabel(xlabel or shown or "uncertainty")
    ax.set_ylabel("density")
    ax.set_title(f"{shown or 'Uncertainty'} (OOD AUROC = {ood_auroc(u_in, u_out):.3f})")
    ax.legend(fontsize="small")
    save_figure(fig, save_path)
    return fig
