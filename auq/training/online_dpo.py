"""Online DPO whose inner loop scores with the uncertainty layer: :class:`OnlineDPOTrainer`.

Each update (Guo et al., 2024, "Direct language model alignment from online AI
feedback"; the pair rule of Xiong et al., 2024):

1. take ``prompts_per_step`` prompts and sample ``num_generations`` responses per
   prompt from the current policy (a :class:`~auq.training.Generator`; Hugging
   Face ``generate`` by default);
2. score every response with the auq reward model through the scoring engine —
   the hot loop: one batched call, the prompt run once per group on a decoder
   (prefix sharing) — and rank the responses of a prompt by the penalised reward
   ``objective`` (:func:`auq.objectives.penalized_reward`);
3. pair the best and the worst response of each prompt, skipping prompts whose
   order the reward model is unsure of at level ``alpha``
   (:func:`~auq.training.pair_selection.select_pairs`);
4. take a DPO step on those pairs against the frozen reference policy.

Logged per update: TRL's DPO metrics, ``kl`` (a Monte-Carlo estimate of
KL(π ‖ π_ref) over the sampled responses, in nats per sequence), the batch's
reward mean, penalised reward and epistemic variance (``reward/...``), the gold
reward when a ``gold_reward`` function is given (``gold/...``, e.g. a testbed
world's), the pair counts, and the seconds spent generating and scoring
(``time/generate``, ``time/score``; :class:`OnlineDPOResult` adds
``time/update``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from auq.loop import EpochBatches, LoopResult, StepResult, TrainingLoop
from auq.objectives import penalized_reward
from auq.training.dpo_config import OnlineDPOConfig
from auq.training.dpo_step import (
    disable_dropout,
    dpo_metrics,
    logps_reduction,
    model_device,
    pad_token_id,
    reference_context,
    sequence_logps_batched,
)
from auq.training.generation import Generator, HFGenerator, as_prompt_list
from auq.training.logprobs import collate_sequences, sequence_logps
from auq.training.losses import preference_loss
from auq.training.pair_selection import select_pairs
from auq.training.policy_data import tokenize_responses
from auq.training.policy_model import frozen_copy, load_policy, save_policy, wrap_peft
from auq.utils.validation import check_positive_int

__all__ = ["SAMPLING_OPTIONS", "OnlineDPOResult", "OnlineDPOTrainer"]

#: OnlineDPOConfig fields that configure the default generator only
SAMPLING_OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p", "generation_batch_size")


@dataclass
class OnlineDPOResult:
    """What :meth:`OnlineDPOTrainer.train` did.

    Attributes
    ----------
    history : list of dict
        Logged metrics per update, with ``time/update`` = the update's seconds minus
        its generation and scoring.
    n_pairs : int
        Pairs trained on over the run (this process).
    n_skipped_uncertain, n_skipped_ties, n_truncated : int
        Prompts skipped as uncertain / tied, responses cut at ``max_new_tokens``.
    loop : LoopResult
    """

    history: list[dict[str, float]]
    n_pairs: int = 0
    n_skipped_uncertain: int = 0
    n_skipped_ties: int = 0
    n_truncated: int = 0
    loop: LoopResult | None = field(default=None, repr=False)


def _prompts_of(prompts: Any) -> list:
    """Prompts from a list of texts / chats or a dataset with a ``prompt`` column."""
    if hasattr(prompts, "column_names") or hasattr(prompts, "columns"):  # datasets / pandas
        columns = list(getattr(prompts, "column_names", None) or prompts.columns)
        if "prompt" not in columns:
            raise ValueError(
                f"prompts: the dataset has no 'prompt' column (columns: {', '.join(columns)})"
            )
        return as_prompt_list(list(prompts["prompt"]))
    if isinstance(prompts, list) and prompts and isinstance(prompts[0], dict):
        if "prompt" not in prompts[0]:
            raise ValueError("prompts: rows are dicts without a 'prompt' field")
        return as_prompt_list([row["prompt"] for row in prompts])
    return as_prompt_list(prompts)


class OnlineDPOTrainer:
    """Online DPO with an uncertainty-aware reward model (see the module docstring).

    Parameters
    ----------
    model : str, PathLike or transformers causal LM
        The policy.
    reward_model : auq.RewardModel
        Scores the sampled responses (with its own tokenizer, so policy and reward
        model may tokenise differently: responses are decoded and re-tokenised).
    prompts : sequence of str / chats, or a dataset with a ``prompt`` column
    tokenizer : tokenizer, optional
        Needed when ``model`` is an object.
    args : OnlineDPOConfig, optional
    ref_model : causal LM, optional
        Default: a frozen copy of the initial policy (a LoRA policy's base model
        with adapters off, no copy).
    peft_config : peft.LoraConfig or dict, optional
        Train LoRA adapters.
    generator : Generator, optional
        Samples from the policy; default :class:`~auq.training.HFGenerator` on the
        policy with ``args``' sampling settings.
    spread_calibrator : SpreadScaler, optional
        Rescales the reward model's spread before the objective and the α test.
    gold_reward : callable, optional
        ``gold_reward(prompts, responses) -> array (N,)``: a known true reward (the
        testbed world's ``gold_reward``), logged, never trained on.
    """

    def __init__(
        self,
        model: Any,
        *,
        reward_model: Any,
        prompts: Any,
        tokenizer: Any = None,
        args: OnlineDPOConfig | None = None,
        ref_model: Any = None,
        peft_config: Any = None,
        generator: Generator | None = None,
        spread_calibrator: Any = None,
        gold_reward: Callable[[Sequence, Sequence], Any] | None = None,
    ):
        self.args = args = args or OnlineDPOConfig()
        if not isinstance(args, OnlineDPOConfig):
            raise TypeError(f"args must be an OnlineDPOConfig, got {type(args).__name__}")
        if reward_model is None or not hasattr(reward_model, "score"):
            raise TypeError(
                f"reward_model must be an auq.RewardModel, got {type(reward_model).__name__}"
            )
        if spread_calibrator is not None and not hasattr(spread_calibrator, "transform_rewards"):
            raise TypeError(
                "spread_calibrator must be a fitted SpreadScaler, got "
                f"{type(spread_calibrator).__name__}"
            )
        if gold_reward is not None and not callable(gold_reward):
            raise TypeError("gold_reward must be callable: gold_reward(prompts, responses)")
        if generator is not None and not isinstance(generator, Generator):
            raise TypeError("generator must implement generate(prompts, n, *, seed)")
        if generator is not None:  # its own sampling settings rule; refuse ours, not ignore them
            defaults = OnlineDPOConfig()
            set_here = [n for n in SAMPLING_OPTIONS if getattr(args, n) != getattr(defaults, n)]
            if set_here:
                raise ValueError(
                    f"{', '.join(set_here)} configure the default HFGenerator; with generator= "
                    "set them on that generator instead"
                )
        self.prompts = _prompts_of(prompts)
        self.model, self.tokenizer = load_policy(model, tokenizer)
        self.pad_token_id = pad_token_id(self.tokenizer)
        if args.disable_dropout:
            disable_dropout(self.model)
            if ref_model is not None:
                disable_dropout(ref_model)
        self.peft = peft_config is not None
        if ref_model is None and not self.peft:
            ref_model = frozen_copy(self.model)
        self.model = wrap_peft(self.model, peft_config)
        self.reward_model, self.ref_model = reward_model, ref_model
        self.spread_calibrator, self.gold_reward = spread_calibrator, gold_reward
        self.generator = generator or HFGenerator(
            self.model,
            self.tokenizer,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            batch_size=args.generation_batch_size,
            progress=args.progress,
        )

    # -- one round: sample, score, pair --------------------------------------------------
    def _sample_and_score(self, prompts: list, seed: int, n: int) -> dict[str, Any]:
        """Sample ``n`` responses per prompt, score them, tokenise them."""
        tick = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            responses = self.generator.generate(prompts, n, seed=seed)
        finally:
            self.model.train(was_training)
        stats = getattr(self.generator, "last_stats", None)
        truncated = (
            np.zeros((len(prompts), n), bool) if stats is None else np.asarray(stats.truncated)
        )
        flat_prompts = [p for p in prompts for _ in range(n)]
        flat = [r for group in responses for r in group]
        generated = time.perf_counter()
        prediction = self.reward_model.score(flat_prompts, flat, progress=False)
        scored = time.perf_counter()
        prompt_ids, response_ids = self._token_ids(flat_prompts, flat, truncated, n)
        return {
            "prompts": flat_prompts,
            "responses": flat,
            "prediction": prediction,
            "prompt_ids": prompt_ids,
            "response_ids": response_ids,
            "n_truncated": int(truncated.sum()),
            "time/generate": generated - tick,
            "time/score": scored - generated,
        }

    def _token_ids(self, prompts: list, responses: list[str], truncated, n: int):
        """The policy's token ids of the samples: the generator's own when it exposes them
        (the sampled tokens exactly), else the texts re-tokenised."""
        gen = self.generator
        sampled = getattr(gen, "last_response_ids", None)
        if sampled is not None and getattr(gen, "tokenizer", None) is self.tokenizer:
            prompt_ids = [ids for ids in gen.last_prompt_ids for _ in range(n)]
            return prompt_ids, [ids for group in sampled for ids in group]
        return tokenize_responses(
            self.tokenizer,
            prompts,
            responses,
            append_eos=(~truncated.ravel()).tolist(),
            max_length=self.args.max_length,
            max_prompt_length=self.args.max_prompt_length,
        )

    def _penalized(self, prediction) -> Tensor:
        a = self.args
        return penalized_reward(
            prediction,
            a.objective,
            lam=a.lam,
            k=a.k,
            beta=a.reward_beta,
            calibrator=self.spread_calibrator,
        )

    def _reference_logps(self, prompt_ids, response_ids, reduction: str) -> Tensor:
        with reference_context(self.model, self.ref_model) as ref:
            return sequence_logps_batched(
                ref,
                prompt_ids,
                response_ids,
                pad_token_id=self.pad_token_id,
                batch_size=len(prompt_ids),
                reduction=reduction,
            )

    def _sequence_kl(self, policy: Tensor, reference: Tensor, n_tokens: Tensor) -> Tensor:
        """KL(π ‖ π_ref) per sequence, Monte Carlo over the sampled responses."""
        diff = policy.detach().float().cpu() - reference
        if logps_reduction(self.args.loss_type) == "mean":
            diff = diff * n_tokens.float().cpu()
        return diff.mean()

    def _metrics(self, round_: dict, penalized: Tensor, pairs, n_tokens) -> dict[str, float]:
        pred = round_["prediction"]
        out = {
            "reward/mean": float(pred.mean.mean()),
            "reward/penalized": float(penalized.mean()),
            "reward/epistemic_var": float(pred.var.mean()),
            "reward/epistemic_std": float(pred.var.clamp_min(0).sqrt().mean()),
            "generation/truncated": float(round_["n_truncated"]),
            "generation/response_tokens": float(n_tokens.float().mean()),
            "time/generate": round_["time/generate"],
            "time/score": round_["time/score"],
        }
        if pairs is not None:
            out["pairs/selected"] = float(len(pairs))
            out["pairs/skipped_uncertain"] = float(pairs.n_skipped_uncertain)
            out["pairs/skipped_ties"] = float(pairs.n_skipped_ties)
        if self.gold_reward is not None:
            gold = np.asarray(self.gold_reward(round_["prompts"], round_["responses"]), float)
            out["gold/mean"] = float(gold.mean())
            if pairs is not None and len(pairs):
                c, r = pairs.chosen_index.numpy(), pairs.rejected_index.numpy()
                out["gold/pair_accuracy"] = float((gold[c] > gold[r]).mean())
                out["gold/chosen"] = float(gold[c].mean())
        return out

    def _step(self, share: list[tuple[int, int]]) -> StepResult:
        args = self.args
        micro_step = share[0][1]
        seed = (args.seed * 1_000_003 + micro_step * 7919 + share[0][0]) % 2**31
        round_ = self._sample_and_score(
            [self.prompts[p] for p, _ in share], seed, args.num_generations
        )
        pairs = select_pairs(
            round_["prediction"],
            args.num_generations,
            objective=args.objective,
            lam=args.lam,
            k=args.k,
            beta=args.reward_beta,
            alpha=args.alpha,
            calibrator=self.spread_calibrator,
            seed=seed,
        )
        reduction = logps_reduction(args.loss_type)
        reference = self._reference_logps(round_["prompt_ids"], round_["response_ids"], reduction)
        batch = collate_sequences(
            round_["prompt_ids"], round_["response_ids"], pad_token_id=self.pad_token_id
        ).to(model_device(self.model))
        logps = sequence_logps(self.model, batch, reduction=reduction)  # (P·n,)
        metrics = self._metrics(round_, pairs.penalized, pairs, batch.n_response_tokens)
        metrics["kl"] = float(self._sequence_kl(logps, reference, batch.n_response_tokens))
        self._counts["n_pairs"] += len(pairs)
        self._counts["n_skipped_uncertain"] += pairs.n_skipped_uncertain
        self._counts["n_skipped_ties"] += pairs.n_skipped_ties
        self._counts["n_truncated"] += round_["n_truncated"]
        if not len(pairs):  # every prompt skipped: no signal, keep DDP's backward in step
            return StepResult(logps.sum() * 0.0, metrics)
        c, r = pairs.chosen_index.to(logps.device), pairs.rejected_index.to(logps.device)
        ref = reference.to(logps.device)
        losses = preference_loss(args.loss_type, logps[c], logps[r], ref[c], ref[r], beta=args.beta)
        metrics.update(dpo_metrics(logps[c], logps[r], ref[c], ref[r], beta=args.beta))
        return StepResult(losses.mean(), metrics)

    def train(self) -> OnlineDPOResult:
        """Run ``args.max_steps`` online updates.

        Returns
        -------
        OnlineDPOResult
        """
        args = self.args
        self._counts = {
            "n_pairs": 0,
            "n_skipped_uncertain": 0,
            "n_skipped_ties": 0,
            "n_truncated": 0,
        }
        prompts = EpochBatches(
            len(self.prompts),
            args.prompts_per_step,
            seed=args.seed,
            accumulation=args.gradient_accumulation_steps,
        )

        def batch_at(i: int) -> list[tuple[int, int]]:
            return [(p, i) for p in prompts(i).tolist()]

        loop = TrainingLoop(
            self.model,
            self._step,
            config=args.loop_config(args.max_steps),
            description=f"online DPO ({args.objective})",
            state=(lambda: dict(self._counts), self._counts.update),  # counts survive a resume
        )
        result = loop.run(batch_at)
        accum = args.gradient_accumulation_steps
        for row in result.history:
            spent = accum * (row.get("time/generate", 0.0) + row.get("time/score", 0.0))
            row["time/update"] = row["step_seconds"] - spent
        return OnlineDPOResult(history=result.history, loop=result, **self._counts)

    @torch.no_grad()
    def evaluate(
        self, prompts: Any = None, *, num_generations: int | None = None, seed: int = 0
    ) -> dict[str, float]:
        """Sample from the current policy; its reward, penalised reward, epistemic
        variance, KL to the reference and (with ``gold_reward``) gold reward.

        Parameters
        ----------
        prompts : prompts, optional
            Default: the training prompts.
        num_generations : int, optional
            Responses per prompt (default ``args.num_generations``).
        seed : int
            Sampling seed.

        Returns
        -------
        dict of str to float
            ``kl``, ``reward/mean``, ``reward/penalized``, ``reward/epistemic_var``,
            ``reward/epistemic_std``, ``generation/...``, ``gold/mean``, times.
        """
        prompts = self.prompts if prompts is None else _prompts_of(prompts)
        n = check_positive_int("num_generations", num_generations or self.args.num_generations)
        round_ = self._sample_and_score(prompts, seed, n)
        ids = round_["prompt_ids"], round_["response_ids"]
        reference = self._reference_logps(*ids, "sum")
        policy = sequence_logps_batched(
            self.model,
            *ids,
            pad_token_id=self.pad_token_id,
            batch_size=len(ids[0]),
            reduction="sum",
        )
        lengths = torch.tensor([len(r) for r in round_["response_ids"]])
        out = self._metrics(round_, self._penalized(round_["prediction"]), None, lengths)
        out["kl"] = float((policy - reference).mean())
        return out

    def save_model(self, output_dir: str | None = None):
        """Save the policy (safetensors; the adapters only for LoRA) and its tokenizer."""
        target = output_dir or self.args.output_dir
        if target is None:
            raise ValueError("save_model needs a directory: pass one or set args.output_dir")
        return save_policy(self.model, self.tokenizer, target)
