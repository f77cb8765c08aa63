"""``auq online-dpo``: online DPO whose inner loop scores with an auq reward model.

::

    auq online-dpo policy/ prompts.jsonl --reward-model rm/ --out runs/online \\
        --objective lcb --k 1 --alpha 0.1 --num-generations 4 --max-steps 200

Each update samples ``--num-generations`` responses for each of ``--prompts-per-step``
prompts from the current policy, scores them with the reward model, pairs the best
and the worst under the penalised reward ``--objective`` (skipping prompts whose
order is uncertain at level ``--alpha``) and takes a DPO step
(:class:`~auq.training.OnlineDPOTrainer`). Every
:class:`~auq.training.OnlineDPOConfig` field is a flag and a ``--config`` key;
``--out``, ``--resume`` and ``--no-progress`` are as in ``auq dpo``.

PROMPTS is a ``.txt`` file (one prompt per line) or JSONL / Parquet rows with a
``prompt`` column (text or a chat). Into ``--out`` go ``metrics.jsonl``, the
checkpoints, the trained policy and ``train_result.json`` (pair and skip counts, the
last logged metrics, the config).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from auq.cli.config_file import (
    Option,
    add_options,
    check_policy_dir,
    dataclass_options,
    load_reward_model,
    lora_config,
    read_prompts,
    require,
    resolve_options,
)
from auq.cli.dpo import (
    RENAMED,
    RESULT_NAME,
    TRAINER_HELP,
    checked_out,
    option_choices,
    run_options,
    trainer_kwargs,
)

__all__ = ["add_parser", "online_dpo_config", "options", "run_online_dpo", "summary_line"]

_ONLINE_HELP = {
    "objective": "the penalised reward that ranks a prompt's samples",
    "lam": "lambda >= 0 of --objective uwo (mean - lambda*var)",
    "k": "k >= 0 of --objective lcb (mean - k*std)",
    "reward_beta": "beta > 0 of --objective effective",
    "alpha": "skip a prompt when P(chosen beats rejected) < 1 - alpha under the reward "
    "model's posterior (default: never)",
    "num_generations": "responses sampled per prompt (>= 2)",
    "prompts_per_step": "prompts per update",
    "max_steps": "updates to take",
    "max_new_tokens": "tokens per sampled response at most",
    "temperature": "sampling temperature",
    "top_k": "sample from the k likeliest tokens (0: all)",
    "top_p": "nucleus sampling mass",
    "generation_batch_size": "prompts per generate call",
}


def options() -> list[Option]:
    """Every option of ``auq online-dpo`` (its flags and ``--config`` keys)."""
    from auq.training.dpo_config import OnlineDPOConfig

    return [
        Option("reward_model", "str", "the saved auq reward model that scores", metavar="RM_DIR"),
        *run_options(),
        *dataclass_options(
            OnlineDPOConfig,
            {**TRAINER_HELP, **_ONLINE_HELP},
            choices=option_choices(),
            skip=RENAMED,
        ),
    ]


def online_dpo_config(args: argparse.Namespace):
    """``(OnlineDPOConfig, options)`` of parsed arguments; checks every option."""
    from auq.training.dpo_config import OnlineDPOConfig

    values = resolve_options(args, options())
    out = checked_out(values)
    config = OnlineDPOConfig(**trainer_kwargs(values, OnlineDPOConfig, out))
    require(values, "reward_model", "--reward-model")
    return config, values


def run_online_dpo(args: argparse.Namespace) -> dict[str, Any]:
    """Check everything, train, save the policy and ``train_result.json``; the result."""
    from auq.cli.inputs import check_model_dir
    from auq.scoring.distributed import distributed_env
    from auq.utils.io import write_json

    config, values = online_dpo_config(args)
    peft_config = lora_config(values)
    prompts = read_prompts(args.prompts)
    policy = check_policy_dir(args.policy)
    rm_path = check_model_dir(values["reward_model"], option="--reward-model")
    rm = load_reward_model(rm_path, cpu=config.cpu)

    from auq.training.online_dpo import OnlineDPOTrainer

    trainer = OnlineDPOTrainer(
        policy, reward_model=rm, prompts=prompts, args=config, peft_config=peft_config
    )
    result = trainer.train()
    loop = result.loop
    report = {
        "command": "online-dpo",
        "policy": str(args.policy),
        "prompts": str(args.prompts),
        "reward_model": values["reward_model"],
        "n_prompts": len(prompts),
        "n_pairs": result.n_pairs,
        "n_skipped_uncertain": result.n_skipped_uncertain,
        "n_skipped_ties": result.n_skipped_ties,
        "n_truncated": result.n_truncated,
        "n_steps": loop.n_steps,
        "resumed_from": None if loop.resumed_from is None else str(loop.resumed_from),
        "train_seconds": loop.train_seconds,
        "final_metrics": result.history[-1] if result.history else {},
        "lora": peft_config,
        "config": asdict(config),
    }
    if distributed_env()[0] == 0:
        out = Path(config.output_dir)
        trainer.save_model(out)
        write_json(out / RESULT_NAME, report)
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One line: updates, pairs and skips, the last reward and KL, where."""
    parts = [
        f"online DPO: {report['n_steps']} updates, {report['n_pairs']} pairs trained on "
        f"({report['n_skipped_uncertain']} prompts skipped as uncertain, "
        f"{report['n_skipped_ties']} as ties)"
    ]
    if report["resumed_from"]:
        parts.append(f"resumed from {Path(report['resumed_from']).name}")
    final = report["final_metrics"]
    if final:
        parts.append(
            f"last reward mean {final['reward/mean']:.4f}, epistemic std "
            f"{final['reward/epistemic_std']:.4f}, KL {final['kl']:.4f}"
        )
    parts.append(f"policy and {RESULT_NAME} in {report['config']['output_dir']}")
    return "; ".join(parts)


def _main(args: argparse.Namespace) -> int:
    from auq.scoring.distributed import distributed_env

    report = run_online_dpo(args)
    if distributed_env()[0] == 0:
        print(summary_line(report))
    return 0


def add_parser(sub: argparse._SubParsersAction, debug: argparse.ArgumentParser) -> None:
    """Register ``auq online-dpo``."""
    parser = sub.add_parser(
        "online-dpo",
        parents=[debug],
        help="online DPO: sample, score with an auq reward model, pair best/worst, update",
        description="Train POLICY (a causal-LM directory) with online DPO on the prompts of "
        "PROMPTS (.txt, one per line, or JSONL/Parquet with a prompt column): each update "
        "samples responses, scores them with --reward-model, pairs each prompt's best and "
        "worst under --objective (skipping uncertain orders at --alpha) and takes a DPO step. "
        "Checkpoints, metrics.jsonl, the policy and train_result.json go to --out.",
    )
    parser.add_argument("policy", metavar="POLICY", help="the policy: a causal-LM directory")
    parser.add_argument("prompts", metavar="PROMPTS", help=".txt, JSONL or Parquet prompts")
    add_options(parser, options())
    parser.set_defaults(func=_main)
