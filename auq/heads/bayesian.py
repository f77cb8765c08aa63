"""What the Bayesian linear heads (Laplace, Pyro) share: a Gaussian prior on the weights
whose mean can be a pretrained score layer."""

from __future__ import annotations

import torch
from torch import Tensor

from auq.heads.base import PreferenceHead

__all__ = ["LinearBayesianHead"]


class LinearBayesianHead(PreferenceHead):
    """Shared part of the Bayesian linear heads (Laplace, Pyro): a Gaussian prior on the
    weights whose mean can be a pretrained score layer (:meth:`init_from_linear`).

    Attributes
    ----------
    prior_weight_, prior_bias_ : Tensor, shape (d,) and ()
        The prior's mean layer ``r = w₀ᵀφ + b₀`` in raw-feature units (zeros unless
        :meth:`init_from_linear`).
    offset_ : Tensor, shape ()
        Constant added to every reward so that ``w = w₀`` reproduces the layer
        (set in ``fit``; it cancels in margins).
    """

    def __init__(self, in_features: int, *, standardize: bool = True) -> None:
        super().__init__(in_features, standardize=standardize)
        self.register_buffer("prior_weight_", torch.zeros(in_features))
        self.register_buffer("prior_bias_", torch.zeros(()))
        self.register_buffer("offset_", torch.zeros(()))

    @torch.no_grad()
    def init_from_linear(self, weight: Tensor, bias: Tensor | None = None) -> LinearBayesianHead:
        """Centre the prior on a pretrained linear score layer (e.g. a reward checkpoint's).

        The prior mean becomes the layer's weights (mapped to standardised coordinates
        at fit time) and rewards are offset by its bias, so the posterior moves away
        from the checkpoint only as far as the pairs ask. The head still needs
        :meth:`fit`: the posterior's spread needs data.

        Parameters
        ----------
        weight : Tensor, shape (d,) or (1, d)
        bias : Tensor, shape () or (1,), optional
        """
        weight = torch.as_tensor(weight).reshape(-1)
        if weight.shape[0] != self.in_features:
            raise ValueError(
                f"weight must have {self.in_features} entries (in_features), got {weight.shape[0]}"
            )
        self.prior_weight_.copy_(weight.to(self.prior_weight_))
        b = torch.zeros(()) if bias is None else torch.as_tensor(bias).reshape(())
        self.prior_bias_.copy_(b.to(self.prior_bias_))
        return self

    @torch.no_grad()
    def standardized_prior_mean(self) -> Tensor:
        """The prior mean in standardised coordinates, shape (d,); sets ``offset_``.

        Call after the feature standardisation is fitted: ``w₀ᵀφ + b₀ =
        (w₀ ∘ s)ᵀφ̃ + (b₀ + w₀ᵀμ)``.
        """
        self.offset_.fill_(
            float(self.prior_bias_ + (self.prior_weight_ * self.feature_mean_).sum())
        )
        return self.prior_weight_ * self.feature_scale_
