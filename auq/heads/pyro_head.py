"""Bayesian linear Bradley–Terry head in Pyro: SVI with autoguides, or NUTS.

Model (:class:`BradleyTerryModel`)
    ``w ~ N(w₀, s² I)`` (``s = prior_scale``; ``w₀ = 0``, or a reward checkpoint's score
    layer after :meth:`PyroHead.init_from_linear`), and for each pair i with
    ``z_i = φ̃_c − φ̃_r`` the observation "chosen wins" ``y_i = 1`` with
    ``y_i ~ Bernoulli(logits = wᵀz_i − m_i)``, its log-likelihood scaled by the pair
    weight ``v_i`` (``poutine.scale``; pairs with ``v_i = 0`` are masked). The likelihood
    is exact, so no swap-symmetrisation is needed.

Inference
    ``inference="svi"``: ``Trace_ELBO`` with ``AutoNormal`` / ``AutoLowRankMultivariateNormal``
    / ``AutoMultivariateNormal`` (``guide="normal" | "lowrank" | "mvn"``), Adam with the
    learning rate decayed geometrically (×``lr_decay``) over ``num_steps``, full batch.
    ``inference="nuts"``: ``MCMC(NUTS(model))`` for small heads.

After fitting, ``n_samples`` posterior weight draws live in the buffer
``weight_samples_`` (S, d), so predicting is one matmul ``W_s φ̃ᵀ`` and save/load is exact.

Global state
    Inference runs with ``pyro.settings.context(module_local_params=True)`` inside
    ``pyro.get_param_store().scope()``, so no parameter enters (or is read from) the
    global param store, and two heads never share parameters. ``pyro.set_rng_seed(seed)``
    runs inside :func:`auq.utils.seeding.seeded`, which saves and restores torch's,
    Python's and NumPy's RNG states: ``fit`` is deterministic on CPU and leaves every
    global RNG as it found it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, Predictive, Trace_ELBO
from pyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from pyro.infer.autoguide.initialization import init_to_median, init_to_value
from pyro.nn import PyroModule, PyroSample
from torch import Tensor

from auq.heads.base import register_head
from auq.heads.bayesian import LinearBayesianHead
from auq.heads.fitting import FitHistory
from auq.heads.laplace import newton_map
from auq.types import RewardPrediction
from auq.utils.console import progress_bar, show_progress
from auq.utils.seeding import seeded
from auq.utils.validation import check_choice, check_positive_int

__all__ = ["BradleyTerryModel", "PyroHead"]

INFERENCE_CHOICES = ("svi", "nuts")
INIT_CHOICES = ("map", "prior")
GUIDES = {
    "normal": AutoNormal,
    "lowrank": AutoLowRankMultivariateNormal,
    "mvn": AutoMultivariateNormal,
}


class BradleyTerryModel(PyroModule):
    """Bayesian linear Bradley–Terry likelihood over pair differences.

    Parameters
    ----------
    in_features : int
        Dimension d of ``w``.
    prior_scale : float
        Prior standard deviation s of every weight.
    prior_mean : Tensor, shape (d,)
        Prior mean w₀ (on the device where the prior's tensors live).
    """

    def __init__(self, in_features: int, prior_scale: float, prior_mean: Tensor):
        super().__init__()
        loc = prior_mean.reshape(in_features)
        self.weight = PyroSample(dist.Normal(loc, torch.full_like(loc, prior_scale)).to_event(1))

    def forward(self, z: Tensor, target: Tensor, pair_weight: Tensor) -> Tensor:
        """Score B pairs.

        Parameters
        ----------
        z : Tensor, shape (B, d)
        target, pair_weight : Tensor, shape (B,)

        Returns
        -------
        Tensor, shape (..., B)
            Logits ``wᵀz − m`` (leading axes when particles are vectorised).
        """
        w = self.weight  # (d,) or (..., 1, d) under vectorised particles
        logits = w @ z.T  # (B,) or (..., 1, B)
        if w.ndim > 1:
            logits = logits.squeeze(-2)
        logits = logits - target
        # zero-weight pairs are masked out (Pyro's scale must be positive)
        observed = pair_weight > 0
        with (
            pyro.plate("pairs", z.shape[0], dim=-1),
            poutine.mask(mask=observed),
            poutine.scale(scale=torch.where(observed, pair_weight, 1.0)),
        ):
            pyro.sample("obs", dist.Bernoulli(logits=logits), obs=torch.ones_like(logits))
        return logits


@register_head
class PyroHead(LinearBayesianHead):
    """Bayesian linear Bradley–Terry head fitted with Pyro (SVI or NUTS).

    Parameters
    ----------
    in_features : int
        Feature dimension d.
    inference : {"svi", "nuts"}
    guide : {"normal", "lowrank", "mvn"}
        Autoguide for SVI: mean-field, low-rank-plus-diagonal, or full-covariance Gaussian.
    prior_scale : float
        Prior standard deviation of each weight (on standardised features).
    num_steps : int
        SVI optimisation steps (full batch).
    lr : float
        Initial Adam learning rate of SVI.
    lr_decay : float
        Final learning rate as a fraction of ``lr`` (geometric decay over ``num_steps``).
    num_particles : int
        ELBO particles per step (vectorised).
    n_samples : int
        S, posterior weight draws stored after fitting (NUTS: draws kept after warm-up);
        the rows of ``.samples`` of every prediction.
    warmup_steps : int
        NUTS warm-up (adaptation) steps.
    init : {"map", "prior"}
        Where SVI's guide means / the NUTS chain start: ``"map"`` at the MAP (found by
        Newton on the same log joint, cheap and deterministic), ``"prior"`` at the
        prior median (Pyro's default behaviour, slower to converge). ``fit(...,
        warm_start=True)`` starts at the current posterior mean instead.
    rank : int, optional
        Rank of the ``"lowrank"`` guide (Pyro's default ``≈ sqrt(d)`` when None).
    seed : int
        Seed of every random choice in ``fit``.
    standardize : bool
        Standardise features with the mean/scale of the training responses.

    Attributes
    ----------
    weight_samples_ : Tensor, shape (S, d)
        Posterior draws of ``w`` (standardised-feature coordinates).
    weight_ : Tensor, shape (d,)
        Their mean (the posterior mean).
    offset_, prior_weight_, prior_bias_ : Tensor
        The prior's mean layer and reward offset (:class:`~auq.heads.LinearBayesianHead`).
    elbo_history_ : list of float
        Negative ELBO per SVI step of the last fit (not saved).
    """

    method = "pyro"
    fit_options_note = (
        "SVI/NUTS settings are constructor options (num_steps, lr, warmup_steps, ...)"
    )

    def __init__(
        self,
        in_features: int,
        *,
        inference: str = "svi",
        guide: str = "normal",
        prior_scale: float = 1.0,
        num_steps: int = 1000,
        lr: float = 0.05,
        lr_decay: float = 0.01,
        num_particles: int = 1,
        n_samples: int = 256,
        warmup_steps: int = 200,
        init: str = "map",
        rank: int | None = None,
        seed: int = 0,
        standardize: bool = True,
    ) -> None:
        super().__init__(in_features, standardize=standardize)
        self.inference = check_choice("inference", inference, INFERENCE_CHOICES)
        self.guide = check_choice("guide", guide, GUIDES)
        self.init = check_choice("init", init, INIT_CHOICES)
        if isinstance(prior_scale, bool) or not (
            isinstance(prior_scale, int | float) and prior_scale > 0
        ):
            raise ValueError(f"prior_scale must be a positive float, got {prior_scale!r}")
        if isinstance(lr, bool) or not (isinstance(lr, int | float) and lr > 0):
            raise ValueError(f"lr must be a positive float, got {lr!r}")
        self.prior_scale = float(prior_scale)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.lr = float(lr)
        if isinstance(lr_decay, bool) or not (
            isinstance(lr_decay, int | float) and 0 < lr_decay <= 1
        ):
            raise ValueError(f"lr_decay must be a float in (0, 1], got {lr_decay!r}")
        self.lr_decay = float(lr_decay)
        self.num_particles = check_positive_int("num_particles", num_particles)
        self._n_samples = check_positive_int("n_samples", n_samples)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps, minimum=0)
        self.rank = None if rank is None else check_positive_int("rank", rank)
        self.seed = int(seed)
        self.elbo_history_: list[float] = []
        self.register_buffer("weight_samples_", torch.zeros(n_samples, in_features))

    @property
    def n_samples(self) -> int:
        """S, the stored posterior draws."""
        return self._n_samples

    def get_config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "inference": self.inference,
            "guide": self.guide,
            "prior_scale": self.prior_scale,
            "num_steps": self.num_steps,
            "lr": self.lr,
            "lr_decay": self.lr_decay,
            "num_particles": self.num_particles,
            "n_samples": self.n_samples,
            "warmup_steps": self.warmup_steps,
            "init": self.init,
            "rank": self.rank,
            "seed": self.seed,
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
        """Infer the posterior over ``w`` and store ``n_samples`` draws."""
        progress = options.get("progress")
        dtype = self.weight_samples_.dtype
        start = self.weight_.clone() if warm_start else None
        phi_c, phi_r = phi_chosen.to(dtype), phi_rejected.to(dtype)
        self.fit_standardization(torch.cat([phi_c, phi_r]))  # union of chosen and rejected
        z = self.standardize_features(phi_c) - self.standardize_features(phi_r)  # (B, d)
        prior_mean = self.standardized_prior_mean()
        args = (z, target.to(dtype), weight.to(dtype))
        self.elbo_history_ = []
        with (
            pyro.settings.context(module_local_params=True),
            pyro.get_param_store().scope(),
            seeded(self.seed, z.device),
        ):
            model = BradleyTerryModel(self.in_features, self.prior_scale, prior_mean)
            init_fn = self._init_strategy(args, prior_mean, start)
            if self.inference == "svi":
                samples = self._fit_svi(model, args, init_fn, progress)
            else:
                samples = self._fit_nuts(model, args, init_fn, progress)
        self.weight_samples_ = samples.detach().to(self.weight_samples_)
        return None

    def _init_strategy(
        self, args: tuple[Tensor, ...], prior_mean: Tensor, start: Tensor | None
    ) -> Callable:
        """Init strategy: ``start`` (warm start), the MAP (``init="map"``) or the prior median."""
        if start is not None:
            return init_to_value(values={"weight": start.to(args[0])})
        if self.init == "prior":
            return init_to_median
        z, target, pair_weight = (a.double() for a in args)
        tau = 1.0 / self.prior_scale**2
        m0 = prior_mean.double()
        w_map = newton_map(z, target, pair_weight, tau, m0, prior_mean=m0, tol=1e-10)[0]
        return init_to_value(values={"weight": w_map.to(args[0].dtype)})

    def _fit_svi(
        self,
        model: BradleyTerryModel,
        args: tuple[Tensor, ...],
        init_fn: Callable,
        progress: bool | None,
    ) -> Tensor:
        """SVI with the chosen autoguide; returns guide draws, shape (S, d)."""
        kwargs = {"rank": self.rank} if self.guide == "lowrank" and self.rank else {}
        guide = GUIDES[self.guide](model, init_loc_fn=init_fn, **kwargs)
        elbo = Trace_ELBO(
            num_particles=self.num_particles,
            vectorize_particles=self.num_particles > 1,
            max_plate_nesting=1,
        )(model, guide)
        elbo(*args)  # creates the guide's (module-local) parameters
        optim = torch.optim.Adam(elbo.parameters(), lr=self.lr)
        decay = torch.optim.lr_scheduler.ExponentialLR(
            optim, self.lr_decay ** (1.0 / self.num_steps)
        )
        losses = []
        for _ in progress_bar(range(self.num_steps), enabled=progress, desc=f"SVI ({self.guide})"):
            optim.zero_grad()
            loss = elbo(*args)
            loss.backward()
            optim.step()
            decay.step()
            losses.append(loss.detach())  # no host sync per step
        self.elbo_history_ = torch.stack(losses).tolist()
        with torch.no_grad():
            predictive = Predictive(
                guide, num_samples=self.n_samples, parallel=True, return_sites=["weight"]
            )
            return predictive(*args)["weight"].reshape(self.n_samples, self.in_features)

    def _fit_nuts(
        self,
        model: BradleyTerryModel,
        args: tuple[Tensor, ...],
        init_fn: Callable,
        progress: bool | None,
    ) -> Tensor:
        """NUTS; returns the ``n_samples`` draws after warm-up, shape (S, d)."""
        mcmc = MCMC(
            NUTS(model, init_strategy=init_fn),
            num_samples=self.n_samples,
            warmup_steps=self.warmup_steps,
            num_chains=1,
            disable_progbar=not show_progress(progress),
        )
        mcmc.run(*args)
        return mcmc.get_samples()["weight"][: self.n_samples]

    # -- fitted quantities -----------------------------------------------------------
    @property
    def weight_(self) -> Tensor:
        """Posterior mean of ``w`` over the stored draws, shape (d,)."""
        return self.weight_samples_.mean(0)

    @property
    def posterior_std_(self) -> Tensor:
        """Posterior standard deviation of ``w`` over the stored draws, shape (d,)."""
        return self.weight_samples_.std(0, unbiased=False)

    # -- prediction ------------------------------------------------------------------
    def predict(self, phi: Tensor) -> RewardPrediction:
        """Rewards of N responses from the stored posterior draws.

        Parameters
        ----------
        phi : Tensor, shape (N, d)

        Returns
        -------
        RewardPrediction
            ``samples = W_s φ̃ᵀ + offset``, shape (S, N); mean and epistemic variance
            across S. Pairs (:meth:`predict_pairs`, the base-class default) use the same
            draw for both sides, so margin samples keep the chosen/rejected covariance.
        """
        self._check_features("phi", phi)
        self._check_fitted()
        w = self.weight_samples_
        x = self.standardize_features(phi.to(device=w.device, dtype=w.dtype))  # (N, d)
        return RewardPrediction.from_samples(w @ x.T + self.offset_, method=self.method)
