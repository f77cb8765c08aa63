"""The scoring engine: every fast path equals plain one-text-at-a-time scoring.

Plain scoring is each text alone in its own forward, in the caller's order. Against
it: length-bucketed micro-batches, tiny token budgets, prefix sharing, left padding
and out-of-memory back-off, for every kind of backbone (plain encoder and decoders,
a TRL reward checkpoint, and the four backbone-level ensembles). fp32 on the CPU:
tolerance 1e-5 absolute.
"""

from __future__ import annotations

import pytest
import torch

from auq.backbone import Backbone
from auq.members import DeepMembers, LoraMembers, MCDropoutMembers, PartialMembers
from auq.scoring import OutOfMemoryError, prompt_groups

LONG = "Please explain, step by step and with care, how one should cook plain white rice "
PROMPTS = (
    [LONG + "on a stove."] * 4
    + ["What is the best way to learn a new programming language quickly?"] * 3
    + ["hi", "How do I cook rice?", "Tell me a joke"]
)
RESPONSES = [
    " Rinse it.",
    " Rinse the rice, use one and a half cups of water per cup, simmer covered.",
    " I am not sure.",
    " Thanks for asking! Here is a clear, specific plan you can follow today.",
    " Write small programs every day.",
    " Read other people's code carefully and write small programs every day.",
    " Maybe ask someone else about it.",
    " hello",
    " Simmer it covered for fifteen minutes.",
    " No.",
]
ATOL = 1e-5

KINDS = ["bert", "gpt2", "llama", "trl-gpt2", "lora", "partial", "deep", "mc_dropout"]
#: kinds whose forward continues a shared prefix (causal decoders, cache-capable methods)
SHARES_PREFIX = {"gpt2", "llama", "trl-gpt2", "lora", "deep"}


def build(kind: str, request) -> Backbone:
    fixture = {
        "bert": "tiny_bert_dir",
        "llama": "tiny_llama_dir",
        "trl-gpt2": "tiny_trl_checkpoint_dir",
    }.get(kind, "tiny_gpt2_dir")
    base = Backbone.from_pretrained(request.getfixturevalue(fixture), max_length=128)
    members = {
        "lora": lambda: LoraMembers.build(base, n_members=3, r=2, init_scale=0.2),
        "partial": lambda: PartialMembers.build(base, n_members=3, n_top_layers=1),
        "deep": lambda: DeepMembers.build(base, n_members=2, init_noise=0.05),
        "mc_dropout": lambda: MCDropoutMembers.build(base, n_passes=3, rate=0.2),
    }
    return members[kind]() if kind in members else base


def plain(backbone: Backbone, tokens) -> torch.Tensor:
    """Each text alone, in the caller's order: the reference."""
    return backbone.encode(tokens, batch_size=1, bucketing=False, prefix_sharing=False)


@pytest.fixture(scope="module", params=KINDS)
def case(request):
    backbone = build(request.param, request)
    tokens = backbone.tokenize(PROMPTS, RESPONSES)
    return request.param, backbone, tokens, plain(backbone, tokens)


def test_bucketed_and_micro_batched_equal_plain(case):
    _, backbone, tokens, expected = case
    torch.testing.assert_close(backbone.encode(tokens), expected, rtol=0, atol=ATOL)
    small = backbone.encode(tokens, max_tokens=int(tokens.lengths.max()) * 2)
    torch.testing.assert_close(small, expected, rtol=0, atol=ATOL)
    assert backbone.last_scoring_stats.n_micro_batches > 3


def test_prefix_shared_equals_plain(case):
    kind, backbone, tokens, expected = case
    groups = prompt_groups(PROMPTS)
    shared = backbone.encode(tokens, groups=groups, min_prefix_tokens=2)
    torch.testing.assert_close(shared, expected, rtol=0, atol=ATOL)
    stats = backbone.last_scoring_stats
    if kind in SHARES_PREFIX:
        assert stats.n_prefix_shared == 7 and stats.n_prefix_groups >= 2
        assert stats.real_tokens < tokens.lengths.sum()  # shared prefixes ran once
    else:
        assert stats.n_prefix_shared == 0
        with pytest.raises(ValueError, match="prefix_sharing=True is not possible"):
            backbone.encode(tokens, groups=groups, prefix_sharing=True)


def test_prefix_sharing_in_small_micro_batches_equals_plain(case):
    kind, backbone, tokens, expected = case
    if kind not in SHARES_PREFIX:
        pytest.skip("no prefix sharing")
    groups = prompt_groups(PROMPTS)
    budget = int(tokens.lengths.max()) * 3 * backbone.rows_per_item  # groups cut into parts
    shared = backbone.encode(tokens, groups=groups, min_prefix_tokens=2, max_tokens=budget)
    torch.testing.assert_close(shared, expected, rtol=0, atol=ATOL)
    assert backbone.last_scoring_stats.n_prefix_groups > 2


def test_left_padding_equals_right(case):
    kind, backbone, tokens, expected = case
    if kind == "mc_dropout":
        with pytest.raises(ValueError, match="keys its dropout masks by token position"):
            backbone.encode(tokens, padding_side="left")
        return
    left = backbone.encode(tokens, padding_side="left", prefix_sharing=False)
    torch.testing.assert_close(left, expected, rtol=0, atol=ATOL)


