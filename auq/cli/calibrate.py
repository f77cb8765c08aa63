"""``auq calibrate``: fit a calibrator for a saved reward model and report before/after.

The data are split into a calibration part (the calibrator is fitted there) and an
evaluation part (the report is computed there). Every label says "chosen wins", so
:func:`auq.metrics.calibration_report` (``symmetrize="auto"``) computes the
calibration metrics on the swap-symmetrised pairs — each pair once as given and
once swapped, ``(1 − p, 0)`` — and says so (``"symmetrized": true``); the
reliability diagrams do the same.

Everything is checked before the model loads (the model directory, the data, the
options, that ``--out`` can be created); ``--out`` is created only when the results
are written, and ``calibrator.json`` is stored in the model directory last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auq.cli.errors import CliError, one_line
from auq.cli.inputs import OutputDir, check_model_dir, load_preference_data
from auq.utils.io import write_json

__all__ = ["calibrate_saved_model", "load_preference_data"]

REPORT_NAME = "report.json"
PLOT_NAMES = ("reliability_before_after.png", "reliability_after.png")


def _report(pred: Any) -> dict[str, Any]:
    """Metrics of one prediction (labels "chosen wins"; swap-symmetrised automatically)."""
    from auq.metrics import calibration_report

    return calibration_report(None, pred, uncertainty=pred.margin_std.numpy())


def _load_model(model_dir: Path):
    from auq.models.reward_model import RewardModel

    try:
        return RewardModel.from_pretrained(model_dir)
    except Exception as err:  # a damaged directory fails in many ways; name it, keep the cause
        raise CliError(
            f"cannot load the reward model in {str(model_dir)!r}: {type(err).__name__}: "
            f"{one_line(err)}"
        ) from err


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

    Writes ``report.json`` (strict JSON: NaN as null), ``reliability_before_after.png``
    and ``reliability_after.png`` into ``out`` and ``calibrator.json`` next to the model.

    Returns
    -------
    dict
        ``{"method", "n_calibration", "n_evaluation", "before": {...}, "after": {...}}``.

    Raises
    ------
    CliError, FileNotFoundError, PreferenceDataError, CheckpointError
        For bad inputs, all found before the model loads; ``out`` is then not created.
    """
    from auq.calibration import CALIBRATORS
    from auq.utils.validation import check_choice

    check_choice("--method", method, sorted(CALIBRATORS))
    if not 0 < calibration_fraction < 1:
        raise CliError(f"--calibration-fraction must be in (0, 1), got {calibration_fraction!r}")
    model_path = check_model_dir(str(model_dir), writable=True)  # calibrator.json goes there
    output = OutputDir(str(out), option="--out")
    dataset = load_preference_data(data)
    try:
        cal_set, eval_set = dataset.split(test_size=1 - calibration_fraction, seed=seed)
    except ValueError as err:
        raise CliError(
            f"DATA has {len(dataset)} pairs, too few to split with --calibration-fraction "
            f"{calibration_fraction} ({one_line(err)})"
        ) from None

    rm = _load_model(model_path)
    calibrator = rm.calibrate(cal_set, method=method)
    before = rm.predict(eval_set, calibrated=False)
    after = calibrator.calibrate(before)
    report = {
        "method": method,
        "model": str(model_dir),
        "data": data,
        "n_calibration": len(cal_set),
        "n_evaluation": len(eval_set),
        "calibrator": calibrator.get_state(),
        "uncertainty": "margin_std",
        "before": _report(before),
        "after": _report(after),
    }
    _write_outputs(output, report, before, after)
    rm.save_calibrator(model_path)
    return report


def _write_outputs(output: OutputDir, report: dict[str, Any], before: Any, after: Any) -> None:
    import matplotlib.pyplot as plt

    from auq.plotting import plot_calibration_comparison, plot_reliability_diagram

    with output.writing() as out:
        write_json(out / REPORT_NAME, report)
        labels = ("before", f"after ({report['method']})")
        for fig in (
            plot_calibration_comparison(
                None, before, after, labels=labels, save_path=out / PLOT_NAMES[0]
            ),
            plot_reliability_diagram(None, after, name=labels[1], save_path=out / PLOT_NAMES[1]),
        ):
            plt.close(fig)
