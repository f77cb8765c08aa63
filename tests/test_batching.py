"""Tokenisation under the truncation policy, token-budget micro-batches, collation."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from auq.scoring.batching import TextEncoder, collate, token_budget_batches


@pytest.fixture(scope="module")
def bert_tok(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def test_pair_encoding_matches_the_tokenizer_when_nothing_is_cut(bert_tok):
    enc = TextEncoder(bert_tok, max_length=64, pair_encoding=True)
    out = enc.encode(["how do i cook rice"], ["rinse it and simmer"])
    ref = bert_tok("how do i cook rice", "rinse it and simmer")
    assert out.input_ids[0] == ref["input_ids"]
    assert out.token_type_ids[0] == ref["token_type_ids"]
    assert out.stats.n_prompt_truncated == out.stats.n_response_truncated == 0


def test_truncation_keeps_prompt_end_and_response_start(bert_tok):
    enc = TextEncoder(bert_tok, max_length=12, pair_encoding=True, min_prompt_tokens=3)
    prompt = "one two three four five six seven"
    response = "alpha beta gamma delta epsilon zeta eta theta"
    out = enc.encode([prompt], [response])
    assert len(out.input_ids[0]) == 12
    text = bert_tok.decode(out.input_ids[0])
    assert text.startswith("[CLS] five six seven [SEP] alpha beta")
    assert "theta" not in text
    assert out.stats.n_prompt_truncated == 1 and out.stats.n_response_truncated == 1
    assert "1/1 prompts" in str(out.stats)


def test_short_response_is_kept_whole_and_prompt_cut_from_the_left(bert_tok):
    enc = TextEncoder(bert_tok, max_length=10, pair_encoding=False)
    out = enc.encode(["one two three four five six seven eight nine ten"], ["yes"])
    text = bert_tok.decode(out.input_ids[0])
    assert text.endswith("ten yes [SEP]") and len(out.input_ids[0]) == 10
    assert out.stats.n_response_truncated == 0


def test_length_mismatch_is_reported(bert_tok):
    enc = TextEncoder(bert_tok, max_length=16, pair_encoding=True)
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        enc.encode(["a", "b"], ["c"])


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


def test_collate_pads_right_with_masks(bert_tok):
    enc = TextEncoder(bert_tok, max_length=32, pair_encoding=True)
    tok = enc.encode(["a", "a much longer prompt here"], ["b", "c"])
    batch = collate(tok, [0, 1], pad_token_id=0)
    assert (
        batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    )
    lengths = tok.lengths
    assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()
    assert batch["input_ids"][0, lengths[0] :].eq(0).all()
