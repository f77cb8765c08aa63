"""Best-of-n: generation, uncertainty-aware selection, the closed-form curve estimator and KL."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

import auq
from auq.objectives import OBJECTIVES, penalized_reward
from auq.training import (
    BestOfNResult,
    Generator,
    HFGenerator,
    best_of_n,
    best_of_n_kl,
    best_of_n_kl_bound,
    expected_best_of_n,
)
from auq.training.order_statistics import max_rank_probabilities

PROMPTS = ["How do I cook rice?", "Hi", "What is the best way to learn a new language quickly?"]


# -- fixtures: a tiny GPT-2 policy and a tiny decoder reward model -----------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_gpt2_dir):
    return AutoTokenizer.from_pretrained(tiny_gpt2_dir)


def _policy(tokenizer, *, eos_logit: float | None = None):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=eos_logit is None,
    )
    model = GPT2LMHeadModel(config)
    if eos_logit is not None:  # a head with a bias that makes EOS about as likely as the rest
        head = torch.nn.Linear(config.n_embd, config.vocab_size, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[tokenizer.eos_token_id] = eos_logit
        model.lm_head = head
    return model


@pytest.fixture(scope="module")
def policy(tokenizer):
    return _policy(tokenizer)


@pytest.fixture(scope="module")
def eos_policy(tokenizer):
    return _policy(tokenizer, eos_logit=math.log(len(tokenizer) - 1))


@pytest.fixture(scope="module")
def reward_model(tiny_gpt2_dir, builtin_small):
    rm = auq.RewardModel.from_backbone(tiny_gpt2_dir, n_members=4, hidden_size=8, max_length=256)
    return rm.fit(builtin_small[0].select(range(32)), epochs=1, progress=False)


def _global_states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002


# -- generation -------------------------------------------------------------------------------
def test_generation_reproducible_in_order_and_leaves_global_rng(policy, tokenizer):
    gen = HFGenerator(policy, tokenizer, max_new_tokens=6, batch_size=2)
    assert isinstance(gen, Generator)
    before = _global_states()
    a = gen.generate(PROMPTS, 3, seed=7)
    after = _global_states()
    assert torch.equal(before[0], after[0])
    assert np.array_equal(before[1], after[1]) and before[2] == after[2]
    assert len(a) == len(PROMPTS) and all(len(row) == 3 for row in a)
    assert all(isinstance(t, str) for row in a for t in row)
    assert gen.generate(PROMPTS, 3, seed=7) == a
    assert gen.generate(PROMPTS, 3, seed=8) != a
    policy.train()  # dropout on: generation runs in eval mode and gives the mode back
    try:
        assert gen.generate(PROMPTS, 3, seed=7) == a
        assert policy.training
    finally:
        policy.eval()


def test_generation_rows_follow_the_prompts(policy, tokenizer):
    """Near-zero temperature is greedy: each row equals its prompt's greedy continuation alone."""
    policy.eval()
    gen = HFGenerator(policy, tokenizer, max_new_tokens=5, temperature=1e-5, batch_size=3)
    out = gen.generate(PROMPTS, 2, seed=0)  # one left-padded batch, longest prompt first
    for prompt, row in zip(PROMPTS, out, strict=True):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        greedy = policy.generate(
            ids, do_sample=False, max_new_tokens=5, pad_token_id=tokenizer.eos_token_id
        )
        expected = tokenizer.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True)
        assert row == [expected, expected]
    assert len({tuple(r) for r in out}) > 1  # the prompts were not mixed up into one


def test_truncation_counted_not_dropped(eos_policy, tokenizer):
    """With one new token, a response hit the limit exactly when its token is not EOS."""
    gen = HFGenerator(eos_policy, tokenizer, max_new_tokens=1, batch_size=2)
    out = gen.generate(PROMPTS, 8, seed=0)
    stats = gen.last_stats
    assert stats.truncated.shape == (3, 8)
    non_empty = np.array([[text != "" for text in row] for row in out])
    np.testing.assert_array_equal(stats.truncated, non_empty)
    assert 0 < stats.n_truncated < 24
    assert stats.n_new_tokens == 24


