"""The demo's report folder: figures (PNG), ``index.html``, the study's JSON.

:func:`write_report` turns a :class:`~auq.training.study_result.StudyResult` into a
static page — what was run, the figures, the summary table (selector × label noise),
the realised label noise, the calibration before and after, the cost of each proxy
and whether Coste et al.'s ordering held — with no JavaScript and nothing fetched
from the network. :func:`summary_lines` is the short terminal version of the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auq.cli import htmlpage as h

__all__ = [
    "INDEX",
    "RESULT_JSON",
    "ReportFigure",
    "coste_verdict",
    "summary_lines",
    "summary_table",
    "write_figures",
    "write_report",
]

INDEX = "index.html"
RESULT_JSON = "study.json"
TITLE = "auq demo: reward over-optimisation and what uncertainty does about it"


@dataclass(frozen=True)
class ReportFigure:
    """A PNG in the report folder and what it shows."""

    filename: str
    title: str
    caption: str


# -- numbers ---------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    """A number for a table cell ("–" for None / NaN)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _pm(mean: Any, std: Any, digits: int = 3) -> str:
    """``mean ± std``, or the mean alone when the std is undefined (one seed)."""
    text = _num(mean, digits)
    if std is None or not math.isfinite(float(std)):
        return text
    return f"{text} ± {_num(std, digits)}"


def _pct(noise: float) -> str:
    return f"{100 * noise:g} %"


def _kl_at_max(result, row: dict) -> float:
    """Plug-in KL of a summary row's selector at the largest n, averaged over seeds."""
    key = (row["selector"], row["label_noise"], row["n_max"])
    values = [r["kl"] for r in result.curves if (r["selector"], r["label_noise"], r["n"]) == key]
    return float(np.mean(values)) if values else math.nan


def _cost(result, proxy: str, noise: float) -> str:
    """Fit and pool-scoring seconds of a proxy (mean over seeds), and the scoring ratio."""
    rows = [c for c in result.costs if c["proxy"] == proxy and c["label_noise"] == noise]
    if not rows:
        return "–"
    fit = np.mean([c["fit_seconds"] for c in rows])
    score = np.mean([c["score_seconds"] for c in rows])
    ratio = np.mean([c["score_ratio"] for c in rows])
    return f"fit {fit:.1f} s, score {score:.1f} s (×{ratio:.2f})"


#: (header, cell) of the summary table, from a summary row and the result
_COLUMNS: tuple[tuple[str, Callable[[dict, Any], str]], ...] = (
    ("selector", lambda r, _: r["selector"]),
    ("label noise", lambda r, _: _pct(r["label_noise"])),
    ("gold at n = 1", lambda r, _: _num(r["gold_n1"])),
    ("gold at n max", lambda r, _: _pm(r["gold_n_max"], r["gold_n_max_std"])),
    ("peak gold", lambda r, _: _pm(r["peak_gold"], r["peak_gold_std"])),
    ("n at peak", lambda r, _: _pm(r["peak_n"], r["peak_n_std"], 0)),
    ("proxy at n max", lambda r, _: _num(r["proxy_n_max"])),
    ("KL at n max (nats)", lambda r, res: _num(_kl_at_max(res, r), 2)),
    ("Gao α", lambda r, _: _num(r["gao_alpha"])),
    ("Gao β", lambda r, _: _num(r["gao_beta"])),
    ("Gao R²", lambda r, _: _num(r["gao_r2"], 2)),
    ("early warning ρ", lambda r, _: _num(r["warning_rho_responses"], 2)),
    ("cost of the proxy", lambda r, res: _cost(res, r["proxy"], r["label_noise"])),
)  # fmt: skip


def summary_table(result) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (one row per selector × label noise)."""
    header = [name for name, _ in _COLUMNS]
    rows = [[cell(row, result) for _, cell in _COLUMNS] for row in result.summary()]
    return header, rows


def coste_verdict(result, noise: float) -> str:
    """Coste et al.'s ordering at one label noise, said plainly either way."""
    c = result.coste_ordering(noise)
    head = f"At {_pct(noise)} label noise and n = {c['n_max']}"
    if c["holds"] is None:
        return f"{head}, the ordering cannot be judged: {c.get('note', 'a selector is missing')}."
    gold = c["gold"]
    best = c["best_conservative"]
    numbers = (
        f"best conservative {best} {gold[best]:.3f}, mean {gold['mean']:.3f}, "
        f"single {gold['single']:.3f}"
    )
    seeds = f" ({c['seeds_holding']} of {c['n_seeds']} seeds)" if c.get("n_seeds", 1) > 1 else ""
    if c["holds"]:
        return f"{head}, Coste et al.'s ordering HOLDS{seeds}: {numbers} (gold reward)."
    broken = []
    if not c["conservative_ge_mean"]:
        broken.append("the best conservative objective is below the ensemble mean")
    if not c["mean_gt_single"]:
        broken.append("the ensemble mean does not beat the single model")
    return (
        f"{head}, Coste et al.'s ordering does NOT hold{seeds}: {' and '.join(broken)} "
        f"({numbers}, gold reward)."
    )


