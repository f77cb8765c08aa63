"""The ``auq`` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from auq.cli.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            n_train=args.n_train,
            n_eval=args.n_eval,
            n_test=args.n_test,
            n_ood=args.n_ood,
            n_members=args.members,
            hidden_size=args.hidden_size,
            epochs=args.epochs,
            seed=args.seed,
            backbone=args.backbone,
            save_to=args.save,
            progress=not args.no_progress,
        )
    )
    return 0


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
    print(
        f"calibrated with {args.method} on {report['n_calibration']} pairs; "
        f"evaluated on {report['n_evaluation']} swap-symmetrised pairs"
    )
    print(f"{'':8}" + "".join(f"{k:>10}" for k in keys))
    for stage in ("before", "after"):
        row = report[stage]
        print(f"{stage:8}" + "".join(f"{row.get(k, float('nan')):>10.4f}" for k in keys))
    print(f"report and plots in {args.out}; calibrator stored in {args.model_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from auq.utils.metadata import package_version

    parser = argparse.ArgumentParser(
        prog="auq",
        description="auq: uncertainty-aware, calibrated reward models for alignment.",
    )
    parser.add_argument("--version", action="version", version=f"auq {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train a head-ensemble reward model on the built-in data and report",
        description="Train a head-ensemble reward model on the built-in preference data "
        "(known gold reward) with the packaged MiniLM backbone; print held-out accuracy "
        "against the gold ceiling and an uncertainty summary.",
    )
    demo.add_argument("--backbone", default=None, help="HF name or path (default: packaged MiniLM)")
    demo.add_argument("--members", type=int, default=8, help="ensemble size K (default 8)")
    demo.add_argument("--hidden-size", type=int, default=None, help="MLP heads of this width")
    demo.add_argument("--epochs", type=int, default=40)
    demo.add_argument("--n-train", type=int, default=1200)
    demo.add_argument("--n-eval", type=int, default=300)
    demo.add_argument("--n-test", type=int, default=800)
    demo.add_argument("--n-ood", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--save", default=None, metavar="DIR", help="save the trained model here")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=_demo)

    from auq.calibration import CALIBRATORS

    cal = sub.add_parser(
        "calibrate",
        help="fit a calibrator for a saved reward model; report and plot before/after",
        description="Fit a calibrator of P(chosen > rejected) on part of DATA, write a "
        "before/after JSON report and reliability PNGs to --out, and store the calibrator "
        "with the model (calibrator.json in MODEL_DIR).",
    )
    cal.add_argument("model_dir", metavar="MODEL_DIR", help="a directory from save_pretrained")
    cal.add_argument("data", metavar="DATA", help="JSONL file of pairs, or builtin[:N]")
    cal.add_argument("--method", default="temperature", choices=sorted(CALIBRATORS))
    cal.add_argument("--out", required=True, metavar="DIR", help="where the report goes")
    cal.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.5,
        help="share of DATA used to fit the calibrator (the rest is for the report)",
    )
    cal.add_argument("--seed", type=int, default=0)
    cal.set_defaults(func=_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