def test_chat_prompts_use_the_template(policy, tokenizer):
    gen = HFGenerator(policy, tokenizer, max_new_tokens=3)
    chat = [{"role": "user", "content": "Hi"}]
    out = gen.generate([chat, "Hi"], 2, seed=0)
    assert len(out) == 2 and all(len(r) == 2 for r in out)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_new_tokens", 0, "max_new_tokens must be an integer >= 1, got 0"),
        ("temperature", 0.0, "temperature must be a finite number > 0, got 0.0"),
        ("top_p", 1.5, "top_p must be a finite number > 0 and <= 1, got 1.5"),
        ("top_k", -1, "top_k must be an integer >= 0, got -1"),
        ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
    ],
)
def test_generator_bad_options(policy, tokenizer, option, value, message):
    with pytest.raises(ValueError, match=message):
        HFGenerator(policy, tokenizer, **{option: value})


def test_generator_too_long_for_the_model(policy, tokenizer):
    gen = HFGenerator(policy, tokenizer, max_new_tokens=127)
    with pytest.raises(ValueError, match="max_new_tokens=127 exceeds the model's 128 positions"):
        gen.generate(PROMPTS, 1, seed=0)


# -- selection --------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_best_of_n_picks_the_argmax(policy, tokenizer, reward_model, objective):
    n = 4
    res = best_of_n(
        policy,
        reward_model,
        PROMPTS,
        n=n,
        objective=objective,
        tokenizer=tokenizer,
        lam=2.0,
        k=1.5,
        beta=0.3,
        max_new_tokens=6,
        seed=3,
    )
    assert isinstance(res, BestOfNResult) and len(res) == len(PROMPTS)
    assert res.prompts == PROMPTS and res.objective == objective and res.n == n
    for name in ("objective_values", "reward_mean", "reward_std"):
        assert getattr(res, name).shape == (len(PROMPTS), n)
    assert [len(row) for row in res.candidates] == [n] * len(PROMPTS)
    # the candidates are the generator's own, in order
    again = HFGenerator(policy, tokenizer, max_new_tokens=6).generate(PROMPTS, n, seed=3)
    assert res.candidates == again
    # independently: score the same candidates, penalise, argmax
    flat_p = [p for p in PROMPTS for _ in range(n)]
    flat_r = [t for row in res.candidates for t in row]
    rp = reward_model.score(flat_p, flat_r)
    values = penalized_reward(rp, objective, lam=2.0, k=1.5, beta=0.3).numpy().reshape(-1, n)
    np.testing.assert_allclose(res.objective_values, values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(res.index, values.argmax(axis=1))
    assert res.responses == [res.candidates[i][j] for i, j in enumerate(res.index)]
    np.testing.assert_allclose(res.reward_mean, rp.mean.numpy().reshape(-1, n), rtol=1e-5)
    np.testing.assert_allclose(res.reward_std, rp.var.sqrt().numpy().reshape(-1, n), rtol=1e-4)
    np.testing.assert_allclose(res.best_objective, values.max(axis=1), rtol=1e-5, atol=1e-6)
    assert res.kl_bound == pytest.approx(math.log(n) - (n - 1) / n)
    assert res.n_truncated == int(res.truncated.sum()) and res.truncated.shape == (3, n)
    assert res.options["lam"] == 2.0 and res.options["seed"] == 3


def test_best_of_n_scores_once_with_shared_prompts(policy, tokenizer, reward_model):
    res = best_of_n(
        policy, reward_model, PROMPTS, n=3, tokenizer=tokenizer, max_new_tokens=4, seed=0
    )
    stats = reward_model.last_scoring_stats
    assert stats.n_items == 9
    assert stats.n_prefix_groups >= 1 and stats.n_prefix_shared >= 2
    assert res.prediction.samples.shape == (4, 9)


def test_best_of_n_takes_a_generator(policy, tokenizer, reward_model):
    gen = HFGenerator(policy, tokenizer, max_new_tokens=4)
    a = best_of_n(None, reward_model, PROMPTS[0], n=2, generator=gen, seed=1)
    b = best_of_n(gen, reward_model, [PROMPTS[0]], n=2, seed=1)
    assert a.candidates == b.candidates and len(a.candidates) == 1
    with pytest.raises(ValueError, match="max_new_tokens configure the default HFGenerator"):
        best_of_n(gen, reward_model, PROMPTS, n=2, max_new_tokens=8)
    with pytest.raises(ValueError, match="either as policy= .* or as generator=, not both"):
        best_of_n(policy, reward_model, PROMPTS, n=2, generator=gen)
    with pytest.raises(ValueError, match="tokenizer= is required"):
        best_of_n(policy, reward_model, PROMPTS, n=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n": 0}, "n must be an integer >= 1, got 0"),
        (
            {"n": 2, "objective": "max"},
            "objective='max' is not supported; valid choices: 'mean', 'wco', 'uwo', 'lcb', "
            "'effective'",
        ),
        ({"n": 2, "objective": "uwo", "lam": -1.0}, "lam must be a finite number >= 0"),
        ({"n": 2, "objective": "effective", "beta": 0.0}, "beta must be a finite number > 0"),
    ],
)
def test_best_of_n_bad_options(policy, tokenizer, reward_model, options, message):
    with pytest.raises(ValueError, match=message):
        best_of_n(policy, reward_model, PROMPTS, tokenizer=tokenizer, **options)


