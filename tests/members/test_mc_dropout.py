"""MCDropoutMembers: shared per-pass masks, their bits, cached scales, batch invariance, seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from auq.backbone import Backbone
from auq.members import MCDropoutMembers
from auq.members.mc_dropout import _pass_keys, _ScaleCache, dropout_keep_mask
from auq.scoring.batching import collate

T = 4
PROMPTS = ["How do I cook rice?", "Learn a language quickly?"]
RESPONSES = ["Rinse it, then simmer covered for twenty minutes.", "Write code daily."]
#: items of different lengths; the first is the probe scored alone and inside batches
ITEMS = [
    ("How do I cook rice?", "Rinse it, then simmer covered."),
    ("Learn a language quickly?", "Write code daily, read other people's code carefully."),
    ("Hi?", "No."),
    ("What is the best way to learn a new programming language?", "Small programs, every day."),
    ("How do I cook rice so that it is fluffy and not sticky?", "I am not sure, maybe ask."),
]

#: GPT-2 whose attention probabilities go through its nn.Dropout module ``attn_dropout``
EAGER_GPT2 = {"attn_implementation": "eager", "reorder_and_upcast_attn": True}


@pytest.fixture(params=["bert", "gpt2"])
def model_dir(request, tiny_bert_dir, tiny_gpt2_dir):
    return tiny_bert_dir if request.param == "bert" else tiny_gpt2_dir


def _build(path, *, model_kwargs=None, **options) -> MCDropoutMembers:
    backbone = Backbone.from_pretrained(path, max_length=32, **(model_kwargs or {}))
    return MCDropoutMembers.build(backbone, **{"n_passes": T, **options})


def _encode(member, items, **kwargs):
    return member.encode(member.tokenize([p for p, _ in items], [r for _, r in items]), **kwargs)


def test_rate_zero_passes_equal_the_deterministic_model(model_dir):
    backbone = Backbone.from_pretrained(model_dir, max_length=32)
    tokens = backbone.tokenize(PROMPTS, RESPONSES)
    base = backbone.encode(tokens)
    member = _build(model_dir, rate=0.0)
    phi = member.encode(tokens)
    assert member.n_passes == member.n_samples == T == phi.shape[0]
    torch.testing.assert_close(phi, base.expand(T, -1, -1), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("path", "model_kwargs"),
    [("bert", {}), ("gpt2", {}), ("gpt2", EAGER_GPT2)],
    ids=["bert", "gpt2-sdpa", "gpt2-eager-attention-dropout"],
)
def test_an_items_samples_do_not_depend_on_its_batch(
    path, model_kwargs, tiny_bert_dir, tiny_gpt2_dir
):
    """Alone, at another position, among longer (more padded) items, in micro-batches."""
    member = _build(
        tiny_bert_dir if path == "bert" else tiny_gpt2_dir,
        rate=0.3,
        seed=3,
        model_kwargs=model_kwargs,
    )
    if model_kwargs:  # eager GPT-2 applies its attn_dropout module to (T·B, H, L, L)
        shapes = []
        member.dropouts[1].register_forward_hook(lambda m, a, o: shapes.append(a[0].shape))
    alone = _encode(member, ITEMS[:1])  # (T, 1, d)
    if model_kwargs:
        assert len(shapes[0]) == 4
    together = _encode(member, ITEMS)  # probe first; padded to the longest item
    shuffled = _encode(member, ITEMS[3:] + ITEMS[:1] + ITEMS[1:3])  # probe at row 2 of 5
    pair = _encode(member, [ITEMS[2], ITEMS[0]])  # probe at row 1 of 2
    tokens = member.tokenize([p for p, _ in ITEMS], [r for _, r in ITEMS])
    micro = member.encode(tokens, max_tokens=int(tokens.lengths.max()))  # one row per forward
    assert (alone[1:] - alone[0]).abs().max() > 1e-4  # the passes differ
    for phi in (together[:, :1], shuffled[:, 2:3], pair[:, 1:2], micro[:, :1]):
        torch.testing.assert_close(phi, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(micro, together, rtol=0, atol=1e-6)


def test_chosen_and_rejected_share_each_pass(model_dir):
    """Identical texts: Δ = 0 in every pass; similar texts: Cov > 0, Var[Δ] < Var[r_c] + Var[r_r]."""
    n = 64
    member = _build(model_dir, n_passes=n, rate=0.2)
    prompt = "How do I cook rice so that it is fluffy?"
    chosen = "Rinse the rice, then simmer it covered for twenty minutes."
    rejected = "Rinse the rice, then simmer it covered for ten minutes."
    w = torch.randn(member.hidden_size, generator=torch.Generator().manual_seed(0))
    r = _encode(member, [(prompt, chosen), (prompt, chosen), (prompt, rejected)]) @ w  # (n, 3)
    assert r[:, 0].std() > 1e-3  # the passes are stochastic
    assert (r[:, 0] - r[:, 1]).abs().max() < 1e-5  # same text, same masks: Δ = 0
    var_c, var_r, var_margin = r[:, 0].var(), r[:, 2].var(), (r[:, 0] - r[:, 2]).var()
    cov = ((r[:, 0] - r[:, 0].mean()) * (r[:, 2] - r[:, 2].mean())).sum() / (n - 1)
    assert cov > 0.5 * (var_c * var_r).sqrt()
    assert var_margin < 0.5 * (var_c + var_r)
    # each scored on its own: the same samples (the sharing does not need a shared batch)
    torch.testing.assert_close(
        _encode(member, [(prompt, rejected)])[:, 0] @ w, r[:, 2], rtol=0, atol=1e-5
    )


def test_scoring_is_reproducible_seed_sensitive_and_leaves_global_rngs_alone(model_dir):
    member = _build(model_dir, rate=0.3, seed=7)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    phi = member.encode(tokens)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])  # noqa: NPY002
    assert random.getstate() == states[2]
    for t in range(1, T):
        assert (phi[t] - phi[0]).abs().max() > 1e-4
    torch.manual_seed(123)  # the global RNG plays no part
    torch.testing.assert_close(member.encode(tokens), phi, rtol=0, atol=0)
    other = _build(model_dir, rate=0.3, seed=8).encode(tokens)
    assert (other - phi).abs().amax(dim=(1, 2)).min() > 1e-4  # every pass changes
    member.seed = 8  # read at call time
    torch.testing.assert_close(member.encode(tokens), other, rtol=0, atol=0)


def test_masks_drop_about_rate_scale_the_rest_and_are_shared_by_the_rows_of_a_pass(tiny_bert_dir):
    rate = 0.25
    member = _build(tiny_bert_dir, rate=rate, seed=1)
    seen = []
    for m in member.dropouts:
        m.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    _encode(member, ITEMS[:3])  # B = 3 rows per pass
    assert seen
    dropped = kept = 0
    for x, out in seen:
        x, out = x.reshape(T, 3, -1), out.reshape(T, 3, -1)
        zero = out == 0
        torch.testing.assert_close(out[~zero], x[~zero] / (1 - rate), rtol=1e-6, atol=0)
        assert torch.equal(zero & (x != 0), (x != 0) & zero[:, :1])  # one mask per pass
        assert (zero[1:] != zero[:1]).any()  # another mask in each pass
        dropped, kept = dropped + int(zero[:, 0].sum()), kept + int((~zero[:, 0]).sum())
    # ≈ 3·(L·32) elements per pass and module; σ of the fraction < 0.005
    assert abs(dropped / (dropped + kept) - rate) < 0.02


def test_the_mask_is_a_function_of_coordinates_only():
    keys = [11, 12, 13]
    full = dropout_keep_mask(keys, (2, 40, 48), 0.3)
    assert full.shape == (3, 2, 40, 48) and full.dtype == torch.bool
    assert torch.equal(dropout_keep_mask(keys, (2, 17, 48), 0.3), full[:, :, :17])  # padding
    assert torch.equal(dropout_keep_mask(keys[1:], (2, 40, 48), 0.3), full[1:])
    assert abs(1 - full.float().mean().item() - 0.3) < 0.01
    assert dropout_keep_mask(keys, (2, 40, 48), 0.0).all()
    drop = (~full).flatten(1).float()
    assert torch.corrcoef(drop).fill_diagonal_(0).abs().max() < 0.05  # passes independent


def test_every_module_is_in_eval_mode_during_the_passes_and_hooks_are_removed(tiny_bert_dir):
    member = _build(tiny_bert_dir, rate=0.2)
    seen = []
    for m in member.model.modules():
        m.register_forward_pre_hook(lambda mod, args: seen.append((mod, mod.training)))
    before = {id(m): len(m._forward_hooks) for m in member.model.modules()}
    member.encode(member.tokenize(PROMPTS, RESPONSES))
    assert seen and not any(mode for _, mode in seen)  # HF functional attention dropout: off
    assert {type(m).__name__ for m, _ in seen} >= {"Dropout", "Linear", "LayerNorm"}
    assert {id(m): len(m._forward_hooks) for m in member.model.modules()} == before
    assert all(m.p == 0.2 for m in member.dropouts)
    assert member.dropouts == [m for m in member.model.modules() if isinstance(m, nn.Dropout)]


def test_training_mode_is_one_stochastic_pass(tiny_gpt2_dir):
    member = _build(tiny_gpt2_dir, rate=0.3)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    member.train()
    assert all(m.training for m in member.model.modules())
    a, b = member.features_of(tokens, [0, 1]), member.features_of(tokens, [0, 1])
    assert a.shape == (1, 2, member.hidden_size)
    assert (a - b).abs().max() > 1e-4  # dropout stays on while training (unlike TRL's default)


def test_shared_masks_match_ordinary_dropout_in_distribution(tiny_gpt2_dir):
    """An item's T passes vs T forwards of nn.Dropout (global RNG): same mean and spread."""
    n = 64
    member = _build(tiny_gpt2_dir, n_passes=n, rate=0.3, seed=5)
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


def test_an_input_without_the_batch_on_axis_0_is_refused(tiny_gpt2_dir):
    member = _build(tiny_gpt2_dir, rate=0.1)
    # a (wrong) module that moves the batch axis before dropout: (L, T·B, d)
    member.dropouts[0].register_forward_pre_hook(lambda m, args: (args[0][:, :3].transpose(0, 1),))
    with pytest.raises(RuntimeError, match=r"batch on axis 0 of every nn.Dropout input.*#0"):
        _encode(member, ITEMS[:1])


def test_a_batch_axis_folded_with_another_is_one_more_coordinate(tiny_bert_dir):
    """A model that views (T·B, L, d) as (T·B·L, d) before a dropout keeps the invariance."""
    member = _build(tiny_bert_dir, rate=0.3)
    shapes = {}

    def fold(module, args):
        shapes[id(module)] = args[0].shape
        return (args[0].flatten(0, 1),)

    for m in member.dropouts[:3]:
        m.register_forward_pre_hook(fold)
        m.register_forward_hook(lambda mod, args, out: out.view(shapes[id(mod)]))
    alone = _encode(member, ITEMS[:1])
    together = _encode(member, ITEMS)
    torch.testing.assert_close(together[:, :1], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 1.0}, r"rate must be a dropout probability in \[0, 1\), got 1.0"),
        ({"rate": -0.1}, r"rate must be a dropout probability in \[0, 1\)"),
        ({"rate": "0.1"}, r"rate must be a dropout probability in \[0, 1\)"),
        ({"seed": 1.5}, r"seed must be an int >= 0 .*got 1.5"),
        ({"seed": None}, r"seed must be an int >= 0 .*got None"),
        ({"seed": -1}, r"seed must be an int >= 0"),
        (
            {"n_passes": 1},
            r"n_passes \(T dropout passes\) must be an integer >= 2 for an ensemble, got 1",
        ),
        ({"n_passes": 2.0}, r"n_passes \(T dropout passes\) must be an integer >= 2"),
    ],
)
def test_bad_options_are_refused(tiny_gpt2_dir, options, message):
    with pytest.raises(ValueError, match=message):
        _build(tiny_gpt2_dir, **options)


