"""Calibration of every uncertainty method on the built-in data, before and after each calibrator.

For each method: accuracy, ECE (15 uniform bins), NLL and Brier on held-out
in-distribution pairs — before calibration and after each of the temperature,
Platt, isotonic and beta calibrators fitted on a separate calibration split — and
the OOD AUROC of its epistemic uncertainty (the responses' reward std, and the margin
std). Accuracy is computed on the pairs as given; ECE, NLL and Brier on the
swap-symmetrised held-out pairs (each pair as given and swapped).

Feature-level methods (heads, laplace, pyro) share one pass of the frozen backbone
over all splits; backbone-level ensembles (lora, partial, deep, mc_dropout) are
trained and scored on their own, so give them a GPU.

Goal: after temperature scaling, ECE <= 0.02 on >= 2,000 held-out pairs for the
head ensemble and the Laplace head.

    python benchmarks/bench_calibration.py                  # heads, laplace, pyro; 2,000 test pairs
    python benchmarks/bench_calibration.py --quick          # smoke run for CI
    python benchmarks/bench_calibration.py --methods heads,laplace,lora --out-dir benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _common import device_name

import auq
from auq.calibration import CALIBRATORS, make_calibrator
from auq.data.builtin import gold_ceiling, load_builtin_preferences
from auq.heads import EnsembleHead, LaplaceHead
from auq.metrics import calibration_report, ood_auroc
from auq.utils.defaults import default_backbone_path

FEATURE_METHODS = ("heads", "laplace", "pyro")


def _feature_head(uq: str, d: int, k: int, quick: bool):
    if uq == "heads":
        return EnsembleHead(d, n_members=k)
    if uq == "laplace":
        return LaplaceHead(d)
    from auq.heads import PyroHead

    return PyroHead(d, guide="lowrank", num_steps=100 if quick else 1500)


def _metrics(pred: auq.PreferencePrediction) -> dict[str, float]:
    """Accuracy on the pairs; ECE/NLL/Brier on the swap-symmetrised pairs ("chosen wins")."""
    report = calibration_report(None, pred)
    return {k: float(report[k]) for k in ("accuracy", "ece", "nll", "brier")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=None, help="HF name or path (default: MiniLM)")
    parser.add_argument("--methods", default=",".join(FEATURE_METHODS))
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--n-cal", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--n-ood", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2, help="for backbone-level ensembles")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI smoke tests")
    parser.add_argument("--out-dir", default=None, help="write JSON + reliability PNG here")
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.n_cal, args.n_test, args.n_ood = 60, 40, 60, 30
    torch.manual_seed(0)
    backbone = args.backbone or str(default_backbone_path())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    total = args.n_train + args.n_cal + args.n_test
    data = load_builtin_preferences(total, seed=0)
    train, rest = data.split(test_size=args.n_cal + args.n_test, seed=0)
    cal, test = rest.split(test_size=args.n_test, seed=0)
    ood = load_builtin_preferences(args.n_ood, seed=1, domain="ood")
    splits = {"train": train, "cal": cal, "test": test, "ood": ood}

    predictions: dict[str, dict[str, auq.PreferencePrediction]] = {}
    feature_methods = [m for m in methods if m in FEATURE_METHODS]
    if feature_methods:  # one backbone pass shared by every feature-level head
        rm = auq.RewardModel.from_backbone(
            backbone, n_members=1, max_length=args.max_length, device=args.device
        )
        feats = {name: rm.features(ds, progress=True) for name, ds in splits.items()}
        for uq in feature_methods:
            head = _feature_head(uq, rm.backbone.hidden_size, args.members, args.quick)
            head = head.to(args.device)
            if uq == "heads":
                head.fit(*feats["train"], eval_pairs=feats["cal"], progress=False)
            else:
                head.fit(*feats["train"])
            predictions[uq] = {
                name: head.predict_pairs(*feats[name]).cpu() for name in ("cal", "test", "ood")
            }
            print(f"fitted {uq}", flush=True)
    for uq in (m for m in methods if m not in FEATURE_METHODS):
        count = {"n_passes" if uq == "mc_dropout" else "n_members": args.members}
        rm = auq.RewardModel.from_backbone(
            backbone, uq=uq, max_length=args.max_length, device=args.device, **count
        )
        rm.fit(train, eval_dataset=cal, epochs=args.epochs, progress=False)
        predictions[uq] = {name: rm.predict(splits[name]) for name in ("cal", "test", "ood")}
        print(f"fitted {uq}", flush=True)

    results = []
    for uq, preds in predictions.items():
        test_pred = preds["test"]
        row = {"method": uq, "before": _metrics(test_pred)}
        for name in CALIBRATORS:
            calibrator = make_calibrator(name).fit(preds["cal"])
            row[name] = _metrics(calibrator.calibrate(test_pred))
            if name == "temperature":
                row["temperature"]["T"] = float(calibrator.temperature_)
        # OOD detection by the responses' own std (the default) and by the margin std
        row["ood_auroc"] = float(ood_auroc(test_pred, preds["ood"]))
        row["ood_auroc_margin_std"] = float(ood_auroc(test_pred, preds["ood"], score="margin_std"))
        results.append(row)

    ceiling = gold_ceiling(test)
    print()
    print(
        f"backbone {backbone} on {args.device}: {len(train)} train / {len(cal)} calibration / "
        f"{len(test)} test pairs (metrics on {2 * len(test)} swap-symmetrised), "
        f"{len(ood)} OOD pairs; gold ceiling {ceiling:.3f}"
    )
    print(
        "| method     | calibrator  | accuracy |    ECE |    NLL |  Brier "
        "| OOD AUROC (responses' std / margin std) |"
    )
    print("|------------|-------------|----------|--------|--------|--------|" + "-" * 41 + "|")
    for row in results:
        for stage in ("before", *CALIBRATORS):
            m = row[stage]
            auroc = (
                f"{row['ood_auroc']:.3f} / {row['ood_auroc_margin_std']:.3f}"
                if stage == "before"
                else ""
            )
            print(
                f"| {row['method']:<10} | {stage:<11} | {m['accuracy']:8.3f} | {m['ece']:.4f} "
                f"| {m['nll']:.4f} | {m['brier']:.4f} | {auroc:<39} |"
            )
    for row in results:
        if row["method"] in ("heads", "laplace"):
            ece = row["temperature"]["ece"]
            verdict = "met" if ece <= 0.02 and len(test) >= 2000 else "NOT met"
            print(
                f"goal ECE <= 0.02 after temperature scaling, {row['method']}: "
                f"{ece:.4f} on {len(test)} pairs -> {verdict}"
            )

    if args.out_dir:
        from auq.plotting import plot_calibration_comparison

        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "bench_calibration",
            "device": device_name(args.device),
            "torch": torch.__version__,
            "backbone": "all-MiniLM-L6-v2" if args.backbone is None else args.backbone,
            "n_train": len(train),
            "n_cal": len(cal),
            "n_test": len(test),
            "n_ood": len(ood),
            "gold_ceiling": ceiling,
            "rows": results,
        }
        (out / "bench_calibration.json").write_text(json.dumps(payload, indent=2))
        first = next(iter(predictions))
        test_pred = predictions[first]["test"]
        calibrator = make_calibrator("temperature").fit(predictions[first]["cal"])
        plot_calibration_comparison(
            None,
            test_pred,
            calibrator.calibrate(test_pred),
            labels=(f"{first}: before", f"{first}: temperature"),
            save_path=out / "bench_calibration_reliability.png",
        )
        print(f"wrote {out / 'bench_calibration.json'} and the reliability diagram")


if __name__ == "__main__":
    main()
