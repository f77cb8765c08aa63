"""Prefix sharing: a prompt shared by n responses runs once, its key/value cache reused.

Best-of-n and online preference optimisation score n responses per prompt; the
prompt is usually several times longer than a response. For a causal decoder the
hidden state of a token depends only on the tokens before it, so the prompt's
keys and values are the same in all n sequences: running them once and letting
the n continuations attend to them gives the unshared result (up to the order of
floating-point sums) for a fraction of the cost.

Planning (:func:`plan_prefix_groups`) works on token ids, never on strings, so it is
exact whatever the tokenizer merges at the prompt/response boundary: the shared
prefix of a group is the longest common *token* prefix of its items, capped so
that every item's read position (the token its features are read at) lies after
it. Items whose prompt no other item shares, or whose common prefix is shorter
than ``min_prefix_tokens``, are scored as usual.

Running one micro-batch of groups (:class:`PrefixBatch`): the G prefixes run
right-padded with the model's cache on; the cache rows are gathered to the n
continuations; the continuations run with position ids that start after their
own prefix and an attention mask over ``[prefix, continuation]`` that hides the
prefixes' padding.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from auq.scoring.batching import pad_segments, to_device
from auq.scoring.tokenization import TokenizedTexts

__all__ = [
    "PrefixBatch",
    "PrefixGroups",
    "build_prefix_batch",
    "cache_argument",
    "output_cache",
    "plan_prefix_groups",
    "prefix_batch_tokens",
    "prefix_batches",
    "prompt_groups",
    "select_cache_rows",
    "split_prefix_batch",
]

_BLOCK = 4096  # items compared at once when finding common prefixes (bounds memory)


@dataclass
class PrefixGroups:
    """Items that share a token prefix with at least one other item.

    Attributes
    ----------
    items : list of int arrays
        Each group's item indices (≥ 2 each).
    prefix_lengths : int array, shape (G,)
        Shared tokens per group.
    unshared : int array
        Items scored without a shared prefix.
    """

    items: list[np.ndarray]
    prefix_lengths: np.ndarray
    unshared: np.ndarray


def plan_prefix_groups(
    tokenized: TokenizedTexts,
    groups: np.ndarray,
    read_positions: np.ndarray,
    *,
    min_prefix_tokens: int = 8,
) -> PrefixGroups:
    """Find each group's shared token prefix.

    Parameters
    ----------
    tokenized : TokenizedTexts
        N items.
    groups : int array, shape (N,)
        Items with the same value were built from the same prompt (candidates).
    read_positions : int array, shape (N,)
        Where each item's features are read; the shared prefix stays before it.
    min_prefix_tokens : int
        Shorter shared prefixes are not worth a separate pass.

    Returns
    -------
    PrefixGroups
    """
    flat, offsets, types = tokenized.packed
    n = len(tokenized)
    groups = np.asarray(groups)
    if types is not None or n < 2:  # segment ids (sentence pairs) mean an encoder
        return PrefixGroups([], np.zeros(0, dtype=np.int64), np.arange(n))
    _, first, inverse, counts = np.unique(
        groups, return_index=True, return_inverse=True, return_counts=True
    )
    lengths = np.diff(offsets)
    common = np.empty(n, dtype=np.int64)  # per item: tokens shared with its group's first item
    for lo in range(0, n, _BLOCK):
        mine = np.arange(lo, min(lo + _BLOCK, n))
        ref = first[inverse[mine]]
        both = np.minimum(lengths[mine], lengths[ref])  # compare where both have tokens
        a, valid, _, _ = pad_segments(flat, offsets[mine], both, pad_value=0)
        b, _, _, _ = pad_segments(flat, offsets[ref], both, pad_value=0)
        differs = (a != b) & valid  # (block, W)
        common[mine] = np.where(differs.any(1), differs.argmax(1), both)
    shared = np.minimum(common, np.asarray(read_positions, dtype=np.int64))  # stays before reads
    prefix = np.full(len(first), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(prefix, inverse, shared)
    usable = (counts >= 2) & (prefix >= min_prefix_tokens)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    members = np.split(order, bounds)  # items of each candidate group
    items = [members[g] for g in np.flatnonzero(usable)]
    unshared = np.sort(np.concatenate([members[g] for g in np.flatnonzero(~usable)] or [[]]))
    return PrefixGroups(items, prefix[usable], unshared.astype(np.int64))


@dataclass
class PrefixBatch:
    """Inputs of one prefix-shared micro-batch: G prefixes and n continuations.

    Attributes
    ----------
    prefix : dict of Tensor, each (G, P)
        ``input_ids`` and ``attention_mask`` of the prefixes, right-padded.
    suffix : dict of Tensor, each (n, S)
        ``input_ids``, ``attention_mask`` (over the continuation) and ``position_ids``.
    prefix_rows : Tensor of int64, shape (n,)
        Which prefix each continuation continues.
    """

    prefix: dict[str, Tensor]
    suffix: dict[str, Tensor]
    prefix_rows: Tensor

    @property
    def model_mask(self) -> Tensor:
        """Attention mask over ``[prefix, continuation]`` for the continuation pass, (n, P + S)."""
        prefix_mask = self.prefix["attention_mask"][self.prefix_rows]
        return torch.cat([prefix_mask, self.suffix["attention_mask"]], 1)


def prefix_batch_tokens(
    tokenized: TokenizedTexts, groups: list[np.ndarray], prefix_lengths: list[int]
) -> tuple[int, int]:
    """``(padded, real)`` tokens of a prefix-shared micro-batch, before it is collated.

    Padded: the G prefixes once, plus every continuation with the prefix width its
    attention spans; real: each prefix once plus the continuations' own tokens.
    """
    plen = np.asarray(prefix_lengths, dtype=np.int64)
    items = np.concatenate(groups)
    suffix = tokenized.lengths[items] - np.repeat(plen, [len(g) for g in groups])
    width_p, width_s = int(plen.max()), max(int(suffix.max()), 1)
    return len(groups) * width_p + len(items) * (width_p + width_s), int(plen.sum() + suffix.sum())


def build_prefix_batch(
    tokenized: TokenizedTexts,
    groups: list[np.ndarray],
    prefix_lengths: list[int],
    *,
    pad_token_id: int,
    device: torch.device | str | None = None,
) -> PrefixBatch:
    """Collate the groups of one micro-batch (see :class:`PrefixBatch`); rows in group order."""
    flat, offsets, _ = tokenized.packed
    items = np.concatenate(groups)
    heads = np.array([g[0] for g in groups], dtype=np.int64)
    plen = np.asarray(prefix_lengths, dtype=np.int64)
    rows = np.repeat(np.arange(len(groups)), [len(g) for g in groups])  # (n,)
    p_ids, p_real, _, _ = pad_segments(flat, offsets[heads], plen, pad_value=pad_token_id)
    item_plen = plen[rows]
    s_len = offsets[items + 1] - offsets[items] - item_plen
    s_ids, s_real, _, source = pad_segments(
        flat, offsets[items] + item_plen, s_len, pad_value=pad_token_id
    )
    prefix = {
        "input_ids": torch.from_numpy(p_ids),
        "attention_mask": torch.from_numpy(p_real.astype(np.int64)),
    }
    suffix = {
        "input_ids": torch.from_numpy(s_ids),
        "attention_mask": torch.from_numpy(s_real.astype(np.int64)),
        # padding columns get position 0: past the longest continuation they could exceed
        # the model's position limit
        "position_ids": torch.from_numpy(np.where(s_real, item_plen[:, None] + source, 0)),
    }
    return PrefixBatch(
        prefix=to_device(prefix, device),
        suffix=to_device(suffix, device),
        prefix_rows=torch.from_numpy(rows).to(device or "cpu"),
    )


def prefix_batches(
    tokenized: TokenizedTexts,
    plan: PrefixGroups,
    *,
    max_tokens: int,
    max_batch_size: int | None = None,
    rows_per_item: int = 1,
) -> list[tuple[list[np.ndarray], list[int]]]:
    """Pack the shared groups into micro-batches under the token budget.

    A continuation counts as its prefix plus itself (what its attention spans), a
    prefix once more for its own pass, every row ``rows_per_item`` times. A group
    too large for one micro-batch is cut into parts that each run the prefix.

    Returns
    -------
    list of (groups, prefix_lengths)
        Item arrays and their shared lengths, per micro-batch.
    """
    lengths = tokenized.lengths
    cap = max_batch_size or 1 << 62
    parts: list[tuple[np.ndarray, int, int]] = []  # (items, prefix length, longest item)
    for items, plen in zip(plan.items, plan.prefix_lengths.tolist(), strict=True):
        longest = int(lengths[items].max())
        per_part = max(1, min(cap, (max_tokens // rows_per_item - plen) // max(longest, 1)))
        parts += [(items[i : i + per_part], plen, longest) for i in range(0, len(items), per_part)]
    parts.sort(key=lambda part: -part[2])  # longest first, like the length buckets
    batches: list[tuple[list[np.ndarray], list[int]]] = []
    current: list[tuple[np.ndarray, int, int]] = []
    for part in parts:
        trial = [*current, part]
        width = max(p[2] for p in trial)  # prefix + continuation, padded
        rows = sum(len(p[0]) for p in trial)
        cost = rows_per_item * (len(trial) * max(p[1] for p in trial) + rows * width)
        if current and (cost > max_tokens or rows > cap):
            batches.append(([p[0] for p in current], [p[1] for p in current]))
            current = [part]
        else:
            current = trial
    if current:
        batches.append(([p[0] for p in current], [p[1] for p in current]))
    return batches


def split_prefix_batch(
    groups: list[np.ndarray], prefix_lengths: list[int]
) -> list[tuple[list[np.ndarray], list[int]]]:
    """Two halves of a micro-batch for an out-of-memory retry (empty: one item, no split)."""
    if len(groups) > 1:
        half = len(groups) // 2
        return [(groups[:half], prefix_lengths[:half]), (groups[half:], prefix_lengths[half:])]
    items = groups[0]
    if len(items) < 2:
        return []
    half = len(items) // 2
    return [([items[:half]], prefix_lengths), ([items[half:]], prefix_lengths)]


# -- the model's key/value cache, across transformers versions ------------------------
def _base_forward(model: nn.Module):
    """The forward whose signature names the cache argument (PEFT wrappers unwrapped)."""
    get_base = getattr(model, "get_base_model", None)
    return (get_base() if callable(get_base) else model).forward


def cache_argument(model: nn.Module) -> str | None:
    """The keyword that passes a key/value cache to ``model`` (None: it takes none).

    ``cache`` in recent transformers, ``past_key_values`` before; a model must also
    take ``position_ids`` for prefix sharing.
    """
    params = inspect.signature(_base_forward(model)).parameters
    if "position_ids" not in params:
        return None
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def output_cache(output: Any) -> Any:
    """The key/value cache a forward with ``use_cache=True`` returned."""
    for name in ("cache", "past_key_values"):
        if name in output and output[name] is not None:
            return output[name]
    raise RuntimeError(
        f"{type(output).__name__} holds no key/value cache; the model cannot share prefixes"
    )


def select_cache_rows(cache: Any, rows: Tensor) -> Any:
    """The cache with its batch rows replaced by ``rows`` (repeats allowed), shape (n,)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
        return cache
    return tuple(tuple(t[rows] for t in layer) for layer in cache)  # legacy tuples


def prompt_groups(prompts: list[Any]) -> np.ndarray:
    """One integer label per item, equal for equal prompts (strings or message lists), (N,)."""
    labels: dict[Any, int] = {}
    out = np.empty(len(prompts), dtype=np.int64)
    for i, prompt in enumerate(prompts):
        key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)
        out[i] = labels.setdefault(key, len(labels))
    return out
