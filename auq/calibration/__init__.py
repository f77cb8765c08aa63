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

All are fitted on swap-symmetrised pairs, predict ``g(−Δ) = 1 − g(Δ)``, accept
NumPy arrays, torch tensors or a :class:`~auq.types.PreferencePrediction`
(labels then default to 1, "chosen wins") and return NumPy arrays. Their
fitted state is a JSON-able dict (``get_state`` / ``from_state``, no pickle);
:func:`calibrator_from_state` restores any of them.
"""

from __future__ import annotations

from typing import Any

from auq.calibration.base import BaseCalibrator, NotFittedError
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
    "IsotonicCalibrator",
    "NotFittedError",
    "PlattScaler",
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

_BY_CLASS: dict[str, type] = {cls.__name__: cls for cls in (*CALIBRATORS.values(), SpreadScaler)}


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


def calibrator_from_state(state: dict[str, Any]) -> BaseCalibrator | SpreadScaler:
    """Rebuild any fitted calibrator from its ``get_state()`` dict (dispatch on ``"class"``)."""
    if not isinstance(state, dict) or "class" not in state:
        raise ValueError("state must be a dict with a 'class' key, as returned by get_state()")
    check_choice("state['class']", state["class"], _BY_CLASS)
    return _BY_CLASS[state["class"]].from_state(state)
