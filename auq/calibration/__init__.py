"""Post-hoc calibration of preference probabilities and of their uncertainty.

Point calibrators map a margin Δ (a logit of P(chosen ≻ rejected)) to a
calibrated probability, scikit-learn style::

    cal = TemperatureScaler().fit(margins, labels)     # or fit(pred) with labels = 1
    cal.temperature_, cal.predict_proba(margins), cal.transform(margins)

==========================  ======================================================
:class:`TemperatureScaler`  ``σ(Δ / T)``, ``T > 0``
:class:`PlattScaler`        ``σ(aΔ)`` (``σ(aΔ + b)`` with ``symmetric=False``)
:class:`IsotonicCalibrator` monotone step-wise linear map, symmetrised
:class:`BetaCalibrator`     Kull et al. (2017); symmetric form equals ``σ(½(a+b)Δ)``
:class:`SpreadScaler`       rescales the spread of a ``PreferencePrediction``
==========================  ======================================================

All are fitted on swap-symmetrised pairs, predict ``g(−Δ) = 1 − g(Δ)`` (to
round-off, in float64, for any margin), accept NumPy arrays, torch tensors or a
:class:`~auq.types.PreferencePrediction` (whose float64 ``logit`` they read;
labels then default to 1, "chosen wins") and return NumPy arrays.
``cal.calibrate(pred)`` returns the prediction with calibrated ``logit``/``prob``
and ``pred.calibrator`` naming the calibrator.

They — and the conformal classes of :mod:`auq.calibration.conformal` — are
scikit-learn estimators (``get_params``, ``set_params``, ``sklearn.base.clone``)
with one serialisation path: ``get_state()`` is a strict-JSON dict, and
:func:`calibrator_from_state` restores any of them (no pickle).
"""

from __future__ import annotations

from typing import Any

from auq.calibration.base import BaseCalibrator, NotFittedError, PosthocEstimator
from auq.calibration.conformal import ConformalInterval, ConformalPreference
from auq.calibration.point import (
    BetaCalibrator,
    IsotonicCalibrator,
    PlattScaler,
    TemperatureScaler,
)
from auq.calibration.spread import SpreadScaler
from auq.utils.validation import check_choice

__all__ = [
    "CALIBRATORS",
    "BaseCalibrator",
    "BetaCalibrator",
    "ConformalInterval",
    "ConformalPreference",
    "IsotonicCalibrator",
    "NotFittedError",
    "PlattScaler",
    "PosthocEstimator",
    "SpreadScaler",
    "TemperatureScaler",
    "calibrator_from_state",
    "make_calibrator",
]

#: Point calibrators by short name (e.g. for ``auq calibrate --method``).
CALIBRATORS: dict[str, type[BaseCalibrator]] = {
    "temperature": TemperatureScaler,
    "platt": PlattScaler,
    "isotonic": IsotonicCalibrator,
    "beta": BetaCalibrator,
}

_BY_CLASS: dict[str, type[PosthocEstimator]] = {
    cls.__name__: cls
    for cls in (*CALIBRATORS.values(), SpreadScaler, ConformalInterval, ConformalPreference)
}


def make_calibrator(name: str, **kwargs: Any) -> BaseCalibrator:
    """Build a point calibrator by short name.

    Parameters
    ----------
    name : {"temperature", "platt", "isotonic", "beta"}
    **kwargs
        Keyword options of the class (e.g. ``symmetric=False``).

    Returns
    -------
    BaseCalibrator
        Unfitted.
    """
    check_choice("name", name, CALIBRATORS)
    return CALIBRATORS[name](**kwargs)


def calibrator_from_state(state: dict[str, Any]) -> PosthocEstimator:
    """Rebuild any fitted calibrator or conformal object from its ``get_state()`` dict.

    Dispatches on ``state["class"]``: the point calibrators, :class:`SpreadScaler`,
    :class:`ConformalInterval` and :class:`ConformalPreference`.
    """
    if not isinstance(state, dict) or "class" not in state:
        raise ValueError("state must be a dict with a 'class' key, as returned by get_state()")
    check_choice("state['class']", state["class"], _BY_CLASS)
    return _BY_CLASS[state["class"]].from_state(state)
