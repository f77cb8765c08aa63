"""The testbed's reference policy: SFT, the tokenizer, the on-disk cache, sampling diversity.

Every test trains tiny GPT-2s on the real :class:`~auq.testbed.World` into ``tmp_path``
caches (never the user's cache). Training is single-threaded and seeded, so a rebuilt
policy has exactly the weights of the first build; several tests rely on that.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from auq.testbed.cache import (
    cache_root,
    policy_dir,
    policy_key,
    publish_policy,
    read_policy,
    verify_policy_files,
)
from auq.testbed.policy import (
    PolicyConfig,
    load_or_train_policy,
    reference_policy,
    world_identity,
)
from auq.testbed.sft import train_policy
from auq.testbed.tokenizer import build_tokenizer
from auq.testbed.world import World
from auq.training import HFGenerator
from auq.utils.io import CheckpointError


def generate_responses(model, tok, prompts, *, n=1, seed=0, **options):
    """n samples per prompt through the library's one sampler (one thread, as on CI)."""
    options.setdefault("max_new_tokens", int(model.generation_config.max_new_tokens))
    generator = HFGenerator(model, tok, num_threads=1, **options)
    return generator.generate(prompts, n, seed=seed)


#: a policy that learns something in a few seconds on one core
TINY = PolicyConfig(
    n_layer=1,
    n_head=2,
    n_embd=32,
    n_positions=96,
    steps=120,
    batch_size=32,
    lr=2e-2,
    warmup_steps=10,
    n_train=300,
    n_eval=32,
)
#: the tiny policy must end below this fraction of its first-step loss (≈ ln(vocabulary));
#: learning the word frequencies alone gets to about 0.75
CONVERGED = 0.6
#: a policy that trains in about a second, for the cache's tests
MICRO = PolicyConfig(
    n_layer=1, n_head=1, n_embd=8, n_positions=96, steps=4, batch_size=8, n_train=48, n_eval=8
)


def _weights_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def world():
    return World(seed=0)


@pytest.fixture(scope="module")
def built(world, tmp_path_factory):
    """The tiny policy trained once into a module-wide cache: (model, tokenizer, record, root)."""
    root = tmp_path_factory.mktemp("auq-cache")
    model, tokenizer, record = load_or_train_policy(world, config=TINY, cache_dir=root)
    return model, tokenizer, record, root


@pytest.fixture(scope="module")
def micro(world, tmp_path_factory):
    """The micro policy, trained once: (model, tokenizer, record, root)."""
    root = tmp_path_factory.mktemp("auq-cache-micro")
    model, tokenizer, record = load_or_train_policy(world, config=MICRO, cache_dir=root)
    return model, tokenizer, record, root


# -- training ------------------------------------------------------------------------------


def test_sft_converges(built):
    _, _, record, _ = built
    assert record.trained
    assert len(record.losses) == TINY.steps
    assert record.final_loss < CONVERGED * record.initial_loss, (
        f"SFT loss went {record.initial_loss:.3f} -> {record.final_loss:.3f} in {TINY.steps} "
        f"steps; expected below {CONVERGED} x the initial loss"
    )
    assert record.eval_loss is not None and record.eval_loss < CONVERGED * record.initial_loss, (
        f"held-out loss {record.eval_loss} is not below {CONVERGED} x {record.initial_loss:.3f}"
    )
    assert record.n_examples == TINY.n_train and record.n_dropped == 0


def test_model_and_tokenizer_are_generation_ready(built, world):
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    model, tok, record, _ = built
    assert isinstance(model, GPT2LMHeadModel) and isinstance(tok, PreTrainedTokenizerFast)
    assert not model.training
    assert tok.padding_side == "left"
    assert model.config.n_embd == TINY.n_embd and model.config.n_positions == TINY.n_positions
    assert model.config.vocab_size == len(tok) == record.vocab_size
    gen = model.generation_config
    assert gen.do_sample and gen.temperature == 1.0
    assert (gen.eos_token_id, gen.pad_token_id, gen.bos_token_id) == (
        tok.eos_token_id,
        tok.pad_token_id,
        tok.bos_token_id,
    )
    # room for the longest response of the training data, and its <eos>
    prompts = world.sample_prompts(TINY.n_train, seed=TINY.seed)
    responses = world.sample_responses(prompts, seed=TINY.seed + 1)
    longest = max(len(ids) for ids in tok(responses, add_special_tokens=False)["input_ids"])
    assert gen.max_new_tokens == record.max_new_tokens >= longest + 1


