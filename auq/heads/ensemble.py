"""K reward heads on shared features, evaluated as one batched op.

Each member k is a linear map or a one-hidden-layer MLP; the K members' weights
are stacked so the whole ensemble is two ``einsum`` calls, never a Python loop
over heads::

    φ (N, d) ──standardise──▶ x (N, d)
    linear:  r = einsum("nd,kd->kn", x, W) + b            W (K, d), b (K,)
    mlp:     h = gelu(einsum("nd,kdh->knh", x, W1) + b1)  W1 (K, d, H)
             r = einsum("knh,kh->kn", h, W2) + b2         W2 (K, H)

Diversity comes from independent initialisation, optional per-member bootstrap
resampling (Poisson(1) pair weights per member) and optional anchoring: an L2
pull of each member towards its own random initial weights (Pearce et al.,
2020), which makes the ensemble an approximate posterior sample.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auq.heads.base import PreferenceHead, register_head
from auq.heads.fitting import FitConfig, FitHistory, fit_pairs
from auq.losses import bradley_terry_loss, member_preference_loss
from auq.types import RewardPrediction
from auq.utils.validation import check_positive_int

__all__ = ["EnsembleHead"]


@register_head
class EnsembleHead(PreferenceHead):
    """An ensemble of K linear or MLP reward heads evaluated in one batched op.

    Parameters
    ----------
    in_features : int
        Feature dimension d.
    n_members : int
        K, the number of heads (≥ 1; ≥ 2 for a non-zero epistemic variance).
    hidden_size : int or None
        None for linear heads, else the width H of one hidden layer (GELU).
    bootstrap : bool
        Train each member on its own Poisson(1) bootstrap weighting of the pairs.
    anchor : float
        Strength of the L2 pull towards each member's initial weights (0 = off).
    init_scale : float
        Standard deviation of the initial output-layer weights on standardised
        features (× 1/√d): the prior spread of the members. Directions the data do
        not pin down keep it, which is what makes disagreement grow away from the
        training data (on MiniLM features of the built-in set, OOD AUROC of the
        margin std rose from 0.62 at 1.0 to 0.84 at 3.0, accuracy unchanged).
    standardize : bool
        Standardise features with the training mean/scale.
    seed : int
        Seed of the initialisation and the bootstrap.

    Examples
    --------
    >>> head = EnsembleHead(384, n_members=8).fit(phi_chosen, phi_rejected)  # doctest: +SKIP
    >>> head.predict(phi).var.shape                                          # doctest: +SKIP
    torch.Size([N])
    """

    method = "heads"
    accepts_member_features = True

    def __init__(
        self,
        in_features: int,
        *,
        n_members: int = 8,
        hidden_size: int | None = None,
        bootstrap: bool = False,
        anchor: float = 0.0,
        init_scale: float = 3.0,
        standardize: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(in_features, standardize=standardize)
        self.n_members = check_positive_int("n_members", n_members)
        if hidden_size is not None:
            check_positive_int("hidden_size", hidden_size)
        if anchor < 0:
            raise ValueError(f"anchor must be >= 0, got {anchor!r}")
        self.hidden_size = hidden_size
        self.bootstrap = bootstrap
        self.anchor = float(anchor)
        self.init_scale = float(init_scale)
        self.seed = seed
        self.history_: FitHistory | None = None

        k, d = n_members, in_features
        gen = torch.Generator().manual_seed(seed)
        if hidden_size is None:
            out_in = d
            self.w_in = None
            self.b_in = None
        else:
            out_in = hidden_size
            self.w_in = nn.Parameter(torch.randn(k, d, hidden_size, generator=gen) / math.sqrt(d))
            self.b_in = nn.Parameter(torch.zeros(k, hidden_size))
        self.w_out = nn.Parameter(
            torch.randn(k, out_in, generator=gen) * (init_scale / math.sqrt(out_in))
        )
        self.b_out = nn.Parameter(torch.zeros(k))
        # Anchors: each member's initial weights (used only when anchor > 0).
        for name, p in self._weights().items():
            self.register_buffer(f"anchor_{name}", p.detach().clone())

    def _weights(self) -> dict[str, Tensor]:
        ws = {"w_out": self.w_out}
        if self.w_in is not None:
            ws["w_in"] = self.w_in
        return ws

    # -- forward ------------------------------------------------------------------
    def forward(self, phi: Tensor) -> Tensor:
        """Member rewards.

        Parameters
        ----------
        phi : Tensor, shape (N, d), or (K, N, d)
            Shared features, or one feature set per member (backbone-level
            ensembles; with a single head, (T, N, d) stochastic passes share it).

        Returns
        -------
        Tensor, shape (K, N) (or (T, N)).
        """
        x = self.standardize_features(phi.to(self.w_out.dtype))
        w_out, b_out, w_in, b_in = self.w_out, self.b_out, self.w_in, self.b_in
        per_member = x.ndim == 3
        if per_member and self.n_members == 1 and x.shape[0] > 1:  # one head, T passes
            t = x.shape[0]
            w_out, b_out = w_out.expand(t, *w_out.shape[1:]), b_out.expand(t)
            if w_in is not None:
                w_in, b_in = w_in.expand(t, *w_in.shape[1:]), b_in.expand(t, -1)
        n = "kn" if per_member else "n"
        if w_in is None:
            return torch.einsum(f"{n}d,kd->kn", x, w_out) + b_out[:, None]
        h = F.gelu(torch.einsum(f"{n}d,kdh->knh", x, w_in) + b_in[:, None, :])
        return torch.einsum("knh,kh->kn", h, w_out) + b_out[:, None]

    def predict(self, phi: Tensor) -> RewardPrediction:
        """Rewards of N responses, one sample row per member.

        Parameters
        ----------
        phi : Tensor, shape (N, d)

        Returns
        -------
        RewardPrediction with ``samples`` of shape (K, N).
        """
        self._check_features("phi", phi)
        with torch.no_grad():
            return RewardPrediction.from_samples(self(phi), method=self.method)

    # -- training -----------------------------------------------------------------
    def penalty(self) -> Tensor:
        """Anchoring penalty ``anchor · Σ_k ‖θ_k − θ_k⁰‖² / 2``, summed over members."""
        if self.anchor == 0:
            return self.w_out.new_zeros(())
        total = sum(
            ((w - getattr(self, f"anchor_{name}")) ** 2).sum()
            for name, w in self._weights().items()
        )
        return 0.5 * self.anchor * total

    def fit(
        self,
        phi_chosen: Tensor,
        phi_rejected: Tensor,
        *,
        margin: Tensor | None = None,
        weight: Tensor | None = None,
        eval_pairs: tuple[Tensor, Tensor] | None = None,
        config: FitConfig | None = None,
        **config_overrides: Any,
    ) -> EnsembleHead:
        """Train all K members jointly with the Bradley–Terry loss.

        Parameters
        ----------
        phi_chosen, phi_rejected : Tensor, shape (B, d)
            Features of the preferred and the other response of each pair.
        margin : Tensor, shape (B,), optional
            Required margin per pair (TRL's ``margin`` column).
        weight : Tensor, shape (B,), optional
            Non-negative pair weights.
        eval_pairs : (Tensor (E, d), Tensor (E, d)), optional
            Held-out pairs for per-epoch accuracy/loss and early stopping.
        config : FitConfig, optional
            Optimiser and loop settings; keyword overrides (``epochs=...``) apply on top.

        Returns
        -------
        self
        """
        config = (config or FitConfig()).replace(**config_overrides)
        phi_chosen, phi_rejected, target, pair_weight = self._check_pairs(
            phi_chosen, phi_rejected, margin, weight
        )
        n = phi_chosen.shape[-2]
        self._restandardize(torch.cat([phi_chosen, phi_rejected], dim=-2))
        if self.bootstrap:  # per-member Poisson(1) resampling weights, (K, B)
            gen = torch.Generator().manual_seed(self.seed + 1)
            pair_weight = pair_weight * torch.poisson(torch.ones(self.n_members, n), generator=gen)

        def batch_loss(idx: Tensor) -> tuple[Tensor, Tensor]:
            r = self(torch.cat([phi_chosen[..., idx, :], phi_rejected[..., idx, :]], dim=-2))
            rc, rr = r[:, : len(idx)], r[:, len(idx) :]  # (K, b) each
            member_loss = member_preference_loss(
                rc,
                rr,
                target_margin=target[idx],
                weight=pair_weight[..., idx],
                center_coef=config.center_coef,
            )  # (K,)
            # mean over members (AdamW is invariant to the 1/K scale of each gradient)
            loss = member_loss.mean() + self.penalty() / (n * self.n_members)
            return loss, (rc - rr).mean(0)

        def evaluate() -> tuple[float, float]:
            phi_c, phi_r = eval_pairs
            with torch.no_grad():
                m = self(phi_c) - self(phi_r)  # (K, E)
                loss = bradley_terry_loss(m).mean()
                acc = (m.mean(0) > 0).float().mean()
            return float(loss), float(acc)

        self.train()
        self.history_ = fit_pairs(
            self,
            batch_loss,
            n_pairs=n,
            config=config,
            evaluate=None if eval_pairs is None else evaluate,
            description=f"EnsembleHead(K={self.n_members})",
        )
        self.eval()
        self.is_fitted.fill_(True)
        return self

    @torch.no_grad()
    def _restandardize(self, phi: Tensor) -> None:
        """Refit the feature statistics without changing the function of a fitted head.

        With old (μ, s) and new (μ', s'), ``W·(φ−μ)/s + b = W'·(φ−μ')/s' + b'`` for
        ``W' = W·s'/s`` and ``b' = b + W·(μ'−μ)/s``; anchors move the same way.
        """
        old_mean, old_scale = self.feature_mean.clone(), self.feature_scale.clone()
        self.fit_standardization(phi)
        if not bool(self.is_fitted):  # fresh weights are defined on standardised features
            return
        ratio = self.feature_scale / old_scale  # (d,)
        shift = (self.feature_mean - old_mean) / old_scale  # (d,)
        if self.w_in is None:
            pairs = [(self.w_out, self.b_out, self.anchor_w_out)]
        else:
            pairs = [(self.w_in, self.b_in, self.anchor_w_in)]
        for w, b, anchor in pairs:
            eq = "kd,d->k" if w.ndim == 2 else "kdh,d->kh"
            b.add_(torch.einsum(eq, w, shift))
            scale = ratio if w.ndim == 2 else ratio[:, None]
            w.mul_(scale)
            anchor.mul_(scale)

    # -- checkpoints ----------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "n_members": self.n_members,
            "hidden_size": self.hidden_size,
            "bootstrap": self.bootstrap,
            "anchor": self.anchor,
            "init_scale": self.init_scale,
            "standardize": self.standardize,
            "seed": self.seed,
        }

    def init_from_linear(self, weight: Tensor, bias: Tensor | None = None) -> EnsembleHead:
        """Start every member from one linear score head (e.g. a TRL reward checkpoint).

        Parameters
        ----------
        weight : Tensor, shape (d,) or (1, d)
        bias : Tensor, shape () or (1,), optional

        Scores then equal the checkpoint's exactly (a later ``fit`` re-standardises
        without changing the function); diversity comes from ``bootstrap``/``anchor``.
        """
        if self.hidden_size is not None:
            raise ValueError("init_from_linear needs linear members (hidden_size=None)")
        with torch.no_grad():
            self.w_out.copy_(weight.reshape(1, -1).expand(self.n_members, -1))
            self.b_out.copy_(
                (bias.reshape(()) if bias is not None else torch.zeros(())).expand(self.n_members)
            )
            self.feature_mean.zero_()
            self.feature_scale.fill_(1.0)
            for name, p in self._weights().items():
                getattr(self, f"anchor_{name}").copy_(p)
        self.is_fitted.fill_(True)
        return self
