"""What an over-optimisation study runs: :class:`StudyConfig` and the selector table.

A *selector* picks the best of n pooled responses by one proxy reward model under
one objective (:func:`auq.objectives.penalized_reward`). The table follows the two
papers the study reproduces:

===============  ==========  ==========  ===============================================
selector         proxy       objective   why
===============  ==========  ==========  ===============================================
``single``       1 head      mean        the plain reward model (Gao et al. 2022)
``mean``         K heads     mean        the ensemble's mean (Coste et al. 2023)
``wco``          K heads     wco         worst case over members (Coste)
``uwo_0.1``      K heads     uwo λ=0.1   uncertainty-weighted, light penalty
``uwo_0.5``      K heads     uwo λ=0.5   Coste's best-of-n setting
``uwo_1``        K heads     uwo λ=1     heavy penalty
``lcb``          K heads     lcb k=1     mean − one std
``laplace``      Laplace     lcb k=1     the closed-form posterior, same penalty
``laplace_mean`` Laplace     mean        its MAP reward, for the penalty's own effect
``pyro``         Pyro (SVI)  lcb k=1     a variational posterior, same penalty
``deep_mean``    deep K      mean        K fine-tuned MiniLMs (``deep_members > 0``)
``deep_uwo_0.5`` deep K      uwo λ=0.5   Coste's setting on the costly ensemble
===============  ==========  ==========  ===============================================

λ and k act on rewards in calibrated logit units (each proxy's rewards divided by
its temperature, ``calibration="temperature"``), so one λ means the same across
proxies; ``mean``, ``wco`` and ``lcb`` pick the same response at any positive
scale.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auq.testbed.policy import PolicyConfig

__all__ = [
    "CALIBRATIONS",
    "CONSERVATIVE",
    "PROXIES",
    "SELECTORS",
    "Selector",
    "StudyConfig",
    "default_ns",
    "default_policy_config",
]

#: proxy reward models a study can fit ("single" is one ensemble head)
PROXIES = ("single", "heads", "laplace", "pyro", "deep")
#: how proxies are calibrated before the objectives read them
CALIBRATIONS = ("temperature", "none")


@dataclass(frozen=True)
class Selector:
    """One way to pick the best of n: a proxy and an objective with its parameter.

    Attributes
    ----------
    name : str
    proxy : {"single", "heads", "laplace", "pyro", "deep"}
    objective : {"mean", "wco", "uwo", "lcb"}
    lam : float
        λ of ``"uwo"`` (on calibrated rewards).
    k : float
        k of ``"lcb"``.
    """

    name: str
    proxy: str
    objective: str
    lam: float = 0.0
    k: float = 1.0


SELECTORS: dict[str, Selector] = {
    s.name: s
    for s in (
        Selector("single", "single", "mean"),
        Selector("mean", "heads", "mean"),
        Selector("wco", "heads", "wco"),
        Selector("uwo_0.1", "heads", "uwo", lam=0.1),
        Selector("uwo_0.5", "heads", "uwo", lam=0.5),
        Selector("uwo_1", "heads", "uwo", lam=1.0),
        Selector("lcb", "heads", "lcb", k=1.0),
        Selector("laplace", "laplace", "lcb", k=1.0),
        Selector("laplace_mean", "laplace", "mean"),
        Selector("pyro", "pyro", "lcb", k=1.0),
        Selector("deep_mean", "deep", "mean"),
        Selector("deep_uwo_0.5", "deep", "uwo", lam=0.5),
    )
}
#: the conservative selectors of Coste et al.'s ordering (best of them vs mean vs single)
CONSERVATIVE = ("wco", "uwo_0.1", "uwo_0.5", "uwo_1", "lcb")


def default_ns(pool_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``pool_size``, and ``pool_size`` itself when it is no power of two."""
    ns = [1 << i for i in range(pool_size.bit_length()) if 1 << i <= pool_size]
    if ns[-1] != pool_size:
        ns.append(pool_size)
    return tuple(ns)


def default_policy_config() -> PolicyConfig:
    """The study's reference policy: half its SFT data from the world's ``"wide"`` region.

    With the testbed's default (``wide_fraction=0``) the policy writes 1–3 sentences
    only, where longer is better for gold too, so best-of-n has nothing to exploit.
    Half wide data (1–8 sentences, ``n_positions=256`` to fit them) lets the policy
    write the long answers that a proxy trained on short ones over-rates.
    """
    return PolicyConfig(wide_fraction=0.5, n_positions=256)


def _fail(name: str, expected: str, value: Any) -> None:
    raise ValueError(f"StudyConfig.{name} must be {expected}, got {value!r}")


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        _fail(name, f"an integer >= {minimum}", value)
    return int(value)


