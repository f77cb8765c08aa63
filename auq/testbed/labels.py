"""Preference labels from the gold reward: Bradley–Terry draws, label flips, realised noise.

Each pair (prompt, a, b) is labelled by a Bradley–Terry draw on the gold reward,
``P(a ≻ b) = σ((g_a − g_b) / T)``, and then, with probability ``label_noise``,
the label is flipped (chosen and rejected swap), the label-noise setting of Coste
et al. (2023). The draws and the flips use separate random streams, so the same
seed with a different ``label_noise`` gives the same pairs and the same
Bradley–Terry winners, only some of them swapped.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from auq.data.dataset import PreferenceDataset
from auq.utils.console import get_logger

__all__ = [
    "bradley_terry_prob",
    "check_label_noise",
    "check_temperature",
    "label_pairs",
    "label_summary",
    "log_summary",
    "noise_rate",
]

_log = get_logger("auq.testbed")


def check_label_noise(value: object) -> float:
    """``value`` as a float if it is a number in [0, 0.5), else ``ValueError``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and 0.0 <= float(value) < 0.5):  # type: ignore[arg-type]
        raise ValueError(
            f"label_noise must be a number in [0, 0.5) (the probability of flipping a label; "
            f"0.0 and 0.25 are the settings of Coste et al.), got {value!r}"
        )
    return float(value)  # type: ignore[arg-type]


def check_temperature(value: object) -> float:
    """``value`` as a float if it is a finite number > 0, else ``ValueError``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(float(value)) and float(value) > 0):  # type: ignore[arg-type]
        raise ValueError(
            f"temperature must be a finite number > 0 (the Bradley-Terry temperature T), "
            f"got {value!r}"
        )
    return float(value)  # type: ignore[arg-type]


def bradley_terry_prob(gold_a: np.ndarray, gold_b: np.ndarray, temperature: float) -> np.ndarray:
    """``σ((g_a − g_b) / T)``, float64 (N,), computed without overflow."""
    z = (np.asarray(gold_a, np.float64) - np.asarray(gold_b, np.float64)) / temperature
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def label_pairs(
    gold_a: np.ndarray,
    gold_b: np.ndarray,
    bt_uniforms: np.ndarray,
    flip_uniforms: np.ndarray,
    *,
    temperature: float,
    label_noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Whether ``a`` is chosen, and whether the label was flipped.

    Parameters
    ----------
    gold_a, gold_b : ndarray (N,)
    bt_uniforms, flip_uniforms : ndarray (N,)
        Uniforms on [0, 1) for the Bradley–Terry draw and for the flip.
    temperature, label_noise : float

    Returns
    -------
    a_chosen : ndarray of bool (N,)
        ``a`` won the Bradley–Terry draw, XOR the label was flipped.
    flipped : ndarray of bool (N,)
    """
    a_wins = bt_uniforms < bradley_terry_prob(gold_a, gold_b, temperature)
    flipped = flip_uniforms < label_noise
    return a_wins ^ flipped, flipped


def _gold(dataset: PreferenceDataset, name: str) -> np.ndarray:
    if name not in dataset.columns:
        raise ValueError(
            f"dataset has no {name!r} column (columns: {dataset.columns}); "
            "make it with World.preference_dataset"
        )
    return np.asarray(dataset.column(name))


def noise_rate(dataset: PreferenceDataset) -> float:
    """Realised label-flip rate: the fraction of rows whose ``flipped`` is True."""
    flipped = _gold(dataset, "flipped").astype(bool)
    return float(flipped.mean()) if flipped.size else 0.0


def label_summary(dataset: PreferenceDataset) -> dict[str, float]:
    """Counts of a testbed preference set: flips, and agreement of the labels with gold.

    Returns
    -------
    dict
        ``n_pairs``; ``n_flipped`` and ``noise_rate`` (label flips); ``gold_agreement``
        (fraction of rows whose chosen has the higher gold reward, ties counting ½ —
        below 1 through both the Bradley–Terry draw and the flips); ``n_gold_ties``.
    """
    flipped = _gold(dataset, "flipped").astype(bool)
    diff = _gold(dataset, "gold_chosen").astype(np.float64) - _gold(
        dataset, "gold_rejected"
    ).astype(np.float64)
    n = len(diff)
    agree = float(((diff > 0) + 0.5 * (diff == 0)).mean()) if n else float("nan")
    return {
        "n_pairs": n,
        "n_flipped": int(flipped.sum()),
        "noise_rate": float(flipped.mean()) if n else 0.0,
        "gold_agreement": agree,
        "n_gold_ties": int((diff == 0).sum()),
    }


def log_summary(dataset: PreferenceDataset, *, label_noise: float, temperature: float) -> None:
    """One INFO line on the ``auq.testbed`` logger with :func:`label_summary`."""
    s = label_summary(dataset)
    _log.info(
        "testbed preference set: %d pairs, %d labels flipped (realised noise rate %.4f, "
        "label_noise=%g), gold agreement %.4f at temperature %g, %d gold ties",
        s["n_pairs"],
        s["n_flipped"],
        s["noise_rate"],
        label_noise,
        s["gold_agreement"],
        temperature,
        s["n_gold_ties"],
    )
