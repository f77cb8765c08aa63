"""Online DPO: generate → score through the engine → pair → DPO step, and what it logs."""

from __future__ import annotations

import math

import pytest
import torch
from dpo_setup import fitted_reward_model, save_backbone, tiny_policy, word_pairs_and_tokenizer

from auq.training import HFGenerator, OnlineDPOConfig, OnlineDPOTrainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

QUICK = {"max_new_tokens": 6, "prompts_per_step": 4, "num_generations": 3, "progress": False}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    world, train, _, tok = word_pairs_and_tokenizer()
    rm = fitted_reward_model(save_backbone(tok, tmp_path_factory.mktemp("rm")), train)
    return world, tok, rm, world.sample_prompts(16, seed=3)


def trainer(setup, policy_seed=0, **options):
    world, tok, rm, prompts = setup
    return OnlineDPOTrainer(
        tiny_policy(tok, policy_seed),
        tokenizer=tok,
        reward_model=rm,
        prompts=prompts,
        gold_reward=world.gold_reward,
        args=OnlineDPOConfig(**{**QUICK, "lr": 1e-2, **options}),
    )


def test_a_run_logs_the_loop_the_reward_model_and_the_gold(setup):
    t = trainer(setup, max_steps=3)
    start = t.evaluate(num_generations=2, seed=5)
    assert start["kl"] == 0.0  # the policy is its reference before training (sampled tokens)
    result = t.train()
    assert len(result.history) == 3
    row = result.history[0]
    for name in (
        "loss", "kl", "reward/mean", "reward/penalized", "reward/epistemic_var",
        "reward/epistemic_std", "gold/mean", "gold/pair_accuracy", "pairs/selected",
        "time/generate", "time/score", "time/update", "rewards/chosen", "rewards/rejected",
        "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
    ):  # fmt: skip
        assert name in row and math.isfinite(row[name]), name
    assert row["reward/epistemic_var"] > 0  # K=4 heads disagree
    assert row["time/update"] > 0 and row["time/generate"] > 0
    assert result.n_pairs == sum(h["pairs/selected"] for h in result.history) == 12
    after = t.evaluate(num_generations=2, seed=5)
    assert after["kl"] != 0.0 and set(start) == set(after)


def test_a_seed_makes_a_run_reproducible(setup):
    a, b = trainer(setup, max_steps=2), trainer(setup, max_steps=2)
    ra, rb = a.train(), b.train()
    assert [h["reward/mean"] for h in ra.history] == [h["reward/mean"] for h in rb.history]
    for (n, pa), (_, pb) in zip(
        a.model.named_parameters(), b.model.named_parameters(), strict=True
    ):
        assert torch.equal(pa, pb), n


def test_penalised_objective_ranks_by_the_lower_bound(setup):
    t = trainer(setup, max_steps=1, objective="lcb", k=2.0)
    row = t.train().history[0]
    assert row["reward/penalized"] < row["reward/mean"]  # mean − 2·std


def test_training_raises_the_penalised_reward_of_the_samples(setup):
    """Stated figures (seeded; 4 prompts, 30 updates of 4 × 8 samples, lr 3e-3, lcb k=1):
    the penalised reward of 4 × 64 samples drawn with one seed before and after training
    (common random numbers) rises from -5.21 to -5.05, KL 0.07 nats."""
    world, tok, rm, _ = setup
    t = OnlineDPOTrainer(
        tiny_policy(tok),
        tokenizer=tok,
        reward_model=rm,
        prompts=world.sample_prompts(4, seed=3),
        args=OnlineDPOConfig(
            objective="lcb", lr=3e-3, max_steps=30, prompts_per_step=4, num_generations=8,
            max_new_tokens=4, progress=False,
        ),
    )  # fmt: skip
    before = t.evaluate(num_generations=64, seed=1)
    t.train()
    after = t.evaluate(num_generations=64, seed=1)
    assert after["reward/penalized"] > before["reward/penalized"] + 0.05
    assert 0 < after["kl"] < 1


def test_alpha_skips_prompts_whose_order_is_uncertain(setup):
    t = trainer(setup, max_steps=2, alpha=0.001)
    result = t.train()
    skipped = sum(h["pairs/skipped_uncertain"] for h in result.history)
    assert result.n_skipped_uncertain == skipped > 0
    assert result.n_pairs + result.n_skipped_uncertain + result.n_skipped_ties == 8


def test_the_generators_sampled_tokens_are_what_is_scored(setup):
    """HFGenerator exposes the sampled ids; decoding them gives the texts it returned."""
    _, tok, _, prompts = setup
    gen = HFGenerator(tiny_policy(tok), tok, max_new_tokens=6)
    texts = gen.generate(prompts[:3], 2, seed=0)
    assert len(gen.last_prompt_ids) == 3 and all(len(g) == 2 for g in gen.last_response_ids)
    for group, ids_group in zip(texts, gen.last_response_ids, strict=True):
        for text, ids in zip(group, ids_group, strict=True):
            assert tok.decode(ids, skip_special_tokens=True) == text
            assert 1 <= len(ids) <= 6


