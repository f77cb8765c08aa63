"""``auq dpo``: offline DPO of a policy on preference pairs, optionally uncertainty-aware.

::

    auq dpo policy/ pairs.jsonl --out runs/dpo --beta 0.1 --max-steps 200 --save-steps 50
    auq dpo policy/ pairs.jsonl --out runs/dpo --reward-model rm/ --uncertainty soft_label
    auq dpo policy/ pairs.jsonl --out runs/dpo --config dpo.yaml --resume

Every :class:`~auq.training.DPOConfig` field is a flag (``--loss-type``,
``--gradient-accumulation-steps``, ...) and a ``--config`` key; ``--out`` is its
``output_dir``, ``--resume`` its ``resume_from_checkpoint=True`` (the latest
checkpoint in ``--out``), ``--no-progress`` its ``progress=False``. Everything is
checked before a model loads: the options (the config's own checks), that ``--out``
can be written, that DATA (and ``--eval-data``) has TRL's columns, the policy and
reward-model directories.

Into ``--out`` go the loop's ``metrics.jsonl`` and ``checkpoint-NNNNNN/`` folders, the
cached reference log-probabilities, the trained policy (safetensors and tokenizer,
loadable with ``AutoModelForCausalLM``; only the adapters with ``--lora-r``) and
``train_result.json``: the pair counts, the reward model's view of the pairs, the
last logged metrics, the held-out metrics (with ``--eval-data``) and the config.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from auq.cli.config_file import (
    Option,
    add_options,
    check_pair_columns,
    check_policy_dir,
    dataclass_options,
    load_reward_model,
    lora_config,
    lora_options,
    read_pairs,
    require,
    resolve_options,
    writable_dir,
)
from auq.cli.errors import CliError

__all__ = [
    "RESULT_NAME",
    "TRAINER_HELP",
    "add_parser",
    "dpo_config",
    "options",
    "run_dpo",
    "run_options",
    "trainer_kwargs",
]

RESULT_NAME = "train_result.json"

#: help of the fields both trainers share (auq.training.dpo_config._TrainerConfig)
TRAINER_HELP = {
    "beta": "beta > 0: how strongly the policy is pulled towards the reference policy",
    "loss_type": "DPO's logistic loss (sigmoid) or IPO's squared loss",
    "max_length": "longest prompt + response, in tokens",
    "max_prompt_length": "longest prompt, in tokens (its end is kept)",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "updates of linear learning-rate warm-up",
    "lr_scheduler_type": "learning-rate schedule after the warm-up",
    "max_grad_norm": "clip the gradient norm to this",
    "gradient_accumulation_steps": "micro-batches per update",
    "mixed_precision": "autocast of the forward (fp16 needs a GPU)",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory)",
    "seed": "seed of the data order, the sampling and dropout",
    "save_steps": "write a checkpoint into --out every this many updates (and at the end)",
    "save_total_limit": "keep at most this many checkpoints",
    "logging_steps": "log metrics every this many updates",
    "report_to": "metric sinks (auto: metrics.jsonl, and TensorBoard when installed)",
    "cpu": "train on the CPU even when a GPU is present",
    "disable_dropout": "switch off the policy's dropout, as TRL does",
}
_DPO_HELP = {
    "uncertainty": "how the reward model's view of each pair enters (needs --reward-model "
    "unless none)",
    "k": "k >= 0 of --uncertainty pessimistic (margin interval mean +- k*std)",
    "weight_schedule": "--uncertainty weight: 1/(1 + var/s^2) or exp(-std/s)",
    "weight_scale": "s of the weight schedule (default: the median std over the pairs)",
    "batch_size": "pairs per update",
    "epochs": "passes over the pairs (when --max-steps is not given)",
    "max_steps": "updates to take (overrides --epochs)",
    "reference_batch_size": "pairs per forward pass of the reference log-probabilities",
}
#: DPOConfig fields set through other options (--out, --resume, --no-progress)
RENAMED = ("output_dir", "resume_from_checkpoint", "progress")


def option_choices() -> dict[str, tuple[str, ...]]:
    from auq.loop.config import LR_SCHEDULES, MIXED_PRECISIONS, REPORT_TO
    from auq.objectives import OBJECTIVES
    from auq.training.losses import LOSS_TYPES
    from auq.training.pair_targets import UNCERTAINTY_MODES, WEIGHT_SCHEDULES

    return {
        "loss_type": LOSS_TYPES,
        "lr_scheduler_type": LR_SCHEDULES,
        "mixed_precision": MIXED_PRECISIONS,
        "report_to": REPORT_TO,
        "uncertainty": UNCERTAINTY_MODES,
        "weight_schedule": WEIGHT_SCHEDULES,
        "objective": OBJECTIVES,
    }


def run_options() -> list[Option]:
    """--out, --resume, --no-progress and LoRA: the options of a run that are not fields."""
    return [
        Option(
            "out",
            "str",
            "the run's folder: checkpoints, metrics.jsonl, the policy, train_result.json",
            aliases=("output_dir",),
            metavar="DIR",
        ),
        Option("resume", "flag", "go on from the latest checkpoint in --out"),
        Option("no_progress", "flag", "hide progress bars (by default shown on a terminal)"),
        *lora_options(),
    ]


def options() -> list[Option]:
    """Every option of ``auq dpo`` (its flags and ``--config`` keys)."""
    from auq.training.dpo_config import DPOConfig

    return [
        Option(
            "reward_model",
            "str",
            "a saved auq reward model whose view of the pairs --uncertainty uses",
            none=True,
            metavar="RM_DIR",
        ),
        Option(
            "eval_data",
            "str",
            "held-out pairs (JSONL/Parquet) evaluated after training",
            none=True,
            metavar="FILE",
        ),
        *run_options(),
        *dataclass_options(
            DPOConfig, {**TRAINER_HELP, **_DPO_HELP}, choices=option_choices(), skip=RENAMED
        ),
    ]


def trainer_kwargs(values: dict[str, Any], cls: type, out: str) -> dict[str, Any]:
    """The config dataclass' keyword arguments from the resolved options."""
    names = {f.name for f in fields(cls)} - set(RENAMED)
    kwargs = {k: v for k, v in values.items() if k in names}
    kwargs["output_dir"] = str(Path(out).expanduser())
    if values.get("resume"):
        kwargs["resume_from_checkpoint"] = True
    if values.get("no_progress"):
        kwargs["progress"] = False
    return kwargs


