"""Tokenisation of (prompt, response) texts and length-aware micro-batching.

Truncation policy
-----------------
Prompt and response are tokenised separately (each prompt once, however many
responses share it) and joined with the tokenizer's own special tokens: as a
sentence *pair* for encoders (``[CLS] prompt [SEP] response [SEP]`` with token
types) and as one sequence for decoders (``prompt response``). When the pair is
longer than ``max_length``:

1. the response keeps as many tokens as fit beside ``min(len(prompt), min_prompt_tokens)``
   prompt tokens, cut from its *end* (the start of an answer carries most of it);
2. the prompt fills what is left, cut from its *start*, so the words nearest the
   response survive.

:class:`TruncationStats` counts how many prompts and responses were cut.

Batching
--------
:func:`token_budget_batches` sorts items by length and packs them into
micro-batches whose padded size ``rows × longest`` stays under a token budget;
the caller scatters results back with the returned indices, so the caller's order
is kept while padding stays minimal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from auq.types import TruncationStats

__all__ = ["TextEncoder", "TokenizedTexts", "TruncationStats", "collate", "token_budget_batches"]


@dataclass
class TokenizedTexts:
    """Token ids of N (prompt, response) texts, unpadded.

    Attributes
    ----------
    input_ids : list of list of int, length N
    token_type_ids : list of list of int or None
    stats : TruncationStats
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    stats: TruncationStats = field(default_factory=TruncationStats)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per item, shape (N,)."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    def __len__(self) -> int:
        return len(self.input_ids)


class TextEncoder:
    """Turns (prompt, response) strings into token ids under the truncation policy.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        A Hugging Face tokenizer (fast tokenizers use their Rust backend directly).
    max_length : int
        Longest sequence after special tokens are added.
    pair_encoding : bool
        Encode as a sentence pair (encoders) instead of one joined sequence (decoders).
    min_prompt_tokens : int
        Prompt tokens kept, where the prompt has them, before the response is cut.
    """

    def __init__(
        self, tokenizer, *, max_length: int, pair_encoding: bool, min_prompt_tokens: int = 32
    ) -> None:
        if max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {max_length!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pair_encoding = pair_encoding
        self.min_prompt_tokens = min_prompt_tokens
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"{type(tokenizer).__name__} has no fast (Rust) backend; auq needs a fast "
                "tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))"
            )
        from tokenizers import Tokenizer

        # a private copy: the saved tokenizer may carry padding/truncation settings
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_padding()
        self._backend.no_truncation()

    def encode(
        self, prompts: list[str], responses: list[str], *, add_special_tokens: bool = True
    ) -> TokenizedTexts:
        """Tokenise N (prompt, response) pairs.

        Parameters
        ----------
        prompts, responses : list of str, length N
        add_special_tokens : bool
            False for texts already rendered by a chat template (it adds its own).

        Returns
        -------
        TokenizedTexts
        """
        if len(prompts) != len(responses):
            raise ValueError(
                f"prompts and responses must have the same length, got {len(prompts)} "
                f"and {len(responses)}"
            )
        unique_prompts = list(dict.fromkeys(prompts))
        prompt_index = {p: i for i, p in enumerate(unique_prompts)}
        prompt_enc = self._backend.encode_batch(unique_prompts, add_special_tokens=False)
        response_enc = self._backend.encode_batch(list(responses), add_special_tokens=False)
        n_special = (
            self._backend.num_special_tokens_to_add(self.pair_encoding) if add_special_tokens else 0
        )
        budget = self.max_length - n_special
        stats = TruncationStats(n_items=len(prompts))
        ids: list[list[int]] = []
        types: list[list[int]] | None = [] if self.pair_encoding else None
        from tokenizers import Encoding

        for prompt, r_enc in zip(prompts, response_enc, strict=True):
            p_enc = prompt_enc[prompt_index[prompt]]
            n_p, n_r = len(p_enc.ids), len(r_enc.ids)
            if n_p + n_r > budget:
                keep_r = min(n_r, budget - min(n_p, self.min_prompt_tokens, budget // 2))
                keep_p = min(n_p, budget - keep_r)
                if keep_p < n_p:
                    p_enc = _truncated(p_enc, keep_p, "left")
                    stats.n_prompt_truncated += 1
                if keep_r < n_r:
                    r_enc = _truncated(r_enc, keep_r, "right")
                    stats.n_response_truncated += 1
            if self.pair_encoding:
                enc = self._backend.post_process(
                    p_enc, r_enc, add_special_tokens=add_special_tokens
                )
                types.append(enc.type_ids)
            else:
                merged = Encoding.merge([p_enc, r_enc])
                enc = self._backend.post_process(
                    merged, None, add_special_tokens=add_special_tokens
                )
            ids.append(enc.ids)
        return TokenizedTexts(input_ids=ids, token_type_ids=types, stats=stats)


def _truncated(encoding, length: int, direction: str):
    """A copy of a ``tokenizers.Encoding`` cut to ``length`` tokens from one side."""
    import copy

    enc = copy.deepcopy(encoding)
    enc.truncate(length, direction=direction)
    return enc


def token_budget_batches(
    lengths: np.ndarray | list[int], *, max_tokens: int, max_batch_size: int | None = None
) -> list[np.ndarray]:
    """Group items into micro-batches of similar length under a padded-token budget.

    Parameters
    ----------
    lengths : array of int, shape (N,)
        Tokens per item.
    max_tokens : int
        Upper bound on ``rows × longest row`` per micro-batch (an item longer than
        the budget gets a micro-batch of its own).
    max_batch_size : int, optional
        Upper bound on rows per micro-batch.

    Returns
    -------
    list of int arrays
        Indices into the input per micro-batch; together a permutation of range(N).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")  # longest first: OOM shows up at once
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, max_tokens // longest)
        if max_batch_size is not None:
            rows = min(rows, max_batch_size)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def collate(
    tokenized: TokenizedTexts,
    indices: np.ndarray | list[int],
    *,
    pad_token_id: int,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Right-pad the selected items into model inputs.

    Returns
    -------
    dict with ``input_ids`` and ``attention_mask`` (and ``token_type_ids``), each (b, L).
    """
    rows = [tokenized.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        input_ids[j, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if tokenized.token_type_ids is not None:
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(indices):
            t = tokenized.token_type_ids[i]
            types[j, : len(t)] = torch.as_tensor(t, dtype=torch.long)
        batch["token_type_ids"] = types
    if device is not None:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch
