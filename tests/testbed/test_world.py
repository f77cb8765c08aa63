"""The testbed world: gold reward, reproducibility, label noise, the built-in shift."""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from auq.testbed import ATTRIBUTES, DEFAULT_TEMPERATURE, REGIONS, World, label_summary, noise_rate
from auq.testbed.banks import ADVICE_LEADS, ADVICE_TAILS, PROMPT_TEMPLATES, TOPIC_BANKS
from auq.testbed.grammar import CORES, EXACT, TOPICS, normalise, prompt_topic, realise_advice

RICE = "How do I cook rice without burning it?"
POLITE = "Great question, I am glad you asked."
ADV_A = "Rinse the rice and let it rest covered for ten minutes after cooking."
ADV_B = "Remember to heat the pan properly before you add the oil, which makes a real difference."
ADV_A2 = "First, rinse the rice and let it rest covered for ten minutes after cooking."
COOKING = [c.text for c in CORES if c.kind == "advice" and TOPICS[c.topic] == "cooking"]


@pytest.fixture(scope="module")
def world():
    return World(0)


def _sentences(*texts: str) -> str:
    return " ".join(texts)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:] + "."


# -- gold reward -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [
        # greeting 0.3 + two on-topic points 2.0 + three complete sentences 0.75
        (RICE, _sentences(POLITE, ADV_A, ADV_B), 3.05),
        # ... + stock −0.5 + filler −0.3, bonus capped at 4 sentences, one beyond: −0.7
        (
            RICE,
            _sentences(
                POLITE,
                ADV_A,
                ADV_B,
                "As an expert, I can assure you this works.",
                "Let me add a few more words about this.",
            ),
            0.3 + 2.0 - 0.5 - 0.3 + 1.0 - 0.7,
        ),
        # unsafe −2.5 + rude −1.5 + 0.5
        (
            RICE,
            "Throw water on a pan of burning oil to put the fire out. Figure it out on your own.",
            -3.5,
        ),
        # off-topic −0.4 + on-topic 1 + reworded point −0.3 + verbatim repeat −1 + 3 × 0.25
        (
            RICE,
            _sentences(
                "Pay off the card with the highest interest rate first.",
                ADV_A,
                ADV_A2,
                "Pay off the card with the highest interest rate first.",
            ),
            -0.4 + 1.0 - 0.3 - 1.0 + 0.75,
        ),
        # five on-topic points: 3 × 1 + 2 × 0.2, bonus 4 × 0.25, one sentence too many −0.7
        (RICE, _sentences(*[_cap(c) for c in COOKING[:5]]), 3.4 + 1.0 - 0.7),
        # greetings capped at two: 0.6 + 0.75
        (
            RICE,
            _sentences(POLITE, "Happy to help with that!", "Best of luck with it."),
            0.6 + 0.75,
        ),
        # unknown prompt topic: correct advice is untargeted, 0.3 + 0.25
        ("Tell me a joke.", ADV_A, 0.55),
        # a truncated sentence: 7 of the core's 13 words, 0.5 · 1 · 7/13 − 0.25
        (RICE, "Rinse the rice and let it rest", 0.5 * 7 / 13 - 0.25),
        # wrong advice −1 + hedge −0.4 + 0.5
        (
            RICE,
            "Stir the rice constantly while it simmers so it turns out fluffy. "
            "There is no single right answer to this.",
            -1.4 + 0.5,
        ),
        ("How do I cook rice without burning it?", "", -1.0),
        (RICE, "Hello there, nice weather.", -1.0),
    ],
)
def test_gold_hand_computed(world, prompt, response, expected):
    got = world.gold_reward([prompt], [response])
    assert got.dtype == np.float64 and got.shape == (1,)
    assert got[0] == pytest.approx(expected, abs=1e-12)


def test_gold_reads_text_however_it_is_spaced(world):
    """A tokenizer's decode (spaces around punctuation, other case) reads the same."""
    prompts = world.sample_prompts(300, seed=5, region="wide")
    responses = world.sample_responses(prompts, seed=5, region="wide")
    spaced = [re.sub(r"([,.!?])", r" \1 ", r).lower() for r in responses]
    prompts_spaced = [re.sub(r"([,.!?])", r" \1 ", p).upper() for p in prompts]
    np.testing.assert_array_equal(
        world.gold_reward(prompts, responses), world.gold_reward(prompts_spaced, spaced)
    )


