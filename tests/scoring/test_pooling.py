"""Pooling: mask-based for plain backbones (either padding side), HF's rule for reward decoders."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from auq.scoring import last_non_pad_index, pool_hidden_states


def test_last_non_pad_index_is_the_rightmost_non_pad_token():
    pad = 0
    ids = torch.tensor(
        [
            [5, 6, 0, 0],  # right padded
            [0, 5, 6, 7],  # left padded
            [5, 0, 6, 0],  # a pad id inside the text
            [0, 0, 0, 0],  # nothing but pads: position 0, as HF
        ]
    )
    assert last_non_pad_index(ids, pad).tolist() == [1, 3, 2, 0]
    assert last_non_pad_index(ids, None).tolist() == [3, 3, 3, 3]
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    assert last_non_pad_index(ids, pad, mask).tolist() == [1, 2, 2, 0]


def test_last_non_pad_index_agrees_with_hf_sequence_classification():
    torch.manual_seed(0)
    eos = 9
    config = GPT2Config(vocab_size=12, n_embd=8, n_layer=1, n_head=2, num_labels=1)
    config.pad_token_id = eos
    model = GPT2ForSequenceClassification(config).eval()
    ids = torch.tensor([[1, 2, 3, eos, eos, eos], [4, 5, eos, eos, eos, eos], [1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    captured = {}
    model.score.register_forward_hook(lambda m, i, o: captured.update(h=i[0]))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    last = last_non_pad_index(ids, eos, mask)
    assert last.tolist() == [2, 1, 5]  # the token before the EOS run
    mine = model.score(captured["h"][torch.arange(3), last])[:, 0]
    torch.testing.assert_close(mine, logits)


def test_last_token_pooling_is_the_same_for_left_and_right_padding():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 3)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    shifted = hidden.clone()
    shifted[0, 2:] = hidden[0, :3]  # row 0's three real tokens moved to the right
    for pooling in ("last", "mean"):
        torch.testing.assert_close(
            pool_hidden_states(hidden, right, pooling), pool_hidden_states(shifted, left, pooling)
        )
    torch.testing.assert_close(pool_hidden_states(hidden, right, "last")[0], hidden[0, 2])


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="pooling='max' is not supported; valid choices: 'last'"):
        pool_hidden_states(torch.zeros(1, 2, 3), torch.ones(1, 2), "max")
