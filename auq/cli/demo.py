"""The main job on the embedded default: a reward over-optimisation study with an HTML report.

Build the testbed's synthetic world (known gold reward), train a proxy reward-model
ensemble on its preference pairs with the packaged MiniLM backbone, calibrate it,
run best-of-n from the world's reference policy with the plain and with
conservative objectives, and write a report folder: ``index.html`` with the
figures (PNGs beside it) and the summary table, and the study's JSON
(:func:`auq.training.run_study` does the work, :mod:`auq.cli.report` the page).

The output folder is checked before anything is computed. An existing, non-empty
folder is refused unless ``overwrite`` is set; then the report's files in it are
replaced and any other file is left alone.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from auq.cli.errors import CliError, one_line
from auq.cli.inputs import OutputDir
from auq.cli.report import INDEX, summary_lines, write_report
from auq.testbed.sft import PolicyConfig
from auq.training.study_config import StudyConfig, default_policy_config
from auq.utils.threads import cpu_threads

__all__ = [
    "DEFAULT_OUT",
    "DEMO_SELECTORS",
    "FAST",
    "FULL",
    "DemoConfig",
    "Preset",
    "check_demo",
    "run_demo",
    "study_config",
]

DEFAULT_OUT = "auq-demo-report"

#: the demo's selectors: one reward model, the ensemble mean, two conservative objectives
#: on the ensemble (Coste et al.'s uwo λ = 0.5 and mean − std), and the Laplace posterior
DEMO_SELECTORS = ("single", "mean", "uwo_0.5", "lcb", "laplace")


@dataclass(frozen=True)
class Preset:
    """Sizes of one demo run (see :data:`FULL` and :data:`FAST`)."""

    label_noises: tuple[float, ...]
    n_train: int
    n_calibration: int
    n_test: int
    n_prompts: int
    pool_size: int
    members: int
    policy_steps: int
    policy_pairs: int


#: the default demo (≤ 10 minutes on 2 CPU cores, reference policy trained included)
FULL = Preset(
    label_noises=(0.25, 0.0),
    n_train=1000,
    n_calibration=500,
    n_test=500,
    n_prompts=32,
    pool_size=128,
    members=8,
    policy_steps=600,
    policy_pairs=20_000,
)
#: ``--fast`` (≤ 2 minutes on 2 CPU cores)
FAST = Preset(
    label_noises=(0.25,),
    n_train=300,
    n_calibration=150,
    n_test=150,
    n_prompts=8,
    pool_size=32,
    members=8,
    policy_steps=250,
    policy_pairs=4000,
)


@dataclass
class DemoConfig:
    """What ``auq demo`` runs; a size left at None takes the preset's value.

    Parameters
    ----------
    out : str
        The report folder (created; see the module docstring for an existing one).
    overwrite : bool
        Write into an existing, non-empty ``out``.
    fast : bool
        The :data:`FAST` preset instead of :data:`FULL`.
    seed : int
        The world's, the policy's and the proxies' seed.
    backbone : str, optional
        HF name or path of the proxies' backbone (default: the packaged MiniLM).
    label_noises, selectors : sequence, optional
        Label-flip rates and selector names (see :data:`auq.training.SELECTORS`).
    n_train, n_calibration, n_test, n_prompts, pool_size, members : int, optional
        Study sizes (see :class:`~auq.training.StudyConfig`; ``members`` is ``n_heads``).
    policy_steps, policy_pairs : int, optional
        SFT steps and training pairs of the reference policy.
    max_new_tokens : int, optional
        Tokens per sampled response at most (default: the policy's own limit).
    threads : int
        torch CPU threads of the run (restored afterwards). 1 by default: on the shared
        2-core machine the demo was tuned on, the policy sampled 10× faster on one
        thread than on two, and MiniLM's features came no slower.
    progress : bool or None
        Progress bars (None: only on a terminal). Stage lines are printed regardless.
    """

    out: str = DEFAULT_OUT
    overwrite: bool = False
    fast: bool = False
    seed: int = 0
    backbone: str | None = None
    label_noises: Sequence[float] | None = None
    selectors: Sequence[str] | None = None
    n_train: int | None = None
    n_calibration: int | None = None
    n_test: int | None = None
    n_prompts: int | None = None
    pool_size: int | None = None
    members: int | None = None
    policy_steps: int | None = None
    policy_pairs: int | None = None
    max_new_tokens: int | None = None
    threads: int = 1
    progress: bool | None = None

    def resolved(self, name: str):
        """The value of a size, the preset's when not set."""
        value = getattr(self, name)
        return getattr(FAST if self.fast else FULL, name) if value is None else value


def _policy_config(config: DemoConfig) -> PolicyConfig:
    base = default_policy_config()
    steps, pairs = config.resolved("policy_steps"), config.resolved("policy_pairs")
    return dataclasses.replace(
        base,
        steps=steps,
        n_train=pairs,
        warmup_steps=min(base.warmup_steps, steps // 10),
        seed=config.seed,
    )


def study_config(config: DemoConfig) -> StudyConfig:
    """The :class:`StudyConfig` of a demo config (``ValueError`` on a bad value)."""
    return StudyConfig(
        seeds=(config.seed,),
        label_noises=tuple(config.resolved("label_noises")),
        n_train=config.resolved("n_train"),
        n_calibration=config.resolved("n_calibration"),
        n_test=config.resolved("n_test"),
        n_prompts=config.resolved("n_prompts"),
        pool_size=config.resolved("pool_size"),
        selectors=tuple(DEMO_SELECTORS if config.selectors is None else config.selectors),
        n_heads=config.resolved("members"),
        backbone=config.backbone,
        policy_config=_policy_config(config),
        max_new_tokens=config.max_new_tokens,
        num_threads=config.threads,
        progress=config.progress,
    )


def _check_backbone(backbone: str | None) -> str:
    """The backbone's path or name, its config read (no weights) to fail early."""
    from transformers import AutoConfig

    from auq.utils.defaults import default_backbone_path

    name = backbone or str(default_backbone_path())
    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:  # not found, not a model, offline hub
        raise CliError(f"cannot load the backbone {name!r}: {one_line(err)}") from err
    return name


def check_demo(config: DemoConfig) -> tuple[OutputDir, StudyConfig, str]:
    """Everything checked before any compute: the output folder, the sizes, the backbone."""
    if importlib.util.find_spec("matplotlib") is None:
        raise CliError("auq demo draws its figures with matplotlib: pip install 'auq[plot]'")
    out = OutputDir(config.out, option="--out")
    if out.path.is_dir() and any(out.path.iterdir()) and not config.overwrite:
        raise CliError(
            f"--out {config.out!r} exists and is not empty; pass --overwrite to write the "
            "report into it (its report files are replaced), or choose another --out"
        )
    try:
        study = study_config(config)
    except ValueError as err:
        raise CliError(one_line(err)) from err
    return out, study, _check_backbone(config.backbone)


class _StageLines(logging.Handler):
    """Print auq's INFO log lines (the study's stages) as they come, with the time so far."""

    def __init__(self, start: float) -> None:
        super().__init__(logging.INFO)
        self.start = start

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:  # warnings have their own one-line handler
            _stage(self.start, record.getMessage())


def _stage(start: float, text: str) -> None:
    print(f"  [{time.perf_counter() - start:5.0f} s] {text}", flush=True)


@contextmanager
def _showing_stages(start: float, progress: bool | None) -> Iterator[None]:
    """Stage lines on stdout; with ``progress=False`` also no transformers progress bars."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("auq")
    handler, level = _StageLines(start), logger.level
    hf_bars = hf_logging.is_progress_bar_enabled()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    if progress is False:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        if hf_bars:
            hf_logging.enable_progress_bar()


def run_demo(config: DemoConfig | None = None):
    """Run the study and write the report; returns the :class:`StudyResult`."""
    from auq.testbed import World
    from auq.testbed.policy import load_or_train_policy
    from auq.training.overoptimization import run_study

    start = time.perf_counter()
    config = config or DemoConfig()
    out, study, backbone = check_demo(config)
    print(f"backbone: {backbone}", flush=True)
    noises = ", ".join(f"{v:g}" for v in study.label_noises)
    print(
        f"study ({'fast' if config.fast else 'full'} preset): seed {config.seed}, label noise "
        f"{noises}, {study.n_train} training pairs, {study.n_prompts} prompts × "
        f"{study.pool_size} responses, selectors {', '.join(study.selectors)}",
        flush=True,
    )
    print(f"report: {out.path.resolve() / INDEX} (written at the end)", flush=True)
    with _showing_stages(start, config.progress), cpu_threads(config.threads):
        _stage(start, "reference policy: from the cache, or trained now (first run only)")
        *_, policy = load_or_train_policy(
            World(config.seed),
            config=study.resolved_policy_config,
            cache_dir=study.cache_dir,
            progress=config.progress,
        )  # cached here so that its stage shows; run_study then reads the cache
        result = run_study(study)
        seconds = time.perf_counter() - start
        _stage(start, "writing the report")
        facts = [
            ("preset", "fast" if config.fast else "full"),
            ("backbone", backbone),
            ("torch threads", config.threads),
            (
                "reference policy cache",
                (f"trained by this run in {policy.train_seconds:.0f} s, " if policy.trained else "")
                + f"at {policy.path}",
            ),
        ]
        with out.writing() as path:
            index = write_report(result, path, facts=facts, seconds=seconds)
    print()
    print("\n".join(summary_lines(result)))
    print(f"done in {time.perf_counter() - start:.0f} s; report: {index.resolve()}")
    return result
