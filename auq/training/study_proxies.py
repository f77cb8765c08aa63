"""The proxy reward models of an over-optimisation study: fit, calibrate, score a pool.

Feature-level proxies (one head, the heads ensemble, Laplace, Pyro) share ONE
frozen backbone: the features of the preference pairs and of the pool are computed
once (:func:`encode_rows`) and every head reads them, exactly what
``RewardModel.from_backbone(path, uq=...)`` would compute, without paying the
backbone once per model (separate ``RewardModel`` objects each keep their own
feature cache). A deep ensemble trains its own backbones and scores the pool
through ``RewardModel.score``.

Each proxy's scoring cost is recorded as if it scored the pool alone: the shared
backbone pass plus its head (or its own backbones), so ``score_ratio`` compares
what a user would pay for each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from auq.backbone import Backbone
from auq.calibration import TemperatureScaler
from auq.data import PreferenceDataset
from auq.heads import EnsembleHead, LaplaceHead, PreferenceHead
from auq.models import RewardModel
from auq.objectives import penalized_reward
from auq.scoring.prefix import prompt_groups
from auq.training.study_config import Selector, StudyConfig
from auq.types import PreferencePrediction, RewardPrediction
from auq.utils.console import show_progress

__all__ = [
    "FittedProxy",
    "PairFeatures",
    "Timer",
    "encode_pairs",
    "encode_rows",
    "fit_proxies",
]


class Timer:
    """Wall-clock and process CPU seconds since creation (CPU time: robust to other load)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process, every thread)."""
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def encode_rows(
    backbone: Backbone, prompts: list[str], responses: list[str], progress: bool | None, what: str
) -> tuple[Tensor, Any]:
    """Features (N, d) of N (prompt, response) rows, and the truncation counts."""
    tokens = backbone.tokenize(prompts, responses)
    phi = backbone.encode(
        tokens, groups=prompt_groups(prompts), progress=show_progress(progress), description=what
    )
    return phi, tokens.stats


@dataclass
class PairFeatures:
    """Features of B preference pairs: ``chosen`` and ``rejected``, each (B, d)."""

    chosen: Tensor
    rejected: Tensor
    seconds: float


def encode_pairs(
    backbone: Backbone, dataset: PreferenceDataset, progress: bool | None, what: str
) -> PairFeatures:
    """Features of a preference set through the shared backbone (cached texts are free)."""
    start = time.perf_counter()
    n = len(dataset)
    phi, _ = encode_rows(
        backbone,
        list(dataset.prompts) * 2,
        list(dataset.chosen) + list(dataset.rejected),
        progress,
        what,
    )
    return PairFeatures(phi[:n], phi[n:], time.perf_counter() - start)


@dataclass
class FittedProxy:
    """A fitted, calibrated proxy and its cost.

    Attributes
    ----------
    name : str
        A :data:`~auq.training.study_config.PROXIES` name.
    model : PreferenceHead or RewardModel
        A head on the shared features, or a deep ensemble with its own backbones.
    temperature : float
        Divides its rewards before the objectives (1.0 without calibration).
    fit_seconds : (float, float)
        Training time, wall and CPU (the head only, for feature-level proxies).
    n_members : int
        Members / posterior draws behind its std.
    calibration_prediction : PreferencePrediction or None
        Its prediction of the calibration pairs (kept from calibrating).
    """

    name: str
    model: PreferenceHead | RewardModel
    temperature: float
    fit_seconds: tuple[float, float]
    n_members: int
    calibration_prediction: PreferencePrediction | None = None

    @property
    def shares_backbone(self) -> bool:
        """Whether it reads the shared frozen features (else it runs its own backbones)."""
        return isinstance(self.model, PreferenceHead)

    def predict_pairs(
        self, pairs: PairFeatures, dataset: PreferenceDataset
    ) -> PreferencePrediction:
        """Its (uncalibrated) prediction of B pairs."""
        if self.shares_backbone:
            return self.model.predict_pairs(pairs.chosen, pairs.rejected).cpu()
        return self.model.predict(dataset, calibrated=False, progress=False)

    def score(
        self, pool_phi: Tensor, prompts: list[str], responses: list[str], progress: bool | None
    ) -> tuple[RewardPrediction, tuple[float, float]]:
        """Its rewards of the flattened pool (P·N,), and the wall and CPU seconds it took."""
        timer = Timer()
        with torch.no_grad():
            if self.shares_backbone:
                pred = self.model.predict(pool_phi).cpu()
            else:
                pred = self.model.score(prompts, responses, progress=progress)
        return pred, timer.elapsed()


def _make_head(name: str, d: int, config: StudyConfig, seed: int) -> PreferenceHead:
    options = config.proxy_options.get(name, {})
    if name == "single":
        return EnsembleHead(d, **{"n_members": 1, "seed": seed, **options})
    if name == "heads":
        return EnsembleHead(d, **{"n_members": config.n_heads, "seed": seed, **options})
    if name == "laplace":
        return LaplaceHead(d, **options)
    from auq.heads.pyro_head import PyroHead  # Pyro loads only when asked for

    return PyroHead(d, **{"seed": seed, **options})  # SVI, its default guide and steps


def _fit_one(
    name: str,
    config: StudyConfig,
    seed: int,
    train: PreferenceDataset,
    train_pairs: PairFeatures,
    d: int,
) -> tuple[PreferenceHead | RewardModel, int]:
    """The fitted model and its member / draw count."""
    if name == "deep":
        from auq.utils.defaults import default_backbone_path

        rm = RewardModel.from_backbone(
            config.backbone or default_backbone_path(),
            uq="deep",
            n_members=config.deep_members,
            max_length=config.max_length,
            seed=seed,
        )
        options = {"epochs": config.deep_epochs, **config.proxy_options.get("deep", {})}
        rm.fit(train, progress=config.progress, **options)
        return rm, config.deep_members
    head = _make_head(name, d, config, seed)
    head.fit(train_pairs.chosen, train_pairs.rejected, progress=config.progress)
    return head.eval(), head.n_samples


def fit_proxies(
    config: StudyConfig,
    seed: int,
    splits: dict[str, PreferenceDataset],
    pairs: dict[str, PairFeatures],
    d: int,
) -> dict[str, FittedProxy]:
    """Every proxy ``config.proxies`` names, fitted on the train pairs and calibrated.

    Parameters
    ----------
    splits : dict with "train", "calibration"
        The preference sets.
    pairs : dict with the same keys
        Their features through the shared backbone.
    d : int
        Feature dimension.
    """
    out = {}
    for name in config.proxies:
        timer = Timer()
        model, members = _fit_one(name, config, seed, splits["train"], pairs["train"], d)
        proxy = FittedProxy(name, model, 1.0, timer.elapsed(), members)
        held_out = proxy.predict_pairs(pairs["calibration"], splits["calibration"])
        proxy.calibration_prediction = held_out
        if config.calibration == "temperature":
            proxy.temperature = float(TemperatureScaler().fit(held_out).temperature_)
        out[name] = proxy
    return out


def objective_values(pred: RewardPrediction, selector: Selector, temperature: float) -> np.ndarray:
    """The selector's objective on rewards divided by ``temperature``, float64 (N,).

    ``uwo`` on rewards r/T is ``mean/T − λ·var/T²``: λ/T on the raw rewards, over T.
    """
    lam = selector.lam / temperature
    raw = penalized_reward(pred, selector.objective, lam=lam, k=selector.k)
    return raw.double().numpy() / temperature


def moments(pred: RewardPrediction, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated mean and epistemic std, each float64 (N,)."""
    mean = pred.mean.double().numpy() / temperature
    std = pred.var.double().clamp_min(0).sqrt().numpy() / temperature
    return mean, std


def accuracy(pred: PreferencePrediction) -> float:
    """Share of pairs whose chosen response gets the larger mean reward (ties ½)."""
    margin = pred.margin_mean.double().numpy()
    return float(np.mean((margin > 0) + 0.5 * (margin == 0)))
