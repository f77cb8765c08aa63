"""The one currency every uncertainty method returns.

``RewardPrediction`` describes N single responses, ``PreferencePrediction`` B
pairs. Samples come first on the sample axis — shape ``(S, N)`` — one row per
ensemble member, posterior sample or dropout pass. Closed-form methods (Laplace)
fill the moments exactly and draw samples only when asked, through a sampler.

Everything downstream (calibration, metrics, objectives, trainers) reads these
types and never reaches into a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from auq.uncertainty import (
    gaussian_logistic_expectations,
    preference_entropies_from_samples,
    reward_moments,
)

__all__ = ["PreferencePrediction", "RewardPrediction", "TruncationStats"]

# A sampler returns ``n`` joint draws, shape (n, N); ``generator`` makes it reproducible.
Sampler = Callable[[int, "torch.Generator | None"], Tensor]

DEFAULT_N_SAMPLES = 64


@dataclass
class TruncationStats:
    """How many (prompt, response) items were cut to fit ``max_length`` (see :mod:`auq.scoring`)."""

    n_items: int = 0
    n_prompt_truncated: int = 0
    n_response_truncated: int = 0

    def __str__(self) -> str:
        return (
            f"{self.n_prompt_truncated}/{self.n_items} prompts and "
            f"{self.n_response_truncated}/{self.n_items} responses truncated"
        )


def _check_1d(name: str, value: Tensor | None, n: int) -> None:
    if value is not None and tuple(value.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(value.shape)}")


@dataclass(eq=False)
class RewardPrediction:
    """Rewards of N responses with their uncertainty.

    Attributes
    ----------
    mean : Tensor, shape (N,)
        Predictive mean reward.
    var : Tensor, shape (N,)
        Epistemic variance (across members / posterior samples / passes).
    aleatoric : Tensor or None, shape (N,)
        Aleatoric (observation-noise) variance where the method models it.
    method : str
        Name of the uncertainty method that produced it (``"heads"``, ...).

    Notes
    -----
    ``samples`` (S, N) is stored for sample-based methods and drawn on demand
    (and cached) for closed-form ones via ``sample(n)``.
    """

    mean: Tensor
    var: Tensor
    aleatoric: Tensor | None = None
    method: str = ""
    _samples: Tensor | None = field(default=None, repr=False)
    _sampler: Sampler | None = field(default=None, repr=False)
    _closed_form: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.mean.ndim != 1:
            raise ValueError(f"mean must have shape (N,), got {tuple(self.mean.shape)}")
        n = self.mean.shape[0]
        _check_1d("var", self.var, n)
        _check_1d("aleatoric", self.aleatoric, n)
        if self._samples is not None and (self._samples.ndim != 2 or self._samples.shape[1] != n):
            raise ValueError(f"samples must have shape (S, {n}), got {tuple(self._samples.shape)}")

    @classmethod
    def from_samples(
        cls, samples: Tensor, *, aleatoric: Tensor | None = None, method: str = ""
    ) -> RewardPrediction:
        """Build from draws.

        Parameters
        ----------
        samples : Tensor, shape (S, N)
        aleatoric : Tensor, shape (N,), optional
        method : str
        """
        if samples.ndim != 2:
            raise ValueError(f"samples must have shape (S, N), got {tuple(samples.shape)}")
        mean, var = reward_moments(samples)
        return cls(mean=mean, var=var, aleatoric=aleatoric, method=method, _samples=samples)

    @classmethod
    def from_moments(
        cls,
        mean: Tensor,
        var: Tensor,
        *,
        sampler: Sampler | None = None,
        aleatoric: Tensor | None = None,
        method: str = "",
    ) -> RewardPrediction:
        """Build from exact moments; ``sampler(n, generator) -> (n, N)`` draws joint samples.

        Without a sampler, samples are drawn independently from N(mean, var).
        """
        return cls(
            mean=mean,
            var=var,
            aleatoric=aleatoric,
            method=method,
            _sampler=sampler,
            _closed_form=True,
        )

    # -- samples ---------------------------------------------------------------
    @property
    def samples(self) -> Tensor:
        """Draws of the rewards, shape (S, N); drawn once (S = 64, seed 0) if closed-form."""
        if self._samples is None:
            self._samples = self.sample(DEFAULT_N_SAMPLES, torch.Generator().manual_seed(0))
        return self._samples

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` fresh joint samples, shape (n, N) (sample-based methods resample rows)."""
        if self._sampler is not None:
            return self._sampler(n, generator)
        if self._samples is not None:
            idx = torch.randint(self._samples.shape[0], (n,), generator=generator)
            return self._samples[idx.to(self._samples.device)]
        eps = torch.randn((n, *self.mean.shape), generator=generator, dtype=self.mean.dtype)
        return self.mean + eps.to(self.mean.device) * self.var.sqrt()

    @property
    def is_sample_based(self) -> bool:
        """True when the rewards come as stored draws (ensembles), False when closed-form."""
        return not self._closed_form

    @property
    def n_samples(self) -> int:
        """S, the number of stored draws (0 for a closed-form prediction not yet sampled)."""
        return 0 if self._samples is None else self._samples.shape[0]

    @property
    def std(self) -> Tensor:
        """Epistemic standard deviation, shape (N,)."""
        return self.var.sqrt()

    @property
    def total_var(self) -> Tensor:
        """Epistemic plus aleatoric variance, shape (N,)."""
        return self.var if self.aleatoric is None else self.var + self.aleatoric

    def __len__(self) -> int:
        return self.mean.shape[0]

    def __getitem__(self, index) -> RewardPrediction:
        """Select responses: ``rp[idx]`` with an int slice, index list or mask."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return RewardPrediction(
            mean=self.mean[index],
            var=self.var[index],
            aleatoric=None if self.aleatoric is None else self.aleatoric[index],
            method=self.method,
            _samples=None if self._samples is None else self._samples[:, index],
            _sampler=None if self._sampler is None else _sliced(self._sampler, index),
            _closed_form=self._closed_form,
        )

    def to(self, device: torch.device | str) -> RewardPrediction:
        """Move every tensor to ``device``."""
        return replace(self, **_moved(self, device))

    def cpu(self) -> RewardPrediction:
        return self.to("cpu")


@dataclass(eq=False)
class PreferencePrediction:
    """Preference between B (chosen, rejected) pairs with its uncertainty.

    Attributes
    ----------
    margin_mean : Tensor, shape (B,)
        E[Δ], Δ = r(chosen) − r(rejected).
    margin_var : Tensor, shape (B,)
        Var[Δ] including the chosen/rejected covariance (not the sum of the two
        reward variances).
    prob : Tensor, shape (B,)
        Predictive P(chosen ≻ rejected).
    total, aleatoric, epistemic : Tensor, shape (B,)
        Entropy decomposition in nats, ``total = aleatoric + epistemic``
        (see :mod:`auq.uncertainty`).
    chosen, rejected : RewardPrediction or None
        Per-response rewards when the method scored the two sides.
    method : str
    """

    margin_mean: Tensor
    margin_var: Tensor
    prob: Tensor
    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    chosen: RewardPrediction | None = None
    rejected: RewardPrediction | None = None
    method: str = ""
    _margin_samples: Tensor | None = field(default=None, repr=False)
    _sampler: Sampler | None = field(default=None, repr=False)
    _closed_form: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.margin_mean.ndim != 1:
            raise ValueError(
                f"margin_mean must have shape (B,), got {tuple(self.margin_mean.shape)}"
            )
        b = self.margin_mean.shape[0]
        for name in ("margin_var", "prob", "total", "aleatoric", "epistemic"):
            _check_1d(name, getattr(self, name), b)

    @classmethod
    def from_margin_samples(
        cls,
        margin_samples: Tensor,
        *,
        chosen: RewardPrediction | None = None,
        rejected: RewardPrediction | None = None,
        method: str = "",
    ) -> PreferencePrediction:
        """Build from margin draws, shape (S, B); moments and entropies follow."""
        if margin_samples.ndim != 2:
            raise ValueError(
                f"margin_samples must have shape (S, B), got {tuple(margin_samples.shape)}"
            )
        mean, var = reward_moments(margin_samples)
        prob, total, aleatoric, epistemic = preference_entropies_from_samples(margin_samples)
        return cls(
            margin_mean=mean,
            margin_var=var,
            prob=prob,
            total=total,
            aleatoric=aleatoric,
            epistemic=epistemic,
            chosen=chosen,
            rejected=rejected,
            method=method,
            _margin_samples=margin_samples,
        )

    @classmethod
    def from_gaussian_margin(
        cls,
        mean: Tensor,
        var: Tensor,
        *,
        prob: Tensor | None = None,
        sampler: Sampler | None = None,
        chosen: RewardPrediction | None = None,
        rejected: RewardPrediction | None = None,
        method: str = "",
    ) -> PreferencePrediction:
        """Build from a Gaussian margin Δ ~ N(mean, var) (closed-form methods).

        Entropies use Gauss–Hermite quadrature; ``prob`` defaults to the
        quadrature value of E[σ(Δ)] (pass the probit approximation to override).
        """
        q_prob, total, aleatoric, epistemic = gaussian_logistic_expectations(mean, var)
        return cls(
            margin_mean=mean,
            margin_var=var,
            prob=q_prob if prob is None else prob,
            total=total,
            aleatoric=aleatoric,
            epistemic=epistemic,
            chosen=chosen,
            rejected=rejected,
            method=method,
            _sampler=sampler,
            _closed_form=True,
        )

    @property
    def margin_samples(self) -> Tensor:
        """Draws of Δ, shape (S, B); drawn once (S = 64, seed 0) if closed-form."""
        if self._margin_samples is None:
            self._margin_samples = self.sample(DEFAULT_N_SAMPLES, torch.Generator().manual_seed(0))
        return self._margin_samples

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` joint margin samples, shape (n, B)."""
        if self._sampler is not None:
            return self._sampler(n, generator)
        if self._margin_samples is not None:
            idx = torch.randint(self._margin_samples.shape[0], (n,), generator=generator)
            return self._margin_samples[idx.to(self._margin_samples.device)]
        eps = torch.randn((n, *self.margin_mean.shape), generator=generator)
        eps = eps.to(self.margin_mean)
        return self.margin_mean + eps * self.margin_var.sqrt()

    @property
    def is_sample_based(self) -> bool:
        """True when the margins come as stored draws (ensembles), False when closed-form."""
        return not self._closed_form

    @property
    def margin_std(self) -> Tensor:
        """sqrt(Var[Δ]), shape (B,)."""
        return self.margin_var.sqrt()

    @property
    def logit(self) -> Tensor:
        """logit(prob), shape (B,): the margin a calibrator should see for the predictive."""
        p = self.prob.double().clamp(1e-12, 1 - 1e-12)
        return torch.log(p / (1 - p)).to(self.prob.dtype)

    @property
    def correct(self) -> Tensor:
        """Whether the prediction prefers the chosen response (prob > 0.5), shape (B,)."""
        return self.prob > 0.5

    def accuracy(self) -> float:
        """Fraction of pairs where the chosen response is preferred."""
        return float(self.correct.float().mean())

    def __len__(self) -> int:
        return self.margin_mean.shape[0]

    def __getitem__(self, index) -> PreferencePrediction:
        """Select pairs: ``pp[idx]`` with an int, slice, index list or mask."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        kwargs = {
            name: getattr(self, name)[index]
            for name in ("margin_mean", "margin_var", "prob", "total", "aleatoric", "epistemic")
        }
        return PreferencePrediction(
            **kwargs,
            chosen=None if self.chosen is None else self.chosen[index],
            rejected=None if self.rejected is None else self.rejected[index],
            method=self.method,
            _margin_samples=(
                None if self._margin_samples is None else self._margin_samples[:, index]
            ),
            _sampler=None if self._sampler is None else _sliced(self._sampler, index),
            _closed_form=self._closed_form,
        )

    def to(self, device: torch.device | str) -> PreferencePrediction:
        """Move every tensor to ``device``."""
        moved = _moved(self, device)
        for side in ("chosen", "rejected"):
            if getattr(self, side) is not None:
                moved[side] = getattr(self, side).to(device)
        return replace(self, **moved)

    def cpu(self) -> PreferencePrediction:
        return self.to("cpu")

    def summary(self) -> dict[str, float]:
        """Means of the headline quantities, for printing and logging."""
        return {
            "accuracy": self.accuracy(),
            "margin_mean": float(self.margin_mean.mean()),
            "margin_std": float(self.margin_std.mean()),
            "prob": float(self.prob.mean()),
            "entropy_total": float(self.total.mean()),
            "entropy_aleatoric": float(self.aleatoric.mean()),
            "entropy_epistemic": float(self.epistemic.mean()),
        }


def _moved(obj, device) -> dict:
    return {
        f.name: getattr(obj, f.name).to(device)
        for f in fields(obj)
        if isinstance(getattr(obj, f.name), Tensor)
    }


def _sliced(sampler: Sampler, index) -> Sampler:
    return lambda n, generator=None: sampler(n, generator)[:, index]