def summary_lines(result) -> list[str]:
    """The terminal summary: gold at n max and at the peak per selector, and the verdicts."""
    n_max = max(result.config.ns)
    lines = [f"{'selector':<14}{'noise':>7}{'gold n=1':>10}{f'gold n={n_max}':>12}{'peak (n)':>16}"]
    for r in result.summary():
        peak = f"{_num(r['peak_gold'])} ({_num(r['peak_n'], 0)})"
        lines.append(
            f"{r['selector']:<14}{_pct(r['label_noise']):>7}{_num(r['gold_n1']):>10}"
            f"{_num(r['gold_n_max']):>12}{peak:>16}"
        )
    lines += [coste_verdict(result, noise) for noise in result.config.label_noises]
    return lines


# -- figures -----------------------------------------------------------------------------


def write_figures(result, out: Path) -> list[ReportFigure]:
    """Draw the study's figures as PNGs in ``out``; returns them in page order."""
    import matplotlib.pyplot as plt

    from auq.training.study_plots import (
        plot_overoptimization,
        plot_pick_std,
        plot_study_reliability,
    )

    k = result.config.n_heads
    figures = [
        (
            ReportFigure(
                "overoptimization.png",
                "Over-optimisation",
                "Gold reward of the best-of-n pick (solid) against √KL from the reference "
                "policy, one line per selector and one panel per label noise; dashed, what the "
                "selector's proxy believes the pick is worth, in gold units. Where solid falls "
                "while dashed still rises, the pick exploits the proxy's errors.",
            ),
            lambda path: plot_overoptimization(result, save_path=path),
        ),
        (
            ReportFigure(
                "pick_std.png",
                "Uncertainty of the pick",
                f"Epistemic standard deviation of the picked response under the {k}-head "
                "ensemble (one yardstick for every selector) against n.",
            ),
            lambda path: plot_pick_std(result, save_path=path),
        ),
    ]
    for noise in result.config.label_noises:
        figures.append(
            (
                ReportFigure(
                    f"reliability_noise_{noise:g}.png",
                    f"Reliability at {_pct(noise)} label noise",
                    f"Reliability diagram of the {k}-head ensemble on held-out pairs "
                    f"({_pct(noise)} label noise), before and after temperature scaling.",
                ),
                lambda path, noise=noise: plot_study_reliability(result, noise, save_path=path),
            )
        )
    for spec, draw in figures:
        plt.close(draw(out / spec.filename))
    return [spec for spec, _ in figures]


# -- the page ----------------------------------------------------------------------------


def _policy_facts(result) -> list[tuple[str, Any]]:
    """The reference policy and the pool of each seed, from the result's ``meta``."""
    out = []
    policy = result.config.resolved_policy_config
    for pool in result.meta.get("pools", []):
        out.append(
            (
                f"reference policy (seed {pool['seed']})",
                f"GPT-2, {policy.steps} SFT steps on {policy.n_train} pairs, final loss "
                f"{_num(pool.get('policy_final_loss'))}",
            )
        )
        out.append(
            (
                f"pool (seed {pool['seed']})",
                f"{_num(pool.get('sentences_mean'), 1)} sentences on average, "
                f"{_num(100 * pool.get('share_over_4_sentences', math.nan), 0)} % over four; "
                f"{pool.get('n_truncated', '–')} responses cut at {pool.get('max_new_tokens')} "
                f"tokens; {pool.get('n_rm_truncated', '–')} cut at the reward model's "
                f"{result.config.max_length} tokens",
            )
        )
    return out


