"""Supervised fine-tuning of a tiny GPT-2 on (prompt, response) texts: the reference policy.

Each example is ``<bos> prompt response <eos>``; the loss is the next-token
cross-entropy on the response tokens and the closing ``<eos>`` only. Works on plain
lists of texts; :func:`auq.testbed.policy.reference_policy` feeds it a world's samples.
Training runs on the package's one training loop (:class:`auq.loop.TrainingLoop`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from auq.loop import LoopConfig, StepResult, TrainingLoop
from auq.testbed.policy_config import PolicyConfig
from auq.testbed.tokenizer import build_tokenizer
from auq.utils.console import get_logger, warn_user
from auq.utils.seeding import seeded
from auq.utils.threads import cpu_threads

#: PolicyConfig is re-exported: it lived here first
__all__ = ["PolicyConfig", "TrainStats", "encode_examples", "train_policy"]

logger = get_logger("auq.testbed")
IGNORE = -100  # label of a token the loss skips
#: torch threads while training (see :mod:`auq.utils.threads`)
TRAIN_THREADS = 1


@dataclass
class TrainStats:
    """What one SFT run measured.

    ``final_loss`` is the mean training loss over the last tenth of the steps (at least one);
    ``eval_loss`` the token-weighted loss on held-out pairs (None without them).
    """

    initial_loss: float
    final_loss: float
    eval_loss: float | None
    losses: list[float] = field(repr=False)
    train_seconds: float
    n_examples: int
    n_dropped: int
    max_response_tokens: int
    max_prompt_tokens: int


def encode_examples(
    tokenizer, prompts: Sequence[str], responses: Sequence[str], *, max_length: int
):
    """Token ids and loss labels of ``<bos> prompt response <eos>``.

    Returns
    -------
    examples : list of (list[int], list[int])
        ``(input_ids, labels)`` per kept pair; labels are ``-100`` on ``<bos>`` and the prompt.
    n_dropped : int
        Pairs longer than ``max_length`` tokens (left out).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    prompt_ids = tokenizer(list(prompts))["input_ids"]  # <bos> prepended
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    examples, n_dropped = [], 0
    for p, r in zip(prompt_ids, response_ids, strict=True):
        ids = [*p, *r, eos]
        if len(ids) > max_length:
            n_dropped += 1
            continue
        examples.append((ids, [IGNORE] * len(p) + [*r, eos]))
    return examples, n_dropped


