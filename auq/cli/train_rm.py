"""``auq train-rm``: fit an uncertainty-aware reward model on preference pairs and save it.

::

    auq train-rm sentence-transformers/all-MiniLM-L6-v2 pairs.jsonl --out rm/ --uq heads \\
        --n-members 8 --epochs 20 --eval-data held_out.jsonl
    auq train-rm gpt2/ pairs.jsonl --out rm/ --uq lora --n-members 4 --save-steps 100 --resume

BACKBONE is any Hugging Face ``AutoModel`` directory or name; DATA a JSONL or Parquet
file in TRL's columns (``prompt``, ``chosen``, ``rejected``, optional ``margin`` and
``weight``) or the built-in set (``builtin``, ``builtin:N``). The model
(:meth:`auq.RewardModel.from_backbone`) is fitted with the training options given —
the others keep the method's defaults (a frozen backbone's heads: 20 epochs of 64
pairs; a trained backbone: 3 epochs of 16) — and saved with ``save_pretrained`` to
``--out``. With ``--save-steps`` the training checkpoints go to ``--out/checkpoints``
and ``--resume`` goes on from the latest of them. Closed-form heads (``laplace``,
``pyro``) take no training option: giving one is an error naming the ones they use.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from auq.cli.config_file import (
    Option,
    add_options,
    check_pair_columns,
    check_policy_dir,
    read_pairs,
    require,
    resolve_options,
    writable_dir,
)
from auq.cli.errors import CliError

__all__ = ["CHECKPOINTS", "add_parser", "fit_options", "options", "train_reward_model"]

#: the sub-folder of --out that holds the training checkpoints
CHECKPOINTS = "checkpoints"

#: options of the fit (auq.heads.fitting.FitConfig fields), given only when set
_FIT = {
    "epochs": ("int", "passes over the pairs (default: the method's, 20 or 3)"),
    "batch_size": ("int", "pairs per update (default: the method's, 64 or 16)"),
    "lr": ("float", "AdamW learning rate (default: the method's)"),
    "weight_decay": ("float", "AdamW weight decay"),
    "head_lr": ("float", "learning rate of the heads when the backbone trains"),
    "patience": ("int", "stop after this many epochs without held-out improvement"),
    "center_coef": ("float", "weight of the reward-centring term"),
    "gradient_accumulation_steps": ("int", "micro-batches per update"),
    "mixed_precision": ("str", "autocast of the forward (fp16 needs a GPU)"),
    "gradient_checkpointing": ("flag", "recompute activations in the backward pass"),
    "save_steps": ("int", "write a checkpoint into --out/checkpoints every this many updates"),
}


def options() -> list[Option]:
    """Every option of ``auq train-rm`` (its flags and ``--config`` keys)."""
    from auq.backbone import POOLING_CHOICES
    from auq.loop.config import MIXED_PRECISIONS
    from auq.models.config import FINETUNE_CHOICES, UQ_METHODS

    fit = [
        Option(
            name,
            kind,
            text,
            none=kind != "flag",
            choices=tuple(MIXED_PRECISIONS) if name == "mixed_precision" else None,
        )
        for name, (kind, text) in _FIT.items()
    ]
    return [
        Option("out", "str", "where the fitted model is saved (save_pretrained)", metavar="DIR"),
        Option("uq", "str", "uncertainty method", "heads", choices=tuple(UQ_METHODS)),
        Option("n_members", "int", "ensemble size K (default 8)", none=True),
        Option("n_passes", "int", "stochastic passes T of mc_dropout (default 8)", none=True),
        Option(
            "finetune",
            "str",
            "train the backbone with the heads (heads, mc_dropout)",
            "frozen",
            choices=tuple(FINETUNE_CHOICES),
        ),
        Option("pooling", "str", "how a text becomes one vector", "auto", choices=POOLING_CHOICES),
        Option("max_length", "int", "longest tokenised prompt + response", 256),
        Option("seed", "int", "seed of the initialisation and the data order", 0),
        Option(
            "eval_data",
            "str",
            "held-out pairs (JSONL/Parquet/builtin): accuracy in the summary",
            none=True,
            metavar="FILE",
        ),
        *fit,
        Option("resume", "flag", "go on from the latest checkpoint in --out/checkpoints"),
        Option("cpu", "flag", "train on the CPU even when a GPU is present"),
        Option("no_progress", "flag", "hide progress bars (by default shown on a terminal)"),
    ]


def fit_options(values: dict[str, Any], out: Path) -> dict[str, Any]:
    """The ``rm.fit`` training options given, checked against the method before it loads.

    Raises
    ------
    ValueError
        For a bad value, or an option the method does not use (naming the ones it does).
    """
    from auq.heads.base import head_class
    from auq.heads.fitting import FIT_OPTIONS, FitConfig
    from auq.models.config import FINETUNE_CHOICES, HEAD_CLASS, MEMBER_METHODS, UQ_METHODS
    from auq.utils.validation import check_choice

    uq = check_choice("uq", values.get("uq", "heads"), UQ_METHODS)
    finetune = check_choice("finetune", values.get("finetune", "frozen"), FINETUNE_CHOICES)
    given = {k: v for k, v in values.items() if k in _FIT and v is not None and v is not False}
    if values.get("resume"):
        given["resume_from_checkpoint"] = True
    if "save_steps" in given or values.get("resume"):
        given["output_dir"] = str(out / CHECKPOINTS)
    trains_backbone = uq in MEMBER_METHODS or finetune != "frozen"
    usable = set(FIT_OPTIONS) if trains_backbone else set(head_class(HEAD_CLASS[uq]).fit_options)
    if "seed" in values and "seed" in usable:
        given["seed"] = values["seed"]
    unused = sorted(set(given) - usable)
    if unused:
        flags = {"output_dir": "save_steps", "resume_from_checkpoint": "resume"}
        named = sorted({"--" + flags.get(n, n).replace("_", "-") for n in unused})
        cls = head_class(HEAD_CLASS[uq])
        usable_flags = sorted(
            "--" + n.replace("_", "-") for n in usable & set(_FIT) if n != "gradient_checkpointing"
        )
        raise CliError(
            f"{', '.join(named)}: not used by --uq {uq} ({cls.fit_options_note or 'no option'}); "
            f"options it uses: {', '.join(usable_flags) or 'none'}"
        )
    base = FitConfig(batch_size=16) if trains_backbone else FitConfig()
    base.replace(**given)  # the values' own checks, now
    return given


def train_reward_model(args: argparse.Namespace) -> dict[str, Any]:
    """Check everything, fit, save; a summary of what was done."""
    from auq.cli.inputs import load_preference_data, parse_builtin

    values = resolve_options(args, options())
    out = require(values, "out", "--out")
    target = writable_dir(out, option="--out")
    training = fit_options(values, target.path)

    def pairs(source: str, option: str):
        if parse_builtin(source) is not None:
            return load_preference_data(source, option=option)
        return read_pairs(check_pair_columns(source, option=option), option=option)

    eval_source = values.get("eval_data")
    if eval_source is not None:
        check_pair_columns(eval_source, option="--eval-data")
    if parse_builtin(args.data) is None:
        check_pair_columns(args.data)
    backbone = check_policy_dir(args.backbone, option="BACKBONE")
    train = pairs(args.data, "DATA")
    evaluation = None if eval_source is None else pairs(eval_source, "--eval-data")

    from auq.models.reward_model import RewardModel
    from auq.scoring.distributed import default_device

    began = time.perf_counter()
    rm = RewardModel.from_backbone(
        backbone,
        uq=values.get("uq", "heads"),
        n_members=values.get("n_members"),
        n_passes=values.get("n_passes"),
        finetune=values.get("finetune", "frozen"),
        pooling=values.get("pooling", "auto"),
        max_length=values.get("max_length", 256),
        seed=values.get("seed", 0),
        device="cpu" if values.get("cpu") else default_device(),
    )
    progress = False if values.get("no_progress") else None
    rm.fit(train, eval_dataset=evaluation, progress=progress, **training)
    accuracy = None
    if evaluation is not None:
        pred = rm.predict(evaluation, progress=progress)
        accuracy = float((pred.margin_mean > 0).float().mean())
    with target.writing() as path:
        rm.save_pretrained(path)
    history = rm.history_
    return {
        "uq": rm.config.uq,
        "members": rm.config.n_members or rm.config.n_passes,
        "n_pairs": len(train),
        "n_eval": None if evaluation is None else len(evaluation),
        "epochs": None if history is None else len(history.train_loss),
        "train_accuracy": (
            history.train_accuracy[-1] if history and history.train_accuracy else None
        ),
        "eval_accuracy": accuracy,
        "seconds": time.perf_counter() - began,
        "out": str(target.path),
    }


def summary_line(s: dict[str, Any]) -> str:
    """One line: method, pairs, epochs, accuracies, where, time."""
    members = f" ({s['members']} members)" if s["members"] else ""
    parts = [f"trained a {s['uq']} reward model{members} on {s['n_pairs']} pairs"]
    if s["epochs"] is not None:
        parts.append(f"{s['epochs']} epochs")
    if s["train_accuracy"] is not None:
        parts.append(f"train accuracy {s['train_accuracy']:.3f}")
    if s["eval_accuracy"] is not None:
        parts.append(f"held-out accuracy {s['eval_accuracy']:.3f} on {s['n_eval']} pairs")
    parts.append(f"saved to {s['out']} ({s['seconds']:.1f} s)")
    return "; ".join(parts)


def _main(args: argparse.Namespace) -> int:
    print(summary_line(train_reward_model(args)))
    return 0


def add_parser(sub: argparse._SubParsersAction, debug: argparse.ArgumentParser) -> None:
    """Register ``auq train-rm``."""
    parser = sub.add_parser(
        "train-rm",
        parents=[debug],
        help="fit an uncertainty-aware reward model on preference pairs and save it",
        description="Build a reward model on BACKBONE (any Hugging Face AutoModel) with the "
        "uncertainty method --uq, fit it on the pairs of DATA (JSONL or Parquet with TRL's "
        "columns prompt, chosen, rejected; or builtin, builtin:N) and save it to --out "
        "(load it with auq.RewardModel.from_pretrained). With --eval-data the summary "
        "reports held-out accuracy.",
    )
    parser.add_argument("backbone", metavar="BACKBONE", help="Hugging Face model name or path")
    parser.add_argument("data", metavar="DATA", help="preference pairs: JSONL, Parquet, builtin")
    add_options(parser, options())
    parser.set_defaults(func=_main)
