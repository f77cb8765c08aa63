"""The contract every feature-level uncertainty head follows.

A head maps backbone features φ, shape (N, d), to draws of the reward and knows
how to fit itself on preference pairs given as features. Heads hold no Hugging
Face objects: they are plain ``torch.nn.Module`` s with scikit-learn manners —
keyword-only options, ``fit`` returns ``self``, fitted state in buffers.

Saving: ``get_config()`` returns the JSON-able constructor options and every
fitted tensor lives in ``state_dict()`` with a shape fixed by that config, so
``cls(**config).load_state_dict(tensors)`` restores a head exactly
(see :func:`save_head` / :func:`load_head`; safetensors + JSON, never pickle).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from auq.types import PreferencePrediction, RewardPrediction

__all__ = ["HEAD_REGISTRY", "PreferenceHead", "load_head", "register_head", "save_head"]

HEAD_REGISTRY: dict[str, type[PreferenceHead]] = {}

CONFIG_NAME = "head_config.json"
WEIGHTS_NAME = "head.safetensors"


def register_head(cls: type[PreferenceHead]) -> type[PreferenceHead]:
    """Class decorator: make a head loadable by its class name."""
    HEAD_REGISTRY[cls.__name__] = cls
    return cls


class PreferenceHead(torch.nn.Module, ABC):
    """Base class of feature-level heads (ensemble, Laplace, Pyro).

    Parameters
    ----------
    in_features : int
        Feature dimension d.
    standardize : bool
        Standardise features with the training mean and scale (fitted in ``fit``).

    Attributes
    ----------
    feature_mean, feature_scale : Tensor, shape (d,)
        Buffers used by :meth:`standardize_features`; identity until fitted.
    """

    method: ClassVar[str] = ""

    def __init__(self, in_features: int, *, standardize: bool = True) -> None:
        super().__init__()
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive integer, got {in_features!r}")
        self.in_features = in_features
        self.standardize = standardize
        self.register_buffer("feature_mean", torch.zeros(in_features))
        self.register_buffer("feature_scale", torch.ones(in_features))
        self.register_buffer("is_fitted", torch.zeros((), dtype=torch.bool))

    # -- to implement ------------------------------------------------------------
    @abstractmethod
    def fit(self, phi_chosen: Tensor, phi_rejected: Tensor, **kwargs: Any) -> PreferenceHead:
        """Fit on B pairs of features, each of shape (B, d); returns ``self``."""

    @abstractmethod
    def predict(self, phi: Tensor) -> RewardPrediction:
        """Rewards of N responses from features of shape (N, d)."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild an unfitted head of this shape."""

    # -- shared behaviour ----------------------------------------------------------
    def predict_pairs(self, phi_chosen: Tensor, phi_rejected: Tensor) -> PreferencePrediction:
        """Preferences of B pairs from features of shape (B, d) each.

        The default scores both sides with the *same* member / posterior draw, so
        margin samples ``Δ_s = r_s(chosen) − r_s(rejected)`` keep the covariance.
        Per-member features of shape (K, B, d) (backbone-level ensembles) work too.
        """
        phi_chosen, phi_rejected, _, _ = self._check_pairs(phi_chosen, phi_rejected, None, None)
        b = phi_chosen.shape[-2]
        both = self.predict(torch.cat([phi_chosen, phi_rejected], dim=-2))  # (S, 2B)
        samples = both.samples
        return PreferencePrediction.from_margin_samples(
            samples[:, :b] - samples[:, b:], chosen=both[:b], rejected=both[b:], method=self.method
        )

    def fit_standardization(self, phi: Tensor) -> None:
        """Set ``feature_mean``/``feature_scale`` from features of shape (..., N, d)."""
        if not self.standardize:
            return
        flat = phi.reshape(-1, phi.shape[-1])
        self.feature_mean.copy_(flat.mean(0))
        self.feature_scale.copy_(flat.std(0, unbiased=False).clamp_min(1e-6))

    def standardize_features(self, phi: Tensor) -> Tensor:
        """(φ − mean) / scale, shape (N, d)."""
        return (phi - self.feature_mean) / self.feature_scale

    #: whether ``predict`` also takes per-member features of shape (K, N, d)
    accepts_member_features: ClassVar[bool] = False

    def _check_features(self, name: str, phi: Tensor) -> None:
        if not isinstance(phi, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (N, {self.in_features})")
        ndims = (2, 3) if self.accepts_member_features else (2,)
        if phi.ndim not in ndims or phi.shape[-1] != self.in_features:
            raise ValueError(
                f"{name} must have shape (N, {self.in_features}), got {tuple(phi.shape)}"
            )
        if not torch.isfinite(phi).all():
            raise ValueError(f"{name} contains NaN or infinite values")

    def _check_pairs(
        self,
        phi_chosen: Tensor,
        phi_rejected: Tensor,
        margin: Tensor | None,
        weight: Tensor | None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Validate pair inputs and move them to the head's device in ``dtype``.

        Parameters
        ----------
        phi_chosen, phi_rejected : Tensor, shape (B, d) (or (K, B, d) for member features)
        margin, weight : Tensor, shape (B,), optional

        Returns
        -------
        phi_chosen, phi_rejected : Tensor, shape as given
        target : Tensor, shape (B,)
            Target margins (zeros when ``margin`` is None).
        weight : Tensor, shape (B,)
            Non-negative pair weights with a positive sum (ones when ``weight`` is None).
        """
        self._check_features("phi_chosen", phi_chosen)
        self._check_features("phi_rejected", phi_rejected)
        if phi_chosen.shape != phi_rejected.shape:
            raise ValueError(
                f"phi_chosen and phi_rejected must have the same shape, got "
                f"{tuple(phi_chosen.shape)} and {tuple(phi_rejected.shape)}"
            )
        b = phi_chosen.shape[-2]
        if b == 0:
            raise ValueError("fit needs at least one pair; got 0")
        device = self.feature_mean.device
        out = []
        for name, value, default in (("margin", margin, 0.0), ("weight", weight, 1.0)):
            if value is None:
                out.append(torch.full((b,), default, dtype=dtype, device=device))
                continue
            value = torch.as_tensor(value)
            if tuple(value.shape) != (b,):
                raise ValueError(f"{name} must have shape ({b},), got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} contains NaN or infinite values")
            out.append(value.to(device=device, dtype=dtype))
        target, pair_weight = out
        if (pair_weight < 0).any() or not pair_weight.sum() > 0:
            raise ValueError("weight must be non-negative with a positive sum")
        cast = {"device": device, "dtype": dtype}
        return phi_chosen.to(**cast), phi_rejected.to(**cast), target, pair_weight

    def _check_fitted(self) -> None:
        if not bool(self.is_fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call .fit(...) first")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())


def save_head(head: PreferenceHead, directory: str | Path) -> None:
    """Write ``head_config.json`` and ``head.safetensors`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"class": type(head).__name__, "config": head.get_config()}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_NAME))


def load_head(directory: str | Path, *, device: torch.device | str = "cpu") -> PreferenceHead:
    """Rebuild a head written by :func:`save_head`."""
    directory = Path(directory)
    spec = json.loads((directory / CONFIG_NAME).read_text())
    name = spec.get("class")
    if name == "PyroHead":
        import auq.heads.pyro_head  # noqa: F401 - registers the lazily imported head
    if name not in HEAD_REGISTRY:
        raise ValueError(
            f"{directory / CONFIG_NAME}: unknown head class {name!r}; "
            f"known: {', '.join(sorted(HEAD_REGISTRY))}"
        )
    head = HEAD_REGISTRY[name](**spec["config"])
    head.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
    return head.to(device)
