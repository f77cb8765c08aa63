"""Sampling responses from a policy, behind a small interface.

A :class:`Generator` turns P prompts into n responses each. The default,
:class:`HFGenerator`, runs any Hugging Face causal LM through ``generate`` with
ancestral sampling; faster engines plug in by implementing the same method::

    gen = HFGenerator(model, tokenizer, max_new_tokens=64)
    texts = gen.generate(["Say hi.", "Name a fruit."], n=4, seed=0)   # 2 lists of 4
    gen.last_stats.n_truncated      # responses that hit max_new_tokens without EOS

Sampling is reproducible for a given seed and leaves the caller's global random
states (torch, NumPy, Python) as it found them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from auq.utils.console import get_logger, progress_bar
from auq.utils.seeding import seeded
from auq.utils.threads import cpu_threads
from auq.utils.validation import check_positive_int

__all__ = ["GenerationStats", "Generator", "HFGenerator", "as_prompt_list"]

logger = get_logger("auq.training")

Prompt = str | list  # a text, or a chat as a list of {"role", "content"} messages


@runtime_checkable
class Generator(Protocol):
    """Anything that samples n responses for each of P prompts.

    Engines may also expose ``last_stats`` (a :class:`GenerationStats` of their
    last call); :func:`~auq.training.best_of_n` reports its counts when present.
    """

    def generate(self, prompts: Sequence[Prompt], n: int, *, seed: int) -> list[list[str]]:
        """Sample ``n`` responses per prompt.

        Parameters
        ----------
        prompts : sequence of P prompts
            Texts, or chats (lists of ``{"role", "content"}`` messages).
        n : int
            Responses per prompt.
        seed : int
            The same seed and inputs give the same responses.

        Returns
        -------
        list of P lists of n str
            ``out[i][j]`` is the j-th response to ``prompts[i]`` (new text only).
        """
        ...


@dataclass(frozen=True)
class GenerationStats:
    """What one ``generate`` call did.

    Attributes
    ----------
    n_prompts : int
        P prompts.
    n_per_prompt : int
        n responses per prompt.
    truncated : np.ndarray of bool, shape (P, n)
        Responses that reached ``max_new_tokens`` without an end-of-sequence token
        (kept, not dropped).
    n_new_tokens : int
        Tokens generated, up to and including each response's EOS.
    """

    n_prompts: int
    n_per_prompt: int
    truncated: np.ndarray
    n_new_tokens: int

    @property
    def n_truncated(self) -> int:
        """Responses cut at ``max_new_tokens`` (no EOS)."""
        return int(self.truncated.sum())


def as_prompt_list(prompts: Any) -> list[Prompt]:
    """P prompts as a list: one str or one chat (list of message dicts) becomes a list of 1."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, list | tuple) and prompts and isinstance(prompts[0], dict):
        return [list(prompts)]
    if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
        raise TypeError(
            f"prompts must be a str, a chat (list of message dicts) or a sequence of them, "
            f"got {type(prompts).__name__}"
        )
    out = list(prompts)
    if not out:
        raise ValueError("prompts must hold at least one prompt; got 0")
    for i, prompt in enumerate(out):
        chat = isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)
        if not (isinstance(prompt, str) or (chat and prompt)):
            raise TypeError(
                f"prompts[{i}] must be a str or a non-empty list of {{'role', 'content'}} "
                f"messages, got {type(prompt).__name__}"
            )
    return out


def _check_number(name: str, value: Any, low: float, high: float, *, closed_low: bool) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and math.isfinite(value) and value <= high
    ok = ok and (value >= low if closed_low else value > low)
    if not ok:
        bound = f"{'>=' if closed_low else '>'} {low}" + (
            f" and <= {high}" if math.isfinite(high) else ""
        )
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


