"""Calibration and uncertainty metrics: functional, NumPy or torch in, Python floats out.

Every function validates its input (shapes, finiteness, labels in {0, 1},
probabilities in [0, 1]) and raises ``ValueError`` naming the argument.

Groups
------
calibration error
    :func:`expected_calibration_error`, :func:`maximum_calibration_error`,
    :func:`adaptive_calibration_error`, :func:`reliability_curve`
scoring rules
    :func:`brier_score`, :func:`negative_log_likelihood`,
    :func:`negative_log_likelihood_from_logits`, :func:`accuracy`
uncertainty quality
    :func:`error_detection_auroc`, :func:`error_detection_aupr`, :func:`ood_auroc`,
    :func:`ood_aupr`, :func:`risk_coverage_curve`, :func:`aurc`
intervals
    :func:`confident_rates`, :func:`bound_calibration`,
    :func:`preference_bound_calibration_error`
preference pairs
    :func:`symmetrize_probabilities`, :func:`calibration_inputs`,
    :func:`uncertainty_values` (a named score of a ``PreferencePrediction``)
RewardBench-style accuracy
    :func:`pair_correct`, :func:`best_of_k_correct`, :func:`subset_accuracy`,
    :func:`rewardbench_sections`, :func:`rewardbench_score`,
    :func:`is_rewardbench_subset`, :data:`REWARDBENCH_EXAMPLE_COUNTS`,
    :data:`REWARDBENCH_SECTIONS`
everything at once
    :func:`calibration_report`

Uncertainty arguments also take a :class:`~auq.types.PreferencePrediction` with
``score=`` naming one of its scores (default ``"response_std"``).
"""

from auq.metrics.calibration_error import (
    ReliabilityCurve,
    adaptive_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_curve,
)
from auq.metrics.detection import (
    aurc,
    error_detection_aupr,
    error_detection_auroc,
    ood_aupr,
    ood_auroc,
    risk_coverage_curve,
)
from auq.metrics.intervals import (
    bound_calibration,
    confident_rates,
    preference_bound_calibration_error,
)
from auq.metrics.preference import (
    CalibrationInputs,
    calibration_inputs,
    symmetrize_probabilities,
    uncertainty_values,
)
from auq.metrics.report import calibration_report
from auq.metrics.rewardbench import (
    REWARDBENCH_EXAMPLE_COUNTS,
    REWARDBENCH_SECTIONS,
    best_of_k_correct,
    is_rewardbench_subset,
    pair_correct,
    rewardbench_score,
    rewardbench_sections,
    subset_accuracy,
)
from auq.metrics.scoring_rules import (
    accuracy,
    brier_score,
    negative_log_likelihood,
    negative_log_likelihood_from_logits,
)

__all__ = [
    "REWARDBENCH_EXAMPLE_COUNTS",
    "REWARDBENCH_SECTIONS",
    "CalibrationInputs",
    "ReliabilityCurve",
    "accuracy",
    "adaptive_calibration_error",
    "aurc",
    "best_of_k_correct",
    "bound_calibration",
    "brier_score",
    "calibration_inputs",
    "calibration_report",
    "confident_rates",
    "error_detection_aupr",
    "error_detection_auroc",
    "expected_calibration_error",
    "is_rewardbench_subset",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "negative_log_likelihood_from_logits",
    "ood_aupr",
    "ood_auroc",
    "pair_correct",
    "preference_bound_calibration_error",
    "reliability_curve",
    "rewardbench_score",
    "rewardbench_sections",
    "risk_coverage_curve",
    "subset_accuracy",
    "symmetrize_probabilities",
    "uncertainty_values",
]
