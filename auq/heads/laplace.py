"""Last-layer Laplace approximation for a linear Bradley–Terry head.

Model
    ``r(φ) = wᵀφ̃`` with standardised features ``φ̃`` and prior ``w ~ N(w₀, τ⁻¹ I)``
    (``w₀ = 0``, or a reward checkpoint's score layer after :meth:`LaplaceHead.init_from_linear`).
    A pair (chosen, rejected) enters only through ``z = φ̃_c − φ̃_r``: the margin is
    ``Δ = wᵀz`` and the likelihood ``P(chosen ≻ rejected) = σ(wᵀz − m)`` with an
    optional target margin ``m`` and pair weight ``v``.

Posterior
    The MAP ``ŵ`` maximises ``Σ_i v_i log σ(ŵᵀz_i − m_i) − ½ τ ‖ŵ − w₀‖²`` (damped
    Newton / IRLS); the posterior is ``N(ŵ, Σ)`` with ``Σ = H⁻¹`` and

        ``H = τ I + Σ_i v_i p_i (1 − p_i) z_i z_iᵀ``,  ``p_i = σ(ŵᵀz_i − m_i)``.

Evidence
    ``log p(D | τ) ≈ log p(D | ŵ) − ½ τ ‖ŵ − w₀‖² + (d/2) log τ − ½ log det H``,
    maximised over ``log τ`` with the MAP re-fitted for every τ (bounded Brent
    search, or the best of a user grid).

Predictions are closed form: a response gets mean ``ŵᵀφ̃`` and epistemic variance
``φ̃ᵀΣφ̃``; a pair gets ``E[Δ] = ŵᵀz`` and ``Var[Δ] = zᵀΣz``, which keeps the
chosen/rejected covariance (``≠ Var[r_c] + Var[r_r]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from auq.heads.base import register_head
from auq.heads.bayesian import LinearBayesianHead
from auq.heads.fitting import FitHistory
from auq.types import LinearGaussianSampler, PreferencePrediction, RewardPrediction
from auq.utils.validation import check_positive_int

__all__ = ["LaplaceHead", "newton_map"]


def _bt_objective(
    w: Tensor, z: Tensor, target: Tensor, weight: Tensor, tau: float, prior_mean: Tensor
) -> Tensor:
    """Negative log joint ``−Σ v_i log σ(wᵀz_i − m_i) + ½ τ ‖w − w₀‖²`` (a scalar)."""
    delta = w - prior_mean
    return (weight * F.softplus(target - z @ w)).sum() + 0.5 * tau * delta.dot(delta)


def newton_map(
    z: Tensor,
    target: Tensor,
    weight: Tensor,
    tau: float,
    w0: Tensor,
    *,
    prior_mean: Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-12,
) -> tuple[Tensor, Tensor, Tensor, float]:
    """MAP of the penalised Bradley–Terry likelihood by damped Newton (IRLS).

    Parameters
    ----------
    z : Tensor, shape (B, d)
        Feature differences ``φ̃_c − φ̃_r``.
    target, weight : Tensor, shape (B,)
    tau : float
        Prior precision.
    w0 : Tensor, shape (d,)
        Starting point (warm start across τ).
    prior_mean : Tensor, shape (d,), optional
        Mean w₀ of the Gaussian prior (zeros by default).

    Returns
    -------
    w : Tensor, shape (d,)
        MAP weights.
    hessian : Tensor, shape (d, d)
        ``H = τI + Zᵀ diag(v p (1 − p)) Z`` at the MAP.
    chol : Tensor, shape (d, d)
        Lower Cholesky factor of ``H``.
    objective : float
        Negative log joint at the MAP (see :func:`_bt_objective`).
    """
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    m0 = torch.zeros_like(w0) if prior_mean is None else prior_mean.to(w0)
    w = w0.clone()
    f = _bt_objective(w, z, target, weight, tau, m0)
    for it in range(max_iter + 1):
        p = torch.sigmoid(z @ w - target)  # (B,)
        grad = tau * (w - m0) - z.T @ (weight * (1 - p))  # (d,)
        hessian = (z * (weight * p * (1 - p))[:, None]).T @ z + tau * eye  # (d, d)
        chol = torch.linalg.cholesky(hessian)
        step = torch.cholesky_solve(grad[:, None], chol)[:, 0]
        decrement = float(grad.dot(step))  # squared Newton decrement
        if decrement <= tol * max(1.0, abs(float(f))) or it == max_iter:
            break
        t, f_new = 1.0, _bt_objective(w - step, z, target, weight, tau, m0)
        while f_new > f - 0.25 * t * decrement and t > 1e-8:  # Armijo backtracking
            t *= 0.5
            f_new = _bt_objective(w - t * step, z, target, weight, tau, m0)
        if f_new > f:  # no decrease at machine precision: converged
            break
        w, f = w - t * step, f_new
    return w, hessian, chol, float(f)


def _log_evidence(w: Tensor, chol: Tensor, objective: float, tau: float) -> float:
    """Laplace log evidence ``−objective + (d/2) log τ − ½ log det H`` (constants cancel)."""
    d = w.shape[0]
    return -objective + 0.5 * d * math.log(tau) - float(chol.diagonal().log().sum())


@register_head
class LaplaceHead(LinearBayesianHead):
    """Bayesian linear Bradley–Terry head with a full-covariance Laplace posterior.

    Parameters
    ----------
    in_features : int
        Feature dimension d.
    prior_precision : "marglik" or float
        Prior precision τ of ``w ~ N(w₀, τ⁻¹ I)``. ``"marglik"`` maximises the Laplace
        evidence over ``log τ`` within ``prior_bounds`` (or over ``prior_grid``).
    prior_grid : sequence of float, optional
        Candidate values of τ; the one with the largest evidence is used (requires
        ``prior_precision="marglik"``). The evidence of each is kept in
        ``grid_log_evidence_``.
    prior_bounds : (float, float)
        Search interval for τ under ``"marglik"`` without a grid.
    bias : bool
        A bias cancels in every margin, so pairs cannot identify it. With
        ``bias=True`` it is fixed, per posterior draw, to ``b = −wᵀφ̄`` (``φ̄`` the
        mean standardised training feature), i.e. ``r(φ) = wᵀ(φ̃ − φ̄)`` centres the
        training rewards at zero. With ``standardize=True`` ``φ̄ = 0`` already, so
        the option only matters for raw features.
    n_samples : int
        S, the joint posterior draws behind ``.samples`` of every prediction
        (and the default of :meth:`sample_weights`).
    max_iter : int
        Newton iterations per MAP fit.
    tol : float
        Convergence threshold on the squared Newton decrement (relative).
    standardize : bool
        Standardise features with the mean/scale of the training responses.

    Attributes
    ----------
    weight_ : Tensor, shape (d,)
        MAP weights ``ŵ`` (standardised-feature coordinates).
    posterior_covariance_ : Tensor, shape (d, d)
        ``Σ = H⁻¹``.
    posterior_scale_tril_ : Tensor, shape (d, d)
        Lower Cholesky factor ``L`` of ``Σ`` (``Σ = L Lᵀ``).
    center_ : Tensor, shape (d,)
        ``φ̄`` when ``bias=True``, else zeros.
    offset_, prior_weight_, prior_bias_ : Tensor
        The prior's mean layer and reward offset (:class:`~auq.heads.LinearBayesianHead`).
    prior_precision_, log_evidence_ : Tensor, shape ()
    grid_log_evidence_ : Tensor, shape (len(prior_grid),)
    """

    method = "laplace"
    fit_options_note = "the posterior is computed in closed form, not by gradient training"

    def __init__(
        self,
        in_features: int,
        *,
        prior_precision: str | float = "marglik",
        prior_grid: Sequence[float] | None = None,
        prior_bounds: Sequence[float] = (1e-6, 1e6),
        bias: bool = False,
        n_samples: int = 64,
        max_iter: int = 100,
        tol: float = 1e-12,
        standardize: bool = True,
    ) -> None:
        super().__init__(in_features, standardize=standardize)
        if prior_precision != "marglik" and (
            isinstance(prior_precision, bool | str)
            or not (isinstance(prior_precision, int | float) and prior_precision > 0)
        ):
            raise ValueError(
                f"prior_precision={prior_precision!r} is not supported; valid choices: "
                "'marglik' or a positive float"
            )
        if prior_grid is not None:
            prior_grid = [float(t) for t in prior_grid]
            if not prior_grid or any(not (t > 0 and math.isfinite(t)) for t in prior_grid):
                raise ValueError(
                    f"prior_grid must be a non-empty list of positive floats, got {prior_grid!r}"
                )
            if prior_precision != "marglik":
                raise ValueError("prior_grid requires prior_precision='marglik'")
        lo, hi = (float(b) for b in prior_bounds)
        if not 0 < lo < hi < math.inf:
            raise ValueError(
                f"prior_bounds must satisfy 0 < low < high, got {tuple(prior_bounds)!r}"
            )
        self.prior_precision = (
            prior_precision if isinstance(prior_precision, str) else float(prior_precision)
        )
        self.prior_grid = prior_grid
        self.prior_bounds = (lo, hi)
        self.bias = bool(bias)
        self._n_samples = check_positive_int("n_samples", n_samples)
        self.max_iter = check_positive_int("max_iter", max_iter)
        self.tol = float(tol)
        d = in_features
        self.register_buffer("weight_", torch.zeros(d))
        self.register_buffer("posterior_covariance_", torch.eye(d))
        self.register_buffer("posterior_scale_tril_", torch.eye(d))
        self.register_buffer("center_", torch.zeros(d))
        self.register_buffer("prior_precision_", torch.ones(()))
        self.register_buffer("log_evidence_", torch.zeros(()))
        self.register_buffer("grid_log_evidence_", torch.zeros(len(prior_grid or ())))

    @property
    def n_samples(self) -> int:
        """S, the joint posterior draws behind ``.samples``."""
        return self._n_samples

    def get_config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "prior_precision": self.prior_precision,
            "prior_grid": self.prior_grid,
            "prior_bounds": list(self.prior_bounds),
            "bias": self.bias,
            "n_samples": self.n_samples,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "standardize": self.standardize,
        }

    # -- fitting -------------------------------------------------------------------
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
        """MAP, Hessian and (optionally) τ; computation in float64, buffers keep their dtype.

        ``warm_start`` starts Newton at the current MAP (same answer, fewer iterations).
        """
        f64 = torch.float64
        phi_c, phi_r = phi_chosen.to(f64), phi_rejected.to(f64)
        target, pair_weight = target.to(f64), weight.to(f64)
        start = self.weight_.to(f64).clone() if warm_start else None
        both = torch.cat([phi_c, phi_r])  # (2B, d)
        self.fit_standardization(both)
        mean, scale = self.feature_mean_.to(f64), self.feature_scale_.to(f64)
        z = (phi_c - phi_r) / scale  # (B, d); the feature mean cancels in differences
        if self.bias:
            self.center_.copy_(((both - mean) / scale).mean(0))
        else:
            self.center_.zero_()
        prior_mean = self.standardized_prior_mean().to(f64)
        state = {"w": prior_mean.clone() if start is None else start}

        def evidence(tau: float) -> tuple[float, tuple[Tensor, Tensor]]:
            w, _, chol, obj = newton_map(
                z,
                target,
                pair_weight,
                tau,
                state["w"],
                prior_mean=prior_mean,
                max_iter=self.max_iter,
                tol=self.tol,
            )
            state["w"] = w  # warm start for the next τ
            return _log_evidence(w, chol, obj, tau), (w, chol)

        if self.prior_precision != "marglik":
            tau = float(self.prior_precision)
        elif self.prior_grid is not None:
            values = [evidence(t)[0] for t in self.prior_grid]
            self.grid_log_evidence_.copy_(torch.tensor(values))
            tau = self.prior_grid[max(range(len(values)), key=values.__getitem__)]
        else:
            from scipy.optimize import minimize_scalar

            lo, hi = (math.log(b) for b in self.prior_bounds)
            res = minimize_scalar(
                lambda log_tau: -evidence(math.exp(log_tau))[0],
                bounds=(lo, hi),
                method="bounded",
                options={"xatol": 1e-4},
            )
            tau = math.exp(res.x)
        log_ev, (w, chol) = evidence(tau)
        # Σ = H⁻¹ = L⁻ᵀL⁻¹; its own lower Cholesky factor is recomputed for sampling.
        # Buffers are replaced (not written in place) so pending samplers keep their draws.
        cov = torch.cholesky_inverse(chol)
        cov = 0.5 * (cov + cov.T)
        # (contiguous, so that predictions are bit-identical after a safetensors round trip)
        self.weight_ = w.to(self.weight_).contiguous()
        self.posterior_covariance_ = cov.to(self.posterior_covariance_).contiguous()
        tril = torch.linalg.cholesky(cov)
        self.posterior_scale_tril_ = tril.to(self.posterior_scale_tril_).contiguous()
        self.prior_precision_ = torch.tensor(tau).to(self.prior_precision_)
        self.log_evidence_ = torch.tensor(log_ev).to(self.log_evidence_)
        return None

    # -- fitted quantities -----------------------------------------------------------
    @property
    def posterior_precision_(self) -> Tensor:
        """``H = Σ⁻¹``, shape (d, d), recomputed in float64 from the stored factor."""
        return torch.cholesky_inverse(self.posterior_scale_tril_.double()).to(self.weight_.dtype)

    def _design(self, phi: Tensor, name: str = "phi") -> Tensor:
        """Standardised, centred features ``φ̃ − φ̄``, shape (N, d), in the buffers' dtype."""
        self._check_features(name, phi)
        self._check_fitted()
        phi = phi.to(device=self.weight_.device, dtype=self.weight_.dtype)
        return self.standardize_features(phi) - self.center_

    def _quad_form(self, x: Tensor) -> Tensor:
        """``xᵀΣx`` per row as ``‖xL‖²``: one (N, d) × (d, d) product, shape (N,)."""
        return (x @ self.posterior_scale_tril_).square().sum(-1)

    def _sampler(self, x: Tensor, offset: Tensor | float = 0.0) -> LinearGaussianSampler:
        """Joint draws ``x w_sᵀ + offset`` of N items with design ``x`` (N, d)."""
        return LinearGaussianSampler(self.weight_, self.posterior_scale_tril_, x, offset=offset)

    def sample_weights(
        self, n: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Joint posterior draws ``w_s = ŵ + L ε_s``, shape (n, d) (``n_samples`` by default)."""
        self._check_fitted()
        n = self.n_samples if n is None else n
        eye = torch.eye(self.in_features, dtype=self.weight_.dtype, device=self.weight_.device)
        return LinearGaussianSampler(self.weight_, self.posterior_scale_tril_, eye)(n, generator)

    # -- prediction ------------------------------------------------------------------
    def predict(self, phi: Tensor) -> RewardPrediction:
        """Rewards of N responses with closed-form epistemic variance.

        Parameters
        ----------
        phi : Tensor, shape (N, d)

        Returns
        -------
        RewardPrediction
            ``mean = ŵᵀφ̃ + offset`` and ``var = φ̃ᵀΣφ̃``, shape (N,); ``samples`` are
            ``n_samples`` joint posterior draws ``w_sᵀφ̃ + offset``, drawn on demand.
        """
        return self._rewards(self._design(phi))

    def _rewards(self, x: Tensor) -> RewardPrediction:
        """The closed-form prediction of N items with design ``x`` (N, d)."""
        return RewardPrediction.from_moments(
            x @ self.weight_ + self.offset_,
            self._quad_form(x),
            sampler=self._sampler(x, self.offset_),
            n_samples=self.n_samples,
            method=self.method,
        )

    def uncertainty_score(self, phi: Tensor) -> Tensor:
        """AdvPO-style last-layer uncertainty ``sqrt(φ̃ᵀΣφ̃)``, shape (N,)."""
        return self._quad_form(self._design(phi)).sqrt()

    def predict_pairs(self, phi_chosen: Tensor, phi_rejected: Tensor) -> PreferencePrediction:
        """Closed-form preference of B pairs.

        Parameters
        ----------
        phi_chosen, phi_rejected : Tensor, shape (B, d)

        Returns
        -------
        PreferencePrediction
            ``margin_mean = ŵᵀz``, ``margin_var = zᵀΣz`` with ``z = φ̃_c − φ̃_r``
            (covariance kept), the probit predictive logit, entropies by quadrature,
            and ``chosen``/``rejected`` rewards; margin draws share the posterior
            draws of the two sides.
        """
        x_c = self._design(phi_chosen, "phi_chosen")
        x_r = self._design(phi_rejected, "phi_rejected")
        if x_c.shape != x_r.shape:
            raise ValueError(
                f"phi_chosen and phi_rejected must have the same shape, got "
                f"{tuple(phi_chosen.shape)} and {tuple(phi_rejected.shape)}"
            )
        chosen, rejected = self._rewards(x_c), self._rewards(x_r)
        z = x_c - x_r  # (B, d)
        return PreferencePrediction.from_gaussian_margin(
            z @ self.weight_,
            self._quad_form(z),
            sampler=self._sampler(z),
            n_samples=self.n_samples,
            chosen=chosen,
            rejected=rejected,
            method=self.method,
        )