def test_a_lora_policy_uses_its_base_as_reference(setup):
    _world, tok, rm, prompts = setup
    t = OnlineDPOTrainer(
        tiny_policy(tok),
        tokenizer=tok,
        reward_model=rm,
        prompts=prompts,
        peft_config={"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]},
        args=OnlineDPOConfig(**{**QUICK, "lr": 5e-2, "max_steps": 2}),
    )
    assert t.ref_model is None  # no copy: adapters off is the reference
    assert t.evaluate(num_generations=2)["kl"] == 0.0
    t.train()
    assert t.evaluate(num_generations=2)["kl"] != 0.0


def test_the_reward_model_may_tokenise_differently(setup, tiny_gpt2_dir):
    world, tok, _, prompts = setup
    rm = fitted_reward_model(tiny_gpt2_dir, world.preference_dataset(32, seed=0))
    t = OnlineDPOTrainer(
        tiny_policy(tok),
        tokenizer=tok,
        reward_model=rm,
        prompts=prompts,
        args=OnlineDPOConfig(**{**QUICK, "max_steps": 1}),
    )
    assert math.isfinite(t.train().history[0]["reward/mean"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_generations": 1}, r"num_generations must be an integer >= 2"),
        ({"objective": "max"}, r"objective.*'mean', 'wco', 'uwo', 'lcb', 'effective'"),
        ({"beta": 0}, r"beta must be a finite number > 0"),
        ({"alpha": 1.5}, r"alpha must be a finite number > 0 and <= 1"),
        ({"loss_type": "kto"}, r"loss_type.*'sigmoid', 'ipo'"),
        ({"prompts_per_step": 3, "gradient_accumulation_steps": 2}, r"prompts_per_step=3 must"),
    ],
)
def test_bad_configuration_is_refused_with_the_option_named(options, message):
    with pytest.raises(ValueError, match=message):
        OnlineDPOConfig(**options)


def test_bad_inputs_are_refused_before_any_compute(setup):
    _, tok, rm, prompts = setup
    policy = tiny_policy(tok)
    with pytest.raises(TypeError, match=r"reward_model must be an auq.RewardModel"):
        OnlineDPOTrainer(policy, tokenizer=tok, reward_model="rm", prompts=prompts)
    with pytest.raises(ValueError, match=r"no 'prompt' column"):
        import pandas as pd

        OnlineDPOTrainer(
            policy, tokenizer=tok, reward_model=rm, prompts=pd.DataFrame({"text": prompts})
        )
    generator = HFGenerator(policy, tok, max_new_tokens=4)
    with pytest.raises(
        ValueError, match=r"max_new_tokens, top_k configure the default HFGenerator"
    ):
        OnlineDPOTrainer(
            policy,
            tokenizer=tok,
            reward_model=rm,
            prompts=prompts,
            generator=generator,
            args=OnlineDPOConfig(max_new_tokens=4, top_k=5),
        )
    with pytest.raises(TypeError, match=r"spread_calibrator must be a fitted SpreadScaler"):
        OnlineDPOTrainer(
            policy, tokenizer=tok, reward_model=rm, prompts=prompts, spread_calibrator=object()
        )


class _TextOnly:
    """A generator that returns texts only (no token ids), like an external engine."""

    def __init__(self, inner):
        self.inner = inner

    def generate(self, prompts, n, *, seed):
        return self.inner.generate(prompts, n, seed=seed)


def test_sampled_tokens_are_trained_on_and_re_tokenised_texts_agree_where_they_can(setup):
    """The fast path trains on the tokens the policy sampled, which decode to exactly the
    text the reward model scored; the general path (decode → encode, for generators that
    return texts only) agrees with it wherever the round trip is lossless. The testbed's
    word-level tokenizer shows why the fast path exists: a random policy glues words
    without spaces, and re-encoding those gives <unk>s."""
    _, tok, _, prompts = setup
    fast = trainer(setup)
    slow = trainer(setup)
    slow.generator = _TextOnly(slow.generator)
    a = fast._sample_and_score(prompts[:4], seed=3, n=3)
    b = slow._sample_and_score(prompts[:4], seed=3, n=3)
    assert a["responses"] == b["responses"]
    torch.testing.assert_close(a["prediction"].mean, b["prediction"].mean)
    eos = tok.eos_token_id
    for ids, text in zip(a["response_ids"], a["responses"], strict=True):
        assert tok.decode(ids, skip_special_tokens=True) == text
    for i, text in enumerate(a["responses"]):
        if tok(text, add_special_tokens=False)["input_ids"] == [
            t for t in a["response_ids"][i] if t != eos
        ]:
            assert a["prompt_ids"][i] == b["prompt_ids"][i]
            assert a["response_ids"][i] == b["response_ids"][i]
