"""``auq calibrate``: fit a calibrator for a saved reward model and report before/after.

The data are split into a calibration part (the calibrator is fitted there) and an
evaluation part (the report is computed there). Metrics are computed on the
swap-symmetrised evaluation pairs — each pair once as (chosen, rejected) with label
1 and once swapped with label 0 — so a set whose labels all say "chosen wins"
still measures calibration in both directions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from auq.data import PreferenceDataset

__all__ = ["calibrate_saved_model", "load_preference_data", "swap_symmetrized"]


def load_preference_data(source: str) -> PreferenceDataset:
    """A JSONL path, or ``builtin`` / ``builtin:N`` / ``builtin-ood:N`` for the built-in set."""
    if source.startswith("builtin"):
        from auq.data.builtin import load_builtin_preferences

        name, _, size = source.partition(":")
        if name not in ("builtin", "builtin-ood"):
            raise ValueError(f"unknown data source {source!r}; valid: builtin[:N], builtin-ood[:N]")
        domain = "ood" if name == "builtin-ood" else "in"
        return load_builtin_preferences(int(size) if size else 2000, seed=1234, domain=domain)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"data file {source!r} not found; give a JSONL file with prompt/chosen/rejected "
            "columns, or builtin[:N]"
        )
    return PreferenceDataset.from_jsonl(path)


def swap_symmetrized(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of B pairs seen both ways, each shape (2B,).

    ``(concat([1…1, 0…0]), concat([p, 1 − p]))``: the pair as given ("chosen wins")
    and swapped.
    """
    return np.r_[np.ones_like(probs), np.zeros_like(probs)], np.r_[probs, 1 - probs]


def _report(probs: np.ndarray, uncertainty: np.ndarray) -> dict[str, Any]:
    from auq.metrics import calibration_report

    y_true, y_prob = swap_symmetrized(probs)
    return calibration_report(y_true, y_prob, uncertainty=np.r_[uncertainty, uncertainty])


def calibrate_saved_model(
    model_dir: str | Path,
    data: str,
    *,
    method: str = "temperature",
    out: str | Path,
    calibration_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit ``method`` on part of ``data``, report before/after on the rest, store the calibrator.

    Writes ``report.json``, ``reliability_before_after.png`` and
    ``reliability_after.png`` into ``out`` and ``calibrator.json`` next to the model.

    Returns
    -------
    dict
        ``{"method", "n_calibration", "n_evaluation", "before": {...}, "after": {...}}``.
    """
    from auq.models.reward_model import RewardModel
    from auq.plotting import plot_calibration_comparison, plot_reliability_diagram

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rm = RewardModel.from_pretrained(model_dir)
    dataset = load_preference_data(data)
    cal_set, eval_set = dataset.split(test_size=1 - calibration_fraction, seed=seed)
    calibrator = rm.calibrate(cal_set, method=method)
    pred = rm.predict(eval_set)
    before = pred.prob.numpy()
    after = calibrator.predict_proba(pred)
    uncertainty = pred.margin_std.numpy()
    report = {
        "method": method,
        "model": str(model_dir),
        "data": data,
        "n_calibration": len(cal_set),
        "n_evaluation": len(eval_set),
        "calibrator": calibrator.get_state(),
        "before": _report(before, uncertainty),
        "after": _report(after, uncertainty),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    y_true, p_before = swap_symmetrized(before)
    _, p_after = swap_symmetrized(after)
    plot_calibration_comparison(
        y_true,
        p_before,
        p_after,
        labels=("before", f"after ({method})"),
        save_path=out / "reliability_before_after.png",
    )
    plot_reliability_diagram(y_true, p_after, save_path=out / "reliability_after.png")
    rm.save_calibrator(model_dir)
    return report
