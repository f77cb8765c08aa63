"""What an over-optimisation study measured, and the numbers read from it.

:class:`StudyResult` holds plain rows (lists of dicts, strict JSON) and derives the
summary from them, so a result loaded back from JSON summarises the same:

* :meth:`StudyResult.summary` — per (selector, label noise): gold at the largest n
  and at the peak (mean ± std over seeds), the Gao et al. (2022) fit and the early
  warning (rank correlations of the pick's epistemic std with the proxy's
  over-estimate of gold);
* :meth:`StudyResult.coste_ordering` — whether conservative objectives beat the
  ensemble mean, which beats a single model (Coste et al. 2023), at the largest n.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from auq.training.study_config import CONSERVATIVE, SELECTORS, StudyConfig

__all__ = ["CURVE_FIELDS", "StudyResult", "gao_fit", "spearman"]

#: columns of every curve row (see :func:`~auq.training.run_study`)
CURVE_FIELDS = (
    "seed", "label_noise", "selector", "n", "kl", "kl_bound", "gold", "proxy", "std",
    "monitor_std", "gap", "sentences", "stock",
)  # fmt: skip
_FORMAT = "auq.overoptimization_study"
_VERSION = 1


def gao_fit(d: Any, gain: Any) -> dict[str, float]:
    """Least-squares fit of ``gain = d·(α − β·d)`` without intercept (Gao et al. 2022).

    Parameters
    ----------
    d : array-like, shape (M,)
        √KL of each point.
    gain : array-like, shape (M,)
        gold(n) − gold(1) of each point.

    Returns
    -------
    dict
        ``alpha``, ``beta``, ``r2`` (1 − SS_res / SS_tot about the mean gain; can be
        negative for a no-intercept fit), ``d_peak`` = α / (2β) (the √KL of the fitted
        peak; NaN unless β > 0), ``n_points``. NaN everywhere with fewer than two
        distinct d > 0.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    y = np.asarray(gain, dtype=np.float64).ravel()
    if d.shape != y.shape:
        raise ValueError(f"d and gain must have the same length, got {d.shape} and {y.shape}")
    nan = {"alpha": math.nan, "beta": math.nan, "r2": math.nan, "d_peak": math.nan}
    if len(np.unique(d[d > 0])) < 2:
        return {**nan, "n_points": len(d)}
    design = np.stack([d, -(d**2)], axis=1)  # (M, 2)
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ np.array([alpha, beta])
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / total if total > 0 else math.nan
    peak = alpha / (2 * beta) if beta > 0 else math.nan
    return {
        "alpha": float(alpha),
        "beta": float(beta),
        "r2": r2,
        "d_peak": float(peak),
        "n_points": len(d),
    }


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation of two (M,) arrays; NaN when either is constant or M < 3."""
    from scipy.stats import spearmanr

    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; NaN for one value) of finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def _clean(value: Any) -> Any:
    """Strict-JSON form: NaN/inf → None, arrays → lists, tuples → lists, dict keys → str."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _restore(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """None → NaN in float columns of loaded rows."""
    return [{k: math.nan if v is None else v for k, v in row.items()} for row in rows]


@dataclass
class StudyResult:
    """Everything an over-optimisation study measured (see :func:`~auq.training.run_study`).

    Attributes
    ----------
    config : StudyConfig
    curves : list of dict
        One row per (seed, label_noise, selector, n) with :data:`CURVE_FIELDS`: the
        expected ``gold``, ``proxy`` (the selector's own mean reward, calibrated),
        ``std`` (its epistemic std; 0 for ``single``), ``monitor_std`` (the heads
        ensemble's std), ``gap`` (the proxy's over-estimate of gold in gold units,
        ``a + b·proxy − gold`` with ``gold ≈ a + b·proxy`` fitted on the pool),
        ``sentences`` and ``stock`` (sentences and stock phrases) of the pick, the
        plug-in ``kl`` (nats, identical responses merged) and the bound ``kl_bound``.
    noise : list of dict
        Realised label noise per (seed, label_noise, split): ``label_summary``'s counts.
    costs : list of dict
        Per (seed, label_noise, proxy): ``fit_seconds``, ``score_seconds`` (the pool
        scored by this proxy alone: the shared backbone pass plus its head, or its
        own backbones), ``score_ratio`` (to the single reward model's), the parts
        (``backbone_seconds``, ``head_seconds``), and the same in process CPU seconds
        (``fit_cpu_seconds``, ``score_cpu_seconds``, ``score_ratio_cpu``: robust to
        other load on a shared machine).
    reliability : dict
        label noise → ``y_true``, ``prob_before``, ``prob_after`` (ndarrays, test pairs
        of every seed, swap-symmetrised), ``temperature`` (per seed), ``ece_before``,
        ``ece_after`` for the heads ensemble.
    early_warning : list of dict
        Per (seed, label_noise, selector): ``rho_responses``, the Spearman correlation
        over every pooled response of its epistemic std with its ``gap``; ``a``, ``b``
        of the gap's linear map; ``std_source``.
    fits : list of dict
        Per (seed, label_noise, proxy): ``temperature`` and ``accuracy_<split>`` (the
        chosen response's mean reward higher) on the train, calibration and test
        pairs (a deep ensemble: calibration only, NaN for the others).
    meta : dict
        Pool statistics, reference policies, timings, versions.
    """

    config: StudyConfig
    curves: list[dict[str, Any]] = field(default_factory=list)
    noise: list[dict[str, Any]] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)
    reliability: dict[float, dict[str, Any]] = field(default_factory=dict)
    early_warning: list[dict[str, Any]] = field(default_factory=list)
    fits: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- reading the curves --------------------------------------------------------
    def curve(self, selector: str, label_noise: float, seed: int | None = None) -> dict:
        """Columns of one selector's curve(s): each field → ndarray (rows ordered by seed, n)."""
        rows = [
            r
            for r in self.curves
            if r["selector"] == selector
            and r["label_noise"] == label_noise
            and (seed is None or r["seed"] == seed)
        ]
        if not rows:
            raise ValueError(
                f"no curve for selector={selector!r}, label_noise={label_noise!r}, seed={seed!r}; "
                f"selectors: {list(self.config.selectors)}, label_noises: "
                f"{list(self.config.label_noises)}, seeds: {list(self.config.seeds)}"
            )
        rows.sort(key=lambda r: (r["seed"], r["n"]))
        return {k: np.asarray([r[k] for r in rows]) for k in CURVE_FIELDS}

    def _seed_curves(self, selector: str, noise: float) -> list[dict[str, np.ndarray]]:
        return [self.curve(selector, noise, s) for s in self.config.seeds]

    # -- summary ---------------------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        """One row per (selector, label_noise), in config order.

        Returns
        -------
        list of dict
            ``gold_n1``, ``gold_n_max`` ± ``gold_n_max_std``, ``peak_gold`` ±
            ``peak_gold_std``, ``peak_n`` ± ``peak_n_std`` (over seeds; std NaN with one
            seed); ``proxy_n_max``; ``gao_alpha``, ``gao_beta``, ``gao_r2``,
            ``gao_kl_peak`` (the fitted peak's KL) from all seeds' points pooled, x = √kl;
            ``warning_rho_n`` (Spearman over n of the pick's std with its gap, mean over
            seeds), ``warning_rho_responses`` (over pooled responses, mean over seeds),
            ``warning_std_source``.
        """
        out = []
        n_max = max(self.config.ns)
        for noise in self.config.label_noises:
            for name in self.config.selectors:
                out.append(self._summary_row(name, noise, n_max))
        return out

    def _summary_row(self, name: str, noise: float, n_max: int) -> dict[str, Any]:
        curves = self._seed_curves(name, noise)
        at_max = [float(c["gold"][c["n"] == n_max][0]) for c in curves]
        peaks = [float(c["gold"].max()) for c in curves]
        peak_ns = [float(c["n"][int(np.argmax(c["gold"]))]) for c in curves]
        d = np.concatenate([np.sqrt(c["kl"]) for c in curves])
        gain = np.concatenate([c["gold"] - c["gold"][0] for c in curves])  # ns start at 1
        fit = gao_fit(d, gain)
        source = "own" if any(np.ptp(c["std"]) > 0 for c in curves) else "heads"
        std_key = "std" if source == "own" else "monitor_std"
        rho_n = [spearman(c[std_key], c["gap"]) for c in curves]
        rho_r = [
            w["rho_responses"]
            for w in self.early_warning
            if w["selector"] == name and w["label_noise"] == noise
        ]
        row: dict[str, Any] = {"selector": name, "label_noise": noise, "n_max": n_max}
        row["proxy"] = SELECTORS[name].proxy
        row["gold_n1"] = _mean_std([float(c["gold"][0]) for c in curves])[0]
        row["gold_n_max"], row["gold_n_max_std"] = _mean_std(at_max)
        row["proxy_n_max"] = _mean_std([float(c["proxy"][-1]) for c in curves])[0]
        row["peak_gold"], row["peak_gold_std"] = _mean_std(peaks)
        row["peak_n"], row["peak_n_std"] = _mean_std(peak_ns)
        row["gao_alpha"], row["gao_beta"], row["gao_r2"] = fit["alpha"], fit["beta"], fit["r2"]
        row["gao_kl_peak"] = fit["d_peak"] ** 2
        row["warning_rho_n"] = _mean_std(rho_n)[0]
        row["warning_rho_responses"] = _mean_std(rho_r)[0]
        row["warning_std_source"] = source
        row["n_seeds"] = len(curves)
        return row

    def coste_ordering(self, label_noise: float) -> dict[str, Any]:
        """Coste et al.'s ordering at the largest n: best conservative ≥ mean > single.

        Gold at n_max is averaged over seeds; the conservative objectives are
        :data:`CONSERVATIVE` among the study's selectors.

        Returns
        -------
        dict
            ``holds`` (bool, or None when a needed selector was not run),
            ``conservative_ge_mean``, ``mean_gt_single``, ``best_conservative`` (name),
            ``gold`` (selector → mean gold at n_max), ``n_max``, ``label_noise``,
            ``seeds_holding`` (seeds where the ordering holds on that seed's curves).
        """
        if label_noise not in self.config.label_noises:
            raise ValueError(
                f"label_noise={label_noise!r} was not studied; studied: "
                f"{list(self.config.label_noises)}"
            )
        n_max = max(self.config.ns)
        names = [s for s in self.config.selectors if s in (*CONSERVATIVE, "mean", "single")]
        per_seed = {
            seed: {name: self._gold_at(name, label_noise, seed, n_max) for name in names}
            for seed in self.config.seeds
        }
        gold = {n: float(np.mean([per_seed[s][n] for s in self.config.seeds])) for n in names}
        out: dict[str, Any] = {"label_noise": label_noise, "n_max": n_max, "gold": gold}
        conservative = [s for s in CONSERVATIVE if s in gold]
        best = max(conservative, key=lambda s: gold[s]) if conservative else None
        has_mean, has_single = "mean" in gold, "single" in gold
        out["best_conservative"] = best
        out["conservative_ge_mean"] = (
            bool(gold[best] >= gold["mean"]) if best and has_mean else None
        )
        out["mean_gt_single"] = (
            bool(gold["mean"] > gold["single"]) if has_mean and has_single else None
        )
        out["n_seeds"] = len(per_seed)
        if best is None or not (has_mean and has_single):
            missing = [s for s in ("mean", "single") if s not in gold]
            missing += [] if best else ["a conservative selector"]
            out["holds"] = out["seeds_holding"] = None
            out["note"] = f"needs a conservative selector, 'mean' and 'single'; missing: {missing}"
            return out
        out["holds"] = out["conservative_ge_mean"] and out["mean_gt_single"]
        out["seeds_holding"] = sum(
            max(g[s] for s in conservative) >= g["mean"] > g["single"] for g in per_seed.values()
        )
        return out

    def _gold_at(self, selector: str, noise: float, seed: int, n: int) -> float:
        c = self.curve(selector, noise, seed)
        return float(c["gold"][c["n"] == n][0])

    # -- JSON --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON form (NaN written as null)."""
        return _clean(
            {
                "format": _FORMAT,
                "version": _VERSION,
                "config": self.config.to_dict(),
                "curves": self.curves,
                "noise": self.noise,
                "costs": self.costs,
                "reliability": {repr(float(k)): v for k, v in self.reliability.items()},
                "early_warning": self.early_warning,
                "fits": self.fits,
                "meta": self.meta,
            }
        )

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as strict JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyResult:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != _FORMAT:
            raise ValueError(
                f"not an over-optimisation study result (format={data.get('format')!r})"
            )
        reliability = {}
        for key, value in data.get("reliability", {}).items():
            item = dict(value)
            for name in ("y_true", "prob_before", "prob_after"):
                item[name] = np.asarray(item[name], dtype=np.float64)
            reliability[float(key)] = _restore([item])[0]
        return cls(
            config=StudyConfig.from_dict(data["config"]),
            curves=_restore(data["curves"]),
            noise=_restore(data["noise"]),
            costs=_restore(data["costs"]),
            reliability=reliability,
            early_warning=_restore(data["early_warning"]),
            fits=_restore(data["fits"]),
            meta=data.get("meta", {}),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> StudyResult:
        """Read a result written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