def test_length_pooled_batches_are_addressed_by_position():
    """The training loop asks for micro-batch i; it is the generator's i-th batch, in any order."""
    from auq.testbed.sft import _batches, _PooledBatches

    lengths = torch.randint(3, 40, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    drawn = _batches(lengths, 8, torch.Generator().manual_seed(5))
    expected = [next(drawn) for _ in range(40)]  # 13 batches an epoch: three epochs and more
    batches = _PooledBatches(lengths, 8, seed=5)
    for i in (30, 3, 39, 0, 30):
        assert list(batches(i)) == expected[i], i
    assert list(_PooledBatches(lengths, 8, seed=6)(0)) != expected[0]
    # one process's share of a micro-batch keeps the micro-batch's size (the loss divisor)
    whole = batches(1)
    share = whole[5:]
    assert (len(whole), whole.size, len(share), share.size) == (8, 8, 3, 8)
    assert list(share) == expected[1][5:] and share[0] == expected[1][5]


def test_training_is_seeded(world):
    """Same seed, same weights; another seed, other weights (plain texts, no cache)."""
    prompts = world.sample_prompts(64, seed=1)
    responses = world.sample_responses(prompts, seed=2)
    small = PolicyConfig(n_layer=1, n_head=2, n_embd=16, steps=3, batch_size=8, n_train=64)
    a, _, sa = train_policy(prompts, responses, config=small)
    b, _, sb = train_policy(prompts, responses, config=small)
    c, _, _ = train_policy(
        prompts, responses, config=PolicyConfig(**{**small.to_dict(), "seed": 1})
    )
    assert _weights_equal(a, b) and sa.losses == sb.losses
    assert not _weights_equal(a, c)


def test_overlong_pairs_are_dropped_and_counted(world):
    prompts = world.sample_prompts(40, seed=1)
    responses = world.sample_responses(prompts, seed=2)
    short = PolicyConfig(n_layer=1, n_head=2, n_embd=16, n_positions=24, steps=2, batch_size=4)
    with pytest.warns(UserWarning, match=r"of 40 training pairs are longer than n_positions=24"):
        _, tok, stats = train_policy(prompts, responses, config=short)
    lengths = [len(tok(p)["input_ids"]) + len(tok(r, add_special_tokens=False)["input_ids"]) + 1
               for p, r in zip(prompts, responses, strict=True)]  # fmt: skip
    assert stats.n_dropped == sum(n > 24 for n in lengths) > 0
    assert stats.n_examples == 40 - stats.n_dropped
    with pytest.raises(ValueError, match=r"every one of the 40 training pairs.*n_positions=4"):
        train_policy(prompts, responses, config=PolicyConfig(n_head=1, n_embd=8, n_positions=4))


# -- the cache ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*reached the token limit:UserWarning")  # an undertrained model
def test_cache_returns_the_identical_model_without_training(built, world):
    model, tok, record, root = built
    weights = Path(record.path) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again, tok2, record2 = load_or_train_policy(world, config=TINY, cache_dir=root)
    assert not record2.trained, "the second call trained instead of loading the cache"
    assert weights.stat().st_mtime_ns == stamp
    assert record2.key == record.key and record2.losses == record.losses
    assert record2.final_loss == record.final_loss
    assert _weights_equal(model, again)
    assert again.generation_config.to_dict() == model.generation_config.to_dict()
    prompts = world.sample_prompts(3, seed=11)
    first = generate_responses(model, tok, prompts, n=4, seed=5)
    assert generate_responses(again, tok2, prompts, n=4, seed=5) == first
    assert tok2(prompts)["input_ids"] == tok(prompts)["input_ids"]


def test_reference_policy_returns_the_pair(built, world):
    model, _, _, root = built
    loaded, tok = reference_policy(world, config=TINY, cache_dir=root)
    assert _weights_equal(model, loaded)
    assert tok.padding_side == "left"


def _damage_truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_record(folder: Path) -> None:
    (folder / "policy.json").write_text('{"key": "abc", "config": [1, 2', encoding="utf-8")


def _damage_missing(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


def _damage_edit(folder: Path) -> None:
    path = folder / "config.json"
    text = path.read_text(encoding="utf-8")
    assert '"n_layer": 1' in text
    path.write_text(text.replace('"n_layer": 1', '"n_layer": 2'), encoding="utf-8")


@pytest.mark.filterwarnings("ignore:.*reached the token limit:UserWarning")  # an untrained model
@pytest.mark.parametrize(
    "damage", [_damage_truncate, _damage_record, _damage_missing, _damage_edit],
    ids=["truncated-safetensors", "garbage-json", "missing-file", "checksum-mismatch"],
)  # fmt: skip
def test_damaged_cache_is_rebuilt_with_a_warning(micro, world, tmp_path, damage):
    model, tok, record, _ = micro
    folder = policy_dir(record.key, tmp_path)
    shutil.copytree(record.path, folder)
    damage(folder)
    with pytest.raises(CheckpointError, match=re.escape(str(folder))):
        read_policy(folder)
    with pytest.warns(UserWarning, match="damaged, rebuilding") as caught:
        rebuilt, tok2, record2 = load_or_train_policy(world, config=MICRO, cache_dir=tmp_path)
    messages = [str(w.message) for w in caught if "damaged" in str(w.message)]
    assert len(messages) == 1 and str(folder) in messages[0] and "\n" not in messages[0]
    assert record2.trained
    verify_policy_files(folder)  # the rebuilt folder is sound again
    assert _weights_equal(rebuilt, model)  # seeded single-thread training: the same weights
    prompts = world.sample_prompts(2, seed=4)
    kw = {"n": 3, "seed": 0, "max_new_tokens": 12}
    assert generate_responses(rebuilt, tok2, prompts, **kw) == generate_responses(
        model, tok, prompts, **kw
    )
    _, _, record3 = load_or_train_policy(world, config=MICRO, cache_dir=tmp_path)
    assert not record3.trained


def test_rebuild_forces_training(micro, world, tmp_path):
    model, _, record, _ = micro
    shutil.copytree(record.path, policy_dir(record.key, tmp_path))
    again, _, record2 = load_or_train_policy(world, config=MICRO, cache_dir=tmp_path, rebuild=True)
    assert record2.trained
    assert _weights_equal(again, model)
    verify_policy_files(record2.path)
    leftovers = [p.name for p in Path(record2.path).parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"temporary folders left behind: {leftovers}"


def test_racing_builders_keep_one_sound_folder(micro, tmp_path):
    """A second builder finding a sound folder keeps it; a damaged one it replaces."""
    model, tok, record, _ = micro
    target = tmp_path / "testbed" / f"policy-{record.key}"
    saved = record.to_json()
    publish_policy(target, model, tok, saved)
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    publish_policy(target, model, tok, saved)  # loses the race: the first folder stays
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    _damage_truncate(target)
    publish_policy(target, model, tok, saved)  # the damaged winner is replaced
    loaded, _, on_disk = read_policy(target, key=record.key)
    assert _weights_equal(loaded, model) and on_disk["final_loss"] == record.final_loss
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_stale_temporary_folders_are_swept(micro, tmp_path):
    model, tok, record, _ = micro
    target = tmp_path / f"policy-{record.key}"
    old, fresh = tmp_path / f".{target.name}.tmp-old", tmp_path / f".{target.name}.tmp-fresh"
    old.mkdir()
    fresh.mkdir()  # another builder at work right now: left alone
    os.utime(old, (0, 0))
    publish_policy(target, model, tok, record.to_json())
    assert not old.exists() and fresh.exists()
    verify_policy_files(target)


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("AUQ_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "auq"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "auq"
    monkeypatch.setenv("AUQ_CACHE_DIR", str(tmp_path / "auq"))
    assert cache_root() == tmp_path / "auq"
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    assert policy_dir("k", tmp_path) == tmp_path / "testbed" / "policy-k"


def test_key_tracks_world_and_config(world):
    ident = world_identity(world)
    assert ident["seed"] == 0 and ident["fingerprint"] == world.fingerprint
    key = policy_key(ident, TINY.to_dict())
    assert policy_key(world_identity(World(seed=0)), TINY.to_dict()) == key
    # label options do not change the texts, so not the policy either
    assert policy_key(world_identity(World(seed=0, label_noise=0.25)), TINY.to_dict()) == key
    assert policy_key(world_identity(World(seed=1)), TINY.to_dict()) != key
    other = PolicyConfig(**{**TINY.to_dict(), "lr": 0.03})
    assert policy_key(ident, other.to_dict()) != key


# -- the tokenizer --------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["train", "wide"])
def test_tokenizer_round_trips_world_text(built, world, region):
    _, tok, _, _ = built
    prompts = world.sample_prompts(200, seed=21, region=region)
    responses = world.sample_responses(prompts, seed=22, region=region)
    corpus = build_tokenizer([*prompts, *responses])  # knows every word of these texts
    for text in [*prompts, *responses]:
        ids = corpus(text)["input_ids"]
        assert ids[0] == corpus.bos_token_id and corpus.unk_token_id not in ids
        assert corpus.decode(ids, skip_special_tokens=True) == text
    if region == "train":  # the policy's own tokenizer, trained on other train-region draws
        known = [t for t in [*prompts, *responses] if tok.unk_token_id not in tok(t)["input_ids"]]
        assert len(known) > 0.9 * 2 * len(prompts), f"only {len(known)} of 400 texts are all known"
        assert all(tok.decode(tok(t)["input_ids"], skip_special_tokens=True) == t for t in known)


def test_tokenizer_handles_unknown_words():
    tok = build_tokenizer(["How do I cook rice?", " Rinse the rice, then simmer it."])
    ids = tok("Cook  the quinoa ☃ rice!")["input_ids"]
    unk = tok.unk_token_id
    # unseen: "Cook" (capitalised), "  the" (two spaces), " quinoa", " ☃" and "!"
    assert ids.count(unk) == 5
    assert tok.decode(ids, skip_special_tokens=True) == " rice"
    assert tok.decode(ids, skip_special_tokens=False).startswith("<bos>")
    assert tok.decode(tok("rice Rinse")["input_ids"], skip_special_tokens=True) == "rice Rinse"
    batch = tok(["rice", "Rinse the rice"], padding=True)["input_ids"]
    assert batch[0][0] == tok.pad_token_id  # left padding


def test_tokenizer_bad_input():
    with pytest.raises(ValueError, match="at least one text"):
        build_tokenizer([])
    with pytest.raises(ValueError, match="min_frequency must be an integer >= 1"):
        build_tokenizer(["a"], min_frequency=0)
    with pytest.raises(TypeError, match="texts must be strings, got int"):
        build_tokenizer(["a", 3])


# -- sampling -------------------------------------------------------------------------------


def test_policy_samples_through_hf_generator(built, world):
    model, tok, _, _ = built
    prompts = world.sample_prompts(3, seed=8)
    kw = {"max_new_tokens": 24, "batch_size": 2}
    out = generate_responses(model, tok, prompts, n=5, seed=1, **kw)
    assert len(out) == 3 and all(
        len(row) == 5 and all(isinstance(r, str) for r in row) for row in out
    )
    assert generate_responses(model, tok, prompts, n=5, seed=1, **kw) == out
    assert generate_responses(model, tok, prompts, n=5, seed=2, **kw) != out
    assert not any("<eos>" in r or "<pad>" in r or "<bos>" in r for row in out for r in row)
    generator = HFGenerator(model, tok, max_new_tokens=2, num_threads=1)
    cut = generator.generate(prompts, 5, seed=1)
    assert generator.last_stats.n_truncated == 15  # nothing ends within 2 tokens
    assert all(len(tok(r, add_special_tokens=False)["input_ids"]) <= 2 for row in cut for r in row)


@pytest.mark.filterwarnings("ignore:.*reached the token limit:UserWarning")  # an undertrained model
def test_samples_are_diverse_fast(built, world):
    """64 samples for one prompt from the tiny policy: many distinct, a spread of gold."""
    model, tok, _, _ = built
    prompt = world.sample_prompts(1, seed=3)
    samples = generate_responses(model, tok, prompt, n=64, seed=0)[0]
    gold = world.gold_reward(prompt * 64, samples)
    distinct = len(set(samples))
    assert distinct >= 48, f"only {distinct} distinct responses of 64 (expected >= 48)"
    assert gold.std() >= 0.5, f"gold std {gold.std():.3f} of 64 samples (expected >= 0.5)"


@pytest.mark.slow
def test_samples_are_diverse_and_grammatical_at_a_small_config(world, tmp_path):
    """A third of the default schedule (about a minute): varied and mostly sound answers."""
    config = PolicyConfig(steps=500, n_train=8000, lr=3e-3)
    model, tok, record = load_or_train_policy(world, config=config, cache_dir=tmp_path)
    assert record.final_loss < 0.1 * record.initial_loss, (
        f"loss {record.initial_loss:.3f} -> {record.final_loss:.3f}; expected below 0.1 x initial"
    )
    prompts = world.sample_prompts(4, seed=3)
    samples = generate_responses(model, tok, prompts, n=64, seed=0)
    for prompt, row in zip(prompts, samples, strict=True):
        gold = world.gold_reward([prompt] * 64, row)
        distinct = len(set(row))
        assert distinct >= 48, f"only {distinct} distinct responses of 64 to {prompt!r}"
        assert gold.std() >= 0.5, f"gold std {gold.std():.3f} for {prompt!r} (expected >= 0.5)"
        assert np.ptp(gold) >= 2.0, f"gold range {np.ptp(gold):.2f} for {prompt!r} (expected >= 2)"
        attrs = world.attributes([prompt] * 64, row)
        broken = float(np.mean(attrs["unknown"] + attrs["fragment"]))
        assert broken <= 0.5, f"{broken:.2f} broken sentences per response (expected <= 0.5)"


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, r"n_embd \(30\) must be divisible by n_head \(4\)"),
        ({"steps": 0}, r"PolicyConfig.steps must be an integer >= 1, got 0"),
        ({"lr": -1.0}, r"PolicyConfig.lr must be a number > 0"),
        ({"wide_fraction": 2}, r"wide_fraction must be a number in \[0, 1\], got 2"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ],
)
def test_config_rejects_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        PolicyConfig(**options)


def test_config_must_be_a_policy_config(world, tmp_path):
    with pytest.raises(TypeError, match="config must be a PolicyConfig, got dict"):
        load_or_train_policy(world, config={"steps": 1}, cache_dir=tmp_path)
    assert not os.listdir(tmp_path)
