"""Tests for auq.data.builtin: the synthetic preference world with a known gold reward."""

from __future__ import annotations

import re

import numpy as np
import pytest

from auq.data import PreferenceDataset
from auq.data.builtin import (
    _TOPIC_BANKS,
    BUILTIN_TOPICS,
    GENERIC,
    GOLD_VALUES,
    LABEL_TEMPERATURE,
    OOD_TOPICS,
    bayes_accuracy,
    gold_ceiling,
    gold_reward,
    load_builtin_preferences,
)

# function words and generic verbs that both domains may share
STOPWORDS = set(
    "a after an and around as at back because before by each every for from in into is it "
    "keep let my near never of on see since so take the then through to two up use when with "
    "without your".split()
)


@pytest.fixture(scope="module")
def ds():
    return load_builtin_preferences(2000, seed=0)


@pytest.fixture(scope="module")
def ood():
    return load_builtin_preferences(500, seed=0, domain="ood")


def test_sizes_and_columns(ds):
    assert len(ds) == 2000 and len(load_builtin_preferences(7)) == 7
    gold = ["gold_chosen", "gold_rejected", "gold_prob", "topic"]
    assert ds.columns == ["prompt", "chosen", "rejected", *gold]
    assert not ds.is_conversational


def test_deterministic_per_seed(ds):
    assert load_builtin_preferences(2000, seed=0).to_records() == ds.to_records()
    other = load_builtin_preferences(2000, seed=1)
    assert other.prompts != ds.prompts and other.chosen != ds.chosen


def test_chosen_differs_from_rejected(ds, ood):
    for d in (ds, ood):
        assert all(c != r for c, r in zip(d.chosen, d.rejected, strict=True))
        assert np.all(np.array(d.column("gold_chosen")) != np.array(d.column("gold_rejected")))


def test_gold_ceiling_in_intended_range(ds, ood):
    for d in (ds, ood):
        assert 0.85 <= gold_ceiling(d) <= 0.9
        assert 0.85 <= bayes_accuracy(d) <= 0.9
        assert abs(gold_ceiling(d) - bayes_accuracy(d)) < 0.03
        assert bayes_accuracy(d) == pytest.approx(bayes_accuracy(d, temperature=LABEL_TEMPERATURE))


def test_lower_temperature_less_noise():
    clean = load_builtin_preferences(1000, seed=0, temperature=0.05)
    assert gold_ceiling(clean) > 0.97 and bayes_accuracy(clean) > 0.97
    assert bayes_accuracy(clean, temperature=LABEL_TEMPERATURE) < 0.9


def test_gold_reward_recomputed_from_text(ds, ood):
    for d in (ds, ood):
        for row in d.to_records():
            gc = gold_reward(row["prompt"], row["chosen"])
            gr = gold_reward(row["prompt"], row["rejected"])
            assert (gc, gr) == pytest.approx((row["gold_chosen"], row["gold_rejected"]))
            assert row["gold_prob"] == pytest.approx(
                1 / (1 + np.exp(-(gc - gr) / LABEL_TEMPERATURE))
            )


def test_gold_reward_documented_values():
    cook = "How do I make a tender omelette?"
    on = _TOPIC_BANKS["cooking"][1][1]
    off = _TOPIC_BANKS["finance"][1][0]
    polite, rude = GENERIC["polite"][0], GENERIC["rude"][0]
    assert gold_reward(cook, on) == pytest.approx(GOLD_VALUES["helpful"] + 0.1)
    assert gold_reward(cook, off) == pytest.approx(GOLD_VALUES["helpful_off"] + 0.1)
    expected = (GOLD_VALUES["polite"] + GOLD_VALUES["helpful"]) / 2 + 0.2
    assert gold_reward(cook, f"{polite} {on}") == pytest.approx(expected)
    assert gold_reward(cook, rude) < gold_reward(cook, off) < gold_reward(cook, on)
    assert gold_reward(cook, "Something not in any bank.") == pytest.approx(0.1)


def test_prompt_topics_parse(ds, ood):
    assert set(ds.column("topic")) == set(BUILTIN_TOPICS)
    assert set(ood.column("topic")) == set(OOD_TOPICS)
    for task_topic, (tasks, _, _) in _TOPIC_BANKS.items():
        for task in tasks:  # every task names exactly one topic
            owners = [t for t, (ts, _, _) in _TOPIC_BANKS.items() if any(task in x for x in ts)]
            assert owners == [task_topic]


def vocabulary(topics):
    words = set()
    for t in topics:
        for bank in _TOPIC_BANKS[t]:
            for text in bank:
                words |= set(re.findall(r"[a-z]+", text.lower()))
    return words - STOPWORDS


def test_ood_vocabulary_disjoint():
    assert set(BUILTIN_TOPICS).isdisjoint(OOD_TOPICS)
    assert len(BUILTIN_TOPICS) == 8 and len(OOD_TOPICS) == 4
    assert vocabulary(BUILTIN_TOPICS) & vocabulary(OOD_TOPICS) == set()


def test_ood_responses_only_use_ood_topics(ood):
    allowed = {x for bank in GENERIC.values() for x in bank}
    allowed |= {x for t in OOD_TOPICS for bank in _TOPIC_BANKS[t][1:] for x in bank}
    for text in ood.chosen + ood.rejected:
        assert set(re.split(r"(?<=[.!?])\s+", text)) <= allowed


def test_returns_preference_dataset(ds):
    assert isinstance(ds, PreferenceDataset)
    _, test = ds.split(0.25)
    assert len(test) == 500 and 0.8 < gold_ceiling(test) < 0.95


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_pairs": 0}, r"n_pairs must be an integer >= 1, got 0"),
        ({"n_pairs": 2.5}, r"n_pairs must be an integer >= 1"),
        ({"domain": "out"}, r"domain='out' is not supported; valid choices: 'in', 'ood'"),
        ({"temperature": 0.0}, r"temperature must be a positive number"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_builtin_preferences(**kwargs)


def test_gold_helpers_need_gold_columns():
    plain = PreferenceDataset.from_records([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match="lacks gold columns"):
        gold_ceiling(plain)
