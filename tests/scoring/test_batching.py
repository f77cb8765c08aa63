"""Token-budget micro-batches and right-padded collation."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from auq.scoring import TextEncoder, collate, token_budget_batches


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