def _collate(examples, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels, each (B, T)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _response_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled tokens of ``batch``, and their count.

    The LM head runs only where a label is (the response tokens), not on the prompt or
    the padding: the same loss as ``model(..., labels=...)`` for less work.
    """
    hidden = model.transformer(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state  # (B, T, d)
    labels = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted at position t
    keep = labels != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])  # (N, V), N labelled tokens
    total = torch.nn.functional.cross_entropy(logits.float(), labels[keep], reduction="sum")
    return total, int(keep.sum())


def _batches(
    lengths: list[int], batch_size: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """Endless batches of example indices, reshuffled every epoch, of similar lengths.

    Each epoch is shuffled, cut into pools of 50 batches, each pool sorted by length and
    cut into batches, and the batches shuffled: padding drops a lot, randomness stays.
    """
    n = len(lengths)
    pool = 50 * batch_size
    while True:
        perm = torch.randperm(n, generator=generator).tolist()
        batches = []
        for start in range(0, n, pool):
            chunk = sorted(perm[start : start + pool], key=lengths.__getitem__)
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[b]


class _Batch(Sequence):
    """Example indices of one micro-batch; a slice of it (one process's share under data
    parallelism) remembers the size of the whole micro-batch, which the loss scaling needs."""

    def __init__(self, indices: list[int], size: int | None = None):
        self.indices = indices
        self.size = len(indices) if size is None else size

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return _Batch(self.indices[key], self.size)
        return self.indices[key]


class _PooledBatches:
    """:func:`_batches` addressed by position, as the training loop asks for its data.

    Micro-batch ``i`` is the generator's ``i``-th batch, a function of ``i`` and the seed
    only (the batches are drawn lazily and kept, so a resumed run sees the same ones).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self._source = _batches(lengths, batch_size, torch.Generator().manual_seed(seed))
        self._drawn: list[list[int]] = []

    def __call__(self, index: int) -> _Batch:
        while len(self._drawn) <= index:
            self._drawn.append(next(self._source))
        return _Batch(self._drawn[index])


def _loop_config(config: PolicyConfig, progress: bool | None) -> LoopConfig:
    """AdamW with β = (0.9, 0.95), warm-up then cosine decay to a tenth of ``lr``, clipping at 1.

    On the CPU, like the rest of the testbed: one seeded thread makes a rebuilt policy
    bit-identical to the first build (the cache and its tests rely on it).
    """
    return LoopConfig(
        max_steps=config.steps,
        lr=config.lr,
        weight_decay=config.weight_decay,  # the parameter groups set it (none on biases)
        adam_betas=(0.9, 0.95),
        max_grad_norm=1.0,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="cosine",
        min_lr_ratio=0.1,
        seed=config.seed,
        report_to="none",
        cpu=True,
        progress=progress,
    )


@torch.no_grad()
def _eval_loss(model, examples, pad_id: int, batch_size: int) -> float:
    """Token-weighted next-token loss on the response tokens of ``examples``."""
    model.eval()
    examples = sorted(examples, key=lambda e: len(e[0]))  # less padding
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        loss, n = _response_loss(model, _collate(examples[start : start + batch_size], pad_id))
        total, count = total + float(loss), count + n
    return total / max(count, 1)


def train_policy(
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    config: PolicyConfig | None = None,
    eval_prompts: Sequence[str] | None = None,
    eval_responses: Sequence[str] | None = None,
    progress: bool | None = None,
):
    """Build a tokenizer on the texts and train a fresh GPT-2 on them by SFT.

    Parameters
    ----------
    prompts, responses : sequence of str, length N
        Training pairs; the tokenizer's vocabulary comes from these texts.
    config : PolicyConfig, optional
    eval_prompts, eval_responses : sequence of str, optional
        Held-out pairs for ``eval_loss``.
    progress : bool or None
        Progress bar (None: only on a terminal or in a notebook).

    Returns
    -------
    model : transformers.GPT2LMHeadModel
        In eval mode; ``generation_config`` not yet set (see :mod:`auq.testbed.policy`).
    tokenizer : transformers.PreTrainedTokenizerFast
    stats : TrainStats
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = config or PolicyConfig()
    if not isinstance(config, PolicyConfig):
        raise TypeError(f"config must be a PolicyConfig, got {type(config).__name__}")
    start = time.perf_counter()
    tokenizer = build_tokenizer(
        [*prompts, *responses],
        min_frequency=config.min_frequency,
        model_max_length=config.n_positions,
    )
    examples, n_dropped = encode_examples(
        tokenizer, prompts, responses, max_length=config.n_positions
    )
    if not examples:
        raise ValueError(
            f"every one of the {len(prompts)} training pairs is longer than "
            f"PolicyConfig.n_positions={config.n_positions} tokens; raise n_positions"
        )
    if n_dropped:
        warn_user(
            f"reference policy: {n_dropped} of {len(prompts)} training pairs are longer than "
            f"n_positions={config.n_positions} tokens and were left out"
        )
    pad = tokenizer.pad_token_id
    with seeded(config.seed), cpu_threads(TRAIN_THREADS):
        gpt2 = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=config.n_positions,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )
        model = GPT2LMHeadModel(gpt2)
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [  # no decay on biases and layer norms
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        labelled = sum(sum(t != IGNORE for t in lab) for _, lab in examples)
        per_batch = min(config.batch_size, len(examples)) * labelled / len(examples)

        def step(batch: _Batch) -> StepResult:
            total, count = _response_loss(model, _collate([examples[i] for i in batch], pad))
            # a fixed divisor: every token weighs the same whatever its batch (batches of short
            # responses would weigh more per token if each were divided by its own count). The
            # loop weighs a process's loss by its share of the micro-batch, len(batch) /
            # batch.size; the last factor undoes that (it is 1 in one process).
            loss = total / per_batch * (batch.size / len(batch))
            return StepResult(loss, {"token_loss": total.item() / max(count, 1)})

        loop = TrainingLoop(
            model,
            step,
            config=_loop_config(config, progress),
            param_groups=groups,
            description="reference policy (SFT)",
        )
        result = loop.run(
            _PooledBatches([len(ids) for ids, _ in examples], config.batch_size, config.seed)
        )
    losses = [h["token_loss"] for h in result.history]
    model.eval()
    eval_loss = None
    if eval_prompts is not None and eval_responses is not None and len(eval_prompts):
        held, n_long = encode_examples(
            tokenizer, eval_prompts, eval_responses, max_length=config.n_positions
        )
        if n_long:
            warn_user(
                f"reference policy: {n_long} of {len(eval_prompts)} held-out pairs are longer "
                f"than n_positions={config.n_positions} tokens; the held-out loss leaves them out"
            )
        with cpu_threads(TRAIN_THREADS):
            eval_loss = _eval_loss(model, held, pad, 4 * config.batch_size) if held else None
    tail = losses[-max(1, config.steps // 10) :]
    stats = TrainStats(
        initial_loss=losses[0],
        final_loss=sum(tail) / len(tail),
        eval_loss=eval_loss,
        losses=losses,
        train_seconds=time.perf_counter() - start,
        n_examples=len(examples),
        n_dropped=n_dropped,
        max_response_tokens=max(sum(1 for t in lab if t != IGNORE) for _, lab in examples),
        max_prompt_tokens=max(sum(1 for t in lab if t == IGNORE) for _, lab in examples),
    )
    logger.info(
        "reference policy SFT: %d steps in %.1f s, loss %.3f -> %.3f (held-out %s)",
        config.steps,
        stats.train_seconds,
        stats.initial_loss,
        stats.final_loss,
        "n/a" if eval_loss is None else f"{eval_loss:.3f}",
    )
    return model, tokenizer, stats