def _run_facts(result, facts: Sequence[tuple[str, Any]], seconds: float) -> list[tuple[str, Any]]:
    c = result.config
    return [
        *facts,
        *_policy_facts(result),
        ("seeds", ", ".join(str(s) for s in c.seeds)),
        ("label noise levels", ", ".join(_pct(v) for v in c.label_noises)),
        ("preference pairs", f"{c.n_train} train, {c.n_calibration} calibration, {c.n_test} test"),
        ("best-of-n pool", f"{c.n_prompts} prompts × {c.pool_size} responses"),
        ("n", ", ".join(str(n) for n in c.ns)),
        ("selectors", ", ".join(c.selectors)),
        ("heads ensemble", f"K = {c.n_heads}"),
        ("calibration", c.calibration),
        ("time taken", f"{seconds:.0f} s"),
    ]


def _noise_table(result) -> str:
    header = [
        "seed",
        "label noise",
        "split",
        "pairs",
        "flipped",
        "realised noise rate",
        "gold agreement",
    ]
    rows = [
        [r.get("seed", "–"), _pct(r["label_noise"]), r.get("split", "–"), r.get("n_pairs", "–"),
         r.get("n_flipped", "–"), _num(r.get("noise_rate"), 4), _num(r.get("gold_agreement"))]
        for r in result.noise
    ]  # fmt: skip
    return h.table(header, rows)


def _calibration_table(result) -> str:
    header = ["label noise", "temperature", "ECE before", "ECE after"]
    rows = []
    for noise in result.config.label_noises:
        rel = result.reliability[noise]
        temps = np.atleast_1d(np.asarray(rel.get("temperature", math.nan), dtype=np.float64))
        rows.append(
            [_pct(noise), ", ".join(_num(t, 2) for t in temps), _num(rel.get("ece_before"), 4),
             _num(rel.get("ece_after"), 4)]
        )  # fmt: skip
    return h.table(header, rows)


def render_page(
    result, figures: Sequence[ReportFigure], *, facts: Sequence[tuple[str, Any]], seconds: float
) -> str:
    """The HTML of ``index.html``."""
    header, rows = summary_table(result)
    n_max, noises = max(result.config.ns), result.config.label_noises
    body = [
        h.paragraph(
            "A proxy reward model is trained on preference pairs from a synthetic world whose "
            "gold reward is known, calibrated, and then used to pick the best of n responses "
            "of a reference policy. Gold reward first rises with n, then falls as the pick "
            "exploits the proxy's errors (over-optimisation); conservative objectives that pay "
            "for the ensemble's disagreement are meant to limit the fall (Coste et al. 2023)."
        ),
        h.heading("What was run"),
        h.definition_list(_run_facts(result, facts, seconds)),
        h.heading("Verdict"),
        *(h.paragraph(coste_verdict(result, v), css_class="verdict") for v in noises),
        h.heading("Figures"),
        *(h.figure(f.filename, f.title, f.caption) for f in figures),
        h.heading("Summary"),
        h.paragraph(
            f"Gold reward of the pick (mean over prompts; ± std over seeds where there are "
            f"several) at n = 1, at n max = {n_max} and at its peak; the proxy's own reward "
            "at n max; the plug-in KL of best-of-n; Gao et al.'s fit gold − gold(1) = "
            "d(α − β d) with d = √KL; the early-warning rank correlation of a response's "
            "epistemic std with the proxy's over-estimate of its gold reward; and what the "
            "selector's proxy cost to fit and to score the pool (× the single model's scoring)."
        ),
        h.table(header, rows),
        h.heading("Label noise"),
        h.paragraph("Labels flipped on purpose after the Bradley–Terry draw, as realised."),
        _noise_table(result),
        h.heading("Calibration"),
        h.paragraph("Expected calibration error (15 bins) of the heads ensemble, held-out pairs."),
        _calibration_table(result),
        h.heading("Files"),
        h.paragraph(f"Every number above, and the curves, are in {RESULT_JSON} in this folder."),
    ]  # fmt: skip
    return h.page(TITLE, body)


def write_report(
    result, out: Path, *, facts: Sequence[tuple[str, Any]] = (), seconds: float = math.nan
) -> Path:
    """Write figures, ``index.html`` and ``study.json`` into ``out`` (which exists).

    Parameters
    ----------
    result : auq.training.study_result.StudyResult
    out : Path
    facts : sequence of (str, value)
        Extra lines of "What was run" (backbone, command, ...).
    seconds : float
        Wall time of the run.

    Returns
    -------
    Path
        The ``index.html`` written.
    """
    figures = write_figures(result, out)
    result.to_json(out / RESULT_JSON)
    index = out / INDEX
    index.write_text(render_page(result, figures, facts=facts, seconds=seconds), encoding="utf-8")
    return index
