"""Online DPO on the testbed world: mean vs uncertainty-penalised proxy rewards vs offline DPO.

One run. Per seed, a :class:`~auq.testbed.World` with a known gold reward, its
reference policy (the over-optimisation study's: a tiny GPT-2 SFT'd on half short,
half long answers, :func:`~auq.training.study_config.default_policy_config`) and
proxy reward models built exactly as the best-of-n study builds them
(:func:`auq.training.study_proxies.fit_proxies`: frozen MiniLM features of the
world's short-answer preference pairs with ``--noise`` label flips; one head,
``--heads`` heads, Laplace). Three ways to train the policy on the same budget
(``--steps`` updates of ``--prompts-per-step`` pairs each):

* ``online mean``  — :class:`~auq.training.OnlineDPOTrainer`, the K-head ensemble's
  mean reward ranks the ``--generations`` samples of a prompt (best vs worst);
* ``online lcb``   — the same ensemble, ranked by its lower confidence bound
  mean − k·std (k = ``--k``; the study's ``lcb`` selector; scale-free, so no
  calibration enters);
* ``offline``      — :class:`~auq.training.DPOTrainer` on the first steps × pairs
  pairs of the proxy's own training set (the world's noisy human-style labels:
  what the proxy learnt from, without a proxy in between).

Every ``--eval-every`` updates each policy samples ``--eval-generations`` responses to
``--eval-prompts`` held-out prompts (``OnlineDPOTrainer.evaluate``: KL to the
reference in nats per sequence, gold reward); the runs are cut into chunks that
resume from the loop's checkpoints (exact resume: one uninterrupted run). Reported:
gold at equal KL (each run's gold-vs-KL curve interpolated at common KL levels, the
KL axis made monotone by its running maximum), final gold and KL, mean ± sd over
seeds; the step-time breakdown (generate / score / update) of online DPO with one
reward model (one head) vs K heads vs Laplace on the same policy, prompts and seed,
interleaved rounds; the goals met or not.

Settings: AdamW lr 3e-4 (constant), β = 0.1 (TRL's default), 30 updates, chosen in trial
runs on this machine so that the policy moves a few nats within the budget: lr 1e-3 took
the KL past 20 nats within 10 updates (seed 0), lr 5e-4 to 13–26 nats after 30 updates
(a three-seed pilot of this script; most of the gold fell by then), lr 3e-4 to a few nats.

    python benchmarks/bench_online_dpo.py --out-dir benchmarks/results   # ~25 min, 2 cores
    python benchmarks/bench_online_dpo.py --quick --out-dir /tmp/o       # CI smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import torch
from _common import device_name

from auq.backbone import Backbone
from auq.models import RewardModel, RewardModelConfig
from auq.testbed import World, label_summary
from auq.testbed.policy import PolicyConfig, load_or_train_policy
from auq.training import DPOConfig, DPOTrainer, OnlineDPOConfig, OnlineDPOTrainer
from auq.training.study_config import StudyConfig, default_policy_config
from auq.training.study_proxies import encode_pairs, fit_proxies

METHODS = ("online_mean", "online_lcb", "offline")
LABELS = {
    "online_mean": "online DPO, ensemble mean",
    "online_lcb": "online DPO, ensemble lcb",
    "offline": "offline DPO, world pairs",
}
COLORS = {"online_mean": "tab:red", "online_lcb": "tab:blue", "offline": "tab:gray"}
#: the over-optimisation study's seeds of the training / calibration pairs
SPLIT_SEEDS = {"train": 1, "calibration": 2}
PROMPT_SEED = 10  # the pool of prompts, split into training and held-out prompts
TIMING_CASES = ("one RM (1 head)", "K heads", "Laplace")
QUICK_POLICY = PolicyConfig(
    n_layer=1, n_head=2, n_embd=16, n_positions=256, steps=4, batch_size=8, n_train=48,
    n_eval=0, wide_fraction=0.5,
)  # fmt: skip


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_ints, default=(0, 1, 2))
    parser.add_argument("--noise", type=float, default=0.25, help="label-flip rate of the pairs")
    parser.add_argument("--n-train", type=int, default=500, help="proxy training pairs")
    parser.add_argument("--n-cal", type=int, default=100, help="proxy calibration pairs")
    parser.add_argument("--heads", type=int, default=8, help="K of the heads ensemble")
    parser.add_argument("--k", type=float, default=1.0, help="k of lcb = mean - k*std")
    parser.add_argument("--steps", type=int, default=30, help="policy updates per run")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--eval-generations", type=int, default=4)
    parser.add_argument("--kl-levels", type=_floats, default=(0.5, 1.0, 2.0, 4.0))
    parser.add_argument("--timing-rounds", type=int, default=8, help="after one warm-up round")
    parser.add_argument(
        "--timing-steps",
        type=int,
        default=1,
        help="online steps per case and round (with 1, "
        "every case scores the very same samples: same policy, prompts and sampling seed)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--backbone", default=None, help="HF name or path (default: MiniLM)")
    parser.add_argument("--cache-dir", default=None, help="reference-policy cache")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI smoke tests")
    parser.add_argument("--out-dir", default=None, help="write JSON, .txt and PNGs here")
    parser.add_argument("--tag", default="cpu", help="results file suffix")
    parser.add_argument(
        "--from-json",
        default=None,
        help="re-render the .txt and figures of a saved run's JSON "
        "into --out-dir (default: the JSON's folder); trains nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.n_train, args.n_cal, args.heads = (0, 1), 24, 12, 3
        args.steps, args.eval_every, args.prompts_per_step, args.generations = 2, 1, 2, 2
        args.max_new_tokens, args.eval_prompts, args.eval_generations = 12, 3, 2
        args.timing_rounds, args.timing_steps, args.kl_levels = 1, 1, (0.05, 0.1)
        args.lr = 1e-3
    if args.steps % args.eval_every:
        parser.error(f"--steps {args.steps} must be a multiple of --eval-every {args.eval_every}")
    return args


def _version() -> str:
    root = Path(__file__).parents[1]

    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=60)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "auq").splitlines()
    return f"auq at {commit}" + (f" + {len(dirty)} uncommitted file(s) under auq/" if dirty else "")


# -- one seed's world, policy, prompts and proxies ----------------------------------------
@dataclasses.dataclass
class Setup:
    seed: int
    world: World
    policy: torch.nn.Module
    tokenizer: object
    reference: torch.nn.Module
    train_prompts: list[str]
    eval_prompts: list[str]
    offline_pairs: object
    reward_models: dict[str, RewardModel]
    info: dict


def _prompts(world: World, n_eval: int) -> tuple[list[str], list[str]]:
    """Distinct "train"-region prompts split into training and held-out ones (no text shared)."""
    pool = list(dict.fromkeys(world.sample_prompts(2000, seed=PROMPT_SEED, region="train")))
    order = np.random.default_rng(world.seed).permutation(len(pool))
    pool = [pool[i] for i in order]
    return pool[n_eval:], pool[:n_eval]


def _setup(args, seed: int, backbone: Backbone, backbone_path: str, policy_config) -> Setup:
    clock = time.perf_counter()
    world = World(seed, label_noise=args.noise)
    policy, tokenizer, record = load_or_train_policy(
        World(seed), config=policy_config, cache_dir=args.cache_dir, progress=False
    )
    policy.eval()
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    splits = {
        "train": world.preference_dataset(args.n_train, seed=SPLIT_SEEDS["train"]),
        "calibration": world.preference_dataset(args.n_cal, seed=SPLIT_SEEDS["calibration"]),
    }
    pairs = {k: encode_pairs(backbone, v, False, f"{k} pairs") for k, v in splits.items()}
    study = StudyConfig(
        seeds=(seed,), label_noises=(args.noise,), n_train=args.n_train,
        n_calibration=args.n_cal, selectors=("single", "lcb", "laplace"), n_heads=args.heads,
        backbone=backbone_path, progress=False,
    )  # fmt: skip
    proxies = fit_proxies(study, seed, splits, pairs, backbone.hidden_size)
    uq = {"single": ("heads", 1), "heads": ("heads", args.heads), "laplace": ("laplace", None)}
    models = {}
    for name, proxy in proxies.items():  # one shared frozen backbone, one head each
        method, members = uq[name]
        config = RewardModelConfig(
            backbone=backbone_path, uq=method, n_members=members, seed=seed, max_length=256
        )
        models[name] = RewardModel(backbone, proxy.model, config)
    accuracy = {}
    for name, proxy in proxies.items():
        margin = proxy.calibration_prediction.margin_mean
        accuracy[name] = float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean())
    train_prompts, eval_prompts = _prompts(world, args.eval_prompts)
    n_offline = args.steps * args.prompts_per_step
    if n_offline > args.n_train:
        raise SystemExit(f"--steps x --prompts-per-step = {n_offline} > --n-train {args.n_train}")
    info = {
        "seed": seed,
        "labels": label_summary(splits["train"]),
        "calibration_accuracy": accuracy,
        "temperature": {k: p.temperature for k, p in proxies.items()},
        "n_train_prompts": len(train_prompts),
        "n_eval_prompts": len(eval_prompts),
        "policy_key": record.key,
        "policy_trained_now": record.trained,
        "setup_seconds": time.perf_counter() - clock,
    }
    return Setup(
        seed, world, policy, tokenizer, reference, train_prompts, eval_prompts,
        splits["train"].select(np.arange(n_offline)), models, info,
    )  # fmt: skip


# -- training runs, cut into resumed chunks with an evaluation after each ---------------
def _online_args(args, objective: str, seed: int, **changes) -> OnlineDPOConfig:
    return OnlineDPOConfig(
        objective=objective, k=args.k, num_generations=args.generations,
        prompts_per_step=args.prompts_per_step, max_steps=args.steps,
        max_new_tokens=args.max_new_tokens, lr=args.lr, beta=args.beta,
        lr_scheduler_type="constant", max_length=320, max_prompt_length=64, seed=seed,
        report_to="none", progress=False, **changes,
    )  # fmt: skip


class Evaluator:
    """Samples a policy on the held-out prompts: KL to the reference and gold, per call."""

    def __init__(self, args, setup: Setup):
        self.args, self.setup = args, setup

    def __call__(self, model, index: int) -> dict:
        s = self.setup
        clock = time.perf_counter()
        trainer = OnlineDPOTrainer(
            model, tokenizer=s.tokenizer, reward_model=s.reward_models["heads"],
            prompts=s.eval_prompts, args=_online_args(self.args, "mean", s.seed),
            ref_model=s.reference, gold_reward=s.world.gold_reward,
        )  # fmt: skip
        # the same sampling seed for every method at the same evaluation: paired draws
        out = trainer.evaluate(
            num_generations=self.args.eval_generations, seed=1000 * s.seed + index
        )
        row = {
            "kl": out["kl"],
            "gold": out["gold/mean"],
            "proxy": out["reward/mean"],
            "proxy_std": out["reward/epistemic_std"],
            "tokens": out["generation/response_tokens"],
            "truncated": out["generation/truncated"],
            "seconds": time.perf_counter() - clock,
        }
        return row


def _train_chunks(args, setup: Setup, method: str, evaluate: Evaluator, start: dict) -> dict:
    """One run: ``--steps`` updates in chunks of ``--eval-every``, evaluated after each."""
    clock = time.perf_counter()
    curve, history = [{"step": 0, **start}], []
    with tempfile.TemporaryDirectory(prefix=f"auq-bench-{method}-") as out:
        chunk = dict(output_dir=out, save_steps=args.eval_every, save_total_limit=1)
        for j in range(1, args.steps // args.eval_every + 1):
            steps = j * args.eval_every
            policy = copy.deepcopy(setup.policy)  # the checkpoint restores the trained weights
            if method == "offline":
                config = DPOConfig(
                    batch_size=args.prompts_per_step, max_steps=steps, lr=args.lr,
                    beta=args.beta, lr_scheduler_type="constant", max_length=320,
                    max_prompt_length=64, seed=setup.seed, report_to="none", progress=False,
                    resume_from_checkpoint=j > 1, **chunk,
                )  # fmt: skip
                trainer = DPOTrainer(
                    policy, tokenizer=setup.tokenizer, train_dataset=setup.offline_pairs,
                    args=config, ref_model=setup.reference,
                )  # fmt: skip
            else:
                objective = method.removeprefix("online_")
                config = _online_args(
                    args, objective, setup.seed, resume_from_checkpoint=j > 1, **chunk
                )
                config = dataclasses.replace(config, max_steps=steps)
                trainer = OnlineDPOTrainer(
                    policy, tokenizer=setup.tokenizer,
                    reward_model=setup.reward_models["heads"], prompts=setup.train_prompts,
                    args=config, ref_model=setup.reference, gold_reward=setup.world.gold_reward,
                )  # fmt: skip
            result = trainer.train()
            history += [_clean(h) for h in result.history]
            curve.append({"step": steps, **evaluate(trainer.model, j)})
            print(
                f"  seed {setup.seed} {method:<12} step {steps:>3}: KL {curve[-1]['kl']:6.2f} "
                f"gold {curve[-1]['gold']:+.3f} proxy {curve[-1]['proxy']:+.3f} "
                f"({time.perf_counter() - clock:.0f} s)",
                flush=True,
            )
    return {
        "seed": setup.seed,
        "method": method,
        "curve": curve,
        "history": history,
        "seconds": time.perf_counter() - clock,
    }


def _clean(row: dict) -> dict:
    return {k: float(v) for k, v in row.items() if isinstance(v, int | float)}


# -- gold at equal KL ------------------------------------------------------------------
def gold_at_kl(curve: list[dict], levels) -> list[float | None]:
    """Gold interpolated at each KL level on the run's curve (None past its largest KL).

    The KL axis is the running maximum of the evaluated KL (Monte-Carlo estimates
    wobble); at a flat stretch the latest gold counts.
    """
    kl = np.maximum.accumulate(np.maximum([r["kl"] for r in curve], 0.0))
    gold = np.array([r["gold"] for r in curve])
    x, idx = np.unique(kl[::-1], return_index=True)  # the last of equal KLs
    y = gold[::-1][idx]
    return [float(np.interp(v, x, y)) if v <= x[-1] else None for v in levels]


def _mean_sd(values: list[float | None]) -> tuple[float | None, float | None, int]:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None), len(v)


def _summary(args, runs: list[dict]) -> list[dict]:
    rows = []
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        at = [gold_at_kl(r["curve"], args.kl_levels) for r in mine]
        row = {"method": method, "n_seeds": len(mine)}
        for i, level in enumerate(args.kl_levels):
            m, sd, n = _mean_sd([a[i] for a in at])
            row[f"gold@kl{level:g}"] = {"mean": m, "sd": sd, "n": n, "per_seed": [a[i] for a in at]}
        for key in ("gold", "kl", "proxy", "tokens"):
            m, sd, _ = _mean_sd([r["curve"][-1][key] for r in mine])
            per_seed = [r["curve"][-1][key] for r in mine]
            row[f"final_{key}"] = {"mean": m, "sd": sd, "per_seed": per_seed}
        peak = [max(c["gold"] for c in r["curve"]) for r in mine]
        m, sd, _ = _mean_sd(peak)
        row["peak_gold"] = {"mean": m, "sd": sd, "per_seed": peak}
        rows.append(row)
    return rows


def _goal_penalised(args, runs: list[dict]) -> dict:
    """lcb vs mean, paired by seed, at each KL level both runs reach."""
    by = {(r["method"], r["seed"]): r for r in runs}
    levels = []
    for level in args.kl_levels:
        diffs = []
        for seed in args.seeds:
            if ("online_lcb", seed) not in by or ("online_mean", seed) not in by:
                continue
            a = gold_at_kl(by[("online_lcb", seed)]["curve"], [level])[0]
            b = gold_at_kl(by[("online_mean", seed)]["curve"], [level])[0]
            if a is not None and b is not None:
                diffs.append(a - b)
        m, sd, n = _mean_sd(diffs)
        levels.append(
            {"kl": level, "diff_mean": m, "diff_sd": sd, "n_seeds": n,
             "seeds_lcb_ahead": int(sum(d > 0 for d in diffs))}
        )  # fmt: skip
    decided = [lv for lv in levels if lv["n_seeds"] == len(args.seeds)]
    met = None
    if decided:
        met = all(lv["diff_mean"] > 0 and lv["seeds_lcb_ahead"] == lv["n_seeds"] for lv in decided)
    return {
        "goal": "penalised (lcb) > mean in gold at equal KL, on every seed at every KL level "
        "all seeds reach",
        "levels": levels,
        "met": met,
    }


# -- step-time breakdown ---------------------------------------------------------------
def _timing(args, setup: Setup) -> dict:
    """Online steps with one head / K heads / Laplace from the same policy, prompts and
    sampling seed (so the first step of every case generates and scores the same texts),
    interleaved (rotated order per round) after a warm-up round; feature cache off."""
    backbone = setup.reward_models["heads"].backbone
    saved = backbone.scoring
    backbone.scoring = dataclasses.replace(saved, feature_cache=False)  # every case re-encodes
    names = {"one RM (1 head)": "single", "K heads": "heads", "Laplace": "laplace"}
    rows = []
    try:
        for rnd in range(args.timing_rounds + 1):
            order = TIMING_CASES[rnd % 3 :] + TIMING_CASES[: rnd % 3]
            for case in order:
                config = _online_args(args, "lcb", setup.seed)
                config = dataclasses.replace(config, max_steps=args.timing_steps)
                trainer = OnlineDPOTrainer(
                    copy.deepcopy(setup.policy), tokenizer=setup.tokenizer,
                    reward_model=setup.reward_models[names[case]], prompts=setup.train_prompts,
                    args=config, ref_model=setup.reference,
                )  # fmt: skip
                for h in trainer.train().history:
                    rows.append({
                        "round": rnd, "case": case, "warmup": rnd == 0, "step": int(h["step"]),
                        "step_seconds": h["step_seconds"], "generate": h["time/generate"],
                        "score": h["time/score"], "update": h["time/update"],
                        "tokens": h["generation/response_tokens"],
                    })  # fmt: skip
    finally:
        backbone.scoring = saved
    measured = [r for r in rows if not r["warmup"]]
    cases = {}
    for case in TIMING_CASES:
        mine = [r for r in measured if r["case"] == case]
        cases[case] = {
            k: statistics.median(r[k] for r in mine)
            for k in ("step_seconds", "generate", "score", "update", "tokens")
        }
        cases[case]["n_steps"] = len(mine)
    base = cases[TIMING_CASES[0]]
    for case in TIMING_CASES:
        c = cases[case]
        c["step_ratio"] = c["step_seconds"] / base["step_seconds"]
        c["score_ratio"] = c["score"] / base["score"]
    met = all(cases[c]["step_ratio"] <= 1.1 for c in TIMING_CASES[1:])
    return {
        "seed": setup.seed,
        "rows": rows,
        "cases": cases,
        "goal": {
            "goal": f"online DPO step with {args.heads} heads / Laplace <= 1.1x one reward model",
            "met": met,
        },
    }


# -- report ----------------------------------------------------------------------------
def _pm(m, sd, fmt="{:+.3f}") -> str:
    if m is None:
        return "—"
    return fmt.format(m) + ("" if sd is None else " ± " + fmt.format(sd).lstrip("+"))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def _report(args, result: dict) -> str:
    import transformers

    meta, summary = result["meta"], result["summary"]
    levels = args.kl_levels
    header = ["method", *(f"gold @ KL {v:g}" for v in levels), "peak gold", "final gold",
              "final KL", "final proxy", "final tokens"]  # fmt: skip
    rows = []
    for row in summary:
        cells = [LABELS[row["method"]]]
        for v in levels:
            g = row[f"gold@kl{v:g}"]
            reached = "" if g["n"] == row["n_seeds"] else f" ({g['n']}/{row['n_seeds']})"
            cells.append(_pm(g["mean"], g["sd"]) + reached)
        cells += [
            _pm(row["peak_gold"]["mean"], row["peak_gold"]["sd"]),
            _pm(row["final_gold"]["mean"], row["final_gold"]["sd"]),
            _pm(row["final_kl"]["mean"], row["final_kl"]["sd"], "{:.2f}"),
            _pm(row["final_proxy"]["mean"], row["final_proxy"]["sd"]),
            _pm(row["final_tokens"]["mean"], row["final_tokens"]["sd"], "{:.1f}"),
        ]
        rows.append(cells)
    seed_rows = []
    for run in result["runs"]:
        at = gold_at_kl(run["curve"], levels)
        last = run["curve"][-1]
        seed_rows.append([
            str(run["seed"]), LABELS[run["method"]],
            *("—" if a is None else f"{a:+.3f}" for a in at),
            f"{max(c['gold'] for c in run['curve']):+.3f}", f"{last['gold']:+.3f}",
            f"{last['kl']:.2f}", f"{run['seconds']:.0f}",
        ])  # fmt: skip
    seed_header = ["seed", "method", *(f"gold @ KL {v:g}" for v in levels), "peak gold",
                   "final gold", "final KL", "run s"]  # fmt: skip
    goal1 = result["goals"]["penalised"]
    goal_lines = [
        f"  KL {lv['kl']:g}: lcb − mean = {_pm(lv['diff_mean'], lv['diff_sd'])} "
        f"(lcb ahead on {lv['seeds_lcb_ahead']} of {lv['n_seeds']} seeds reaching it)"
        for lv in goal1["levels"]
    ]
    timing = result["timing"]
    t_rows = []
    for case, c in timing["cases"].items():
        t_rows.append([
            case.replace("K heads", f"{args.heads} heads"), f"{c['generate']:.2f}",
            f"{c['score']:.2f}", f"{c['update']:.2f}",
            f"{c['step_seconds']:.2f}", f"{c['step_ratio']:.2f}", f"{c['score_ratio']:.2f}",
            str(c["n_steps"]), f"{c['tokens']:.1f}",
        ])  # fmt: skip
    t_header = ["reward model", "generate s", "score s", "update s", "step s", "step ×",
                "score ×", "steps", "tokens"]  # fmt: skip
    verdict = {True: "MET", False: "NOT MET", None: "not decidable"}
    setups = result["setups"]
    lines = [
        "bench_online_dpo: online DPO (mean vs penalised proxy) vs offline DPO, testbed (CPU)",
        "",
        f"machine : {meta['machine']}, shared with other jobs (contention: wall times vary); "
        f"{args.threads} torch thread(s)",
        f"date    : {meta['date']}, {meta['seconds'] / 60:.1f} min wall in all",
        f"command : {meta['command']}",
        f"code    : {meta['code']} (at the start of the run)",
        f"stack   : Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"policy  : the over-optimisation study's reference policy per seed (GPT-2 "
        f"{meta['policy']['n_layer']} layers x {meta['policy']['n_embd']}, wide_fraction="
        f"{meta['policy']['wide_fraction']}: it also writes the long answers where gold falls)",
        f"proxies : as the best-of-n study builds them (study_proxies.fit_proxies): frozen MiniLM "
        f"features, {args.n_train} 'train'-region pairs at label noise {args.noise:g}; "
        f"{args.heads}-head ensemble (online runs), one head and Laplace (timing only)",
        f"training: {args.steps} updates x {args.prompts_per_step} pairs per run; online: "
        f"{args.prompts_per_step} prompts x {args.generations} samples (<= {args.max_new_tokens} "
        f"new tokens), best vs worst by the objective; lcb k = {args.k:g}; offline: the first "
        f"{args.steps * args.prompts_per_step} of the proxy's training pairs (noisy world "
        f"labels), one epoch; AdamW lr {args.lr:g} constant, beta {args.beta:g}, sigmoid loss",
        f"eval    : every {args.eval_every} updates, {args.eval_prompts} held-out prompts x "
        f"{args.eval_generations} samples (same sampling seed for every method at the same "
        "update); KL = Monte-Carlo KL(policy || reference) in nats per response",
        "",
        "seeds (proxy accuracy on the noisy calibration pairs; realised flips of the train pairs):",
        *(
            f"  seed {s['seed']}: flips {s['labels']['noise_rate']:.3f}, labels agree with gold "
            f"{s['labels']['gold_agreement']:.3f}; accuracy "
            + ", ".join(f"{k} {v:.3f}" for k, v in s["calibration_accuracy"].items())
            + f"; {s['n_train_prompts']} training / {s['n_eval_prompts']} held-out prompts; "
            f"reference gold {s['reference']['gold']:+.3f}; setup {s['setup_seconds']:.0f} s"
            for s in setups
        ),
        "",
        "gold at equal KL (mean ± sd over seeds; '(n/N)': only n of N seeds reach that KL), "
        "peak and final gold / KL / proxy reward / response tokens:",
        *_table(header, rows),
        "",
        "per seed:",
        *_table(seed_header, seed_rows),
        "",
        f"step-time breakdown (seed {timing['seed']}, median seconds per online step over "
        f"{args.timing_rounds} interleaved rounds x {args.timing_steps} steps after a warm-up "
        "round; feature cache off; ratio = to the one-RM step):",
        *_table(t_header, t_rows),
        "",
        "goals:",
        f"  (1) {goal1['goal']}: {verdict[goal1['met']]}",
        *goal_lines,
        f"  (2) {timing['goal']['goal']}: {verdict[timing['goal']['met']]} ("
        + ", ".join(
            f"{c} {timing['cases'][c]['step_ratio']:.2f}x step, "
            f"{timing['cases'][c]['score_ratio']:.2f}x score"
            for c in TIMING_CASES[1:]
        )
        + ")",
    ]
    return "\n".join(lines) + "\n"


def _figures(out: Path, tag: str, args, result: dict) -> list[Path]:
    from auq.plotting import pyplot, save_figure

    plt = pyplot()
    runs = result["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        color = COLORS[method]
        for r in mine:
            kl = [c["kl"] for c in r["curve"]]
            axes[0].plot(kl, [c["gold"] for c in r["curve"]], "-", color=color, alpha=0.3, lw=1)
            steps = [c["step"] for c in r["curve"]]
            axes[1].plot(steps, [c["gold"] for c in r["curve"]], "-", color=color, alpha=0.3, lw=1)
            axes[2].plot(steps, kl, "-", color=color, alpha=0.3, lw=1)
        top = min(max(np.maximum.accumulate([c["kl"] for c in r["curve"]])) for r in mine)
        grid = np.linspace(0, max(top, 0.0), 25)
        at = [[np.nan if g is None else g for g in gold_at_kl(r["curve"], grid)] for r in mine]
        mean_gold = np.nanmean(np.array(at, dtype=float), axis=0)
        axes[0].plot(grid, mean_gold, "-", color=color, lw=2.5, label=LABELS[method])
        steps = [c["step"] for c in mine[0]["curve"]]
        for ax, key in ((axes[1], "gold"), (axes[2], "kl")):
            mean = np.mean([[c[key] for c in r["curve"]] for r in mine], axis=0)
            ax.plot(steps, mean, "o-", color=color, lw=2.5, label=LABELS[method])
    axes[0].set_xlabel("KL(policy ‖ reference), nats")
    axes[0].set_ylabel("gold reward (held-out prompts)")
    axes[0].set_title("gold vs KL (thin: seeds; thick: mean at equal KL)")
    axes[1].set_xlabel("update")
    axes[1].set_ylabel("gold reward")
    axes[1].set_title("gold vs update")
    axes[2].set_xlabel("update")
    axes[2].set_ylabel("KL, nats")
    axes[2].set_title("KL vs update")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Online DPO on the testbed, label noise {args.noise:g}, {len(args.seeds)} seeds "
        f"({result['meta']['machine']})",
        fontsize=10,
    )
    fig.tight_layout()
    paths = [out / f"bench_online_dpo_{tag}_gold.png"]
    save_figure(fig, paths[0])
    cases = result["timing"]["cases"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    bottom = np.zeros(len(cases))
    names = [c.replace("K heads", f"{args.heads} heads") for c in cases]
    parts = (("generate", "tab:green"), ("score", "tab:orange"), ("update", "tab:purple"))
    for part, color in parts:
        values = np.array([c[part] for c in cases.values()])
        ax.barh(names, values, left=bottom, color=color, label=part)
        bottom += values
    for i, c in enumerate(cases.values()):
        ax.text(bottom[i], i, f" {c['step_ratio']:.2f}x", va="center", fontsize=9)
    ax.set_xlabel("median seconds per online step")
    ax.set_title("online DPO step time by reward model (ratio to one RM)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    ax.set_xlim(0, bottom.max() * 1.2)
    fig.tight_layout()
    paths.append(out / f"bench_online_dpo_{tag}_steptime.png")
    save_figure(fig, paths[1])
    plt.close("all")
    return paths


def _rerender(args: argparse.Namespace) -> None:
    """The report and figures of a saved run, from its JSON (its own settings)."""
    path = Path(args.from_json)
    result = json.loads(path.read_text(encoding="utf-8"))
    saved = dict(result["meta"]["args"])
    saved["seeds"], saved["kl_levels"] = tuple(saved["seeds"]), tuple(saved["kl_levels"])
    saved = argparse.Namespace(**saved)
    out = Path(args.out_dir) if args.out_dir else path.parent
    out.mkdir(parents=True, exist_ok=True)
    report = _report(saved, result)
    print(report)
    stem = out / f"bench_online_dpo_{saved.tag}"
    Path(f"{stem}.txt").write_text(report, encoding="utf-8")
    paths = _figures(out, saved.tag, saved, result)
    print(f"re-rendered {stem}.txt and {len(paths)} figures from {path}", flush=True)


def main() -> None:
    args = _args()
    if args.from_json:
        _rerender(args)
    elif args.quick and args.cache_dir is None:  # tiny policies go to a temporary cache
        with tempfile.TemporaryDirectory(prefix="auq-bench-policy-") as cache:
            args.cache_dir = cache
            _run(args)
    else:
        _run(args)


def _run(args: argparse.Namespace) -> None:
    from auq.utils.defaults import default_backbone_path

    started = datetime.datetime.now(datetime.timezone.utc)
    code = _version()
    clock = time.perf_counter()
    torch.set_num_threads(args.threads)
    policy_config = QUICK_POLICY if args.quick else default_policy_config()
    backbone_path = str(args.backbone or default_backbone_path())
    backbone = Backbone.from_pretrained(backbone_path, max_length=256)
    backbone.requires_grad_(False).eval()
    runs, setups, timing = [], [], None
    for seed in args.seeds:
        setup = _setup(args, seed, backbone, backbone_path, policy_config)
        evaluate = Evaluator(args, setup)
        start = evaluate(setup.policy, 0)  # the reference policy: every method's step 0
        setup.info["reference"] = start
        print(
            f"seed {seed}: setup {setup.info['setup_seconds']:.0f} s, reference gold "
            f"{start['gold']:+.3f}, accuracy {setup.info['calibration_accuracy']}",
            flush=True,
        )
        for method in METHODS:
            runs.append(_train_chunks(args, setup, method, evaluate, start))
        setups.append(setup.info)
        if timing is None:
            timing = _timing(args, setup)
            print(f"timing: {json.dumps(timing['cases'])}", flush=True)
    seconds = time.perf_counter() - clock
    result = {
        "meta": {
            "command": f"python {' '.join(sys.argv)}",
            "machine": device_name("cpu"),
            "date": f"{started:%Y-%m-%d %H:%M} UTC",
            "code": code,
            "seconds": seconds,
            "policy": policy_config.to_dict(),
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        },
        "setups": setups,
        "runs": runs,
        "summary": _summary(args, runs),
        "timing": timing,
    }
    result["goals"] = {"penalised": _goal_penalised(args, runs), "step_time": timing["goal"]}
    report = _report(args, result)
    print(report)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"bench_online_dpo_{args.tag}"
        Path(f"{stem}.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
        Path(f"{stem}.txt").write_text(report, encoding="utf-8")
        paths = _figures(out, args.tag, args, result)
        print(f"wrote {stem}.json, {stem}.txt and {len(paths)} figures", flush=True)


if __name__ == "__main__":
    main()
