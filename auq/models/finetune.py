"""Training a backbone and its heads together (fine-tuning and backbone-level ensembles).

The frozen-backbone path trains heads on cached features (``head.fit``); this one
runs the backbone in every step, so gradients reach the backbone weights that
train — all of them (``finetune="full"``), PEFT adapters (``"lora"``), or the
member weights of ``uq="lora" | "partial" | "deep" | "mc_dropout"`` — with a
separate learning rate for the heads. Both paths use the head's one member-loss
hook (:meth:`~auq.heads.EnsembleHead.member_loss`), so bootstrap weights and
anchoring mean the same on each.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from auq.heads.fitting import FitConfig, FitHistory, StepOutput, fit_pairs
from auq.scoring import TokenizedTexts

__all__ = ["finetune_pairs"]

#: items encoded (once, before training) to set the heads' feature standardisation
STANDARDIZATION_SAMPLE = 512


def finetune_pairs(
    model: nn.Module,
    tokens: TokenizedTexts,
    n_pairs: int,
    *,
    eval_pairs: tuple[TokenizedTexts, int] | None,
    margin: Tensor | None,
    weight: Tensor | None,
    config: FitConfig,
) -> FitHistory:
    """Minimise the members' Bradley–Terry loss through backbone and head.

    Parameters
    ----------
    model : RewardModel
        Has ``backbone`` (features (b, d) or (K, b, d)) and ``head`` (an
        :class:`~auq.heads.EnsembleHead`: rewards (K, b)).
    tokens : TokenizedTexts
        2B items: the chosen responses, then the rejected ones, in pair order.
    n_pairs : int
        B.
    eval_pairs : (TokenizedTexts, int), optional
        Held-out items in the same layout and their pair count.
    margin, weight : Tensor, shape (B,), optional
    config : FitConfig
        ``head_lr`` (default ``lr``) applies to the head, ``lr`` to the backbone.

    Notes
    -----
    The feature standardisation is set from a seeded sample of at most
    :data:`STANDARDIZATION_SAMPLE` training items, not from a full pass over the
    training set; a fitted (or checkpoint-initialised) head keeps its function. After
    training, the same sample aligns the members' reward offsets
    (:meth:`~auq.heads.EnsembleHead.align_member_offsets`).
    """
    backbone, head = model.backbone, model.head
    device = backbone.device
    gen = torch.Generator().manual_seed(config.seed)
    sample = torch.randperm(len(tokens), generator=gen)[:STANDARDIZATION_SAMPLE]
    head.refit_standardization(_sample_features(backbone, tokens, sample))
    head.begin_training(n_pairs)
    regularizer = getattr(backbone, "regularizer", None)  # e.g. LoRA-member diversity

    def batch_loss(idx: Tensor) -> StepOutput:
        rows = torch.cat([idx, idx + n_pairs]).tolist()
        r = head(backbone.features_of(tokens, rows))  # (K, 2b)
        b = len(idx)
        step = head.member_loss(
            r[:, :b],
            r[:, b:],
            idx,
            target_margin=None if margin is None else margin[idx].to(device),
            weight=None if weight is None else weight[idx].to(device),
            center_coef=config.center_coef,
        )
        if regularizer is None:
            return step
        extra = regularizer()
        penalty = extra if step.penalty is None else step.penalty + extra
        return step._replace(penalty=penalty)

    def evaluate() -> tuple[float, float]:
        eval_tokens, m = eval_pairs
        with torch.no_grad():
            phi = backbone.encode(eval_tokens)
            return head.evaluate_pairs(phi[..., :m, :], phi[..., m:, :])

    groups = head.param_groups(config.head_lr or config.lr)
    head_ids = {id(p) for p in head.parameters()}
    backbone_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    if backbone_params:
        groups.append({"params": backbone_params})
    head.fitted_.fill_(True)  # evaluation inside the loop predicts with the live weights
    history = fit_pairs(
        model,
        batch_loss,
        param_groups=groups,
        n_pairs=n_pairs,
        config=config,
        evaluate=None if eval_pairs is None else evaluate,
        description=f"RewardModel({model.config.uq}, {model.config.finetune})",
    )
    head.align_member_offsets(_sample_features(backbone, tokens, sample))
    head.n_pairs_.fill_(n_pairs)
    return history


def _sample_features(backbone: nn.Module, tokens: TokenizedTexts, sample: Tensor) -> Tensor:
    """Inference features of the sampled items through the scoring engine, (n, d) or (K, n, d)."""
    return backbone.encode(tokens.subset(sample.tolist()), description="standardisation")
