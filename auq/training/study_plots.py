"""Figures of an over-optimisation study (:class:`~auq.training.study_result.StudyResult`).

* :func:`plot_overoptimization` — gold reward of the best-of-n pick against √KL, one
  line per selector (mean over seeds, shaded min–max over seeds), and dashed the
  selector's proxy reward in gold units (``gold + gap``: what the proxy believes the
  pick is worth), as in Gao et al. (2022), Fig. 1.
* :func:`plot_pick_std` — the epistemic std of the pick against n.
* :func:`plot_study_reliability` — the heads ensemble's reliability before and
  after temperature scaling.

matplotlib is imported inside each function, nothing calls ``plt.show()``, and each
takes an optional ``ax`` (or writes one panel per label noise without it), returns
the figure, and writes a PNG when given ``save_path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from auq.plotting import plot_calibration_comparison, pyplot, save_figure
from auq.training.study_result import StudyResult

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_overoptimization", "plot_pick_std", "plot_study_reliability"]

#: a fixed colour and line style per selector, so every figure reads the same
STYLE: dict[str, tuple[str, str]] = {
    "single": ("black", "-"),
    "mean": ("tab:blue", "-"),
    "wco": ("tab:red", "-"),
    "uwo_0.1": ("tab:olive", "-"),
    "uwo_0.5": ("tab:orange", "-"),
    "uwo_1": ("tab:brown", "-"),
    "lcb": ("tab:green", "-"),
    "laplace": ("tab:purple", "-"),
    "laplace_mean": ("tab:purple", ":"),
    "pyro": ("tab:pink", "-"),
    "deep_mean": ("tab:cyan", ":"),
    "deep_uwo_0.5": ("tab:cyan", "-"),
}


def _check(result: Any) -> StudyResult:
    if not isinstance(result, StudyResult):
        raise TypeError(f"result must be a StudyResult, got {type(result).__name__}")
    return result


def _panels(
    result: StudyResult, label_noise: float | None, ax: Axes | None, width: float
) -> tuple[Figure, list[tuple[Axes, float]]]:
    """(figure, [(axes, noise)]): one panel per noise, or the given axes for one noise."""
    noises = list(result.config.label_noises)
    if label_noise is not None:
        if label_noise not in noises:
            raise ValueError(f"label_noise={label_noise!r} was not studied; studied: {noises}")
        noises = [label_noise]
    if ax is not None:
        if len(noises) != 1:
            raise ValueError(
                f"ax draws one panel: pass label_noise= (one of {noises}) with it, or no ax"
            )
        return ax.figure, [(ax, noises[0])]
    fig, axes = pyplot().subplots(
        1, len(noises), figsize=(width * len(noises), 4.2), squeeze=False, sharey=True
    )
    return fig, list(zip(axes[0], noises, strict=True))


def _selectors(result: StudyResult, selectors: Sequence[str] | None) -> list[str]:
    names = list(result.config.selectors if selectors is None else selectors)
    unknown = [s for s in names if s not in result.config.selectors]
    if unknown:
        raise ValueError(
            f"selectors {unknown} are not in this study; it ran {list(result.config.selectors)}"
        )
    return names


def _by_seed(result: StudyResult, name: str, noise: float, column: str) -> np.ndarray:
    """(n_seeds, K) values of one column, seeds in config order."""
    return np.stack([result.curve(name, noise, s)[column] for s in result.config.seeds])


def plot_overoptimization(
    result: StudyResult,
    label_noise: float | None = None,
    *,
    selectors: Sequence[str] | None = None,
    proxy: bool = True,
    ax: Axes | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Gold (solid) and proxy in gold units (dashed) of the pick against √KL(best-of-n ‖ policy).

    Parameters
    ----------
    result : StudyResult
    label_noise : float, optional
        One panel for this noise; default one panel per studied noise.
    selectors : sequence of str, optional
        Default: every selector of the study.
    proxy : bool
        Draw the proxy's belief ``gold + gap`` dashed.
    ax : matplotlib Axes, optional
        Draw here (needs ``label_noise`` when the study has several).
    save_path : str or Path, optional

    Returns
    -------
    matplotlib Figure
    """
    result = _check(result)
    names = _selectors(result, selectors)
    fig, panels = _panels(result, label_noise, ax, 5.2)
    for axes, noise in panels:
        for name in names:
            color, style = STYLE.get(name, ("grey", "-"))
            x = np.sqrt(_by_seed(result, name, noise, "kl")).mean(0)
            gold = _by_seed(result, name, noise, "gold")
            axes.plot(x, gold.mean(0), color=color, linestyle=style, marker=".", label=name)
            if len(gold) > 1:
                axes.fill_between(x, gold.min(0), gold.max(0), color=color, alpha=0.12, lw=0)
            if proxy:
                belief = gold + _by_seed(result, name, noise, "gap")
                axes.plot(x, belief.mean(0), color=color, linestyle="--", lw=0.9, alpha=0.7)
        axes.set_xlabel("√KL(best-of-n ‖ reference policy), nats^½")
        axes.set_title(f"label noise {noise:g}")
        axes.grid(alpha=0.3)
    first = panels[0][0]
    first.set_ylabel("gold reward of the pick" + (" (dashed: proxy, gold units)" if proxy else ""))
    first.legend(fontsize=7, ncol=2, loc="best")
    n_seeds = len(result.config.seeds)
    if ax is None:
        spread = f"mean of {n_seeds} seeds, shaded min-max" if n_seeds > 1 else "one seed"
        fig.suptitle(f"Best-of-n over-optimisation ({spread})", fontsize=10)
        fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_pick_std(
    result: StudyResult,
    label_noise: float | None = None,
    *,
    column: str = "monitor_std",
    selectors: Sequence[str] | None = None,
    ax: Axes | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Epistemic std of the pick against n (log scale), mean over seeds.

    Parameters
    ----------
    column : {"monitor_std", "std"}
        ``"monitor_std"`` (default): the heads ensemble's std of every selector's
        pick, one yardstick for all; ``"std"``: each selector's own proxy's std
        (0 for ``single``).
    label_noise, selectors, ax, save_path
        As in :func:`plot_overoptimization`.
    """
    result = _check(result)
    if column not in ("monitor_std", "std"):
        raise ValueError(f"column={column!r} is not supported; valid choices: 'monitor_std', 'std'")
    names = _selectors(result, selectors)
    fig, panels = _panels(result, label_noise, ax, 4.8)
    for axes, noise in panels:
        for name in names:
            color, style = STYLE.get(name, ("grey", "-"))
            n = result.curve(name, noise, result.config.seeds[0])["n"]
            std = _by_seed(result, name, noise, column)
            axes.plot(n, std.mean(0), color=color, linestyle=style, marker=".", label=name)
        axes.set_xscale("log", base=2)
        axes.set_xlabel("n (best of n)")
        axes.set_title(f"label noise {noise:g}")
        axes.grid(alpha=0.3)
    which = "heads ensemble" if column == "monitor_std" else "own proxy"
    panels[0][0].set_ylabel(f"epistemic std of the pick ({which})")
    panels[0][0].legend(fontsize=7, ncol=2, loc="best")
    if ax is None:
        fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_study_reliability(
    result: StudyResult,
    label_noise: float,
    *,
    ax: Axes | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """The heads ensemble's reliability on held-out test pairs, before and after temperature."""
    result = _check(result)
    if label_noise not in result.reliability:
        raise ValueError(
            f"no reliability data for label_noise={label_noise!r}; have "
            f"{sorted(result.reliability)}"
        )
    data = result.reliability[label_noise]
    return plot_calibration_comparison(
        data["y_true"],
        data["prob_before"],
        data["prob_after"],
        labels=("heads: before", "heads: temperature"),
        ax=ax,
        save_path=save_path,
    )
