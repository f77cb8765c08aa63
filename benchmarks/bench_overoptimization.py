"""Reward over-optimisation on the testbed world, and what uncertainty does about it.

One run. A :class:`~auq.testbed.World` has a known gold reward; its reference policy
(a tiny GPT-2 SFT'd on half short, half long answers) writes a pool of responses
per prompt; proxy reward models on MiniLM features are trained on the world's
short-answer preference pairs (where longer is better) with 0 % and 25 % label
noise; every selector picks the best of n from the pool, for n = 1 ... pool size,
in closed form (:func:`auq.training.expected_best_of_n`), and the gold reward of the
pick is read off (Gao et al. 2022; Coste et al. 2023). Reported:

* best-of-n per selector and noise: gold at n = 1, at n_max and at the peak (the n
  of the peak), mean ± std over seeds; the proxy's belief; sentences of the pick;
* the Gao fit ``gold(n) − gold(1) = d·(α − β·d)``, d = √KL (plug-in KL of the pool);
* the early warning: Spearman correlation of the pick's epistemic std with the
  proxy's over-estimate of gold (across n; across every pooled response);
* Coste et al.'s ordering at n_max (best conservative ≥ mean > single), per noise;
* cost vs protection: a second, smaller study on one seed adds a deep ensemble of
  ``--deep-members`` fine-tuned MiniLMs and compares its scoring cost (ratio to one
  reward model) and its gold at n_max with the heads ensemble and Laplace (one
  MiniLM pass + a head each). The deep members train ``--deep-epochs`` epoch(s):
  a CPU budget, not a tuned setting.

Everything is measured once, as it comes out; the world is not tuned to agree.

    python benchmarks/bench_overoptimization.py --out-dir benchmarks/results  # ~35 min, 2 cores
    python benchmarks/bench_overoptimization.py --quick --out-dir /tmp/o        # CI smoke run
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import torch
from _common import device_name

from auq.testbed.policy import PolicyConfig
from auq.training.overoptimization import StudyConfig, StudyResult, run_study
from auq.training.study_config import CONSERVATIVE, default_policy_config

DEEP_SELECTORS = (
    "single",
    "mean",
    "uwo_0.5",
    "laplace",
    "laplace_mean",
    "deep_mean",
    "deep_uwo_0.5",
)
QUICK_POLICY = PolicyConfig(
    n_layer=1, n_head=2, n_embd=16, n_positions=256, steps=4, batch_size=8, n_train=48,
    n_eval=0, wide_fraction=0.5,
)  # fmt: skip


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_ints, default=(0, 1, 2))
    parser.add_argument("--noises", type=_floats, default=(0.0, 0.25))
    parser.add_argument("--prompts", type=int, default=8, help="prompts of the pool")
    parser.add_argument("--pool", type=int, default=1024, help="responses per prompt")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-cal", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--deep-members", type=int, default=5, help="0 skips the deep study")
    parser.add_argument("--deep-seed", type=int, default=0)
    parser.add_argument("--deep-prompts", type=int, default=4)
    parser.add_argument("--deep-pool", type=int, default=256)
    parser.add_argument("--deep-train", type=int, default=200, help="train pairs, deep study")
    parser.add_argument("--deep-cal", type=int, default=200, help="calibration pairs, deep study")
    parser.add_argument("--deep-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--backbone", default=None, help="HF name or path (default: MiniLM)")
    parser.add_argument("--cache-dir", default=None, help="reference-policy cache")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI smoke tests")
    parser.add_argument("--out-dir", default=None, help="write JSON, .txt and PNGs here")
    parser.add_argument("--tag", default="cpu", help="results file suffix")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.prompts, args.pool = (0, 1), 2, 8
        args.n_train, args.n_cal, args.n_test, args.heads = 40, 20, 16, 3
        args.deep_members, args.deep_prompts, args.deep_pool, args.deep_train = 2, 2, 4, 16
        args.deep_cal = 16
    return args


def _configs(args: argparse.Namespace) -> tuple[StudyConfig, StudyConfig | None]:
    policy = QUICK_POLICY if args.quick else default_policy_config()
    quick = (
        {"max_new_tokens": 24, "proxy_options": {"pyro": {"num_steps": 20}}} if args.quick else {}
    )
    common = dict(
        label_noises=args.noises, n_test=args.n_test,
        n_heads=args.heads, backbone=args.backbone, policy_config=policy,
        cache_dir=args.cache_dir, num_threads=args.threads, progress=False, **quick,
    )  # fmt: skip
    main = StudyConfig(
        seeds=args.seeds, n_train=args.n_train, n_calibration=args.n_cal, n_prompts=args.prompts,
        pool_size=args.pool, **common,
    )  # fmt: skip
    if not args.deep_members:
        return main, None
    deep = StudyConfig(
        seeds=(args.deep_seed,), n_train=args.deep_train, n_calibration=args.deep_cal,
        n_prompts=args.deep_prompts,
        pool_size=args.deep_pool, deep_members=args.deep_members, deep_epochs=args.deep_epochs,
        selectors=DEEP_SELECTORS, **common,
    )  # fmt: skip
    return main, deep


def _pm(mean: float, std: float, fmt: str = "{:+.3f}") -> str:
    if mean is None or not np.isfinite(mean):
        return "—"
    spread = "" if std is None or not np.isfinite(std) else " ± " + fmt.format(std).lstrip("+")
    return fmt.format(mean) + spread


def _f(value: float | None, fmt: str = "{:.3f}") -> str:
    return "—" if value is None or not np.isfinite(value) else fmt.format(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, every column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def _best_of_n_table(result: StudyResult) -> list[str]:
    n_max = max(result.config.ns)
    header = [
        "noise", "selector", "gold n=1", f"gold n={n_max}", "peak gold", "peak n", "proxy n_max",
        "sentences n_max", "Gao α", "Gao β", "Gao R²", "KL peak", "ρ(std,gap) over n",
        "ρ over responses",
    ]  # fmt: skip
    rows = []
    for row in result.summary():
        name, noise = row["selector"], row["label_noise"]
        seeds = result.config.seeds
        sentences = np.mean([result.curve(name, noise, s)["sentences"][-1] for s in seeds])
        rows.append([
            f"{noise:.2f}", name, f"{row['gold_n1']:+.3f}",
            _pm(row["gold_n_max"], row["gold_n_max_std"]),
            _pm(row["peak_gold"], row["peak_gold_std"]),
            _pm(row["peak_n"], row["peak_n_std"], "{:.0f}"),
            _f(row["proxy_n_max"], "{:+.3f}"), f"{sentences:.2f}",
            _f(row["gao_alpha"], "{:+.3f}"), _f(row["gao_beta"], "{:+.3f}"),
            _f(row["gao_r2"], "{:.2f}"), _f(row["gao_kl_peak"], "{:.2f}"),
            _f(row["warning_rho_n"], "{:+.2f}"), _f(row["warning_rho_responses"], "{:+.2f}"),
        ])  # fmt: skip
    return _table(header, rows)


def _coste_lines(result: StudyResult) -> list[str]:
    lines = []
    for noise in result.config.label_noises:
        v = result.coste_ordering(noise)
        gold = v["gold"]
        conservative = ", ".join(f"{s} {gold[s]:+.3f}" for s in CONSERVATIVE if s in gold)
        verdict = {True: "HOLDS", False: "DOES NOT HOLD", None: "not decidable"}[v["holds"]]
        lines.append(
            f"label noise {noise:g}, n = {v['n_max']}: best conservative {v['best_conservative']} "
            f"{gold.get(v['best_conservative'], float('nan')):+.3f} vs mean {gold['mean']:+.3f} vs "
            f"single {gold['single']:+.3f} -> Coste's ordering (conservative >= mean > single) "
            f"{verdict} (conservative >= mean: {v['conservative_ge_mean']}, mean > single: "
            f"{v['mean_gt_single']}; on {v['seeds_holding']} of {v['n_seeds']} seeds)"
        )
        lines.append(f"    conservative: {conservative}")
    return lines


def _cost_lines(result: StudyResult) -> list[str]:
    n_max = max(result.config.ns)
    gold = {(r["selector"], r["label_noise"]): r for r in result.summary()}
    header = [
        "noise", "proxy", "members", "fit CPU s", "score CPU s", "score × 1 RM (wall)",
        "score × 1 RM (CPU)", "cal. accuracy", "selector", f"gold n={n_max}", "peak gold",
        "peak n",
    ]  # fmt: skip
    by_proxy = {
        "single": ["single"],
        "heads": ["mean", "uwo_0.5"],
        "laplace": ["laplace", "laplace_mean"],
        "deep": ["deep_mean", "deep_uwo_0.5"],
    }
    accuracy = {(f["seed"], f["label_noise"], f["proxy"]): f for f in result.fits}
    rows = []
    for c in result.costs:
        noise = c["label_noise"]
        fit = accuracy[(c["seed"], noise, c["proxy"])]
        names = [s for s in by_proxy.get(c["proxy"], []) if (s, noise) in gold]
        for i, name in enumerate(names):
            g = gold[(name, noise)]
            cost = [
                c["proxy"], str(c["n_members"]), f"{c['fit_cpu_seconds']:.1f}",
                f"{c['score_cpu_seconds']:.1f}", f"{c['score_ratio']:.2f}",
                f"{c['score_ratio_cpu']:.2f}", f"{fit['accuracy_calibration']:.3f}",
            ]  # fmt: skip
            rows.append([
                f"{noise:.2f}", *(cost if i == 0 else [""] * len(cost)), name,
                f"{g['gold_n_max']:+.3f}", f"{g['peak_gold']:+.3f}", f"{g['peak_n']:.0f}",
            ])  # fmt: skip
    return _table(header, rows)


def _context_lines(result: StudyResult) -> list[str]:
    lines = []
    for pool in result.meta["pools"]:
        lines.append(
            f"  seed {pool['seed']}: {pool['n_prompts']} prompts x {pool['pool_size']} responses, "
            f"{pool['sentences_mean']:.2f} sentences on average, "
            f"{100 * pool['share_over_4_sentences']:.1f} % over 4 sentences, "
            f"{100 * pool['distinct_fraction']:.1f} % distinct per prompt, "
            f"{pool['n_truncated']} cut at {pool['max_new_tokens']} tokens, gold mean "
            f"{pool['gold_mean']:+.3f}; policy final loss {pool['policy_final_loss']:.3f} "
            f"(held-out {_f(pool['policy_eval_loss'])}), trained in "
            f"{pool['policy_train_seconds']:.0f} s "
            f"({'in this run' if pool['policy_trained_now'] else 'earlier, cached'}); "
            f"sampled in {pool['sample_seconds']:.0f} s, MiniLM pass "
            f"{pool['backbone_seconds']:.0f} s"
        )
    for r in (r for r in result.noise if r["split"] == "train"):
        lines.append(
            f"  seed {r['seed']}, label noise {r['label_noise']:g}: {r['n_pairs']} train pairs, "
            f"realised flip rate {r['noise_rate']:.4f}, labels agree with gold on "
            f"{r['gold_agreement']:.3f}"
        )
    for noise, rel in result.reliability.items():
        temps = ", ".join(f"{t:.2f}" for t in rel["temperature"])
        lines.append(
            f"  heads ensemble, label noise {noise:g}: ECE {rel['ece_before']:.4f} -> "
            f"{rel['ece_after']:.4f} after temperature scaling (T = {temps}) on "
            f"{len(rel['y_true'])} swap-symmetrised test pairs"
        )
    acc = {}
    for f in result.fits:
        acc.setdefault((f["proxy"], f["label_noise"]), []).append(f["accuracy_test"])
    lines.append(
        "  held-out accuracy (test pairs, noisy labels): "
        + "; ".join(f"{p} @ {n:g}: {_f(float(np.mean(v)))}" for (p, n), v in acc.items())
    )
    return lines


def _version() -> str:
    root = Path(__file__).parents[1]

    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=60)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "auq").splitlines()
    return f"auq at {commit}" + (f" + {len(dirty)} uncommitted file(s) under auq/" if dirty else "")


def _report(args, main: StudyResult, deep: StudyResult | None, started, seconds) -> str:
    import transformers

    policy = main.config.resolved_policy_config
    lines = [
        "bench_overoptimization: best-of-n over-optimisation on the testbed world (CPU)",
        "",
        f"machine : {device_name('cpu')}, shared; {args.threads} torch thread(s)",
        f"date    : {started:%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} min wall in all",
        f"command : python {' '.join(sys.argv)}",
        f"code    : {args.code_version} (at the start of the run)",
        f"stack   : Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"policy  : GPT-2 {policy.n_layer} layers x {policy.n_embd}, SFT {policy.steps} steps on "
        f"{policy.n_train} world responses, wide_fraction={policy.wide_fraction} (half 1-8 "
        "sentence answers, so best-of-n can reach the long ones where gold falls)",
        f"proxies : MiniLM features (frozen, computed once per text); single head, {args.heads} "
        "heads, Laplace (marglik prior), Pyro (SVI, mean-field); temperature-calibrated on "
        "held-out pairs before the objectives",
        f"study   : seeds {list(main.config.seeds)}, label noise {list(main.config.label_noises)}, "
        f"{main.config.n_train} train / {main.config.n_calibration} calibration / "
        f"{main.config.n_test} test pairs, {main.config.n_prompts} prompts x "
        f"{main.config.pool_size} responses, n in {list(main.config.ns)}",
        "",
        "pools, labels, calibration:",
        *_context_lines(main),
        "",
        "best-of-n (mean ± std over seeds; proxy in calibrated logits; sentences of the pick; "
        "Gao fit pooled over seeds; ρ = Spearman of the pick's epistemic std with the proxy's "
        "over-estimate of gold, across n / across pooled responses; single is watched by the "
        "heads ensemble's std):",
        *_best_of_n_table(main),
        "",
        "Coste et al. ordering at the largest n (gold, mean over seeds):",
        *_coste_lines(main),
    ]
    if deep is not None:
        c = deep.config
        lines += [
            "",
            f"cost vs protection (seed {c.seeds[0]}, {c.n_prompts} prompts x {c.pool_size} "
            f"responses, {c.n_train} train / {c.n_calibration} calibration pairs; deep = "
            f"{c.deep_members} MiniLMs fine-tuned "
            f"{c.deep_epochs} epoch(s) each, a CPU budget; score = the pool scored by that proxy "
            "alone, feature-level proxies charged the one shared MiniLM pass):",
            *_cost_lines(deep),
            "",
            "best-of-n in the deep study:",
            *_best_of_n_table(deep),
        ]
    return "\n".join(lines) + "\n"


def _figures(out: Path, tag: str, main: StudyResult, deep: StudyResult | None) -> list[Path]:
    import matplotlib.pyplot as plt

    from auq.training.study_plots import (
        plot_overoptimization,
        plot_pick_std,
        plot_study_reliability,
    )

    paths = [
        out / f"bench_overoptimization_{tag}_{name}.png" for name in ("gold", "std", "reliability")
    ]
    plot_overoptimization(main, save_path=paths[0])
    plot_pick_std(main, save_path=paths[1])
    plot_study_reliability(main, max(main.config.label_noises), save_path=paths[2])
    if deep is not None:
        paths.append(out / f"bench_overoptimization_{tag}_deep.png")
        plot_overoptimization(deep, save_path=paths[-1])
    plt.close("all")
    return paths


def main() -> None:
    args = _args()
    if args.quick and args.cache_dir is None:  # tiny policies go to a temporary cache
        import tempfile

        with tempfile.TemporaryDirectory(prefix="auq-bench-policy-") as cache:
            args.cache_dir = cache
            _run(args)
    else:
        _run(args)


def _run(args: argparse.Namespace) -> None:
    started = datetime.datetime.now(datetime.timezone.utc)
    args.code_version = _version()
    clock = time.perf_counter()
    main_config, deep_config = _configs(args)
    print(f"main study: {main_config}", flush=True)
    main_result = run_study(main_config)
    print(f"main study done in {(time.perf_counter() - clock) / 60:.1f} min", flush=True)
    deep_result = None
    if deep_config is not None:
        deep_result = run_study(deep_config)
        print(f"deep study done in {(time.perf_counter() - clock) / 60:.1f} min", flush=True)
    report = _report(args, main_result, deep_result, started, time.perf_counter() - clock)
    print(report)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"bench_overoptimization_{args.tag}"
        for result in (main_result, deep_result):
            if result is not None:
                result.meta["command"] = f"python {' '.join(sys.argv)}"
                result.meta["machine"] = device_name("cpu")
                result.meta["date"] = started.isoformat(timespec="seconds")
                result.meta["code"] = args.code_version
        main_result.to_json(f"{stem}.json")
        if deep_result is not None:
            deep_result.to_json(f"{stem}_deep.json")
        Path(f"{stem}.txt").write_text(report, encoding="utf-8")
        paths = _figures(out, args.tag, main_result, deep_result)
        print(f"wrote {stem}.json, {stem}.txt and {len(paths)} figures", flush=True)


if __name__ == "__main__":
    main()
