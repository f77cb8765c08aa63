"""MCDropoutMembers: rate 0 is deterministic, passes differ, only dropout trains, seeding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from auq.backbone import Backbone
from auq.members import MCDropoutMembers
from auq.scoring.batching import collate

T = 4
PROMPTS = ["How do I cook rice?", "Learn a language quickly?"]
RESPONSES = ["Rinse it, then simmer covered for twenty minutes.", "Write code daily."]


@pytest.fixture(params=["bert", "gpt2"])
def model_dir(request, tiny_bert_dir, tiny_gpt2_dir):
    return tiny_bert_dir if request.param == "bert" else tiny_gpt2_dir


def _build(path, **options) -> MCDropoutMembers:
    backbone = Backbone.from_pretrained(path, max_length=32)
    return MCDropoutMembers.build(backbone, **{"n_members": T, **options})


def test_rate_zero_passes_equal_the_deterministic_model(model_dir):
    backbone = Backbone.from_pretrained(model_dir, max_length=32)
    tokens = backbone.tokenize(PROMPTS, RESPONSES)
    base = backbone.encode(tokens)
    phi = _build(model_dir, rate=0.0).encode(tokens)
    torch.testing.assert_close(phi, base.expand(T, -1, -1), rtol=0, atol=1e-6)


def test_passes_differ_and_seeded_scoring_is_reproducible(model_dir):
    member = _build(model_dir, rate=0.3, seed=7)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    rng = torch.get_rng_state()
    phi = member.encode(tokens)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
    for t in range(1, T):
        assert (phi[t] - phi[0]).abs().max() > 1e-4
    torch.testing.assert_close(member.encode(tokens), phi, rtol=0, atol=0)
    unseeded = _build(model_dir, rate=0.3, seed=None)
    assert (unseeded.encode(tokens) - unseeded.encode(tokens)).abs().max() > 1e-4


def test_only_dropout_modules_are_in_training_mode_during_the_passes(tiny_bert_dir):
    member = _build(tiny_bert_dir, rate=0.2)
    seen = []
    for m in member.model.modules():
        m.register_forward_pre_hook(lambda mod, args: seen.append((mod, mod.training)))
    member.encode(member.tokenize(PROMPTS, RESPONSES))
    assert seen and all(mode == isinstance(m, nn.Dropout) for m, mode in seen)
    assert {type(m).__name__ for m, _ in seen} >= {"Dropout", "Linear", "LayerNorm"}
    assert not any(m.training for m in member.modules())  # every flag restored
    assert all(m.p == 0.2 for m in member.dropouts)


def test_training_mode_is_one_stochastic_pass(tiny_gpt2_dir):
    member = _build(tiny_gpt2_dir, rate=0.3)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    member.train()
    a, b = member.features_of(tokens, [0, 1]), member.features_of(tokens, [0, 1])
    assert a.shape == (1, 2, member.hidden_size)
    assert (a - b).abs().max() > 1e-4  # dropout stays on while training (unlike TRL's default)


def test_batched_passes_match_separate_passes_in_distribution(tiny_gpt2_dir):
    """T passes in one forward over T·B rows vs T forwards over B rows: same mean and spread."""
    n = 64
    member = _build(tiny_gpt2_dir, n_members=n, rate=0.3, seed=5)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    batched = member.encode(tokens)  # (n, 2, d)
    plain = Backbone.from_pretrained(tiny_gpt2_dir, max_length=32)
    for m in plain.model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.3
            m.train()
    batch = collate(tokens, [0, 1], pad_token_id=plain.tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        separate = torch.stack([plain(**batch) for _ in range(n)])  # (n, 2, d)
    # |mean difference| ≈ σ·√(2/n)·√(2/π) ≈ 0.14σ for n = 64; variance ratio ≈ 1 ± 0.18
    scale = separate.std(0).mean()
    assert (batched.mean(0) - separate.mean(0)).abs().mean() / scale < 0.3
    ratio = batched.var(0).mean() / separate.var(0).mean()
    assert 0.7 < ratio < 1.4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 1.0}, r"rate must be a dropout probability in \[0, 1\), got 1.0"),
        ({"rate": -0.1}, r"rate must be a dropout probability in \[0, 1\)"),
        ({"rate": "0.1"}, r"rate must be a dropout probability in \[0, 1\)"),
        ({"seed": 1.5}, "seed must be an int or None"),
        ({"n_members": 1}, r"n_members must be >= 2 for an ensemble \(T dropout passes\)"),
    ],
)
def test_bad_options_are_refused(tiny_gpt2_dir, options, message):
    with pytest.raises(ValueError, match=message):
        _build(tiny_gpt2_dir, **options)