def _reference_bits(keys: list[int], shape: tuple[int, ...], p: float) -> list[bool]:
    """The documented hash in plain Python integers, element by element (pass-major)."""
    m32 = 0xFFFFFFFF

    def mix(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x21F0AAAD) & m32
        x ^= x >> 15
        x = (x * 0x735A2D97) & m32
        return x ^ (x >> 15)

    def g(c: int, axis: int) -> int:
        return mix((c * 0x9E3779B1 + 0x6A09E667 + axis) & m32)

    threshold = round(p * (1 << 24))
    out = []
    for key in keys:
        for coords in np.ndindex(*shape):
            h = key
            for axis, c in enumerate(coords):
                h = mix(h ^ g(c, axis))
            out.append((h >> 8) >= threshold)
    return out


def test_mask_bits_are_the_documented_hash_and_unchanged():
    """Element by element against plain-integer arithmetic, and against bits frozen in 0.x."""
    keys = _pass_keys(7, 2, 1, 3)
    assert keys == [3361965402, 4278683996, 2948657059]
    mask = dropout_keep_mask(keys, (2, 5, 7), 0.3)
    assert mask.flatten().tolist() == _reference_bits(keys, (2, 5, 7), 0.3)
    bits = "".join("1" if b else "0" for b in mask.flatten().tolist())
    assert hex(int(bits, 2)) == "0x36f6e6e69e357ffabf5ffbf167627fe97aaeb7f9f7ed7ffbfafbf"
    edge = dropout_keep_mask([0xFFFFFFFF, 0], (3, 4), 0.5)  # extreme keys
    assert edge.int().tolist() == [
        [[0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]],
        [[1, 0, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]],
    ]
    assert edge.flatten().tolist() == _reference_bits([0xFFFFFFFF, 0], (3, 4), 0.5)


