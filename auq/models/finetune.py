"""Training a backbone and its heads together (fine-tuning and backbone-level ensembles).

The frozen-backbone path trains heads on cached features (:meth:`EnsembleHead.fit`);
this one runs the backbone in every step, so gradients reach the backbone weights
that train — all of them (``finetune="full"``), PEFT adapters (``"lora"``), or the
member weights of ``uq="lora" | "partial" | "deep"`` — with a separate learning
rate for the freshly initialised heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from auq.heads.fitting import FitConfig, FitHistory, fit_pairs
from auq.losses import bradley_terry_loss, member_preference_loss
from auq.scoring.batching import TokenizedTexts

__all__ = ["finetune_pairs"]


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
        Has ``backbone`` (features (b, d) or (K, b, d)) and ``head`` (rewards (K, b)).
    tokens : TokenizedTexts
        2B items: the chosen responses, then the rejected ones, in pair order.
    n_pairs : int
        B.
    eval_pairs : (TokenizedTexts, int), optional
        Held-out items in the same layout and their pair count.
    margin, weight : Tensor, shape (B,), optional
    config : FitConfig
        ``head_lr`` (default ``lr``) applies to the head, ``lr`` to the backbone.
    """
    backbone, head = model.backbone, model.head
    device = backbone.device
    with torch.no_grad():  # fix the feature standardisation on the initial features
        head._restandardize(backbone.encode(tokens))
    regularizer = getattr(backbone, "regularizer", None)  # e.g. LoRA-member diversity

    def batch_loss(idx: Tensor) -> tuple[Tensor, Tensor]:
        rows = torch.cat([idx, idx + n_pairs]).tolist()
        r = head(backbone.features_of(tokens, rows))  # (K, 2b)
        rc, rr = r[:, : len(idx)], r[:, len(idx) :]
        loss = member_preference_loss(
            rc,
            rr,
            target_margin=None if margin is None else margin[idx].to(device),
            weight=None if weight is None else weight[idx].to(device),
            center_coef=config.center_coef,
        ).mean()
        if regularizer is not None:
            loss = loss + regularizer()
        return loss, (rc - rr).mean(0)

    def evaluate() -> tuple[float, float]:
        eval_tokens, m = eval_pairs
        with torch.no_grad():
            r = head(backbone.encode(eval_tokens))
            margins = r[:, :m] - r[:, m:]  # (K, E)
        return float(bradley_terry_loss(margins).mean()), float(
            (margins.mean(0) > 0).float().mean()
        )

    head_params = list(head.parameters())
    head_ids = {id(p) for p in head_params}
    backbone_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head_params, "lr": config.head_lr or config.lr}]
    if backbone_params:
        groups.append({"params": backbone_params})
    history = fit_pairs(
        model,
        batch_loss,
        param_groups=groups,
        n_pairs=n_pairs,
        config=config,
        evaluate=None if eval_pairs is None else evaluate,
        description=f"RewardModel({model.config.uq}, {model.config.finetune})",
    )
    head.is_fitted.fill_(True)
    return history