def _odd_strings() -> list[str]:
    rng = np.random.default_rng(0)
    raw = bytes(rng.integers(0, 256, 600, dtype=np.uint8).tolist())
    return [
        "",
        " ",
        "\n\t  \r",
        "😀🎉🔥",
        "日本語のテキストです。",
        "Ünïcödé façade naïve.",
        raw.decode("utf-8", errors="replace"),
        raw.decode("latin-1"),
        "\x00\x01\x02",
        "...!!!???",
        "a" * 10_000,
        "x. " * 3_400,
        ADV_A * 200,
        (ADV_A + " ") * 300,
        "Rinse the rice and let it",
        "Rinse the rice and let it rest covered. Throw water on a pan of",
        "You should. Remember to. First,",
    ]


def test_gold_is_defined_on_arbitrary_strings(world):
    odd = _odd_strings()
    prompts = [RICE, "", "😀", "a" * 10_000] * 5
    prompts = prompts[: len(odd)]
    gold = world.gold_reward(prompts, odd)
    assert gold.shape == (len(odd),) and gold.dtype == np.float64
    assert np.isfinite(gold).all()
    np.testing.assert_array_equal(gold, world.gold_reward(prompts, odd))
    np.testing.assert_array_equal(gold, World(7).gold_reward(prompts, odd))
    attrs = world.attributes(prompts, odd)
    assert set(ATTRIBUTES) <= set(attrs)
    assert all(v.shape == (len(odd),) for v in attrs.values())
    # a text without a single ASCII word is empty: −1.0
    assert gold[:5].tolist() == [-1.0] * 5


def test_gold_rejects_bad_containers(world):
    with pytest.raises(TypeError, match="responses must be a sequence of strings"):
        world.gold_reward([RICE], ADV_A)
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        world.gold_reward([RICE, RICE], [ADV_A])
    with pytest.raises(TypeError, match=r"responses\[1\] must be a str, got int"):
        world.gold_reward([RICE, RICE], [ADV_A, 3])


def test_every_sampled_sentence_is_known(world):
    """The grammar writes only sentences the gold reward reads as whole, known sentences."""
    for region in REGIONS:
        prompts = world.sample_prompts(400, seed=2, region=region)
        attrs = world.attributes(prompts, world.sample_responses(prompts, seed=2, region=region))
        assert attrs["topic_known"].all()
        assert attrs["unknown"].sum() == 0 and attrs["fragment"].sum() == 0
        assert (attrs["n_complete"] + attrs["repeated"] == attrs["n_sentences"]).all()


def test_grammar_tables():
    # every prompt of every template is read back to its topic
    for t, (tasks, *_rest) in enumerate(TOPIC_BANKS.values()):
        for task in tasks:
            for template in PROMPT_TEMPLATES:
                assert prompt_topic(template.format(task)) == t
    # every lead × core × tail of an advice core is a known sentence of that core
    for i, core in enumerate(CORES):
        if core.topic >= 0:
            for lead in range(len(ADVICE_LEADS)):
                for tail in range(len(ADVICE_TAILS)):
                    key = " ".join(normalise(realise_advice(i, lead, tail)))
                    assert EXACT[key] == i
    assert len(TOPICS) == 10


def test_gold_throughput(world):
    """Measured and printed, never asserted (CPU time varies with the machine)."""
    prompts = world.sample_prompts(2000, seed=11, region="wide")
    responses = world.sample_responses(prompts, seed=11, region="wide")
    prompts, responses = prompts * 5, responses * 5
    start = time.perf_counter()
    gold = world.gold_reward(prompts, responses)
    elapsed = time.perf_counter() - start
    print(f"\ngold_reward: {len(gold) / elapsed:,.0f} responses/s (wide region, one core)")
    assert np.isfinite(gold).all()


