"""Last-layer Laplace approximation for a linear Bradley–Terry head.

Model
    ``r(φ) = wᵀφ̃`` with standardised features ``φ̃`` and prior ``w ~ N(0, τ⁻¹ I)``.
    A pair (chosen, rejected) enters only through ``z = φ̃_c − φ̃_r``: the margin is
    ``Δ = wᵀz`` and the likelihood ``P(chosen ≻ rejected) = σ(wᵀz − m)`` with an
    optional target margin ``m`` and pair weight ``v``.

Posterior
    The MAP ``ŵ`` maximises ``Σ_i v_i log σ(ŵᵀz_i − m_i) − ½ τ ‖ŵ‖²`` (damped
    Newton / IRLS); the posterior is ``N(ŵ, Σ)`` with ``Σ = H⁻¹`` and

        ``H = τ I + Σ_i v_i p_i (1 − p_i) z_i z_iᵀ``,  ``p_i = σ(ŵᵀz_i − m_i)``.

Evidence
    ``log p(D | τ) ≈ log p(D | ŵ) − ½ τ ‖ŵ‖² + (d/2) log τ − ½ log det H``,
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

from auq.heads.base import PreferenceHead, register_head
from auq.types import PreferencePrediction, RewardPrediction, Sampler
from auq.uncertainty import probit_probability
from auq.utils.validation import check_positive_int

__all__ = ["LaplaceHead"]


def _bt_objective(w: Tensor, z: Tensor, target: Tensor, weight: Tensor, tau: float) -> Tensor:
    """Negative log joint ``−Σ v_i log σ(wᵀz_i − m_i) + ½ τ ‖w‖²`` (a scalar)."""
    return (weight * F.softplus(target - z @ w)).sum() + 0.5 * tau * w.dot(w)


def _newton_map(
    z: Tensor,
    target: Tensor,
    weight: Tensor,
    tau: float,
    w0: Tensor,
    *,
    max_iter: int,
    tol: float,
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
    w = w0.clone()
    f = _bt_objective(w, z, target, weight, tau)
    for it in range(max_iter + 1):
        p = torch.sigmoid(z @ w - target)  # (B,)
        grad = tau * w - z.T @ (weight * (1 - p))  # (d,)
        hessian = (z * (weight * p * (1 - p))[:, None]).T @ z + tau * eye  # (d, d)
        chol = torch.linalg.cholesky(hessian)
        step = torch.cholesky_solve(grad[:, None], chol)[:, 0]
        decrement = float(grad.dot(step))  # squared Newton decrement
        if decrement <= tol * max(1.0, abs(float(f))) or it == max_iter:
            break
        t, f_new = 1.0, _bt_objective(w - step, z, target, weight, tau)
        while f_new > f - 0.25 * t * decrement and t > 1e-8:  # Armijo backtracking
            t *= 0.5
            f_new = _bt_objective(w - t * step, z, target, weight, tau)
        if f_new > f:  # no decrease at machine precision: converged
            break
        w, f = w - t * step, f_new
    return w, hessian, chol, float(f)


def _log_evidence(w: Tensor, chol: Tensor, objective: float, tau: float) -> float:
    """Laplace log evidence ``−objective + (d/2) log τ − ½ log det H`` (constants cancel)."""
    d = w.shape[0]
    return -objective + 0.5 * d * math.log(tau) - float(chol.diagonal().log().sum())


@register_head
class LaplaceHead(PreferenceHead):
    """Bayesian linear Bradley–Terry head with a full-covariance Laplace posterior.

    Parameters
    ----------
    in_features : int
        Feature dimension d.
    prior_precision : "marglik" or float
        Prior precision τ of ``w ~ N(0, τ⁻¹ I)``. ``"marglik"`` maximises the Laplace
        evidence over ``log τ`` within ``prior_bounds`` (or over ``prior_grid``).
    prior_grid : sequence of float, optional
        Candidate values of τ; the one with the largest evidence is used (requires
        ``prior_precision="marglik"``). The evidence of each is kept in
        ``grid_log_evidence``.
    prior_bounds : (float, float)
        Search interval for τ under ``"marglik"`` without a grid.
    bias : bool
        A bias cancels in every margin, so pairs cannot identify it. With
        ``bias=True`` it is fixed, per posterior draw, to ``b = −wᵀφ̄`` (``φ̄`` the
        mean standardised training feature), i.e. ``r(φ) = wᵀ(φ̃ − φ̄)`` centres the
        training rewards at zero. With ``standardize=True`` ``φ̄ = 0`` already, so
        the option only matters for raw features.
    n_samples : int
        Default number of joint posterior draws for :meth:`sample_weights`.
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
    fitted_prior_precision, log_evidence : Tensor, shape ()
    grid_log_evidence : Tensor, shape (len(prior_grid),)
    """

    method = "laplace"

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
        self.n_samples = check_positive_int("n_samples", n_samples)
        self.max_iter = check_positive_int("max_iter", max_iter)
        self.tol = float(tol)
        d = in_features
        self.register_buffer("weight_", torch.zeros(d))
        self.register_buffer("posterior_covariance_", torch.eye(d))
        self.register_buffer("posterior_scale_tril_", torch.eye(d))
        self.register_buffer("center_", torch.zeros(d))
        self.register_buffer("fitted_prior_precision", torch.ones(()))
        self.register_buffer("log_evidence", torch.zeros(()))
        self.register_buffer("grid_log_evidence", torch.zeros(len(prior_grid or ())))

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
    def fit(
        self,
        phi_chosen: Tensor,
        phi_rejected: Tensor,
        *,
        margin: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> LaplaceHead:
        """Fit the MAP, the Hessian and (optionally) τ on B pairs.

        Parameters
        ----------
        phi_chosen, phi_rejected : Tensor, shape (B, d)
        margin : Tensor, shape (B,), optional
            Target margins m: the likelihood is ``σ(wᵀz − m)``.
        weight : Tensor, shape (B,), optional
            Non-negative pair weights (counts) multiplying each log-likelihood term.

        Returns
        -------
        LaplaceHead
            ``self``, fitted. Computation runs in float64; buffers keep their dtype.
        """
        f64 = torch.float64
        phi_c, phi_r, target, pair_weight = self._check_pairs(
            phi_chosen, phi_rejected, margin, weight, f64
        )
        both = torch.cat([phi_c, phi_r])  # (2B, d)
        self.fit_standardization(both)
        mean, scale = self.feature_mean.to(f64), self.feature_scale.to(f64)
        z = (phi_c - phi_r) / scale  # (B, d); the feature mean cancels in differences
        if self.bias:
            self.center_.copy_(((both - mean) / scale).mean(0))
        else:
            self.center_.zero_()

        state = {"w": torch.zeros(self.in_features, dtype=f64, device=z.device)}

        def evidence(tau: float) -> tuple[float, tuple[Tensor, Tensor, Tensor]]:
            w, _, chol, obj = _newton_map(
                z, target, pair_weight, tau, state["w"], max_iter=self.max_iter, tol=self.tol
            )
            state["w"] = w  # warm start for the next τ
            return _log_evidence(w, chol, obj, tau), (w, chol)

        if self.prior_precision != "marglik":
            tau = float(self.prior_precision)
        elif self.prior_grid is not None:
            values = [evidence(t)[0] for t in self.prior_grid]
            self.grid_log_evidence.copy_(torch.tensor(values))
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
        self.fitted_prior_precision = torch.tensor(tau).to(self.fitted_prior_precision)
        self.log_evidence = torch.tensor(log_ev).to(self.log_evidence)
        self.is_fitted.fill_(True)
        return self

    # -- fitted quantities -----------------------------------------------------------
    @property
    def prior_precision_(self) -> float:
        """The prior precision τ used for the fitted posterior."""
        return float(self.fitted_prior_precision)

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

    def sample_weights(
        self, n: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Joint posterior draws ``w_s = ŵ + L ε_s``, shape (n, d) (``n_samples`` by default)."""
        self._check_fitted()
        n = self.n_samples if n is None else n
        return _draw_weights(self.weight_, self.posterior_scale_tril_, n, generator)

    # -- prediction ------------------------------------------------------------------
    def _closed_form(self, x: Tensor) -> tuple[Tensor, Tensor, Sampler]:
        """Mean ``xŵ``, variance ``xᵀΣx`` (as ``‖xL‖²``, one (N, d) × (d, d) product)
        and a joint sampler ``(n, generator) -> x w_sᵀ``, shape (n, N), for x of shape (N, d)."""
        w, tril = self.weight_, self.posterior_scale_tril_

        def sampler(n: int, generator: torch.Generator | None = None) -> Tensor:
            return _draw_weights(w, tril, n, generator) @ x.T  # (n, d) @ (d, N)

        return x @ w, self._quad_form(x), sampler

    def predict(self, phi: Tensor) -> RewardPrediction:
        """Rewards of N responses with closed-form epistemic variance.

        Parameters
        ----------
        phi : Tensor, shape (N, d)

        Returns
        -------
        RewardPrediction
            ``mean = ŵᵀφ̃`` and ``var = φ̃ᵀΣφ̃``, shape (N,); samples are joint
            posterior draws ``w_sᵀφ̃`` drawn on demand.
        """
        mean, var, sampler = self._closed_form(self._design(phi))
        return RewardPrediction.from_moments(mean, var, sampler=sampler, method=self.method)

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
            (covariance kept), ``prob = σ(μ / sqrt(1 + π σ² / 8))`` (probit), entropies
            by Gauss–Hermite quadrature, and ``chosen``/``rejected`` rewards.
        """
        x_c, x_r = (
            self._design(phi_chosen, "phi_chosen"),
            self._design(phi_rejected, "phi_rejected"),
        )
        if x_c.shape != x_r.shape:
            raise ValueError(
                f"phi_chosen and phi_rejected must have the same shape, got "
                f"{tuple(phi_chosen.shape)} and {tuple(phi_rejected.shape)}"
            )
        sides = [self._closed_form(x) for x in (x_c, x_r)]
        chosen, rejected = (
            RewardPrediction.from_moments(m, v, sampler=s, method=self.method) for m, v, s in sides
        )
        mean, var, sampler = self._closed_form(x_c - x_r)  # z = φ̃_c − φ̃_r, shape (B, d)
        return PreferencePrediction.from_gaussian_margin(
            mean,
            var,
            prob=probit_probability(mean, var),
            sampler=sampler,
            chosen=chosen,
            rejected=rejected,
            method=self.method,
        )


def _draw_weights(w: Tensor, tril: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """``w + ε Lᵀ`` with ε ~ N(0, I) drawn on the CPU generator, shape (n, d)."""
    eps = torch.randn((n, w.shape[0]), generator=generator, dtype=w.dtype)
    return w + eps.to(w.device) @ tril.T
