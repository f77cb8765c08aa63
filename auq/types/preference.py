"""``PreferencePrediction``: P(chosen ≻ rejected) for B pairs with its uncertainty."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from auq.types._common import (
    DEFAULT_N_SAMPLES,
    DrawsMixin,
    as_numpy,
    check_draws,
    check_label,
    check_vector,
    scalar_or_none,
)
from auq.types.reward import RewardPrediction
from auq.types.samplers import Sampler
from auq.types.truncation import TruncationStats
from auq.uncertainty import (
    binary_entropy_from_logits,
    gaussian_expected_entropy,
    log_odds_from_margin_samples,
    preference_entropies,
    probit_logit,
    reward_moments,
)
from auq.utils.validation import check_choice, check_positive_int

__all__ = ["DEFAULT_UNCERTAINTY_SCORE", "UNCERTAINTY_SCORES", "PreferencePrediction"]

#: names accepted by :meth:`PreferencePrediction.uncertainty` (and by metrics and plots)
UNCERTAINTY_SCORES: tuple[str, ...] = (
    "response_std",
    "margin_std",
    "epistemic",
    "total",
    "aleatoric",
)
#: the default score: the responses' own epistemic std, the best out-of-distribution detector
DEFAULT_UNCERTAINTY_SCORE = "response_std"


@dataclass(eq=False, repr=False)
class PreferencePrediction(DrawsMixin):
    """Preference between B (chosen, rejected) pairs with its uncertainty.

    Build with :meth:`from_margin_samples` (sample-based methods) or
    :meth:`from_gaussian_margin` (closed-form methods).

    Attributes
    ----------
    margin_mean : Tensor, shape (B,)
        E[Δ], Δ = r(chosen) − r(rejected).
    margin_var : Tensor, shape (B,)
        Var[Δ] including the chosen/rejected covariance (not the sum of the two
        reward variances).
    logit : Tensor, shape (B,), float64
        Predictive log-odds ``log P(c ≻ r) − log P(r ≻ c)``; :attr:`prob` is its
        sigmoid. Odd under swapping the pair, and never rounded to ±∞.
    total, aleatoric, epistemic : Tensor, shape (B,), float64
        Entropy decomposition in nats, ``total = aleatoric + epistemic`` exactly
        (see :mod:`auq.uncertainty`); ``total = H[prob]`` for the model's own
        predictive (up to the clamp that keeps ``epistemic ≥ 0``).
    chosen, rejected : RewardPrediction or None
        Per-response rewards when the method scored the two sides.
    method : str
        The uncertainty method.
    calibrator : str or None
        Name of the post-hoc calibrator whose map produced ``logit``/``prob``
        (see :meth:`calibrated`); None means they are the model's own predictive.
    truncation : TruncationStats or None
        What the scoring engine truncated to score these pairs.

    Notes
    -----
    ``margin_samples`` (S, B) is stored for sample-based methods and drawn once, on
    first access, for closed-form ones (``n_samples`` rows, CPU generator seeded
    with 0, from the joint sampler). ``len(pp)``, ``pp[i]`` (a length-1 prediction),
    ``pp[mask]``, iteration and ``pp.to(device)`` behave as for a sequence of pairs.
    """

    margin_mean: Tensor
    margin_var: Tensor
    logit: Tensor
    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    chosen: RewardPrediction | None = None
    rejected: RewardPrediction | None = None
    method: str = ""
    calibrator: str | None = None
    truncation: TruncationStats | None = None
    _margin_samples: Tensor | None = field(default=None, repr=False)
    _sampler: Sampler | None = field(default=None, repr=False)
    _n_samples: int = field(default=DEFAULT_N_SAMPLES, repr=False)
    _closed_form: bool = field(default=False, repr=False)

    _loc_name = "margin_mean"
    _var_name = "margin_var"
    _draws_name = "_margin_samples"
    _items = "pairs"

    def __post_init__(self) -> None:
        if not isinstance(self.margin_mean, Tensor) or self.margin_mean.ndim != 1:
            got = (
                tuple(self.margin_mean.shape)
                if isinstance(self.margin_mean, Tensor)
                else type(self.margin_mean).__name__
            )
            raise ValueError(f"margin_mean must be a Tensor of shape (B,), got {got}")
        b = self.margin_mean.shape[0]
        for name in ("margin_var", "logit", "total", "aleatoric", "epistemic"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or tuple(value.shape) != (b,):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} must have shape ({b},), got {got}")
        if self.logit.dtype != torch.float64:
            self.logit = self.logit.double()
        _check_sides(self.chosen, self.rejected, b)
        draws = self._margin_samples
        if draws is not None and (draws.ndim != 2 or draws.shape[1] != b):
            raise ValueError(f"margin_samples must have shape (S, {b}), got {tuple(draws.shape)}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_margin_samples(
        cls,
        margin_samples: Tensor,
        *,
        chosen: RewardPrediction | None = None,
        rejected: RewardPrediction | None = None,
        method: str = "",
        truncation: TruncationStats | None = None,
    ) -> PreferencePrediction:
        """Build from margin draws; moments, log-odds and entropies follow.

        ``logit = logsumexp_s log σ(Δ_s) − logsumexp_s log σ(−Δ_s)`` and the
        entropies are computed in float64 from log-probabilities
        (:mod:`auq.uncertainty`).

        Parameters
        ----------
        margin_samples : Tensor, shape (S, B)
            Draws of Δ = r(chosen) − r(rejected), S ≥ 1, finite.
        chosen, rejected : RewardPrediction, optional
            The two sides, B responses each.
        method : str
        truncation : TruncationStats, optional

        Returns
        -------
        PreferencePrediction
        """
        draws = check_draws("margin_samples", margin_samples, "(S, B)")
        _check_sides(chosen, rejected, draws.shape[1])
        mean, var = reward_moments(draws)
        logit = log_odds_from_margin_samples(draws)
        total, aleatoric, epistemic = preference_entropies(
            logit, binary_entropy_from_logits(draws).mean(0)
        )
        return cls(
            margin_mean=mean,
            margin_var=var,
            logit=logit,
            total=total,
            aleatoric=aleatoric,
            epistemic=epistemic,
            chosen=chosen,
            rejected=rejected,
            method=method,
            truncation=truncation,
            _margin_samples=draws,
            _n_samples=draws.shape[0],
        )

    @classmethod
    def from_gaussian_margin(
        cls,
        mean: Tensor,
        var: Tensor,
        *,
        sampler: Sampler | None = None,
        n_samples: int = DEFAULT_N_SAMPLES,
        chosen: RewardPrediction | None = None,
        rejected: RewardPrediction | None = None,
        method: str = "",
        truncation: TruncationStats | None = None,
    ) -> PreferencePrediction:
        """Build from a Gaussian margin Δ ~ N(mean, var) (closed-form methods).

        ``logit`` is the probit form ``μ / sqrt(1 + π·var / 8)``; ``total`` is the
        entropy of that same probability; ``aleatoric = E[H[σ(Δ)]]`` by adaptive
        quadrature (:func:`auq.uncertainty.gaussian_expected_entropy`); then
        ``epistemic = max(total − aleatoric, 0)`` and ``total = aleatoric + epistemic``.

        Parameters
        ----------
        mean, var : Tensor, shape (B,)
            Finite; ``var ≥ 0``.
        sampler : callable, optional
            ``sampler(n, generator) -> (n, B)`` joint margin draws, e.g. a
            :class:`~auq.types.LinearGaussianSampler` on ``z = φ_c − φ_r``; without
            one, draws are independent per pair from N(mean, var).
        n_samples : int
            Rows of :attr:`margin_samples` (drawn once, on first access, seed 0).
        chosen, rejected : RewardPrediction, optional
        method : str
        truncation : TruncationStats, optional

        Returns
        -------
        PreferencePrediction
        """
        mean = check_vector("mean", mean)
        var = check_vector("var", var, mean.shape[0], non_negative=True)
        check_positive_int("n_samples", n_samples)
        if sampler is not None and not callable(sampler):
            raise TypeError(f"sampler must be callable (n, generator) -> (n, B), got {sampler!r}")
        _check_sides(chosen, rejected, mean.shape[0])
        logit = probit_logit(mean, var)
        total, aleatoric, epistemic = preference_entropies(
            logit, gaussian_expected_entropy(mean, var)
        )
        return cls(
            margin_mean=mean,
            margin_var=var,
            logit=logit,
            total=total,
            aleatoric=aleatoric,
            epistemic=epistemic,
            chosen=chosen,
            rejected=rejected,
            method=method,
            truncation=truncation,
            _sampler=sampler,
            _n_samples=n_samples,
            _closed_form=True,
        )

    def calibrated(self, logit: Any, calibrator_name: str) -> PreferencePrediction:
        """A copy whose ``logit`` (hence ``prob``) comes from a post-hoc calibrator.

        Only ``logit`` and ``calibrator`` change: the margins, their draws and
        sampler, the entropies and the two sides stay those of the model (so
        ``total`` no longer equals ``H[prob]``).

        Parameters
        ----------
        logit : Tensor or ndarray, shape (B,)
            Calibrated log-odds, e.g. ``calibrator.predict_logit(pred)``.
        calibrator_name : str
            Shown in the repr and in reports.

        Returns
        -------
        PreferencePrediction
        """
        check_label("calibrator_name", calibrator_name)
        new = check_vector("logit", logit, len(self)).to(
            device=self.logit.device, dtype=torch.float64
        )
        return replace(self, logit=new, calibrator=calibrator_name)

    # -- quantities ------------------------------------------------------------------------
    @property
    def prob(self) -> Tensor:
        """P(chosen ≻ rejected) = σ(logit), shape (B,), float64."""
        return torch.sigmoid(self.logit)

    @property
    def margin_samples(self) -> Tensor:
        """Joint draws of Δ, shape (S, B), S = :attr:`n_samples`."""
        return self._draws()

    @property
    def margin_std(self) -> Tensor:
        """sqrt(Var[Δ]), shape (B,)."""
        return self.margin_var.sqrt()

    @property
    def response_std(self) -> Tensor:
        """``chosen.std + rejected.std``, shape (B,): the responses' own epistemic std.

        Detects out-of-distribution pairs better than :attr:`margin_std`, in which
        whatever the two responses share cancels.
        """
        if self.chosen is None or self.rejected is None:
            raise ValueError(
                f"response_std needs the chosen and rejected rewards, but this "
                f"PreferencePrediction (method={self.method!r}) has none; use "
                "uncertainty('margin_std') or an entropy score instead"
            )
        return self.chosen.std + self.rejected.std

    def uncertainty(self, score: str = DEFAULT_UNCERTAINTY_SCORE) -> Tensor:
        """An uncertainty score per pair, shape (B,); larger means less sure.

        Parameters
        ----------
        score : {"response_std", "margin_std", "epistemic", "total", "aleatoric"}
            ``response_std`` (default): :attr:`response_std`; ``margin_std``:
            :attr:`margin_std`; ``epistemic`` (mutual information), ``total`` and
            ``aleatoric``: the entropies.

        Returns
        -------
        Tensor, shape (B,)
        """
        check_choice("score", score, UNCERTAINTY_SCORES)
        if score == "response_std":
            return self.response_std
        if score == "margin_std":
            return self.margin_std
        return getattr(self, score)

    @property
    def correct(self) -> Tensor:
        """Whether the prediction prefers the chosen response (logit > 0), shape (B,)."""
        return self.logit > 0

    def accuracy(self) -> float:
        """Fraction of pairs where the chosen response is preferred (ties count as wrong)."""
        return float(self.correct.double().mean())

    def summary(self) -> dict[str, float]:
        """Means of the headline quantities, for printing and logging."""
        out = {
            "accuracy": self.accuracy(),
            "margin_mean": float(self.margin_mean.double().mean()),
            "margin_std": float(self.margin_std.double().mean()),
            "prob": float(self.prob.mean()),
            "entropy_total": float(self.total.mean()),
            "entropy_aleatoric": float(self.aleatoric.mean()),
            "entropy_epistemic": float(self.epistemic.mean()),
        }
        if self.chosen is not None and self.rejected is not None:
            out["response_std"] = float(self.response_std.double().mean())
        return out

    # -- conversions ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, np.ndarray]:
        """Per-pair columns as float64 NumPy arrays, each shape (B,).

        ``margin_mean``, ``margin_std``, ``logit``, ``prob``, ``entropy_total``,
        ``entropy_aleatoric``, ``entropy_epistemic`` and, where the sides are
        present, ``chosen_mean``, ``chosen_std``, ``rejected_mean``,
        ``rejected_std`` and ``response_std``.
        """
        out = {
            "margin_mean": as_numpy(self.margin_mean),
            "margin_std": as_numpy(self.margin_std),
            "logit": as_numpy(self.logit),
            "prob": as_numpy(self.prob),
            "entropy_total": as_numpy(self.total),
            "entropy_aleatoric": as_numpy(self.aleatoric),
            "entropy_epistemic": as_numpy(self.epistemic),
        }
        for side in ("chosen", "rejected"):
            rp = getattr(self, side)
            if rp is not None:
                out[f"{side}_mean"] = as_numpy(rp.mean)
                out[f"{side}_std"] = as_numpy(rp.std)
        if self.chosen is not None and self.rejected is not None:
            out["response_std"] = as_numpy(self.response_std)
        return out

    def __repr__(self) -> str:
        parts = [f"n_pairs={len(self)}", f"method={self.method!r}"]
        if self._closed_form:
            parts.append("closed_form=True")
        parts.append(f"n_samples={self.n_samples}")
        acc = scalar_or_none(self.correct)
        if acc is not None:
            parts.append(f"accuracy={acc:.3f}")
        parts.append(f"calibrator={self.calibrator!r}")
        if self.truncation is not None and self.truncation.any:
            parts.append(f"truncation={str(self.truncation)!r}")
        return f"PreferencePrediction({', '.join(parts)})"


def _check_sides(chosen: Any, rejected: Any, b: int) -> None:
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if side is None:
            continue
        if not isinstance(side, RewardPrediction):
            raise TypeError(f"{name} must be a RewardPrediction or None, got {type(side).__name__}")
        if len(side) != b:
            raise ValueError(f"{name} has {len(side)} responses but there are {b} pairs")