@pytest.mark.parametrize(
    "model_kwargs", [{}, EAGER_GPT2], ids=["hidden-dropout", "attention-probability-dropout"]
)
def test_cached_scales_equal_fresh_masks_over_growing_and_shrinking_batches(
    tiny_gpt2_dir, model_kwargs
):
    """Scales kept across forwards (sliced from larger ones, grown) == masks built per call."""
    cached = _build(tiny_gpt2_dir, rate=0.3, seed=4, model_kwargs=model_kwargs)
    fresh = _build(tiny_gpt2_dir, rate=0.3, seed=4, model_kwargs=model_kwargs)
    fresh._scales = _ScaleCache(max_bytes=0)  # keeps nothing: every call builds its masks
    # short first, then longer (the entries grow), then short again (sliced views)
    for items in (ITEMS[2:3], ITEMS[:2], ITEMS, ITEMS[2:4], ITEMS[:1]):
        torch.testing.assert_close(_encode(cached, items), _encode(fresh, items), rtol=0, atol=0)
    assert cached._scales.entries and not fresh._scales.entries
    longest = int(cached.tokenize([p for p, _ in ITEMS], [r for _, r in ITEMS]).lengths.max())
    # every entry grew to the longest batch seen: (T, 1, L, d) and (T, 1, H, L, L)
    assert {e.shape[-2] for e in cached._scales.entries.values()} == {longest}
    held = sum(e.numel() * e.element_size() for e in cached._scales.entries.values())
    assert held == cached._scales.nbytes
    # a cap that keeps only some entries: the same samples
    capped = _build(tiny_gpt2_dir, rate=0.3, seed=4, model_kwargs=model_kwargs)
    capped._scales = _ScaleCache(max_bytes=cached._scales.nbytes // 3)
    for items in (ITEMS, ITEMS[:2]):
        torch.testing.assert_close(_encode(capped, items), _encode(fresh, items), rtol=0, atol=0)
    assert 0 < capped._scales.nbytes <= capped._scales.max_bytes
    assert len(capped._scales.entries) < len(cached._scales.entries)


def test_cached_scales_serve_a_forward_with_autograd_after_inference_mode(tiny_bert_dir):
    """Entries built under inference mode are ordinary tensors: eval-mode backward works."""
    member = _build(tiny_bert_dir, rate=0.3)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    phi = member.encode(tokens)  # inference mode: fills the cache
    assert member._scales.entries
    assert not any(t.is_inference() for t in member._scales.entries.values())
    batch = collate(tokens, [0, 1], pad_token_id=member.tokenizer.pad_token_id)
    member.eval()
    grad_phi = member(**batch)  # (T, 2, d), same masks, autograd on
    torch.testing.assert_close(grad_phi, phi, rtol=0, atol=1e-6)
    grad_phi.square().sum().backward()
    grads = [p.grad for p in member.model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:4])


def test_another_seed_or_pass_count_empties_the_cache(tiny_bert_dir):
    member = _build(tiny_bert_dir, rate=0.3, seed=1)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    member.encode(tokens)
    config = member._scales.config
    member.seed = 2
    member.encode(tokens)
    assert member._scales.config != config and member._scales.config[0] == 2
    member.n_passes = T + 1
    assert member.encode(tokens).shape[0] == T + 1
    assert all(e.shape[0] == T + 1 for e in member._scales.entries.values())