def _oom_hooks(backbone: Backbone, limit: int):
    """Make every model forward that spans more than ``limit`` tokens fail like a full GPU."""

    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")  # rows × (cached prefix + new tokens)
        if mask is not None and mask.numel() > limit:
            raise OutOfMemoryError(f"CUDA out of memory (simulated: {mask.numel()} tokens)")

    models = getattr(backbone, "members", [backbone.model])
    return [m.register_forward_pre_hook(hook, with_kwargs=True) for m in models]


def test_out_of_memory_back_off_loses_nothing(case):
    _, backbone, tokens, expected = case
    limit = int(tokens.lengths.max()) * backbone.rows_per_item * 2
    handles = _oom_hooks(backbone, limit)
    try:
        with pytest.warns(UserWarning, match=r"ran out of memory \d+ time"):
            got = backbone.encode(tokens, groups=prompt_groups(PROMPTS), min_prefix_tokens=2)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    assert backbone.last_scoring_stats.n_oom_retries > 0


def test_out_of_memory_on_one_text_says_what_to_do(tiny_gpt2_dir):
    backbone = Backbone.from_pretrained(tiny_gpt2_dir, max_length=128)
    tokens = backbone.tokenize(PROMPTS, RESPONSES)
    handles = _oom_hooks(backbone, 2)
    try:
        with pytest.raises(OutOfMemoryError, match="single text of .* tokens .* lower max_length"):
            backbone.encode(tokens)
        with pytest.raises(OutOfMemoryError, match="allow oom_backoff=True"):
            backbone.encode(tokens, oom_backoff=False)
    finally:
        for h in handles:
            h.remove()


def test_token_budget_counts_the_rows_a_method_runs(request):
    lora = build("lora", request)
    tokens = lora.tokenize(PROMPTS, RESPONSES)
    budget = 4 * int(tokens.lengths.max()) * lora.rows_per_item
    seen = []
    handle = lora.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(tuple(kw["attention_mask"].shape)), with_kwargs=True
    )
    try:
        lora.encode(tokens, max_tokens=budget, prefix_sharing=False)
    finally:
        handle.remove()
    assert lora.rows_per_item == 3
    assert all(rows % 3 == 0 and rows * width <= budget for rows, width in seen)  # K·B rows
    assert sum(rows for rows, _ in seen) == 3 * len(PROMPTS)
    assert lora.last_scoring_stats.n_micro_batches == len(seen) > 1


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gpt2_dir"])
def test_autocast_bf16_on_cpu_is_close_and_reported(fixture, request):
    backbone = Backbone.from_pretrained(request.getfixturevalue(fixture), max_length=128)
    tokens = backbone.tokenize(PROMPTS, RESPONSES)
    fp32 = backbone.encode(tokens)
    assert backbone.last_scoring_stats.precision == "fp32"  # "auto" is fp32 on the CPU
    bf16 = backbone.encode(tokens, precision="bf16")
    assert backbone.last_scoring_stats.precision == "bf16"
    assert bf16.dtype == torch.float32  # features (and the heads' maths) stay float32
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)


def test_scoring_options_are_checked():
    from auq.scoring import ScoringOptions

    with pytest.raises(ValueError, match="precision='fp8' is not supported; valid choices"):
        ScoringOptions(precision="fp8")
    with pytest.raises(ValueError, match="prefix_sharing=1 is not supported"):
        ScoringOptions(prefix_sharing=1)
    with pytest.raises(TypeError, match="unknown scoring option.*max_token\\b"):
        ScoringOptions().replace(max_token=5)
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 1"):
        ScoringOptions(max_tokens=0)
    with pytest.raises(ValueError, match="max_padding must be a finite number >= 0 or None"):
        ScoringOptions(max_padding=-0.5)


def test_compile_option_gives_the_same_features(tiny_gpt2_dir):
    pytest.importorskip("torch._dynamo")
    bb = Backbone.from_pretrained(tiny_gpt2_dir, max_length=128, scoring={"compile": True})
    tokens = bb.tokenize(PROMPTS, RESPONSES)
    compiled = bb.encode(tokens, feature_cache=False)
    assert bb._compiled is not None
    bb.scoring.compile = False
    torch.testing.assert_close(compiled, bb.encode(tokens, feature_cache=False), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="compile is a setting of the model"):
        bb.encode(tokens, compile=True)


#: batch invariance per precision: |Δ feature| between a text scored alone and in any batch,
#: any micro-batch size or padding side (features are of order 1). bf16 and fp16 kernels sum
#: in another order for another batch shape, so only fp32 is invariant to float rounding.
INVARIANCE_ATOL = {"fp32": 1e-5, "fp16": 3e-3, "bf16": 3e-2, "bf16-weights": 3e-2}


@pytest.mark.parametrize("weights", [None, torch.bfloat16], ids=["fp32-weights", "bf16-weights"])
@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gpt2_dir"])
def test_batch_invariance_per_precision(fixture, weights, request):
    bb = Backbone.from_pretrained(request.getfixturevalue(fixture), max_length=128, dtype=weights)
    tokens = bb.tokenize(PROMPTS, RESPONSES)
    precisions = ["bf16-weights"] if weights else ["fp32", "fp16", "bf16"]
    for precision in precisions:
        autocast = "fp32" if weights else precision
        alone = bb.encode(tokens, batch_size=1, bucketing=False, precision=autocast)
        for options in ({}, {"max_tokens": 64}, {"padding_side": "left"}, {"bucketing": False}):
            got = bb.encode(tokens, precision=autocast, prefix_sharing=False, **options)
            torch.testing.assert_close(
                got,
                alone,
                rtol=0,
                atol=INVARIANCE_ATOL[precision],
                msg=lambda m, p=precision, o=options: f"{p}, {o}: {m}",
            )
