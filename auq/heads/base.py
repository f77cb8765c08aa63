"""The contract every feature-level uncertainty head follows.

A head maps backbone features φ, shape (N, d), to draws of the reward and fits
itself on preference pairs given as features. Heads hold no Hugging Face
objects: they are ``torch.nn.Module`` s with scikit-learn manners.

One interface for every head (ensemble, Laplace, Pyro):

* construction: keyword-only options, validated at once;
* ``fit(phi_chosen, phi_rejected, *, margin=None, weight=None, eval_pairs=None,
  warm_start=False, progress=None, **training_options)`` returns ``self``.
  ``training_options`` are :class:`~auq.heads.fitting.FitConfig` fields; a head
  lists the ones it uses in ``fit_options`` and refuses the others with a
  message (a closed-form head has none). ``warm_start`` follows scikit-learn:
  False refits from a fresh start, True continues from the current fit;
* ``predict(phi) -> RewardPrediction``, ``predict_pairs(phi_c, phi_r) -> PreferencePrediction``;
* ``init_from_linear(weight, bias)``: start from a pretrained linear score layer
  (a reward checkpoint's);
* fitted state: ``is_fitted``, ``n_samples`` (the S rows of ``.samples``),
  ``history_`` (a :class:`~auq.heads.fitting.FitHistory`), ``n_pairs_``,
  ``feature_mean_`` / ``feature_scale_``; every fitted tensor is a buffer whose
  name ends in ``_``.

Saving: ``get_config()`` returns the JSON-able constructor options and every
fitted tensor lives in ``state_dict()`` with a shape fixed by that config, so
``cls(**config).load_state_dict(tensors)`` restores a head exactly
(:func:`auq.heads.save_head` / :func:`auq.heads.load_head`; safetensors + JSON).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from auq.heads.fitting import FIT_OPTIONS, FitHistory
from auq.types import PreferencePrediction, RewardPrediction

__all__ = ["HEAD_REGISTRY", "PreferenceHead", "head_class", "register_head"]

HEAD_REGISTRY: dict[str, type[PreferenceHead]] = {}


def register_head(cls: type[PreferenceHead]) -> type[PreferenceHead]:
    """Class decorator: make a head loadable by its class name."""
    HEAD_REGISTRY[cls.__name__] = cls
    return cls


def head_class(name: str) -> type[PreferenceHead]:
    """The head class called ``name`` (Pyro's is imported on first use)."""
    if name == "PyroHead" and name not in HEAD_REGISTRY:
        import auq.heads.pyro_head  # noqa: F401 - registers the lazily imported head
    if name not in HEAD_REGISTRY:
        known = ", ".join(sorted({*HEAD_REGISTRY, "PyroHead"}))
        raise ValueError(f"unknown head class {name!r}; known: {known}")
    return HEAD_REGISTRY[name]


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
    feature_mean_, feature_scale_ : Tensor, shape (d,)
        Standardisation used by :meth:`standardize_features`; identity until fitted.
    n_pairs_ : Tensor, shape ()
        Pairs of the last fit (0 before).
    history_ : FitHistory or None
        Training and held-out loss/accuracy of the last fit (not saved).
    """

    #: name of the uncertainty method (``RewardPrediction.method``)
    method: ClassVar[str] = ""
    #: FitConfig options this head's ``fit`` uses; the others are refused
    fit_options: ClassVar[frozenset[str]] = frozenset({"progress"})
    #: why the refused options do not apply (shown in the message)
    fit_options_note: ClassVar[str] = ""
    #: whether ``predict`` also takes per-member features of shape (K, N, d)
    accepts_member_features: ClassVar[bool] = False

    def __init__(self, in_features: int, *, standardize: bool = True) -> None:
        super().__init__()
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive integer, got {in_features!r}")
        self.in_features = in_features
        self.standardize = bool(standardize)
        self.history_: FitHistory | None = None
        self.register_buffer("feature_mean_", torch.zeros(in_features))
        self.register_buffer("feature_scale_", torch.ones(in_features))
        self.register_buffer("n_pairs_", torch.zeros((), dtype=torch.int64))
        self.register_buffer("fitted_", torch.zeros((), dtype=torch.bool))

    # -- to implement ------------------------------------------------------------
    @abstractmethod
    def _fit(
        self,
        phi_chosen: Tensor,
        phi_rejected: Tensor,
        target: Tensor,
        weight: Tensor,
        *,
        eval_pairs: tuple[Tensor, Tensor] | None,
        warm_start: bool,
        options: dict[str, Any],
    ) -> FitHistory | None:
        """Fit on validated pairs (B, d) with target margins and weights (B,).

        Returns a per-epoch history (gradient-trained heads) or None; the base
        class then adds the final training and held-out loss/accuracy.
        """

    @abstractmethod
    def predict(self, phi: Tensor) -> RewardPrediction:
        """Rewards of N responses from features of shape (N, d)."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild an unfitted head of this shape."""

    @abstractmethod
    def init_from_linear(self, weight: Tensor, bias: Tensor | None = None) -> PreferenceHead:
        """Start from a pretrained linear score layer ``r = weight·φ + bias``.

        Parameters
        ----------
        weight : Tensor, shape (d,) or (1, d)
        bias : Tensor, shape () or (1,), optional
        """

    @property
    @abstractmethod
    def n_samples(self) -> int:
        """S, the rows of ``predict(phi).samples`` (members, or posterior draws)."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A fresh start: forget the fit (heads with initial weights redraw them)."""
        self.fitted_.fill_(False)
        self.n_pairs_.zero_()
        self.history_ = None

    # -- the one fit --------------------------------------------------------------
    def fit(
        self,
        phi_chosen: Tensor,
        phi_rejected: Tensor,
        *,
        margin: Tensor | None = None,
        weight: Tensor | None = None,
        eval_pairs: tuple[Tensor, Tensor] | None = None,
        warm_start: bool = False,
        progress: bool | None = None,
        **options: Any,
    ) -> PreferenceHead:
        """Fit on B preference pairs given as features.

        Parameters
        ----------
        phi_chosen, phi_rejected : Tensor, shape (B, d)
            Features of the preferred and the other response of each pair
            ((K, B, d) per-member features for heads that accept them).
        margin : Tensor, shape (B,), optional
            Required margin per pair (TRL's ``margin`` column).
        weight : Tensor, shape (B,), optional
            Non-negative pair weights.
        eval_pairs : (Tensor (E, d), Tensor (E, d)), optional
            Held-out pairs: loss/accuracy in ``history_`` (per epoch and for early
            stopping where the head trains by gradient).
        warm_start : bool
            False (default) refits from a fresh start; True continues from the
            current fit (scikit-learn's ``warm_start``).
        progress : bool or None
            Progress bar; None shows it only on a terminal or in a notebook.
        **options
            Training options (:class:`~auq.heads.fitting.FitConfig` fields) this
            head uses — see ``fit_options``; others are refused.

        Returns
        -------
        self
        """
        self.check_fit_options(options)
        phi_c, phi_r, target, pair_weight = self._check_pairs(
            phi_chosen, phi_rejected, margin, weight
        )
        if phi_c.shape[-2] == 0:
            raise ValueError("fit needs at least one pair; got 0")
        if eval_pairs is not None:
            eval_pairs = self._check_pairs(*eval_pairs, None, None)[:2]
        if warm_start and not self.is_fitted:
            warm_start = False  # nothing to continue from: a fresh fit
        history = self._fit(
            phi_c,
            phi_r,
            target,
            pair_weight,
            eval_pairs=eval_pairs,
            warm_start=bool(warm_start),
            options={**options, "progress": progress},
        )
        self.n_pairs_.fill_(phi_c.shape[-2])
        self.fitted_.fill_(True)
        if history is None:  # closed-form / sampled posteriors: one final record
            history = FitHistory()
            loss, acc = self.evaluate_pairs(phi_c, phi_r)
            history.train_loss.append(loss)
            history.train_accuracy.append(acc)
            if eval_pairs is not None:
                loss, acc = self.evaluate_pairs(*eval_pairs)
                history.eval_loss.append(loss)
                history.eval_accuracy.append(acc)
        self.history_ = history
        return self

    def check_fit_options(self, options: dict[str, Any]) -> None:
        """Refuse training options this head does not use, naming the ones it does."""
        unknown = sorted(set(options) - set(FIT_OPTIONS))
        if unknown:
            raise TypeError(
                f"unknown training option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(FIT_OPTIONS))}"
            )
        unused = sorted(set(options) - set(self.fit_options))
        if unused:
            usable = ", ".join(sorted(self.fit_options)) or "none"
            note = f" ({self.fit_options_note})" if self.fit_options_note else ""
            raise ValueError(
                f"{type(self).__name__} does not use the training option(s) "
                f"{', '.join(unused)}{note}; options it uses: {usable}"
            )

    # -- shared behaviour ----------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """Whether the head has been fitted (or started from a pretrained score layer)."""
        return bool(self.fitted_)

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

    @torch.no_grad()
    def evaluate_pairs(self, phi_chosen: Tensor, phi_rejected: Tensor) -> tuple[float, float]:
        """(negative log-likelihood of the predictive, accuracy) on pairs (B, d) each."""
        pp = self.predict_pairs(phi_chosen, phi_rejected)
        nll = F.softplus(-pp.logit.double()).mean()  # −log P(chosen ≻ rejected)
        return float(nll), pp.accuracy()

    def fit_standardization(self, phi: Tensor) -> None:
        """Set ``feature_mean_``/``feature_scale_`` from features of shape (..., N, d)."""
        if not self.standardize:
            return
        flat = phi.reshape(-1, phi.shape[-1])
        self.feature_mean_.copy_(flat.mean(0))
        self.feature_scale_.copy_(flat.std(0, unbiased=False).clamp_min(1e-6))

    def standardize_features(self, phi: Tensor) -> Tensor:
        """(φ − mean) / scale, shape (N, d)."""
        return (phi - self.feature_mean_) / self.feature_scale_

    def _check_features(self, name: str, phi: Tensor) -> None:
        if not isinstance(phi, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (N, {self.in_features}), "
                f"got {type(phi).__name__}"
            )
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
        device = self.feature_mean_.device
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
        if b and ((pair_weight < 0).any() or not pair_weight.sum() > 0):
            raise ValueError("weight must be non-negative with a positive sum")
        cast = {"device": device, "dtype": dtype}
        return phi_chosen.to(**cast), phi_rejected.to(**cast), target, pair_weight

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call .fit(...) first")

    def extra_repr(self) -> str:
        config = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{config}, fitted={self.is_fitted}"
