"""Collation and per-sequence log-probabilities: the batched path against a per-token loop."""

from __future__ import annotations

import pytest
import torch

from auq.training.logprobs import SequenceBatch, collate_sequences, sequence_logps

VOCAB = 40


@pytest.fixture(scope="module")
def model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def rows(seed: int = 0, n: int = 4):
    """n (prompt, response) id lists of varied lengths."""
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for i in range(n):
        lp, lr = 1 + (3 * i) % 5, 1 + (2 * i + 1) % 6
        prompts.append(torch.randint(4, VOCAB, (lp,), generator=g).tolist())
        responses.append(torch.randint(4, VOCAB, (lr,), generator=g).tolist())
    return prompts, responses


def loop_logps(model, prompts, responses) -> list[float]:
    """Σ log p(token | prefix): one unpadded forward per response token, one sequence at a time."""
    out = []
    with torch.no_grad():
        for p, r in zip(prompts, responses, strict=True):
            ids = p + r
            total = 0.0
            for j in range(len(p), len(ids)):
                logits = model(input_ids=torch.tensor([ids[:j]])).logits[0, -1]
                total += torch.log_softmax(logits.double(), -1)[ids[j]].item()
            out.append(total)
    return out


def test_collate_hand_case():
    batch = collate_sequences([[5, 6], [7]], [[8], [9, 10, 11]], pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 8, 0], [7, 9, 10, 11]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.response_mask.tolist() == [[False, False, True, False], [False, True, True, True]]
    assert batch.input_ids.dtype == batch.attention_mask.dtype == torch.long
    assert batch.response_mask.dtype == torch.bool
    assert len(batch) == 2 and batch.n_response_tokens.tolist() == [1, 3]
    moved = batch.to("cpu")
    assert isinstance(moved, SequenceBatch) and torch.equal(moved.input_ids, batch.input_ids)


def test_sequence_logps_equals_per_token_loop(model):
    prompts, responses = rows(seed=1, n=5)
    batch = collate_sequences(prompts, responses, pad_token_id=0)
    assert (batch.attention_mask == 0).any()  # padding is exercised
    with torch.no_grad():
        got = sequence_logps(model, batch)
    assert got.dtype == torch.float32 and got.shape == (5,)
    expected = torch.tensor(loop_logps(model, prompts, responses), dtype=torch.float32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_sequence_logps_ignores_padding_and_batch_mates(model):
    prompts, responses = rows(seed=2, n=4)
    with torch.no_grad():
        batched = sequence_logps(model, collate_sequences(prompts, responses, pad_token_id=0))
        other_pad = sequence_logps(model, collate_sequences(prompts, responses, pad_token_id=7))
        alone = torch.cat(
            [
                sequence_logps(model, collate_sequences([p], [r], pad_token_id=0))
                for p, r in zip(prompts, responses, strict=True)
            ]
        )
    torch.testing.assert_close(batched, other_pad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_mean_reduction_divides_by_response_length(model):
    prompts, responses = rows(seed=3, n=4)
    batch = collate_sequences(prompts, responses, pad_token_id=0)
    with torch.no_grad():
        total = sequence_logps(model, batch)
        mean = sequence_logps(model, batch, reduction="mean")
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.float32)
    torch.testing.assert_close(mean, total / lengths)
    with pytest.raises(
        ValueError, match=r"reduction='max' is not supported; valid choices: 'sum', 'mean'"
    ):
        sequence_logps(model, batch, reduction="max")


def test_gradients_flow_to_the_model(model):
    prompts, responses = rows(seed=4, n=3)
    batch = collate_sequences(prompts, responses, pad_token_id=0)
    model.zero_grad()
    sequence_logps(model, batch).sum().backward()
    grad = model.transformer.wte.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.zero_grad()


def test_bf16_model_gives_float32_logps(model):
    import copy

    prompts, responses = rows(seed=5, n=3)
    batch = collate_sequences(prompts, responses, pad_token_id=0)
    half = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        got = sequence_logps(half, batch)
        ref = sequence_logps(model, batch)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.2)


def test_collate_errors():
    with pytest.raises(ValueError, match=r"prompt_ids has 2 sequences but response_ids has 1"):
        collate_sequences([[1], [2]], [[3]], pad_token_id=0)
    with pytest.raises(ValueError, match=r"prompt_ids\[1\] is empty \(1 empty in all\)"):
        collate_sequences([[1], []], [[3], [4]], pad_token_id=0)
    with pytest.raises(ValueError, match=r"response_ids\[0\] is empty"):
        collate_sequences([[1]], [[]], pad_token_id=0)
    with pytest.raises(
        ValueError, match=r"pad_token_id must be an int >= 0, got None .*eos_token_id"
    ):
        collate_sequences([[1]], [[2]], pad_token_id=None)
    with pytest.raises(ValueError, match=r"pad_token_id must be an int >= 0, got -1"):
        collate_sequences([[1]], [[2]], pad_token_id=-1)
    with pytest.raises(ValueError, match="needs at least one sequence"):
        collate_sequences([], [], pad_token_id=0)


def test_sequence_batch_checks_shapes(model):
    ids = torch.zeros((2, 3), dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"response_mask has shape \(2, 2\) but input_ids has shape \(2, 3\)"
    ):
        SequenceBatch(ids, torch.ones_like(ids), torch.zeros((2, 2), dtype=torch.bool))
    with pytest.raises(ValueError, match=r"input_ids must have shape \(B, L\), got \(3,\)"):
        SequenceBatch(ids[0], ids[0], ids[0].bool())
    mask = torch.zeros((2, 3), dtype=torch.bool)
    mask[:, 0] = True
    with pytest.raises(ValueError, match="response_mask is True at position 0"):
        sequence_logps(model, SequenceBatch(ids, torch.ones_like(ids), mask))
