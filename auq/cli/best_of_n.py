"""``auq best-of-n``: sample n responses per prompt, keep the best under an objective.

::

    auq best-of-n policy/ prompts.txt --reward-model rm/ --n 16 --objective lcb --k 1 \\
        --out picks.jsonl

PROMPTS is a ``.txt`` file (one prompt per line) or JSONL / Parquet rows with a
``prompt`` column. :func:`auq.training.best_of_n` samples ``--n`` candidates per prompt
from POLICY, scores them all in one reward-model call and keeps per prompt the argmax
of the penalised reward ``--objective``. ``--out`` gets one JSON line per prompt:
``prompt``, ``response`` (the pick), ``reward`` (its objective value), ``mean`` and
``std`` (the reward model's mean and epistemic std of the pick), ``index`` (its
position among the candidates), ``n_candidates``, ``objective`` and ``truncated``
(whether the pick hit ``--max-new-tokens``); with ``--candidates`` also every
candidate with its mean, std and objective value. Every option is checked before a
model loads; the options are flags and ``--config`` keys alike.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from auq.cli.config_file import (
    Option,
    add_options,
    check_output_file,
    check_policy_dir,
    load_reward_model,
    read_prompts,
    require,
    resolve_options,
)
from auq.cli.errors import CliError

__all__ = ["add_parser", "options", "run_best_of_n"]


def options() -> list[Option]:
    """Every option of ``auq best-of-n`` (its flags and ``--config`` keys)."""
    from auq.objectives import OBJECTIVES

    return [
        Option("reward_model", "str", "the saved auq reward model that scores", metavar="RM_DIR"),
        Option("n", "int", "candidates sampled per prompt"),
        Option("out", "str", "the JSONL file of picks (one line per prompt)", metavar="FILE"),
        Option("objective", "str", "what is maximised", "mean", choices=tuple(OBJECTIVES)),
        Option("lam", "float", "lambda >= 0 of uwo (mean - lambda*var)", 0.5),
        Option("k", "float", "k >= 0 of lcb (mean - k*std)", 1.0),
        Option("beta", "float", "beta > 0 of effective", 1.0),
        Option("unbiased", "flag", "unbiased (n-1) variance across members"),
        Option("max_new_tokens", "int", "tokens per candidate at most", 64),
        Option("temperature", "float", "sampling temperature", 1.0),
        Option("top_p", "float", "nucleus sampling mass", 1.0),
        Option("batch_size", "int", "prompts per generate call", 8),
        Option("seed", "int", "sampling seed", 0),
        Option("candidates", "flag", "also write every candidate with its mean, std, value"),
        Option("cpu", "flag", "run on the CPU even when a GPU is present"),
        Option("no_progress", "flag", "hide progress bars (by default shown on a terminal)"),
    ]


def _check(values: dict[str, Any]) -> dict[str, Any]:
    """Every option checked (before a model loads); the resolved settings."""
    import torch

    from auq.objectives import OBJECTIVES, penalized_reward
    from auq.types import RewardPrediction
    from auq.utils.validation import check_choice, check_positive_int

    s = {
        "objective": "mean",
        "lam": 0.5,
        "k": 1.0,
        "beta": 1.0,
        "unbiased": False,
        "max_new_tokens": 64,
        "temperature": 1.0,
        "top_p": 1.0,
        "batch_size": 8,
        "seed": 0,
        **values,
    }
    require(s, "reward_model", "--reward-model")
    check_positive_int("n", require(s, "n", "--n"))
    require(s, "out", "--out")
    check_choice("objective", s["objective"], OBJECTIVES)
    probe = RewardPrediction.from_samples(torch.zeros(2, 1))  # the objective's own checks
    penalized_reward(probe, s["objective"], lam=s["lam"], k=s["k"], beta=s["beta"])
    for name in ("max_new_tokens", "batch_size"):
        check_positive_int(name, s[name])
    if not 0 < s["temperature"] < math.inf:
        raise CliError(f"--temperature must be a finite number > 0, got {s['temperature']!r}")
    if not 0 < s["top_p"] <= 1:
        raise CliError(f"--top-p must be in (0, 1], got {s['top_p']!r}")
    return s


def _rows(result: Any, with_candidates: bool) -> list[dict[str, Any]]:
    rows = []
    for i, prompt in enumerate(result.prompts):
        j = int(result.index[i])
        row = {
            "prompt": prompt,
            "response": result.responses[i],
            "reward": float(result.objective_values[i, j]),
            "mean": float(result.reward_mean[i, j]),
            "std": float(result.reward_std[i, j]),
            "index": j,
            "n_candidates": result.n,
            "objective": result.objective,
            "truncated": None if result.truncated is None else bool(result.truncated[i, j]),
        }
        if with_candidates:
            row["candidates"] = [
                {
                    "response": text,
                    "reward": float(result.objective_values[i, c]),
                    "mean": float(result.reward_mean[i, c]),
                    "std": float(result.reward_std[i, c]),
                }
                for c, text in enumerate(result.candidates[i])
            ]
        rows.append(row)
    return rows


def run_best_of_n(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]], Path]:
    """Check everything, sample and pick, write ``--out``; ``(BestOfNResult, rows, out)``."""
    from auq.cli.inputs import check_model_dir
    from auq.utils.io import atomic_write_text, strict_json

    s = _check(resolve_options(args, options()))
    out = check_output_file(s["out"])
    prompts = read_prompts(args.prompts)
    policy = check_policy_dir(args.policy)
    rm_path = check_model_dir(s["reward_model"], option="--reward-model")
    cpu = bool(s.get("cpu"))
    rm = load_reward_model(rm_path, cpu=cpu)

    from auq.training.best_of_n import best_of_n
    from auq.training.policy_model import load_policy

    model, tokenizer = load_policy(policy)
    if not cpu:
        from auq.scoring.distributed import default_device

        model = model.to(default_device())
    model.eval()
    result = best_of_n(
        model,
        rm,
        prompts,
        n=s["n"],
        objective=s["objective"],
        tokenizer=tokenizer,
        lam=s["lam"],
        k=s["k"],
        beta=s["beta"],
        unbiased=s["unbiased"],
        seed=s["seed"],
        max_new_tokens=s["max_new_tokens"],
        temperature=s["temperature"],
        top_p=s["top_p"],
        batch_size=s["batch_size"],
        progress=False if s.get("no_progress") else None,
    )
    rows = _rows(result, bool(s.get("candidates")))
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in rows)
    atomic_write_text(out, text)
    return result, rows, out


def _main(args: argparse.Namespace) -> int:
    result, rows, out = run_best_of_n(args)
    picked = sum(r["mean"] for r in rows) / len(rows)
    truncated = "" if result.n_truncated is None else f", {result.n_truncated} truncated"
    print(
        f"best-of-{result.n} ({result.objective}) on {len(rows)} prompts "
        f"({len(rows) * result.n} candidates{truncated}): mean reward of the picks "
        f"{picked:.4f}; KL bound {result.kl_bound:.3f} nats; wrote {out}"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction, debug: argparse.ArgumentParser) -> None:
    """Register ``auq best-of-n``."""
    parser = sub.add_parser(
        "best-of-n",
        parents=[debug],
        help="best-of-n sampling with an uncertainty-aware objective; picks to JSONL",
        description="Sample --n responses per prompt of PROMPTS (.txt, one per line, or "
        "JSONL/Parquet with a prompt column) from POLICY (a causal-LM directory), score them "
        "with --reward-model and keep the best under --objective (mean, or the conservative "
        "wco, uwo, lcb, effective). One JSON line per prompt goes to --out.",
    )
    parser.add_argument("policy", metavar="POLICY", help="the policy: a causal-LM directory")
    parser.add_argument("prompts", metavar="PROMPTS", help=".txt, JSONL or Parquet prompts")
    add_options(parser, options())
    parser.set_defaults(func=_main)
