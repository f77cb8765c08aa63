"""What offline and online DPO share: policy and reference log-probabilities of pairs,
the step's loss, and TRL's metric names.

Both trainers end every micro-batch in :func:`dpo_step`, so a metric means the same
in each: ``rewards/chosen`` and ``rewards/rejected`` are the mean implicit rewards
β(π − ref), ``rewards/margins`` their mean difference, ``rewards/accuracies`` the
share of pairs whose implicit reward ranks the chosen response first, and
``logps/chosen`` / ``logps/rejected`` the policy's mean log-probabilities.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from auq.loop import StepResult
from auq.training.logprobs import collate_sequences, sequence_logps
from auq.training.losses import implicit_rewards, preference_loss
from auq.utils.console import progress_bar

__all__ = [
    "disable_dropout",
    "dpo_metrics",
    "dpo_step",
    "logps_reduction",
    "model_device",
    "model_fingerprint",
    "pad_token_id",
    "reference_context",
    "sequence_logps_batched",
]


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (TRL's default for DPO): a response's
    log-probability is then the same in training and evaluation passes."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def logps_reduction(loss_type: str) -> str:
    """Summed log-probabilities for DPO; IPO uses the per-token mean (as TRL does)."""
    return "mean" if loss_type == "ipo" else "sum"


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (its EOS id when it has none)."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError(
            "the policy's tokenizer has neither a pad_token_id nor an eos_token_id; "
            "set tokenizer.pad_token before training"
        )
    return int(pad)


def model_fingerprint(model: nn.Module) -> bytes:
    """A digest of a model's identity for caches: its name or path, its parameter names and
    shapes, and the first values of every parameter (cheap even for large models)."""
    import hashlib

    digest = hashlib.sha256(str(getattr(model, "name_or_path", "")).encode())
    for name, param in model.named_parameters():
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(param.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return digest.digest()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def reference_context(policy: nn.Module, reference: nn.Module | None) -> Iterator[nn.Module]:
    """The reference policy: ``reference`` when given, else ``policy`` with its PEFT
    adapters switched off (a LoRA policy's base model is its reference, no copy)."""
    if reference is not None:
        yield reference
        return
    disable = getattr(policy, "disable_adapter", None)
    if disable is None:
        raise ValueError(
            "no reference policy: pass ref_model, or train a PEFT (LoRA) policy whose "
            "base model serves as the reference"
        )
    with disable():
        yield policy


@torch.inference_mode()
def sequence_logps_batched(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int,
    reduction: str,
    progress: bool | None = False,
    description: str = "reference log-probabilities",
) -> Tensor:
    """Log-probabilities of N responses under ``model`` in eval mode, shape (N,), on the CPU.

    Sequences are sorted by length so each batch pads little; the caller's order
    is restored.
    """
    n = len(prompt_ids)
    order = sorted(range(n), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    out = torch.empty(n, dtype=torch.float32)
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        for start in progress_bar(range(0, n, batch_size), enabled=progress, desc=description):
            idx = order[start : start + batch_size]
            batch = collate_sequences(
                [prompt_ids[i] for i in idx],
                [response_ids[i] for i in idx],
                pad_token_id=pad_token_id,
            ).to(device)
            out[idx] = sequence_logps(model, batch, reduction=reduction).float().cpu()
    finally:
        model.train(was_training)
    return out


def dpo_metrics(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
) -> dict[str, Tensor]:
    """TRL's DPO metrics of a batch (detached means)."""
    with torch.no_grad():
        chosen = implicit_rewards(policy_chosen, ref_chosen, beta=beta)
        rejected = implicit_rewards(policy_rejected, ref_rejected, beta=beta)
        return {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "logps/chosen": policy_chosen.detach().mean(),
            "logps/rejected": policy_rejected.detach().mean(),
        }


def dpo_step(
    policy: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    chosen_ids: Sequence[Sequence[int]],
    rejected_ids: Sequence[Sequence[int]],
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    loss_type: str,
    pad_token_id: int,
    label: Tensor | None = None,
    weight: Tensor | None = None,
) -> StepResult:
    """The DPO loss of b pairs (mean over pairs) and its metrics.

    Chosen and rejected responses run in one forward pass of 2b sequences.

    Parameters
    ----------
    policy : causal LM being trained
    prompt_ids, chosen_ids, rejected_ids : b lists of token ids
    ref_chosen, ref_rejected : Tensor, shape (b,)
        The reference policy's log-probabilities (same reduction as the loss uses).
    beta, loss_type : see :class:`~auq.training.DPOConfig`
    label, weight : Tensor, shape (b,), optional
        Soft targets and per-pair weights.
    """
    b = len(prompt_ids)
    device = model_device(policy)
    batch = collate_sequences(
        [*prompt_ids, *prompt_ids], [*chosen_ids, *rejected_ids], pad_token_id=pad_token_id
    ).to(device)
    logps = sequence_logps(policy, batch, reduction=logps_reduction(loss_type))  # (2b,)
    chosen, rejected = logps[:b], logps[b:]
    ref_c, ref_r = ref_chosen.to(device), ref_rejected.to(device)

    def move(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(device=device, dtype=torch.float32)

    losses = preference_loss(
        loss_type,
        chosen,
        rejected,
        ref_c,
        ref_r,
        beta=beta,
        label=move(label),
        weight=move(weight),
    )
    metrics = dpo_metrics(chosen, rejected, ref_c, ref_r, beta=beta)
    return StepResult(losses.mean(), metrics)
