"""The feature cache: a frozen backbone pays for a text once; nothing stale is ever read."""

from __future__ import annotations

import torch

import auq
from auq.backbone import Backbone
from auq.scoring import FeatureCache

PROMPTS = ["how do i cook rice", "what is a good workout", "tell me about budgets", "hi"]
RESPONSES = ["rinse and simmer it", "run, then stretch", "track spending", "hello"]


def test_fit_then_predict_and_calibrate_reuse_features(tiny_bert_dir, builtin_small):
    train, test = builtin_small
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, max_length=64)
    rm.fit(train, epochs=1, progress=False)
    assert rm.last_scoring_stats.n_cached == 0
    first = rm.predict(train)
    assert rm.last_scoring_stats.n_cached == 2 * len(train)  # every text came from the cache
    assert rm.last_scoring_stats.n_micro_batches == 0
    rm.calibrate(test)
    rm.predict_proba(test)
    assert rm.last_scoring_stats.n_cached == 2 * len(test)
    rm.scoring.feature_cache = False
    torch.testing.assert_close(rm.predict(train).margin_mean, first.margin_mean)
    assert rm.last_scoring_stats.n_cached == 0


def test_partial_hits_are_merged_in_order(tiny_gpt2_dir):
    bb = Backbone.from_pretrained(tiny_gpt2_dir, max_length=64)
    bb.requires_grad_(False)
    full = bb.tokenize(PROMPTS, RESPONSES)
    bb.encode(full.subset([1, 3]))
    phi = bb.encode(full)
    assert bb.last_scoring_stats.n_cached == 2
    torch.testing.assert_close(phi, bb.encode(full, feature_cache=False), rtol=0, atol=1e-6)


def test_changed_weights_precision_or_trainability_never_read_stale_features(tiny_gpt2_dir):
    bb = Backbone.from_pretrained(tiny_gpt2_dir, max_length=64)
    tokens = bb.tokenize(PROMPTS, RESPONSES)
    bb.encode(tokens)
    assert bb.feature_cache() is None  # weights that can train: no cache at all
    bb.requires_grad_(False)
    bb.encode(tokens)
    bb.encode(tokens)
    assert bb.last_scoring_stats.n_cached == 4
    with torch.no_grad():
        bb.model.h[1].mlp.c_fc.weight.mul_(1.5)  # an in-place change of one layer
    changed = bb.encode(tokens)
    assert bb.last_scoring_stats.n_cached == 0
    torch.testing.assert_close(changed, bb.encode(tokens, feature_cache=False))
    bb.encode(tokens, precision="bf16")
    assert bb.last_scoring_stats.n_cached == 0  # another precision, other features


def test_memory_bound_evicts_least_recently_used_blocks():
    cache = FeatureCache(max_bytes=3 * 4 * 8 * 4)  # room for three (4, 8) float32 blocks
    blocks = {i: torch.full((4, 8), float(i)) for i in range(5)}
    for i, block in blocks.items():
        cache.store("fp", [bytes([i, j]) for j in range(4)], block)
    assert cache.n_bytes <= cache.max_bytes and len(cache) == 12
    hits, _ = cache.lookup("fp", [bytes([0, 0]), bytes([4, 3])])
    assert hits.tolist() == [False, True]
    hits, found = cache.lookup("other", [bytes([4, 3])])
    assert not hits.any() and found is None


def test_disk_cache_is_found_by_a_new_model(tiny_bert_dir, tmp_path):
    options = {"feature_cache_dir": str(tmp_path / "cache")}
    first = Backbone.from_pretrained(tiny_bert_dir, max_length=64, scoring=options)
    first.requires_grad_(False)
    tokens = first.tokenize(PROMPTS, RESPONSES)
    phi = first.encode(tokens)
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 1
    second = Backbone.from_pretrained(tiny_bert_dir, max_length=64, scoring=options)
    second.requires_grad_(False)
    torch.testing.assert_close(second.encode(tokens), phi, rtol=0, atol=0)
    assert second.last_scoring_stats.n_cached == 4
    files[0].write_bytes(b"damaged")  # a damaged block is skipped with a warning, not fatal
    third = Backbone.from_pretrained(tiny_bert_dir, max_length=64, scoring=options)
    third.requires_grad_(False)
    torch.testing.assert_close(third.encode(tokens), phi, rtol=0, atol=1e-6)
    assert third.last_scoring_stats.n_cached == 0
    fourth = Backbone.from_pretrained(tiny_bert_dir, max_length=64, scoring=options)
    fourth.requires_grad_(False)
    fourth.encode(tokens)
    assert fourth.last_scoring_stats.n_cached == 4  # the damaged block was written anew
