"""Every uncertainty method on the built-in data, one table from one run.

For each ``uq`` method: fit time, scoring time relative to one reward model (a
single linear head on the same backbone), held-out accuracy (with the gold-reward
ceiling of the same pairs), and the AUROC with which its epistemic uncertainty
(the std of the pair margin) separates out-of-distribution pairs from held-out
in-distribution pairs.

    python benchmarks/bench_methods.py                      # MiniLM, CPU-sized defaults
    python benchmarks/bench_methods.py --quick              # smoke run for CI
    python benchmarks/bench_methods.py --n-train 4000 --epochs 3 --device cuda \\
        --out benchmarks/results/bench_methods_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _common import device_name, median_time, synchronize

import auq
from auq.data.builtin import gold_ceiling, load_builtin_preferences
from auq.metrics import ood_auroc
from auq.utils.defaults import default_backbone_path

ALL_METHODS = ("heads", "laplace", "pyro", "mc_dropout", "lora", "partial", "deep")


def method_options(uq: str, k: int, quick: bool) -> dict:
    """The settings each method runs with (documented in the printed table's header)."""
    return {
        "heads": {"n_members": k},
        "laplace": {},
        "pyro": {"head_options": {"num_steps": 100 if quick else 1500, "guide": "lowrank"}},
        "mc_dropout": {"n_passes": k, "member_options": {"rate": 0.1}},
        "lora": {"n_members": k, "member_options": {"r": 4}},
        "partial": {"n_members": k, "member_options": {"n_top_layers": 2}},
        "deep": {"n_members": k},
    }[uq]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=None, help="HF name or path (default: MiniLM)")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--n-ood", type=int, default=300)
    parser.add_argument(
        "--epochs", type=int, default=1, help="epochs for methods that train the backbone"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI smoke tests")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.n_ood, args.repeats = 40, 24, 24, 1
    device = torch.device(args.device)
    backbone = args.backbone or str(default_backbone_path())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    data = load_builtin_preferences(args.n_train + args.n_test, seed=0)
    train, test = data.split(test_size=args.n_test, seed=0)
    train, val = train.split(test_size=0.15, seed=0)
    ood = load_builtin_preferences(args.n_ood, seed=1, domain="ood")
    texts = (test.prompts, test.chosen)

    reference = auq.RewardModel.from_backbone(
        backbone, n_members=1, max_length=args.max_length, device=device
    ).fit(train, epochs=1, progress=False)  # one reward model: a single linear head
    reference.score(*texts)  # warm-up
    base_time = median_time(lambda: reference.score(*texts), device, args.repeats)

    rows = []
    for uq in methods:
        rm = auq.RewardModel.from_backbone(
            backbone,
            uq=uq,
            max_length=args.max_length,
            device=device,
            **method_options(uq, args.members, args.quick),
        )
        fit_kwargs = {"epochs": args.epochs} if rm.trains_backbone else {}
        synchronize(device)
        start = time.perf_counter()
        rm.fit(train, eval_dataset=val, progress=False, **fit_kwargs)
        synchronize(device)
        fit_seconds = time.perf_counter() - start
        rm.score(*texts)  # warm-up
        score_seconds = median_time(lambda rm=rm: rm.score(*texts), device, args.repeats)
        pp, po = rm.predict(test), rm.predict(ood)
        row = {
            "method": uq,
            "fit_seconds": fit_seconds,
            "score_ratio": score_seconds / base_time,
            "accuracy": pp.accuracy(),
            "ood_auroc": ood_auroc(pp, po),  # the responses' own epistemic std
            "ood_auroc_margin_std": ood_auroc(pp, po, score="margin_std"),
            "samples": int(pp.margin_samples.shape[0]),
        }
        rows.append(row)
        print(
            f"{uq:<11} fit {fit_seconds:8.1f} s  score x{row['score_ratio']:.2f}  "
            f"acc {row['accuracy']:.3f}  OOD AUROC {row['ood_auroc']:.3f} (responses' std), "
            f"{row['ood_auroc_margin_std']:.3f} (margin std)",
            flush=True,
        )
        del rm
        if device.type == "cuda":
            torch.cuda.empty_cache()

    ceiling = gold_ceiling(test)
    print()
    print(
        f"backbone {backbone} on {device}; {len(train)} train / {len(val)} val / "
        f"{len(test)} test / {len(ood)} OOD pairs; K={args.members}; backbone-training "
        f"methods {args.epochs} epoch(s); gold ceiling on test {ceiling:.3f}"
    )
    print(f"one reward model scores {len(test)} texts in {base_time:.3f} s")
    print(
        f"| {'method':<11}| fit s   | score × 1 RM | accuracy | OOD AUROC responses' std "
        "| OOD AUROC margin std |"
    )
    print(f"|{'-' * 12}|---------|--------------|----------|{'-' * 26}|{'-' * 22}|")
    for r in rows:
        print(
            f"| {r['method']:<11}| {r['fit_seconds']:7.1f} | {r['score_ratio']:12.2f} | "
            f"{r['accuracy']:8.3f} | {r['ood_auroc']:24.3f} | {r['ood_auroc_margin_std']:20.3f} |"
        )
    if args.out:
        result = {
            "benchmark": "bench_methods",
            "device": device_name(device),
            "torch": torch.__version__,
            "n_train": len(train),
            "n_val": len(val),
            "n_test": len(test),
            "n_ood": len(ood),
            "members": args.members,
            "epochs": args.epochs,
            "gold_ceiling": ceiling,
            "reference_score_seconds": base_time,
            "rows": rows,
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
