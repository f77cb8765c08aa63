"""Token-budget micro-batches and right-padded collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from auq.scoring import TextEncoder, collate, token_budget_batches
from auq.scoring.batching import padded_tokens


@pytest.mark.parametrize("max_batch_size", [None, 3])
def test_token_budget_batches_partition_and_respect_budget(max_batch_size):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=101)
    batches = token_budget_batches(lengths, max_tokens=128, max_batch_size=max_batch_size)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(101))
    for b in batches:
        assert len(b) * lengths[b].max() <= 128 or len(b) == 1
        if max_batch_size:
            assert len(b) <= max_batch_size


def test_collate_pads_right_with_masks(minilm_path):
    enc = TextEncoder(AutoTokenizer.from_pretrained(minilm_path), max_length=32, pair_encoding=True)
    tok = enc.encode(["a", "a much longer prompt here"], ["b", "c"])
    batch = collate(tok, [0, 1], pad_token_id=0)
    assert (
        batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    )
    lengths = tok.lengths
    assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()
    assert batch["input_ids"][0, lengths[0] :].eq(0).all()
    assert batch["token_type_ids"][1, : lengths[1]].tolist() == tok.token_type_ids[1]


def _collate_by_loop(input_ids, types, indices, pad, side):
    """The obvious per-row implementation the vectorised collate must equal."""
    rows = [input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    seg = torch.zeros((len(rows), width), dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for j, i in enumerate(indices):
        n = len(input_ids[i])
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[j, cols] = torch.tensor(input_ids[i])
        mask[j, cols] = 1
        seg[j, cols] = torch.tensor(types[i])
        pos[j, cols] = torch.arange(n)
    return ids, mask, seg, pos


@pytest.mark.parametrize("side", ["right", "left"])
def test_vectorised_collate_equals_a_loop_over_rows(side):
    from auq.scoring import TokenizedTexts

    rng = np.random.default_rng(1)
    ids = [rng.integers(1, 99, size=rng.integers(1, 30)).tolist() for _ in range(40)]
    types = [rng.integers(0, 2, size=len(r)).tolist() for r in ids]
    tok = TokenizedTexts(input_ids=ids, token_type_ids=types)
    indices = rng.permutation(40)[:17]
    batch = collate(tok, indices, pad_token_id=0, padding_side=side)
    want_ids, want_mask, want_seg, want_pos = _collate_by_loop(ids, types, indices, 0, side)
    assert torch.equal(batch["input_ids"], want_ids)
    assert torch.equal(batch["attention_mask"], want_mask)
    assert torch.equal(batch["token_type_ids"], want_seg)
    if side == "left":
        real = want_mask.bool()
        assert torch.equal(batch["position_ids"][real], want_pos[real])
    else:
        assert "position_ids" not in batch


@pytest.mark.parametrize("rows_per_item", [1, 4])
def test_budget_counts_rows_per_item_and_keeps_caller_order_without_bucketing(rows_per_item):
    lengths = np.array([5, 30, 7, 12, 3, 30, 9])
    batches = token_budget_batches(lengths, max_tokens=240, rows_per_item=rows_per_item)
    for b in batches:
        assert rows_per_item * len(b) * lengths[b].max() <= 240 or len(b) == 1
    ordered = token_budget_batches(
        lengths, max_tokens=240, rows_per_item=rows_per_item, bucketing=False
    )
    assert np.concatenate(ordered).tolist() == list(range(7))  # caller's order, consecutive
    for b in ordered:
        assert rows_per_item * len(b) * lengths[b].max() <= 240 or len(b) == 1


def test_max_padding_closes_micro_batches_before_padding_grows():
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.normal(np.log(64), 0.7, size=400)).astype(int) + 1  # a wide mix
    greedy = token_budget_batches(lengths, max_tokens=16384)
    capped = token_budget_batches(lengths, max_tokens=16384, max_padding=0.1)
    assert sorted(np.concatenate(capped).tolist()) == list(range(400))
    for b in capped:
        padded, real = len(b) * lengths[b].max(), lengths[b].sum()
        assert padded <= 16384 and (padded <= 16384 // 8 or padded <= 1.1 * real)
    assert padded_tokens(lengths, capped) < 0.9 * padded_tokens(lengths, greedy)