# -- the closed-form estimator -----------------------------------------------------------------
def _pool(seed: int, size: int, *, ties: bool):
    rng = np.random.default_rng(seed)
    objective = rng.integers(0, 4, size).astype(float) if ties else rng.normal(size=size)
    return objective, rng.normal(size=size)


@pytest.mark.parametrize("ties", [False, True])
def test_estimator_equals_enumeration_of_subsets(ties):
    objective, target = _pool(0, 9, ties=ties)
    ns = list(range(1, 10))
    got = expected_best_of_n(objective, target, ns)
    for n, value in zip(ns, got, strict=True):
        picks = []
        for subset in itertools.combinations(range(9), n):
            sub = np.array(subset)
            top = objective[sub] == objective[sub].max()
            picks.append(target[sub][top].mean())  # uniform among tied maxima
        assert value == pytest.approx(np.mean(picks), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_estimator_matches_monte_carlo_resampling(ties):
    objective, target = _pool(1, 40, ties=ties)
    rng = np.random.default_rng(2)
    draws = 20_000
    for n in (2, 5, 17):
        picks = np.empty(draws)
        for d in range(draws):
            sub = rng.choice(40, size=n, replace=False)
            tied = np.flatnonzero(objective[sub] == objective[sub].max())
            picks[d] = target[sub[rng.choice(tied)]]  # a uniform pick among ties
        stderr = picks.std() / math.sqrt(draws)
        closed = expected_best_of_n(objective, target, [n])[0]
        assert abs(closed - picks.mean()) < 4 * stderr  # 4 standard errors


def test_estimator_ends_pool_mean_and_argmax():
    objective = np.array([[0.1, 3.0, 3.0, -1.0, 2.0], [5.0, 1.0, 0.0, 2.0, 4.0]])
    target = np.array([[1.0, 10.0, 20.0, -5.0, 0.0], [7.0, 1.0, 2.0, 3.0, 4.0]])
    per = expected_best_of_n(objective, target, [1, 5], per_prompt=True)
    assert per.shape == (2, 2)
    np.testing.assert_allclose(per[:, 0], target.mean(axis=1))
    np.testing.assert_allclose(per[:, 1], [15.0, 7.0])  # the tied top (10, 20) averaged
    np.testing.assert_allclose(expected_best_of_n(objective, target, [1, 5]), per.mean(axis=0))


def test_estimator_is_exact_and_finite_at_large_n():
    size = 10_000
    probs = {n: max_rank_probabilities(size, n) for n in (1, 2, 777, 5_000, 9_999, size)}
    for n, p in probs.items():
        assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0, abs=1e-12)
        # exact C(i−1, n−1) / C(N, n) by integer arithmetic at the top ranks
        total = math.comb(size, n)
        for i in (size, size - 1, size - 50):
            if i >= n:
                exact = float(Fraction(math.comb(i - 1, n - 1), total))
                assert p[i - 1] == pytest.approx(exact, rel=1e-10, abs=1e-300)
    objective, target = _pool(3, size, ties=False)
    curve = expected_best_of_n(objective, target, [1, 10, 100, 1000, size])
    assert np.isfinite(curve).all()
    assert curve[-1] == pytest.approx(target[objective.argmax()])
    assert curve[0] == pytest.approx(target.mean())