def _int_tuple(name: str, value: Any, minimum: int) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        _fail(name, f"a non-empty sequence of integers >= {minimum}", value)
    out = tuple(_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(value))
    if len(set(out)) != len(out):
        _fail(name, "free of repeats", value)
    return out


@dataclass
class StudyConfig:
    """Sizes and choices of an over-optimisation study (:func:`~auq.training.run_study`).

    Parameters
    ----------
    seeds : sequence of int
        One world (``World(seed)``), reference policy, pool and set of proxies per seed.
    label_noises : sequence of float
        Label-flip rates of the training and calibration pairs, each in [0, 0.5).
    n_train, n_calibration, n_test : int
        Preference pairs from the world's ``"train"`` region: to fit the proxies, to
        calibrate them (temperature), and to measure the heads ensemble's reliability
        before and after calibration. Same label noise in all three.
    n_prompts : int
        P prompts (the world's ``"train"`` region) of the best-of-n pool.
    pool_size : int
        N responses per prompt, drawn once from the reference policy; every curve is
        computed from this one pool in closed form.
    ns : sequence of int, optional
        Best-of-n sizes, increasing from 1, each at most pool_size; default
        :func:`default_ns`.
    selectors : sequence of str, optional
        Names from :data:`SELECTORS`; default all of them (the ``deep_*`` ones only
        with ``deep_members > 0``).
    n_heads : int
        K of the heads ensemble (≥ 2).
    deep_members : int
        K of a deep ensemble of fine-tuned backbones (0: none; else ≥ 2).
    deep_epochs : int
        Fine-tuning epochs of each deep member.
    backbone : str or Path, optional
        Feature backbone of every proxy (default: the packaged MiniLM).
    max_length : int
        Longest tokenised (prompt, response) the backbone reads.
    policy_config : PolicyConfig, optional
        The reference policy (default :func:`default_policy_config`).
    cache_dir : str or Path, optional
        Where the reference policies are cached (default ``$AUQ_CACHE_DIR`` / ``~/.cache/auq``).
    max_new_tokens : int, optional
        Tokens per sampled response at most (default: the policy's own limit).
    calibration : {"temperature", "none"}
        ``"temperature"`` divides each proxy's rewards by the temperature fitted on the
        calibration pairs before the objectives read them (λ then means the same for
        every proxy); ``"none"`` uses raw rewards.
    proxy_options : dict, optional
        Options per proxy name: constructor options of a feature-level head (e.g.
        ``{"pyro": {"num_steps": 300}}``, ``{"heads": {"init_scale": 1.0}}``), or
        training options of the deep ensemble (``{"deep": {"lr": 5e-5}}``).
    num_threads : int, optional
        torch CPU threads while the study runs (restored after); None keeps the
        current setting. On a busy machine 1 can be several times faster than more.
    progress : bool or None
        Progress bars (None: only on a terminal or in a notebook).
    """

    seeds: Sequence[int] = (0,)
    label_noises: Sequence[float] = (0.0, 0.25)
    n_train: int = 1000
    n_calibration: int = 500
    n_prompts: int = 16
    pool_size: int = 256
    ns: Sequence[int] | None = None
    selectors: Sequence[str] | None = None
    n_heads: int = 8
    deep_members: int = 0
    backbone: str | os.PathLike | None = None
    policy_config: PolicyConfig | None = None
    max_new_tokens: int | None = None
    progress: bool | None = None
    n_test: int = 500
    deep_epochs: int = 1
    max_length: int = 256
    cache_dir: str | os.PathLike | None = field(default=None, repr=False)
    calibration: str = "temperature"
    proxy_options: dict[str, dict[str, Any]] | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        self.seeds = _int_tuple("seeds", self.seeds, 0)
        self.label_noises = self._noises(self.label_noises)
        for name, minimum in (("n_train", 2), ("n_calibration", 2), ("n_test", 2)):
            setattr(self, name, _int(name, getattr(self, name), minimum))
        self.n_prompts = _int("n_prompts", self.n_prompts, 1)
        self.pool_size = _int("pool_size", self.pool_size, 1)
        self.ns = default_ns(self.pool_size) if self.ns is None else self._ns(self.ns)
        self.n_heads = _int("n_heads", self.n_heads, 2)
        self.deep_members = _int("deep_members", self.deep_members, 0)
        if self.deep_members == 1:
            _fail("deep_members", "0 (no deep ensemble) or an integer >= 2", 1)
        self.deep_epochs = _int("deep_epochs", self.deep_epochs, 1)
        self.max_length = _int("max_length", self.max_length, 8)
        self.selectors = self._selectors(self.selectors)
        for name in ("backbone", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                _fail(name, "None, a str or a path", value)
            if isinstance(value, os.PathLike):
                setattr(self, name, str(Path(value)))
        if self.policy_config is not None and not isinstance(self.policy_config, PolicyConfig):
            _fail("policy_config", "None or an auq.testbed.policy.PolicyConfig", self.policy_config)
        if self.num_threads is not None:
            self.num_threads = _int("num_threads", self.num_threads, 1)
        if self.max_new_tokens is not None:
            self.max_new_tokens = _int("max_new_tokens", self.max_new_tokens, 1)
        if self.progress is not None and not isinstance(self.progress, bool):
            _fail("progress", "True, False or None", self.progress)
        self.proxy_options = self._proxy_options(self.proxy_options)
        if self.calibration not in CALIBRATIONS:
            listed = ", ".join(repr(c) for c in CALIBRATIONS)
            raise ValueError(
                f"StudyConfig.calibration={self.calibration!r} is not supported; "
                f"valid choices: {listed}"
            )

    # -- validation ------------------------------------------------------------------
    @staticmethod
    def _noises(value: Any) -> tuple[float, ...]:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
            _fail("label_noises", "a non-empty sequence of numbers in [0, 0.5)", value)
        out = []
        for v in value:
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
            if not (ok and math.isfinite(float(v)) and 0 <= float(v) < 0.5):
                _fail("label_noises", "a non-empty sequence of numbers in [0, 0.5)", value)
            out.append(float(v))
        if len(set(out)) != len(out):
            _fail("label_noises", "free of repeats", value)
        return tuple(out)

    def _ns(self, value: Any) -> tuple[int, ...]:
        ns = _int_tuple("ns", value, 1)
        if ns[0] != 1 or list(ns) != sorted(ns) or ns[-1] > self.pool_size:
            _fail(
                "ns",
                f"increasing integers in [1, pool_size={self.pool_size}] starting at 1 "
                "(n = 1, the reference policy, is every curve's origin)",
                value,
            )
        return ns

    def _selectors(self, value: Any) -> tuple[str, ...]:
        valid = ", ".join(repr(s) for s in SELECTORS)
        if value is None:
            names = [s for s in SELECTORS if self.deep_members or SELECTORS[s].proxy != "deep"]
            return tuple(names)
        if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
            _fail("selectors", f"a non-empty sequence of names (valid: {valid})", value)
        unknown = [v for v in value if v not in SELECTORS]
        if unknown:
            raise ValueError(
                f"StudyConfig.selectors holds unknown name(s) {unknown!r}; valid choices: {valid}"
            )
        if len(set(value)) != len(value):
            _fail("selectors", "free of repeats", value)
        deep = [v for v in value if SELECTORS[v].proxy == "deep"]
        if deep and not self.deep_members:
            raise ValueError(
                f"StudyConfig.selectors names {deep} but StudyConfig.deep_members=0 fits no "
                "deep ensemble; set deep_members >= 2 (e.g. 5) or drop them"
            )
        return tuple(value)

    @staticmethod
    def _proxy_options(value: Any) -> dict[str, dict[str, Any]]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            _fail("proxy_options", "None or a dict of proxy name -> dict of options", value)
        unknown = [k for k in value if k not in PROXIES]
        if unknown:
            listed = ", ".join(repr(p) for p in PROXIES)
            raise ValueError(
                f"StudyConfig.proxy_options names unknown proxy(ies) {unknown!r}; "
                f"valid choices: {listed}"
            )
        for k, v in value.items():
            if not isinstance(v, dict) or not all(isinstance(o, str) for o in v):
                _fail(f"proxy_options[{k!r}]", "a dict of option name -> value", v)
        return {k: dict(v) for k, v in value.items()}

    # -- derived ---------------------------------------------------------------------
    @property
    def proxies(self) -> tuple[str, ...]:
        """Proxies to fit, in :data:`PROXIES` order: the selectors' and always ``"heads"``.

        The heads ensemble is always fitted: it supplies the reliability data and
        watches the single model's picks (its ``monitor_std``).
        """
        used = {SELECTORS[s].proxy for s in self.selectors} | {"heads"}
        return tuple(p for p in PROXIES if p in used)

    @property
    def resolved_policy_config(self) -> PolicyConfig:
        """``policy_config``, or :func:`default_policy_config` when None."""
        return self.policy_config or default_policy_config()

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON fields (``policy_config`` as its dict)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["policy_config"] = None if self.policy_config is None else self.policy_config.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        policy = data.get("policy_config")
        if isinstance(policy, dict):
            data["policy_config"] = PolicyConfig(**policy)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown StudyConfig field(s) {unknown}; known: {sorted(names)}")
        return cls(**data)
