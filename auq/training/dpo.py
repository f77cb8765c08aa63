"""Offline DPO with an uncertainty-aware reward model in the loop: :class:`DPOTrainer`.

Plain DPO (Rafailov et al., 2023) trains a policy on fixed preference pairs
against a frozen reference policy whose log-probabilities are computed once,
before training. An auq reward model scored on the same pairs (one pass through
the scoring engine) makes it uncertainty-aware (``DPOConfig.uncertainty``):

* ``"soft_label"`` — the calibrated P(chosen ≻ rejected) is the target of the
  logistic loss (conservative DPO): a pair the reward model doubts pulls less;
* ``"weight"`` — per-pair weights falling in the margin's epistemic variance
  (:func:`~auq.training.pair_targets.uncertainty_weights`, mean 1);
* ``"pessimistic"`` — a pair whose margin interval mean ± k·std lies below zero
  is trained the other way round, one straddling zero is dropped; both counted.

Everything trains through the one loop (:mod:`auq.loop`): accelerate, DDP,
accumulation, mixed precision, checkpoints and resume. Metrics carry TRL's names
(``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``) plus the reward
model's view of each batch (``uncertainty/...``).

Examples
--------
>>> trainer = DPOTrainer(policy, tokenizer=tok, train_dataset=pairs,
...                      reward_model=rm, args=DPOConfig(uncertainty="soft_label"))
>>> result = trainer.train()                                     # doctest: +SKIP
>>> trainer.evaluate(held_out)["rewards/accuracies"]             # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from auq.loop import EpochBatches, LoopResult, StepResult, TrainingLoop
from auq.training.dpo_config import DPOConfig
from auq.training.dpo_step import (
    disable_dropout,
    dpo_metrics,
    dpo_step,
    logps_reduction,
    model_fingerprint,
    pad_token_id,
    reference_context,
    sequence_logps_batched,
)
from auq.training.losses import DROP, SWAP, preference_loss
from auq.training.pair_targets import PairTargets, pair_targets
from auq.training.policy_data import TokenizedPairs, tokenize_pairs
from auq.training.policy_model import load_policy, save_policy, wrap_peft
from auq.utils.console import get_logger, warn_user
from auq.utils.io import load_safetensors, read_json, write_json

__all__ = ["DPOResult", "DPOTrainer"]

logger = get_logger("auq.training")


@dataclass
class DPOResult:
    """What :meth:`DPOTrainer.train` did.

    Attributes
    ----------
    history : list of dict
        Logged metrics per update (TRL's names, ``loss``, ``lr``, ``uncertainty/...``).
    n_pairs : int
        Pairs in the training set.
    n_trained : int
        Pairs trained on (all but the dropped ones).
    n_dropped, n_swapped : int
        Pessimism's counts (0 in the other modes).
    n_truncated_prompts, n_truncated_responses : int
        Tokenisation's counts.
    targets : dict
        Summary of the reward model's view of the pairs (empty without one).
    loop : LoopResult
    """

    history: list[dict[str, float]]
    n_pairs: int
    n_trained: int
    n_dropped: int
    n_swapped: int
    n_truncated_prompts: int
    n_truncated_responses: int
    targets: dict[str, float] = field(default_factory=dict)
    loop: LoopResult | None = None


class DPOTrainer:
    """Offline DPO, optionally uncertainty-aware (see the module docstring).

    Parameters
    ----------
    model : str, PathLike or transformers causal LM
        The policy (a name / directory is loaded with ``AutoModelForCausalLM``).
    tokenizer : tokenizer, optional
        Needed when ``model`` is an object.
    train_dataset : list of rows, datasets.Dataset, pandas.DataFrame or PreferenceDataset
        TRL's columns ``prompt``, ``chosen``, ``rejected`` (plain text or chats); an
        optional ``weight`` column weighs each pair's loss (times the uncertainty
        weights with ``uncertainty="weight"``).
    args : DPOConfig, optional
    reward_model : auq.RewardModel, optional
        Required by ``args.uncertainty`` other than "none" (and refused without it).
        It reads the texts with its own tokenizer, whatever the policy's.
    ref_model : causal LM, optional
        The reference policy; default: the policy as it is before training (a
        LoRA policy's base model with adapters off).
    peft_config : peft.LoraConfig or dict, optional
        Train LoRA adapters instead of the whole policy.
    eval_dataset : same types as ``train_dataset``, optional
        Pairs for :meth:`evaluate` (run after training when given).
    """

    def __init__(
        self,
        model: Any,
        *,
        train_dataset: Any,
        tokenizer: Any = None,
        args: DPOConfig | None = None,
        reward_model: Any = None,
        ref_model: Any = None,
        peft_config: Any = None,
        eval_dataset: Any = None,
    ):
        self.args = args = args or DPOConfig()
        if not isinstance(args, DPOConfig):
            raise TypeError(f"args must be a DPOConfig, got {type(args).__name__}")
        if args.uncertainty != "none" and reward_model is None:
            raise ValueError(
                f"uncertainty={args.uncertainty!r} needs a reward_model (an auq.RewardModel); "
                "pass one, or use uncertainty='none'"
            )
        if args.uncertainty == "none" and reward_model is not None:
            raise ValueError(
                "reward_model is only used with uncertainty='soft_label', 'weight' or "
                "'pessimistic'; choose one, or leave reward_model out"
            )
        if reward_model is not None and not hasattr(reward_model, "predict"):
            raise TypeError(
                f"reward_model must be an auq.RewardModel, got {type(reward_model).__name__}"
            )
        self.model, self.tokenizer = load_policy(model, tokenizer)
        if args.disable_dropout:
            disable_dropout(self.model)
            if ref_model is not None:
                disable_dropout(ref_model)
        self.pad_token_id = pad_token_id(self.tokenizer)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.pairs = tokenize_pairs(
            train_dataset,
            self.tokenizer,
            max_length=args.max_length,
            max_prompt_length=args.max_prompt_length,
        )
        self.eval_pairs = (
            None
            if eval_dataset is None
            else tokenize_pairs(
                eval_dataset,
                self.tokenizer,
                max_length=args.max_length,
                max_prompt_length=args.max_prompt_length,
            )
        )
        self.reward_model, self.ref_model = reward_model, ref_model
        self.peft = peft_config is not None
        self.model = wrap_peft(self.model, peft_config)
        self.targets_: PairTargets | None = None
        self._eval_reference: tuple[Tensor, Tensor] | None = None
        self._trained = False

    # -- the reference policy ----------------------------------------------------------
    def _reference_logps(self, pairs: TokenizedPairs, name: str) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) reference log-probabilities, shape (N,) each; computed once and
        kept in ``output_dir`` (reused when the tokens and settings match)."""
        args = self.args
        reduction = logps_reduction(args.loss_type)
        reference = self.ref_model
        if reference is None and not self.peft:
            reference = self.model  # before training: the policy is its own reference
        digest = hashlib.sha256(
            json.dumps([pairs.prompt_ids, pairs.chosen_ids, pairs.rejected_ids, reduction]).encode()
        )
        digest.update(model_fingerprint(reference if reference is not None else self.model))
        digest = digest.hexdigest()
        cache = None if args.output_dir is None else Path(args.output_dir) / f"reference_{name}"
        if cache is not None and (cache / "meta.json").is_file():
            meta = read_json(cache / "meta.json", what="reference log-probabilities")
            if meta.get("digest") == digest:
                tensors = load_safetensors(cache / "logps.safetensors")
                return tensors["chosen"], tensors["rejected"]
        with reference_context(self.model, reference) as ref:
            logps = sequence_logps_batched(
                ref,
                [*pairs.prompt_ids, *pairs.prompt_ids],
                [*pairs.chosen_ids, *pairs.rejected_ids],
                pad_token_id=self.pad_token_id,
                batch_size=2 * args.reference_batch_size,
                reduction=reduction,
                progress=args.progress,
                description=f"reference log-probabilities ({name})",
            )
        chosen, rejected = logps[: len(pairs)], logps[len(pairs) :]
        if cache is not None:
            from safetensors.torch import save_file

            cache.mkdir(parents=True, exist_ok=True)
            save_file({"chosen": chosen, "rejected": rejected}, str(cache / "logps.safetensors"))
            write_json(cache / "meta.json", {"digest": digest, "n_pairs": len(pairs)})
        return chosen, rejected

    # -- training -----------------------------------------------------------------------
    def _targets(self) -> PairTargets | None:
        args = self.args
        if args.uncertainty == "none":
            return None
        return pair_targets(
            self.reward_model,
            self.train_dataset,
            mode=args.uncertainty,
            k=args.k,
            weight_schedule=args.weight_schedule,
            weight_scale=args.weight_scale,
            progress=args.progress,
        )

    def train(self) -> DPOResult:
        """Score the pairs with the reward model (when uncertainty-aware), compute the
        reference log-probabilities once, and train.

        Returns
        -------
        DPOResult
        """
        args, pairs = self.args, self.pairs
        targets = self.targets_ = self._targets()
        n = len(pairs)
        keep = torch.arange(n)
        prompts, chosen, rejected = pairs.prompt_ids, pairs.chosen_ids, pairs.rejected_ids
        label = weight = None
        if targets is not None:
            if len(targets) != n:
                raise RuntimeError(f"the reward model scored {len(targets)} pairs, expected {n}")
            label, weight = targets.label, targets.weight
            if targets.actions is not None:
                chosen, rejected = list(chosen), list(rejected)
                for i in torch.nonzero(targets.actions == SWAP).flatten().tolist():
                    chosen[i], rejected[i] = rejected[i], chosen[i]
                keep = torch.nonzero(targets.actions != DROP).flatten()
        if pairs.weight is not None:  # the dataset's own weight column multiplies in
            given = torch.as_tensor(pairs.weight, dtype=torch.float64)
            weight = given if weight is None else weight * given
        if pairs.margin is not None:
            warn_user(
                "the dataset's 'margin' column is not used by DPO (it is a reward-model "
                "training target); drop it to silence this"
            )
        if len(keep) == 0:
            raise ValueError(
                f"pessimism dropped all {n} pairs (no margin interval mean ± {args.k}·std excludes "
                "zero); lower k, or use uncertainty='weight' or 'soft_label'"
            )
        kept = keep.tolist()
        prompts = [prompts[i] for i in kept]
        chosen, rejected = [chosen[i] for i in kept], [rejected[i] for i in kept]
        label = None if label is None else label[keep].float()
        weight = None if weight is None else weight[keep].float()
        std = None if targets is None else targets.margin_std[keep].float()
        trained = TokenizedPairs(
            prompt_ids=prompts,
            chosen_ids=chosen,
            rejected_ids=rejected,
            n_pairs=len(kept),
            n_truncated_prompts=pairs.n_truncated_prompts,
            n_truncated_responses=pairs.n_truncated_responses,
            rows=[pairs.rows[i] for i in kept],
        )
        ref_chosen, ref_rejected = self._reference_logps(trained, "train")
        if self.eval_pairs is not None:
            self._eval_reference = self._reference_logps(self.eval_pairs, "eval")

        def step(idx: Tensor) -> StepResult:
            rows = idx.tolist()
            out = dpo_step(
                self.model,
                [prompts[i] for i in rows],
                [chosen[i] for i in rows],
                [rejected[i] for i in rows],
                ref_chosen[idx],
                ref_rejected[idx],
                beta=args.beta,
                loss_type=args.loss_type,
                pad_token_id=self.pad_token_id,
                label=None if label is None else label[idx],
                weight=None if weight is None else weight[idx],
            )
            if std is not None:
                out.metrics["uncertainty/margin_std"] = std[idx].mean()
            if label is not None:
                out.metrics["uncertainty/label"] = label[idx].mean()
            if weight is not None:
                out.metrics["uncertainty/weight"] = weight[idx].mean()
            return out

        batches = EpochBatches(
            len(kept),
            args.batch_size,
            seed=args.seed,
            accumulation=args.gradient_accumulation_steps,
        )
        max_steps = args.max_steps or args.epochs * batches.per_epoch
        self.model.train()
        loop = TrainingLoop(
            self.model,
            step,
            config=args.loop_config(max_steps),
            description=f"DPO ({args.uncertainty})" if targets is not None else "DPO",
        )
        self._trained = True
        result = loop.run(batches)
        self.model.eval()
        summary = {} if targets is None else targets.summary()
        logger.info(
            "DPO: %d updates on %d of %d pairs (%d dropped, %d swapped)",
            result.n_steps,
            len(kept),
            n,
            n - len(kept),
            0 if targets is None else targets.n_swapped,
        )
        return DPOResult(
            history=result.history,
            n_pairs=n,
            n_trained=len(kept),
            n_dropped=n - len(kept),
            n_swapped=0 if targets is None else targets.n_swapped,
            n_truncated_prompts=pairs.n_truncated_prompts,
            n_truncated_responses=pairs.n_truncated_responses,
            targets=summary,
            loop=result,
        )

    @torch.no_grad()
    def evaluate(self, eval_dataset: Any = None) -> dict[str, float]:
        """TRL's DPO metrics (implicit rewards, their accuracy, log-probabilities) and the
        loss on held-out pairs (default: ``eval_dataset``).

        Returns
        -------
        dict of str to float
        """
        args = self.args
        if eval_dataset is None:
            if self.eval_pairs is None:
                raise ValueError("evaluate needs pairs: pass eval_dataset here or to the trainer")
            pairs = self.eval_pairs
            reference = self._eval_reference or self._reference_logps(pairs, "eval")
        else:
            if self._trained and self.ref_model is None and not self.peft:
                raise ValueError(
                    "after training, the policy is no longer its own reference: evaluate new "
                    "pairs with a ref_model, or pass them as the trainer's eval_dataset (their "
                    "reference log-probabilities are computed before training)"
                )
            pairs = tokenize_pairs(
                eval_dataset,
                self.tokenizer,
                max_length=args.max_length,
                max_prompt_length=args.max_prompt_length,
            )
            reference = self._reference_logps(pairs, "eval-custom")
        reduction = logps_reduction(args.loss_type)
        logps = sequence_logps_batched(
            self.model,
            [*pairs.prompt_ids, *pairs.prompt_ids],
            [*pairs.chosen_ids, *pairs.rejected_ids],
            pad_token_id=self.pad_token_id,
            batch_size=2 * args.reference_batch_size,
            reduction=reduction,
        )
        n = len(pairs)
        metrics = dpo_metrics(logps[:n], logps[n:], *reference, beta=args.beta)
        loss = preference_loss(args.loss_type, logps[:n], logps[n:], *reference, beta=args.beta)
        out = {key: float(value) for key, value in metrics.items()}
        out["loss"] = float(loss.mean())
        out["n_pairs"] = float(n)
        return out

    def save_model(self, output_dir: str | Path | None = None) -> Path:
        """Save the policy (safetensors; the adapters only for LoRA) and its tokenizer."""
        target = output_dir or self.args.output_dir
        if target is None:
            raise ValueError("save_model needs a directory: pass one or set args.output_dir")
        return save_policy(self.model, self.tokenizer, target)
