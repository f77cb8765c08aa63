"""Reward over-optimisation measured: best-of-n against proxies on a world with a known gold.

The set-up of Gao et al. (2022) and Coste et al. (2023), at laptop scale::

    from auq.training.overoptimization import StudyConfig, run_study
    result = run_study(StudyConfig(seeds=(0, 1, 2), pool_size=1024))
    result.summary()               # gold at n_max and at the peak, Gao fit, early warning
    result.coste_ordering(0.25)    # conservative >= mean > single at the largest n?
    result.to_json("study.json")

Per seed: a :class:`~auq.testbed.World`, its reference policy (a tiny GPT-2 SFT'd on
the world's responses, :func:`~auq.testbed.policy.load_or_train_policy`), and ONE
pool of ``pool_size`` responses to each of ``n_prompts`` prompts, drawn once and
gold-scored once. Per label noise: training, calibration and test pairs from the
world's ``"train"`` region (short answers, where longer is better); the proxies
(:mod:`auq.training.study_proxies`) fit on the training pairs, calibrate on the
calibration pairs, and score the pool once each. Every selector's best-of-n curve
for every n then follows from the pool in closed form
(:func:`~auq.training.expected_best_of_n`): no re-sampling per n.

The pool is where over-optimisation can happen: the policy also writes the long
answers of the ``"wide"`` region (see :func:`~auq.training.study_config.default_policy_config`),
which a proxy trained on short ones over-rates.
"""

from __future__ import annotations

import math
import platform
import time
from typing import Any

import numpy as np
import torch

from auq.backbone import Backbone
from auq.metrics import expected_calibration_error
from auq.metrics.preference import symmetrize_probabilities
from auq.testbed import World, label_summary
from auq.training.order_statistics import best_of_n_kl, best_of_n_kl_bound, expected_best_of_n
from auq.training.study_config import (
    CONSERVATIVE,
    SELECTORS,
    Selector,
    StudyConfig,
    default_ns,
    default_policy_config,
)
from auq.training.study_pool import Pool, draw_pool
from auq.training.study_proxies import (
    FittedProxy,
    PairFeatures,
    Timer,
    accuracy,
    encode_pairs,
    encode_rows,
    fit_proxies,
    moments,
    objective_values,
)
from auq.training.study_result import CURVE_FIELDS, StudyResult, gao_fit, spearman
from auq.types import RewardPrediction
from auq.utils.console import get_logger, progress_bar

__all__ = [
    "CONSERVATIVE",
    "CURVE_FIELDS",
    "SELECTORS",
    "Pool",
    "Selector",
    "StudyConfig",
    "StudyResult",
    "default_ns",
    "default_policy_config",
    "draw_pool",
    "gao_fit",
    "run_study",
    "spearman",
]

logger = get_logger("auq.training")

#: seeds of the world's draws (the world's own seed varies per study seed; prompts use 4)
_SPLIT_SEEDS = {"train": 1, "calibration": 2, "test": 3}