class HFGenerator:
    """Ancestral sampling from a Hugging Face causal LM (``model.generate``, ``do_sample=True``).

    Prompts are left-padded and batched (longest first, the caller's order restored);
    ``num_return_sequences=n`` samples the n responses of a prompt together. Only the
    new tokens are decoded, special tokens skipped. The caller's model keeps its
    train/eval mode and the caller's tokenizer is not changed (padding is done here).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM (``AutoModelForCausalLM``), on any device.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer. Chat prompts use its chat template (with the generation prompt).
    max_new_tokens : int
        Tokens sampled per response at most; responses that reach it without an
        end-of-sequence token are counted in :attr:`last_stats`.
    temperature : float
        > 0; 1 samples from the model's distribution.
    top_p : float
        Nucleus mass in (0, 1]; 1 keeps every token.
    top_k : int
        Keep the k most likely tokens; 0 (default) keeps all (Hugging Face's own
        default of 50 would otherwise apply).
    batch_size : int
        Prompts per ``generate`` call (each yields n sequences).
    num_threads : int or None
        torch CPU threads while sampling on the CPU, restored afterwards; None leaves
        torch's setting alone. Small policies sample fastest on one thread (the testbed's
        2-layer GPT-2 on a busy 2-core machine: about 10x faster than on two).
    progress : bool or None
        Progress bar over batches; None shows it only on a terminal or in a notebook.

    Attributes
    ----------
    last_stats : GenerationStats or None
        Counts of the last :meth:`generate` call.
    last_prompt_ids : list of P lists of int, or None
        The prompts' token ids in the last call.
    last_response_ids : list of P lists of n lists of int, or None
        The sampled token ids of the last call, up to and including each response's
        EOS: what a trainer scores under the policy without a decode → encode round
        trip (which need not give back the sampled tokens).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        batch_size: int = 8,
        num_threads: int | None = None,
        progress: bool | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "generate", None)):
            raise TypeError(
                "model must be a Hugging Face causal LM (AutoModelForCausalLM) with a "
                f"generate method, got {type(model).__name__}"
            )
        can_generate = getattr(model, "can_generate", None)
        if callable(can_generate) and not can_generate():
            raise TypeError(
                f"model {type(model).__name__} cannot generate; load it with "
                "AutoModelForCausalLM (a language-model head), not AutoModel"
            )
        if tokenizer is None or not callable(tokenizer):
            raise TypeError(f"tokenizer must be the model's tokenizer, got {tokenizer!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
        self.temperature = _check_number("temperature", temperature, 0, math.inf, closed_low=False)
        self.top_p = _check_number("top_p", top_p, 0, 1, closed_low=False)
        self.top_k = check_positive_int("top_k", top_k, minimum=0)
        self.batch_size = check_positive_int("batch_size", batch_size)
        if num_threads is not None:
            check_positive_int("num_threads", num_threads)
        self.num_threads = num_threads
        self.progress = progress
        self.eos_ids = self._eos_ids()
        self.pad_id = self._pad_id()
        self.last_stats: GenerationStats | None = None
        self.last_prompt_ids: list[list[int]] | None = None
        self.last_response_ids: list[list[list[int]]] | None = None

    def __repr__(self) -> str:
        return (
            f"HFGenerator({type(self.model).__name__}, max_new_tokens={self.max_new_tokens}, "
            f"temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}, "
            f"num_threads={self.num_threads}, "
            f"batch_size={self.batch_size})"
        )

    # -- tokens -----------------------------------------------------------------------
    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        config = getattr(self.model, "generation_config", None)
        for value in (getattr(config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(int(v) for v in value)
        return sorted(ids)

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = getattr(getattr(self.model, "generation_config", None), "pad_token_id", None)
        if pad is None and self.eos_ids:
            pad = self.eos_ids[0]
        if pad is None:
            raise ValueError(
                "the tokenizer has neither a pad token nor an EOS token to pad prompts with; "
                "set tokenizer.pad_token"
            )
        return int(pad)

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        else:
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(
                    "chat prompts (message lists) need a tokenizer with a chat_template; "
                    "pass plain-text prompts or set tokenizer.chat_template"
                )
            text = self.tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=False
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise ValueError(
                    "an empty prompt has no token to start from and the tokenizer has no BOS"
                )
            ids = [bos]
        return list(ids)

    def _check_length(self, longest: int) -> None:
        config = getattr(self.model, "config", None)
        limit = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        if isinstance(limit, int) and longest + self.max_new_tokens > limit:
            raise ValueError(
                f"the longest prompt ({longest} tokens) plus max_new_tokens="
                f"{self.max_new_tokens} exceeds the model's {limit} positions; lower "
                "max_new_tokens or shorten the prompts"
            )

    # -- sampling -----------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], n: int, *, seed: int = 0) -> list[list[str]]:
        """Sample ``n`` responses for each prompt, in the prompts' order.

        Parameters
        ----------
        prompts : sequence of P prompts (str or chat message lists)
        n : int
            Responses per prompt (``num_return_sequences``).
        seed : int
            Seeds torch inside a forked random state; the caller's states are restored.

        Returns
        -------
        list of P lists of n str
            New text only, special tokens skipped. Counts in :attr:`last_stats`.
        """
        prompts = as_prompt_list(prompts)
        n = check_positive_int("n", n)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        encoded = [self._encode(p) for p in prompts]
        self._check_length(max(len(ids) for ids in encoded))
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # longest first
        device = next(self.model.parameters()).device
        texts: list[list[str]] = [[] for _ in prompts]
        ids: list[list[list[int]]] = [[] for _ in prompts]
        truncated = np.zeros((len(prompts), n), dtype=bool)
        n_new = 0
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        was_training = self.model.training
        self.model.eval()
        try:
            threads = self.num_threads if device.type == "cpu" else None
            with seeded(seed, device), cpu_threads(threads), torch.inference_mode():
                for batch in progress_bar(batches, enabled=self.progress, desc="generating"):
                    rows, sampled, cut, tokens = self._sample(
                        [encoded[i] for i in batch], n, device
                    )
                    for b, i in enumerate(batch):
                        texts[i] = rows[b * n : (b + 1) * n]
                        ids[i] = sampled[b * n : (b + 1) * n]
                        truncated[i] = cut[b * n : (b + 1) * n]
                    n_new += tokens
        finally:
            self.model.train(was_training)
        self.last_stats = GenerationStats(len(prompts), n, truncated, n_new)
        self.last_prompt_ids, self.last_response_ids = encoded, ids
        logger.info(
            "generated %d x %d responses; %d reached max_new_tokens=%d without EOS",
            len(prompts),
            n,
            self.last_stats.n_truncated,
            self.max_new_tokens,
        )
        return texts

    def _sample(
        self, batch: list[list[int]], n: int, device: torch.device
    ) -> tuple[list[str], list[list[int]], np.ndarray, int]:
        """Texts (B·n,), token ids with EOS (B·n,), truncation flags (B·n,) and the
        new-token count of one batch."""
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for b, ids in enumerate(batch):  # left padding: the prompts end where sampling starts
            input_ids[b, width - len(ids) :] = torch.tensor(ids)
            attention[b, width - len(ids) :] = 1
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            do_sample=True,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=n,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids or None,
        )
        new = out[:, width:].cpu()  # (B·n, T_new), rows grouped by prompt
        is_eos = torch.isin(new, torch.tensor(self.eos_ids, dtype=new.dtype))
        ended = is_eos.any(dim=1)
        no_eos = torch.full_like(ended, new.shape[1], dtype=torch.long)
        first = torch.where(ended, is_eos.int().argmax(dim=1), no_eos)  # (B·n,) text length
        texts = self.tokenizer.batch_decode(
            [row[:stop].tolist() for row, stop in zip(new, first.tolist(), strict=True)],
            skip_special_tokens=True,
        )
        stops = (first + ended.long()).tolist()  # through the EOS when there is one
        sampled = [row[:stop].tolist() for row, stop in zip(new, stops, strict=True)]
        return texts, sampled, (~ended).numpy(), sum(stops)
