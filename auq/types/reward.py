"""``RewardPrediction``: rewards of N single responses with their uncertainty."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from auq.types._common import (
    DEFAULT_N_SAMPLES,
    DrawsMixin,
    as_numpy,
    check_draws,
    check_vector,
    scalar_or_none,
)
from auq.types.samplers import Sampler
from auq.types.truncation import TruncationStats
from auq.uncertainty import reward_moments
from auq.utils.validation import check_positive_int

__all__ = ["RewardPrediction"]


@dataclass(eq=False, repr=False)
class RewardPrediction(DrawsMixin):
    """Rewards of N responses with their uncertainty.

    Build with :meth:`from_samples` (ensembles, posterior draws, dropout passes) or
    :meth:`from_moments` (closed-form methods such as Laplace).

    Attributes
    ----------
    mean : Tensor, shape (N,)
        Predictive mean reward.
    var : Tensor, shape (N,)
        Epistemic variance (across members / posterior samples / passes).
    aleatoric_var : Tensor or None, shape (N,)
        Aleatoric (observation-noise) *variance* where the method models it.
    method : str
        Name of the uncertainty method that produced it (``"heads"``, ...).
    truncation : TruncationStats or None
        What the scoring engine truncated to compute these rewards.

    Notes
    -----
    ``samples`` (S, N) is stored for sample-based methods; closed-form ones draw it
    once, on first access, with ``n_samples`` rows from their sampler (CPU generator
    seeded with 0) and cache it. ``len(rp)``, ``rp[i]`` (a length-1 prediction),
    ``rp[mask]``, iteration and ``rp.to(device)`` behave as for a sequence of
    responses.
    """

    mean: Tensor
    var: Tensor
    aleatoric_var: Tensor | None = None
    method: str = ""
    truncation: TruncationStats | None = None
    _samples: Tensor | None = field(default=None, repr=False)
    _sampler: Sampler | None = field(default=None, repr=False)
    _n_samples: int = field(default=DEFAULT_N_SAMPLES, repr=False)
    _closed_form: bool = field(default=False, repr=False)

    _loc_name = "mean"
    _var_name = "var"
    _draws_name = "_samples"
    _items = "responses"

    def __post_init__(self) -> None:
        if not isinstance(self.mean, Tensor) or self.mean.ndim != 1:
            got = tuple(self.mean.shape) if isinstance(self.mean, Tensor) else type(self.mean)
            raise ValueError(f"mean must be a Tensor of shape (N,), got {got}")
        n = self.mean.shape[0]
        for name in ("var", "aleatoric_var"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {tuple(value.shape)}")
        if self._samples is not None and (self._samples.ndim != 2 or self._samples.shape[1] != n):
            raise ValueError(f"samples must have shape (S, {n}), got {tuple(self._samples.shape)}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_samples(
        cls,
        samples: Tensor,
        *,
        aleatoric_var: Tensor | None = None,
        method: str = "",
        truncation: TruncationStats | None = None,
    ) -> RewardPrediction:
        """Build from joint draws; the moments follow (population variance).

        Parameters
        ----------
        samples : Tensor, shape (S, N)
            One row per member / posterior sample / pass; S ≥ 1, finite.
        aleatoric_var : Tensor, shape (N,), optional
            Observation-noise variance (non-negative).
        method : str
        truncation : TruncationStats, optional

        Returns
        -------
        RewardPrediction
        """
        samples = check_draws("samples", samples)
        if aleatoric_var is not None:
            aleatoric_var = check_vector(
                "aleatoric_var", aleatoric_var, samples.shape[1], non_negative=True
            )
        mean, var = reward_moments(samples)
        return cls(
            mean=mean,
            var=var,
            aleatoric_var=aleatoric_var,
            method=method,
            truncation=truncation,
            _samples=samples,
            _n_samples=samples.shape[0],
        )

    @classmethod
    def from_moments(
        cls,
        mean: Tensor,
        var: Tensor,
        *,
        sampler: Sampler | None = None,
        n_samples: int = DEFAULT_N_SAMPLES,
        aleatoric_var: Tensor | None = None,
        method: str = "",
        truncation: TruncationStats | None = None,
    ) -> RewardPrediction:
        """Build from exact moments (closed-form methods).

        Parameters
        ----------
        mean, var : Tensor, shape (N,)
            Finite; ``var ≥ 0``.
        sampler : callable, optional
            ``sampler(n, generator) -> (n, N)`` joint draws, e.g. a
            :class:`~auq.types.LinearGaussianSampler`. Without one, draws are
            independent per response from N(mean, var).
        n_samples : int
            Rows of :attr:`samples` (drawn once, on first access, seed 0).
        aleatoric_var : Tensor, shape (N,), optional
        method : str
        truncation : TruncationStats, optional

        Returns
        -------
        RewardPrediction
        """
        mean = check_vector("mean", mean)
        var = check_vector("var", var, mean.shape[0], non_negative=True)
        check_positive_int("n_samples", n_samples)
        if sampler is not None and not callable(sampler):
            raise TypeError(f"sampler must be callable (n, generator) -> (n, N), got {sampler!r}")
        if aleatoric_var is not None:
            aleatoric_var = check_vector(
                "aleatoric_var", aleatoric_var, mean.shape[0], non_negative=True
            )
        return cls(
            mean=mean,
            var=var,
            aleatoric_var=aleatoric_var,
            method=method,
            truncation=truncation,
            _sampler=sampler,
            _n_samples=n_samples,
            _closed_form=True,
        )

    # -- quantities ------------------------------------------------------------------------
    @property
    def samples(self) -> Tensor:
        """Joint draws of the rewards, shape (S, N), S = :attr:`n_samples`."""
        return self._draws()

    @property
    def std(self) -> Tensor:
        """Epistemic standard deviation, shape (N,)."""
        return self.var.sqrt()

    @property
    def total_var(self) -> Tensor:
        """Epistemic plus aleatoric variance, shape (N,)."""
        return self.var if self.aleatoric_var is None else self.var + self.aleatoric_var

    # -- conversions ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, np.ndarray]:
        """Per-response columns as float64 NumPy arrays, each shape (N,).

        ``mean``, ``std`` (epistemic) and, where modelled, ``aleatoric_var``.
        """
        out = {"mean": as_numpy(self.mean), "std": as_numpy(self.std)}
        if self.aleatoric_var is not None:
            out["aleatoric_var"] = as_numpy(self.aleatoric_var)
        return out

    def __repr__(self) -> str:
        parts = [f"n_responses={len(self)}", f"method={self.method!r}"]
        if self._closed_form:
            parts.append("closed_form=True")
        parts.append(f"n_samples={self.n_samples}")
        for name, value in (("mean", self.mean), ("std", self.std)):
            m = scalar_or_none(value)
            if m is not None:
                parts.append(f"{name}={m:.3g}")
        if self.aleatoric_var is not None:
            parts.append("aleatoric_var=yes")
        if self.truncation is not None and self.truncation.any:
            parts.append(f"truncation={str(self.truncation)!r}")
        return f"RewardPrediction({', '.join(parts)})"