def _selector_curves(
    selector: Selector,
    proxy: FittedProxy,
    pred: RewardPrediction,
    monitor_std: np.ndarray,
    pool: Pool,
    config: StudyConfig,
    key: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Curve rows of one selector, and its per-response early-warning row."""
    shape = pool.gold.shape
    objective = objective_values(pred, selector, proxy.temperature).reshape(shape)
    mean, std = (m.reshape(shape) for m in moments(pred, proxy.temperature))
    b, a = np.polyfit(mean.ravel(), pool.gold.ravel(), 1)  # gold ≈ a + b·proxy on the pool
    gap = a + b * mean - pool.gold  # (P, N): the proxy's over-estimate, gold units
    ns = list(config.ns)
    targets = {
        "gold": pool.gold,
        "proxy": mean,
        "std": std,
        "monitor_std": monitor_std,
        "gap": gap,
        "sentences": pool.sentences,
        "stock": pool.stock,
    }
    expected = {k: expected_best_of_n(objective, v, ns) for k, v in targets.items()}
    kl = best_of_n_kl(objective, ns, pool.responses)
    bound = np.atleast_1d(best_of_n_kl_bound(np.asarray(ns)))
    rows = []
    for i, n in enumerate(ns):
        row = {**key, "selector": selector.name, "n": int(n), "kl": float(kl[i])}
        row["kl_bound"] = float(bound[i])
        row.update({k: float(v[i]) for k, v in expected.items()})
        rows.append({f: row[f] for f in CURVE_FIELDS})
    watched = std if np.ptp(std) > 0 else monitor_std
    warning = {
        **key,
        "selector": selector.name,
        "rho_responses": spearman(watched, gap),
        "rho_abs_responses": spearman(watched, np.abs(gap)),
        "a": float(a),
        "b": float(b),
        "std_source": "own" if watched is std else "heads",
    }
    return rows, warning


def _reliability(proxy: FittedProxy, pairs: PairFeatures, dataset: Any) -> dict[str, Any]:
    """Symmetrised labels and probabilities of held-out test pairs, before/after temperature."""
    pred = proxy.predict_pairs(pairs, dataset)
    before, y = symmetrize_probabilities(pred)
    after, _ = symmetrize_probabilities(torch.sigmoid(pred.logit.double() / proxy.temperature))
    return {"y_true": y, "prob_before": before, "prob_after": after}


def _merge_reliability(parts: list[dict[str, Any]], temperatures: list[float]) -> dict[str, Any]:
    out = {
        k: np.concatenate([p[k] for p in parts]) for k in ("y_true", "prob_before", "prob_after")
    }
    out["temperature"] = temperatures
    out["ece_before"] = expected_calibration_error(out["y_true"], out["prob_before"])
    out["ece_after"] = expected_calibration_error(out["y_true"], out["prob_after"])
    return out


def run_study(config: StudyConfig) -> StudyResult:
    """Run an over-optimisation study (see the module docstring).

    Parameters
    ----------
    config : StudyConfig

    Returns
    -------
    StudyResult
        Curves, realised noise, costs, reliability data, early-warning rows; see
        :class:`~auq.training.study_result.StudyResult`.
    """
    if not isinstance(config, StudyConfig):
        raise TypeError(f"config must be a StudyConfig, got {type(config).__name__}")
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _run(config)
    finally:
        torch.set_num_threads(threads)


def _run(config: StudyConfig) -> StudyResult:
    from auq.utils.defaults import default_backbone_path

    started = time.perf_counter()
    backbone = Backbone.from_pretrained(
        config.backbone or default_backbone_path(), max_length=config.max_length
    )
    backbone.requires_grad_(False).eval()  # frozen: its features are cached and shared
    result = StudyResult(config=config)
    reliability: dict[float, list] = {noise: [] for noise in config.label_noises}
    temperatures: dict[float, list[float]] = {noise: [] for noise in config.label_noises}
    pools = []
    bar = progress_bar(
        total=len(config.seeds) * len(config.label_noises),
        enabled=config.progress,
        desc="over-optimisation study",
    )
    for seed in config.seeds:
        pool = draw_pool(World(seed), config)
        flat_p, flat_r = pool.flat()
        timer = Timer()
        pool_phi, truncation = encode_rows(backbone, flat_p, flat_r, config.progress, "pool")
        backbone_seconds = timer.elapsed()
        pool.stats["backbone_seconds"], pool.stats["backbone_cpu_seconds"] = backbone_seconds
        pool.stats["n_rm_truncated"] = int(truncation.n_response_truncated)
        pools.append(pool.stats)
        for noise in config.label_noises:
            world = World(seed, label_noise=noise)
            key = {"seed": seed, "label_noise": noise}
            splits = {
                name: world.preference_dataset(n, seed=_SPLIT_SEEDS[name], region="train")
                for name, n in (
                    ("train", config.n_train),
                    ("calibration", config.n_calibration),
                    ("test", config.n_test),
                )
            }
            result.noise += [{**key, "split": k, **label_summary(v)} for k, v in splits.items()]
            pairs = {
                k: encode_pairs(backbone, v, config.progress, f"{k} pairs")
                for k, v in splits.items()
            }
            proxies = fit_proxies(config, seed, splits, pairs, backbone.hidden_size)
            scored = {}
            for name, proxy in proxies.items():
                scored[name], seconds = proxy.score(pool_phi, flat_p, flat_r, config.progress)
                result.costs.append(_cost_row(key, proxy, seconds, backbone_seconds))
                result.fits.append(_fit_row(key, proxy, pairs, splits))
            costs = [c for c in result.costs if _same(c, key)]
            single = next((c for c in costs if c["proxy"] == "single"), None)
            for c in costs:  # one reward model's cost: the single head, else one backbone pass
                for unit, i in (("", 0), ("_cpu", 1)):
                    base = single[f"score{unit}_seconds"] if single else backbone_seconds[i]
                    c[f"score_ratio{unit}"] = c[f"score{unit}_seconds"] / base
            heads = proxies["heads"]
            _, monitor = moments(scored["heads"], heads.temperature)
            monitor = monitor.reshape(pool.gold.shape)
            for name in config.selectors:
                selector = SELECTORS[name]
                rows, warning = _selector_curves(
                    selector,
                    proxies[selector.proxy],
                    scored[selector.proxy],
                    monitor,
                    pool,
                    config,
                    key,
                )
                result.curves += rows
                result.early_warning.append(warning)
            reliability[noise].append(_reliability(heads, pairs["test"], splits["test"]))
            temperatures[noise].append(heads.temperature)
            bar.update(1)
    bar.close()
    result.reliability = {
        noise: _merge_reliability(parts, temperatures[noise])
        for noise, parts in reliability.items()
    }
    result.meta = {
        "pools": pools,
        "backbone": config.backbone or "packaged all-MiniLM-L6-v2",
        "feature_dim": backbone.hidden_size,
        "policy_config": config.resolved_policy_config.to_dict(),
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    return result


def _same(row: dict[str, Any], key: dict[str, Any]) -> bool:
    return row["seed"] == key["seed"] and row["label_noise"] == key["label_noise"]


def _cost_row(
    key: dict, proxy: FittedProxy, seconds: tuple[float, float], backbone: tuple[float, float]
) -> dict:
    """Seconds (wall, and process CPU) to fit the proxy and to score the pool with it alone.

    A proxy on the shared features is charged the shared backbone pass plus its head.
    """
    shared = backbone if proxy.shares_backbone else (0.0, 0.0)
    return {
        **key,
        "proxy": proxy.name,
        "n_members": proxy.n_members,
        "shared_backbone": proxy.shares_backbone,
        "fit_seconds": proxy.fit_seconds[0],
        "fit_cpu_seconds": proxy.fit_seconds[1],
        "backbone_seconds": shared[0],
        "head_seconds": seconds[0] if proxy.shares_backbone else 0.0,
        "score_seconds": seconds[0] + shared[0],
        "score_cpu_seconds": seconds[1] + shared[1],
    }


def _fit_row(key: dict, proxy: FittedProxy, pairs: dict, splits: dict) -> dict:
    """Temperature and accuracy (the chosen response's mean reward higher) per split.

    A deep ensemble is measured on the calibration pairs only (it predicted them to
    calibrate): its train and test accuracy would cost K more backbone passes each (NaN).
    """
    row = {**key, "proxy": proxy.name, "temperature": proxy.temperature}
    for split in ("train", "calibration", "test"):
        if split == "calibration" and proxy.calibration_prediction is not None:
            row[f"accuracy_{split}"] = accuracy(proxy.calibration_prediction)
        elif proxy.shares_backbone:
            row[f"accuracy_{split}"] = accuracy(proxy.predict_pairs(pairs[split], splits[split]))
        else:
            row[f"accuracy_{split}"] = math.nan
    return row