@pytest.mark.parametrize(
    ("ns", "message"),
    [
        ([0], r"ns must hold integers with 1 <= n <= N=5 \(the pool size\), got \[0\]"),
        ([2, 6], r"ns must hold integers with 1 <= n <= N=5 \(the pool size\), got \[6\]"),
        ([], "ns must be an int or a non-empty sequence of ints"),
    ],
)
def test_estimator_bad_n(ns, message):
    with pytest.raises(ValueError, match=message):
        expected_best_of_n(np.zeros(5), np.zeros(5), ns)
    with pytest.raises(ValueError, match=message):
        best_of_n_kl(np.zeros(5), ns)


def test_estimator_bad_arrays():
    with pytest.raises(ValueError, match=r"same shape, got \(1, 5\) and \(1, 4\)"):
        expected_best_of_n(np.zeros(5), np.zeros(4), [1])
    with pytest.raises(ValueError, match="objective_values must be finite; it holds 1 NaN"):
        expected_best_of_n([0.0, np.nan], [0.0, 1.0], [1])


# -- KL ---------------------------------------------------------------------------------------
def test_kl_bound_formula():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    np.testing.assert_allclose(
        best_of_n_kl_bound([1, 4, 16]), [0.0, math.log(4) - 0.75, math.log(16) - 15 / 16]
    )
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        best_of_n_kl_bound(0)


def test_kl_estimate_below_and_near_the_bound():
    rng = np.random.default_rng(4)
    ns = [1, 2, 4, 8, 16]
    bound = best_of_n_kl_bound(ns)
    large = best_of_n_kl(rng.normal(size=(2, 20_000)), ns)
    assert (large <= bound + 1e-12).all()
    np.testing.assert_allclose(large, bound, atol=1e-4)
    small = best_of_n_kl(rng.normal(size=50), ns)
    assert (small <= bound).all() and small[0] == 0.0
    assert (small[1:] < large[1:]).all()  # a small pool is further below the bound
    assert np.all(np.diff(bound - small) > 0)  # and more so for larger n


def test_kl_smaller_with_duplicates_and_ties():
    rng = np.random.default_rng(5)
    distinct = rng.normal(size=200)
    texts = [f"response {i}" for i in range(200)]
    ns = [2, 8]
    base = best_of_n_kl(distinct, ns, texts)
    np.testing.assert_allclose(base, best_of_n_kl(distinct, ns))  # distinct texts: no change
    # the same texts drawn twice score the same: a pool of 100 responses, each twice
    dup_values, dup_texts = np.repeat(distinct[:100], 2), [t for t in texts[:100] for _ in "ab"]
    assert (best_of_n_kl(dup_values, ns, dup_texts) < base).all()
    # identical texts whose noisy scores differ are one outcome: merging lowers the KL
    noisy_texts = [texts[i // 2] for i in range(200)]
    merged = best_of_n_kl(distinct, ns, noisy_texts)
    assert (merged < base).all()
    assert (best_of_n_kl(np.round(distinct), ns) < base).all()  # tied objective values


def test_kl_per_prompt_and_bad_responses():
    values = np.random.default_rng(6).normal(size=(3, 30))
    assert best_of_n_kl(values, [2, 3], per_prompt=True).shape == (3, 2)
    with pytest.raises(ValueError, match="responses must be P=3 lists of N=30 responses"):
        best_of_n_kl(values, [2], [["a"] * 30] * 2)
