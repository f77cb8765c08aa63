"""The ``auq`` command line.

A user error — a bad option, a missing or malformed file, a damaged model
directory, an output that cannot be written — prints one line,
``auq <command>: error: <message>``, on stderr and exits with status 2; ``--debug``
(before or after the command) shows the traceback instead. Ctrl-C exits with 130.
See :mod:`auq.cli.errors`.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from auq.cli.errors import report_failures

__all__ = ["build_parser", "demo_config", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``auq <command>: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def _at_least_two(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2, got {text!r}")
    return value


def _noise_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 0.5), got {text!r}")
    return value


def demo_config(args: argparse.Namespace):
    """The :class:`~auq.cli.demo.DemoConfig` of parsed ``auq demo`` options."""
    from auq.cli.demo import DemoConfig

    return DemoConfig(
        out=args.out,
        overwrite=args.overwrite,
        fast=args.fast,
        seed=args.seed,
        backbone=args.backbone,
        label_noises=args.label_noise,
        selectors=args.selectors,
        n_train=args.n_train,
        n_calibration=args.n_calibration,
        n_test=args.n_test,
        n_prompts=args.n_prompts,
        pool_size=args.pool_size,
        members=args.members,
        policy_steps=args.policy_steps,
        policy_pairs=args.policy_pairs,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads,
        progress=False if args.no_progress else None,  # None: only on a terminal
    )


def _demo(args: argparse.Namespace) -> int:
    from auq.cli.demo import run_demo

    run_demo(demo_config(args))
    return 0


def _add_demo(sub: argparse._SubParsersAction, debug: argparse.ArgumentParser) -> None:
    from auq.cli.demo import DEFAULT_OUT, DEMO_SELECTORS, FAST, FULL
    from auq.training.study_config import SELECTORS

    selectors = [name for name, s in SELECTORS.items() if s.proxy != "deep"]
    demo = sub.add_parser(
        "demo",
        parents=[debug],
        help="reward over-optimisation study on a synthetic world; writes an HTML report",
        description="Build a synthetic world with a known gold reward, train a proxy "
        "reward-model ensemble on its preference pairs (packaged MiniLM backbone), calibrate "
        "it, run best-of-n from a reference policy with the plain and with conservative "
        "objectives, and write index.html (figures, summary table) and study.json to --out. "
        "The reference policy is trained on first use and cached ($AUQ_CACHE_DIR, else "
        "~/.cache/auq).",
    )
    demo.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"the report folder (default ./{DEFAULT_OUT}); an existing, non-empty one needs "
        "--overwrite",
    )
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an existing, non-empty --out (its report files are replaced)",
    )
    demo.add_argument("--fast", action="store_true", help="the small preset")
    demo.add_argument("--seed", type=int, default=0, help="seed of the world, policy and proxies")
    demo.add_argument("--backbone", default=None, help="HF name or path (default: packaged MiniLM)")
    demo.add_argument(
        "--label-noise",
        type=_noise_rate,
        nargs="+",
        default=None,
        metavar="RATE",
        help=f"label-flip rates in [0, 0.5) (default {' '.join(map(str, FULL.label_noises))}; "
        f"--fast {' '.join(map(str, FAST.label_noises))})",
    )
    demo.add_argument(
        "--selectors",
        nargs="+",
        choices=selectors,
        default=None,
        metavar="NAME",
        help=f"best-of-n selectors (default {' '.join(DEMO_SELECTORS)}; choose from "
        f"{', '.join(selectors)})",
    )

    def size(flag: str, field: str, what: str, kind=_positive_int) -> None:
        demo.add_argument(
            flag,
            type=kind,
            default=None,
            metavar="N",
            help=f"{what} (default {getattr(FULL, field)}; --fast {getattr(FAST, field)})",
        )

    size("--n-train", "n_train", "training pairs of the proxies", _at_least_two)
    size("--n-calibration", "n_calibration", "calibration pairs", _at_least_two)
    size("--n-test", "n_test", "held-out pairs of the reliability diagram", _at_least_two)
    size("--n-prompts", "n_prompts", "prompts of the best-of-n pool")
    size("--pool-size", "pool_size", "responses per prompt (the largest n)")
    size("--members", "members", "heads of the ensemble, K", _at_least_two)
    size("--policy-steps", "policy_steps", "SFT steps of the reference policy")
    size("--policy-pairs", "policy_pairs", "SFT pairs of the reference policy")
    demo.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="tokens per sampled response at most (default: the reference policy's own limit)",
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="torch threads (default 1: on a shared 2-core machine one thread sampled the "
        "policy 10x faster than two)",
    )
    demo.add_argument(
        "--no-progress",
        action="store_true",
        help="hide progress bars (by default they show only on a terminal)",
    )
    demo.set_defaults(func=_demo)


def _calibrate(args: argparse.Namespace) -> int:
    from auq.cli.calibrate import calibrate_saved_model

    report = calibrate_saved_model(
        args.model_dir,
        args.data,
        method=args.method,
        out=args.out,
        calibration_fraction=args.calibration_fraction,
        seed=args.seed,
    )
    keys = ("accuracy", "ece", "nll", "brier")
    how = " (metrics on the pairs and their swaps)" if report["after"].get("symmetrized") else ""
    print(
        f"calibrated with {args.method} on {report['n_calibration']} pairs; "
        f"evaluated on {report['n_evaluation']} pairs{how}"
    )
    print(f"{'':8}" + "".join(f"{k:>10}" for k in keys))
    for stage in ("before", "after"):
        row = report[stage]
        values = (row.get(k) for k in keys)
        print(f"{stage:8}" + "".join(f"{'n/a' if v is None else f'{v:.4f}':>10}" for v in values))
    print(f"report and plots in {args.out}; calibrator stored in {args.model_dir}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from auq.cli.score import score_saved_model, summary_line

    summary = score_saved_model(
        args.model_dir,
        args.data,
        out=args.out,
        resume=args.resume,
        samples=args.samples,
        objective=args.objective,
        lam=args.lam,
        k=args.k,
        beta=args.beta,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        chunk_size=args.chunk_size,
        id_field=args.id_field,
        device=args.device,
        precision=args.precision,
        progress=False if args.no_progress else None,  # None: only on a terminal
    )
    if summary.rank == 0:
        print(summary_line(summary))
    return 0


def _add_score(sub: argparse._SubParsersAction, debug: argparse.ArgumentParser) -> None:
    from auq.objectives import OBJECTIVES
    from auq.scoring.engine import PRECISIONS

    score = sub.add_parser(
        "score",
        parents=[debug],
        help="score a JSONL/Parquet file of (prompt, response) rows with a saved reward model",
        description="Stream DATA (rows with 'prompt', 'response' and an optional id) through "
        "a saved reward model and write one row per input to --out: id, row, mean, std (and "
        "samples, reward). Chunks are written as they finish; --resume goes on after an "
        "interrupted run. Under torchrun / accelerate launch the chunks are shared by the "
        "processes and rank 0 merges their parts.",
    )
    score.add_argument("model_dir", metavar="MODEL_DIR", help="a directory from save_pretrained")
    score.add_argument(
        "data", metavar="DATA", help="JSONL file (or .parquet) with prompt and response fields"
    )
    score.add_argument(
        "--out", required=True, metavar="FILE", help="JSONL output, Parquet if it ends in .parquet"
    )
    score.add_argument(
        "--resume", action="store_true", help="go on after the rows an interrupted run wrote"
    )
    score.add_argument(
        "--samples", action="store_true", help="also write the S member/posterior rewards"
    )
    score.add_argument(
        "--objective", choices=OBJECTIVES, default=None, help="also write this penalised reward"
    )
    score.add_argument("--lam", type=_non_negative, default=0.5, help="λ of uwo (default 0.5)")
    score.add_argument("--k", type=_non_negative, default=1.0, help="k of lcb (default 1.0)")
    score.add_argument("--beta", type=_positive, default=1.0, help="β of effective (default 1.0)")
    score.add_argument(
        "--batch-size", type=_positive_int, default=None, help="texts per micro-batch at most"
    )
    score.add_argument(
        "--max-tokens", type=_positive_int, default=None, help="padded tokens per micro-batch"
    )
    score.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=4096,
        help="rows read, scored and written at a time (default 4096)",
    )
    score.add_argument(
        "--id-field", default="id", help="the field of the row ids (default id; else row numbers)"
    )
    score.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: each process's GPU when there is one, else cpu)",
    )
    score.add_argument("--precision", choices=PRECISIONS, default="auto")
    score.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    score.set_defaults(func=_score)


def _register(sub: argparse._SubParsersAction, debug: argparse.ArgumentParser, module: str) -> None:
    """Add the subcommand defined by ``auq.cli.<module>.add_parser(sub, debug)``."""
    import importlib

    importlib.import_module(f"auq.cli.{module}").add_parser(sub, debug)


#: commands defined in their own modules (each has ``add_parser(sub, debug)``), in help order
COMMAND_MODULES: tuple[str, ...] = (
    "evaluate",
    "serve",
    "train_rm",
    "dpo",
    "online_dpo",
    "best_of_n",
)


def build_parser() -> argparse.ArgumentParser:
    from auq.utils.metadata import package_version

    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error",
    )
    parser = _Parser(
        prog="auq",
        description="auq: uncertainty-aware, calibrated reward models for alignment.",
    )
    parser.add_argument("--version", action="version", version=f"auq {package_version()}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_demo(sub, debug)

    from auq.calibration import CALIBRATORS

    cal = sub.add_parser(
        "calibrate",
        parents=[debug],
        help="fit a calibrator for a saved reward model; report and plot before/after",
        description="Fit a calibrator of P(chosen > rejected) on part of DATA, write a "
        "before/after JSON report and reliability PNGs to --out, and store the calibrator "
        "with the model (calibrator.json in MODEL_DIR).",
    )
    cal.add_argument("model_dir", metavar="MODEL_DIR", help="a directory from save_pretrained")
    cal.add_argument(
        "data",
        metavar="DATA",
        help="JSONL file of pairs, or the built-in set: builtin, builtin:N, builtin-ood, "
        "builtin-ood:N (an existing file of that name is read as a file)",
    )
    cal.add_argument("--method", default="temperature", choices=sorted(CALIBRATORS))
    cal.add_argument("--out", required=True, metavar="DIR", help="where the report goes")
    cal.add_argument(
        "--calibration-fraction",
        type=_fraction,
        default=0.5,
        help="share of DATA used to fit the calibrator (the rest is for the report)",
    )
    cal.add_argument("--seed", type=int, default=0)
    cal.set_defaults(func=_calibrate)
    _add_score(sub, debug)
    for module in COMMAND_MODULES:
        _register(sub, debug, module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``auq``; returns the exit status (argparse's own errors raise ``SystemExit(2)``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return report_failures(f"auq {args.command}", lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