def checked_out(values: dict[str, Any]) -> str:
    """``--out``: given, and a directory that can be created or written."""
    out = require(values, "out", "--out")
    writable_dir(out, option="--out")
    return out


def dpo_config(args: argparse.Namespace):
    """``(DPOConfig, options)`` of parsed ``auq dpo`` arguments; checks every option."""
    from auq.training.dpo_config import DPOConfig

    values = resolve_options(args, options())
    out = checked_out(values)
    return DPOConfig(**trainer_kwargs(values, DPOConfig, out)), values


def _check_reward_model(uncertainty: str, rm_dir: str | None) -> None:
    if uncertainty != "none" and rm_dir is None:
        raise CliError(
            f"--uncertainty {uncertainty} needs --reward-model RM_DIR (a saved auq reward "
            "model); without one the valid --uncertainty is none"
        )
    if uncertainty == "none" and rm_dir is not None:
        raise CliError(
            "--reward-model is used only with --uncertainty soft_label, weight or pessimistic; "
            "choose one, or leave --reward-model out"
        )


def run_dpo(args: argparse.Namespace) -> dict[str, Any]:
    """Check everything, train, save the policy and ``train_result.json``; the result."""
    from auq.cli.inputs import check_model_dir
    from auq.scoring.distributed import distributed_env
    from auq.utils.io import write_json

    config, values = dpo_config(args)
    peft_config = lora_config(values)
    rm_dir = values.get("reward_model")
    _check_reward_model(config.uncertainty, rm_dir)
    data = check_pair_columns(args.data)
    eval_source = values.get("eval_data")
    eval_path = (
        None if eval_source is None else check_pair_columns(eval_source, option="--eval-data")
    )
    policy = check_policy_dir(args.policy)
    rm_path = None if rm_dir is None else check_model_dir(rm_dir, option="--reward-model")

    train = read_pairs(data)
    evaluation = None if eval_path is None else read_pairs(eval_path, option="--eval-data")
    rm = None if rm_path is None else load_reward_model(rm_path, cpu=config.cpu)

    from auq.training.dpo import DPOTrainer

    trainer = DPOTrainer(
        policy,
        train_dataset=train,
        args=config,
        reward_model=rm,
        peft_config=peft_config,
        eval_dataset=evaluation,
    )
    result = trainer.train()
    eval_metrics = None if evaluation is None else trainer.evaluate()
    loop = result.loop
    report = {
        "command": "dpo",
        "policy": str(args.policy),
        "data": str(args.data),
        "reward_model": rm_dir,
        "n_pairs": result.n_pairs,
        "n_trained": result.n_trained,
        "n_dropped": result.n_dropped,
        "n_swapped": result.n_swapped,
        "n_truncated_prompts": result.n_truncated_prompts,
        "n_truncated_responses": result.n_truncated_responses,
        "n_steps": loop.n_steps,
        "resumed_from": None if loop.resumed_from is None else str(loop.resumed_from),
        "train_seconds": loop.train_seconds,
        "targets": result.targets,
        "final_metrics": result.history[-1] if result.history else {},
        "eval_metrics": eval_metrics,
        "lora": peft_config,
        "config": asdict(config),
    }
    if distributed_env()[0] == 0:
        out = Path(config.output_dir)
        trainer.save_model(out)
        write_json(out / RESULT_NAME, report)
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One line: updates, pairs, the last loss and accuracy, held-out accuracy, where."""
    parts = [
        f"DPO: {report['n_steps']} updates on {report['n_trained']} of {report['n_pairs']} pairs"
    ]
    if report["n_dropped"] or report["n_swapped"]:
        parts[0] += f" ({report['n_dropped']} dropped, {report['n_swapped']} swapped)"
    if report["resumed_from"]:
        parts.append(f"resumed from {Path(report['resumed_from']).name}")
    final = report["final_metrics"]
    if final:
        parts.append(
            f"last loss {final['loss']:.4f}, reward accuracy "
            f"{final.get('rewards/accuracies', float('nan')):.3f}"
        )
    if report["eval_metrics"]:
        ev = report["eval_metrics"]
        parts.append(
            f"held-out reward accuracy {ev['rewards/accuracies']:.3f} on {int(ev['n_pairs'])} "
            f"pairs (loss {ev['loss']:.4f})"
        )
    parts.append(f"policy and {RESULT_NAME} in {report['config']['output_dir']}")
    return "; ".join(parts)


def _main(args: argparse.Namespace) -> int:
    from auq.scoring.distributed import distributed_env

    report = run_dpo(args)
    if distributed_env()[0] == 0:
        print(summary_line(report))
    return 0


def add_parser(sub: argparse._SubParsersAction, debug: argparse.ArgumentParser) -> None:
    """Register ``auq dpo``."""
    parser = sub.add_parser(
        "dpo",
        parents=[debug],
        help="offline DPO of a policy on preference pairs, optionally uncertainty-aware",
        description="Train POLICY (a directory loadable with AutoModelForCausalLM) with DPO on "
        "the pairs of DATA (JSONL or Parquet with TRL's columns prompt, chosen, rejected). "
        "With --reward-model and --uncertainty, an auq reward model's view of each pair "
        "softens its label, weights it, or swaps/drops it. Checkpoints, metrics.jsonl, the "
        "trained policy and train_result.json go to --out.",
    )
    parser.add_argument("policy", metavar="POLICY", help="the policy: a causal-LM directory")
    parser.add_argument("data", metavar="DATA", help="preference pairs: JSONL or Parquet")
    add_options(parser, options())
    parser.set_defaults(func=_main)