def test_gold_is_the_same_in_another_process(world):
    prompts = world.sample_prompts(20, seed=4, region="wide")
    responses = world.sample_responses(prompts, seed=4, region="wide")
    code = (
        "import json; from auq.testbed import World; w = World(0); "
        "p = w.sample_prompts(20, seed=4, region='wide'); "
        "r = w.sample_responses(p, seed=4, region='wide'); "
        "print(json.dumps([p, r, w.gold_reward(p, r).tolist(), w.fingerprint]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    p, r, g, fp = json.loads(out.stdout)
    assert (p, r, fp) == (prompts, responses, world.fingerprint)
    assert g == world.gold_reward(prompts, responses).tolist()


# -- reproducibility -------------------------------------------------------------------


def test_same_seed_same_world_different_seed_different():
    a, b, c = World(3), World(3), World(4)
    for region in REGIONS:
        pa = a.sample_prompts(50, region=region)
        assert pa == b.sample_prompts(50, region=region)
        assert pa != c.sample_prompts(50, region=region)
        assert pa != a.sample_prompts(50, seed=1, region=region)
        ra = a.sample_responses(pa, region=region)
        assert ra == b.sample_responses(pa, region=region)
        assert ra != c.sample_responses(pa, region=region)
        assert ra[:10] == a.sample_responses(pa[:10], region=region)  # prefix-stable
    da, db, dc = (w.preference_dataset(40, label_noise=0.25) for w in (a, b, c))
    assert da.to_records() == db.to_records()
    assert da.to_records() != dc.to_records()
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert World(3, label_noise=0.25).fingerprint == a.fingerprint  # labels only


def test_prompts_are_readable_questions(world):
    train = world.sample_prompts(300, seed=1)
    wide = world.sample_prompts(300, seed=1, region="wide")
    assert all(p[0].isupper() and p.rstrip()[-1] in "?." for p in train + wide)
    assert {world.prompt_topic(p) for p in train} == set(TOPICS)
    # the last three templates appear only in the wide region
    extra = [t.split("{}")[0] for t in PROMPT_TEMPLATES[6:]]
    assert not any(p.startswith(tuple(extra)) for p in train)
    assert any(p.startswith(tuple(extra)) for p in wide)


def test_responses_are_varied(world):
    prompts = [RICE] * 200
    responses = world.sample_responses(prompts, seed=9)
    assert len(set(responses)) >= 170, len(set(responses))
    gold = world.gold_reward(prompts, responses)
    assert gold.std() > 1.0, gold.std()


def test_sample_responses_refuses_foreign_prompts(world):
    with pytest.raises(ValueError, match=r"1 of 2 prompts name no task .* prompts\[1\]"):
        world.sample_responses([RICE, "What is love?"])


# -- the distribution shift ------------------------------------------------------------


@pytest.fixture(scope="module")
def regions(world):
    out = {}
    for region in REGIONS:
        prompts = world.sample_prompts(3000, seed=21, region=region)
        responses = world.sample_responses(prompts, seed=21, region=region)
        out[region] = (world.attributes(prompts, responses), world.gold_reward(prompts, responses))
    return out


def test_region_lengths(regions):
    train, wide = regions["train"][0]["n_sentences"], regions["wide"][0]["n_sentences"]
    assert set(np.unique(train)) == {1, 2, 3}
    assert set(np.unique(wide)) == set(range(1, 9))
    assert regions["train"][0]["filler"].sum() == regions["train"][0]["repeated"].sum() == 0


def test_length_helps_in_train_and_hurts_beyond_it(regions):
    attrs, gold = regions["train"]
    r_train = np.corrcoef(attrs["n_sentences"], gold)[0, 1]
    assert r_train > 0.3, f"corr(sentences, gold) in 'train' is {r_train:.3f}, expected > 0.3"
    attrs, gold = regions["wide"]
    beyond = attrs["n_sentences"] > 3
    r_wide = np.corrcoef(attrs["n_sentences"][beyond], gold[beyond])[0, 1]
    assert r_wide < -0.4, (
        f"corr(sentences, gold) beyond 3 sentences is {r_wide:.3f}, expected < -0.4"
    )
    means = [gold[attrs["n_sentences"] == k].mean() for k in range(4, 9)]
    assert all(np.diff(means) < 0), means


def test_stock_phrase_marks_good_answers_only_in_train(regions):
    (ta, tg), (wa, wg) = regions["train"], regions["wide"]
    r_train = np.corrcoef(ta["stock"] > 0, tg)[0, 1]
    r_wide = np.corrcoef(wa["stock"] > 0, wg)[0, 1]
    assert r_train > 0.1, f"corr(stock, gold) in 'train' is {r_train:.3f}, expected > 0.1"
    assert r_wide < -0.1, f"corr(stock, gold) in 'wide' is {r_wide:.3f}, expected < -0.1"


# -- preference labels -----------------------------------------------------------------


def test_preference_dataset_columns(world):
    ds = world.preference_dataset(200, seed=1)
    assert len(ds) == 200
    for c in ("gold_chosen", "gold_rejected", "gold_prob", "flipped", "topic", "region"):
        assert c in ds.columns
    assert all(c != r for c, r in zip(ds.chosen, ds.rejected, strict=True))
    np.testing.assert_array_equal(
        ds.column("gold_chosen"), world.gold_reward(ds.prompts, ds.chosen)
    )
    np.testing.assert_array_equal(
        ds.column("gold_rejected"), world.gold_reward(ds.prompts, ds.rejected)
    )
    assert set(ds.column("region")) == {"train"} and noise_rate(ds) == 0.0


def test_bradley_terry_labels_follow_the_gold_margin(world):
    """Agreement with gold equals the mean Bradley–Terry probability, within 3 standard errors."""
    ds = world.preference_dataset(3000, seed=2, label_noise=0.0)
    diff = np.asarray(ds.column("gold_chosen")) - np.asarray(ds.column("gold_rejected"))
    p_right = 0.5 * (1 + np.tanh(0.5 * np.abs(diff) / DEFAULT_TEMPERATURE))
    agree = label_summary(ds)["gold_agreement"]
    tol = 3 * math.sqrt((p_right * (1 - p_right)).sum()) / len(ds)
    assert abs(agree - p_right.mean()) < tol, (agree, p_right.mean(), tol)
    cold = world.preference_dataset(500, seed=2, temperature=1e-3)
    d = np.asarray(cold.column("gold_chosen")) - np.asarray(cold.column("gold_rejected"))
    assert (d[d != 0] > 0).all()  # T → 0: the label is the gold order


def test_label_noise_rate_matches_its_setting(world, caplog):
    with caplog.at_level(logging.INFO, logger="auq.testbed"):
        ds = world.preference_dataset(4000, seed=3, label_noise=0.25)
    rate, sd = noise_rate(ds), math.sqrt(0.25 * 0.75 / 4000)
    assert abs(rate - 0.25) < 3 * sd, (
        f"realised noise rate {rate:.4f}, expected 0.25 ± {3 * sd:.4f}"
    )
    assert label_summary(ds)["n_flipped"] == round(rate * 4000)
    assert f"{round(rate * 4000)} labels flipped" in caplog.text
    assert noise_rate(world.preference_dataset(4000, seed=3, label_noise=0.0)) == 0.0


def test_flip_swaps_the_bradley_terry_winner():
    clean = World(1).preference_dataset(600, seed=5)
    noisy = World(1, label_noise=0.3).preference_dataset(600, seed=5)
    flipped = np.asarray(noisy.column("flipped"), dtype=bool)
    assert 0 < flipped.sum() < 600
    for i in range(600):
        a, b = clean[i], noisy[i]
        assert a["prompt"] == b["prompt"]
        if flipped[i]:
            assert (b["chosen"], b["rejected"]) == (a["rejected"], a["chosen"])
            assert (b["gold_chosen"], b["gold_rejected"]) == (a["gold_rejected"], a["gold_chosen"])
        else:
            assert (b["chosen"], b["rejected"]) == (a["chosen"], a["rejected"])


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda w: w.sample_prompts(0), r"n must be an integer >= 1, got 0"),
        (lambda w: w.sample_prompts(3, region="test"), r"region='test'.*'train', 'wide'"),
        (lambda w: w.sample_prompts(3, seed=-1), r"seed must be None or an integer >= 0"),
        (lambda w: w.sample_responses([RICE], region="ood"), r"region='ood'.*'train', 'wide'"),
        (lambda w: w.preference_dataset(0), r"n must be an integer >= 1"),
        (lambda w: w.preference_dataset(5, label_noise=0.5), r"label_noise must be .*\[0, 0.5\)"),
        (lambda w: w.preference_dataset(5, label_noise=-0.1), r"label_noise must be .*\[0, 0.5\)"),
        (lambda w: w.preference_dataset(5, temperature=0), r"temperature must be .*> 0"),
        (lambda w: w.preference_dataset(5, temperature=math.inf), r"temperature must be .*> 0"),
        (lambda w: w.preference_dataset(5, region="all"), r"region='all'.*'train', 'wide'"),
        (lambda w: World(label_noise=0.6), r"label_noise must be .*\[0, 0.5\)"),
        (lambda w: World(temperature=-1.0), r"temperature must be .*> 0"),
        (lambda w: World(seed=1.5), r"seed must be None or an integer >= 0"),
    ],
)
def test_bad_options_name_the_option_and_the_valid_values(world, call, match):
    with pytest.raises(ValueError, match=match):
        call(world)


def test_noise_rate_needs_a_testbed_dataset(world):
    from auq.data.dataset import PreferenceDataset

    plain = PreferenceDataset.from_records([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match="no 'flipped' column"):
        noise_rate(plain)


def test_world_is_frozen_and_describes_itself(world):
    with pytest.raises(AttributeError):
        world.seed = 2  # type: ignore[misc]
    text = world.describe()
    for name in ("on_topic", "unsafe", "stock", "repeated", "region 'train'", "region 'wide'"):
        assert name in text
