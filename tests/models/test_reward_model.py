"""RewardModel on tiny encoder and decoder backbones: fit, predict, score, save/load, errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import auq
from auq.data import PreferenceDataset
from auq.types import PreferencePrediction, RewardPrediction


@pytest.fixture(params=["tiny_bert_dir", "tiny_gpt2_dir"])
def backbone_dir(request):
    return request.getfixturevalue(request.param)


def test_fit_predict_score_shapes(backbone_dir, builtin_small):
    train, test = builtin_small
    rm = auq.RewardModel.from_backbone(backbone_dir, n_members=3, max_length=96)
    rm.fit(train, eval_dataset=test, epochs=2, progress=False)
    pp = rm.predict(test)
    assert isinstance(pp, PreferencePrediction)
    assert pp.margin_samples.shape == (3, len(test))
    assert pp.chosen is not None and pp.chosen.samples.shape == (3, len(test))
    torch.testing.assert_close(pp.margin_mean, pp.chosen.mean - pp.rejected.mean)
    rp = rm.score(test.prompts[:5], test.chosen[:5])
    assert isinstance(rp, RewardPrediction) and rp.samples.shape == (3, 5)
    torch.testing.assert_close(rp.mean, pp.chosen.mean[:5], rtol=1e-4, atol=1e-5)
    assert len(rm.history_.eval_accuracy) >= 1


def test_single_prompt_broadcasts(tiny_bert_dir, builtin_small):
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2)
    with pytest.raises(RuntimeError, match="EnsembleHead is not fitted yet"):
        rm.score("a question", "an answer")
    rm.fit(builtin_small[0].select(range(16)), epochs=1, progress=False)
    assert rm.score("a question", ["one answer", "another answer"]).mean.shape == (2,)
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        rm.score(["a", "b", "c"], ["x", "y"])


def test_save_load_gives_identical_predictions(tiny_gpt2_dir, builtin_small, tmp_path):
    train, test = builtin_small
    rm = auq.RewardModel.from_backbone(tiny_gpt2_dir, n_members=3, hidden_size=8, max_length=96)
    rm.fit(train, epochs=1, progress=False)
    rm.save_pretrained(tmp_path / "rm")
    assert (tmp_path / "rm" / "backbone" / "model.safetensors").is_file()
    assert not list((tmp_path / "rm").rglob("*.bin")) and not list((tmp_path / "rm").rglob("*.pt"))
    loaded = auq.RewardModel.from_pretrained(tmp_path / "rm")
    a, b = rm.predict(test), loaded.predict(test)
    torch.testing.assert_close(a.margin_samples, b.margin_samples)
    assert loaded.config.backbone == "backbone"  # stored inside the checkpoint
    assert replace(loaded.config, backbone=rm.config.backbone) == rm.config


def test_frozen_backbone_reference_only(tiny_bert_dir, builtin_small, tmp_path):
    train, test = builtin_small
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2).fit(
        train, epochs=1, progress=False
    )
    rm.save_pretrained(tmp_path, save_backbone=False)
    assert not (tmp_path / "backbone").exists()
    loaded = auq.RewardModel.from_pretrained(tmp_path)
    torch.testing.assert_close(rm.predict(test).prob, loaded.predict(test).prob)


def test_trl_checkpoint_loads_and_scores_like_the_original(tiny_trl_checkpoint_dir, builtin_small):
    train, test = builtin_small
    rm = auq.RewardModel.from_backbone(tiny_trl_checkpoint_dir, n_members=4)
    rp = rm.score(test.prompts[:6], test.chosen[:6])
    ref = AutoModelForSequenceClassification.from_pretrained(tiny_trl_checkpoint_dir).eval()
    tokens = rm.backbone.tokenize(test.prompts[:6], test.chosen[:6])
    expected = torch.stack(
        [ref(input_ids=torch.tensor([ids])).logits[0, 0].detach() for ids in tokens.input_ids]
    )
    torch.testing.assert_close(rp.mean, expected, rtol=1e-4, atol=1e-5)
    assert torch.all(rp.var < 1e-8)  # members start as copies of the checkpoint head
    assert rm.head.uses_bootstrap  # so fitting makes them differ
    rm.fit(train, epochs=2, progress=False)
    assert rm.score(test.prompts[:6], test.chosen[:6]).var.mean() > 0
    assert AutoTokenizer.from_pretrained(tiny_trl_checkpoint_dir).pad_token is not None


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_finetuning_changes_the_backbone_and_round_trips(
    finetune, tiny_bert_dir, builtin_small, tmp_path
):
    train, test = builtin_small
    lora = {"lora_options": {"r": 4}} if finetune == "lora" else {}
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, finetune=finetune, **lora)
    before = rm.features(test.select(range(4)))[0]
    rm.fit(
        train.select(range(32)),
        eval_dataset=test.select(range(16)),
        epochs=1,
        lr=1e-3,
        batch_size=8,
        progress=False,
    )
    trainable = [n for n, p in rm.backbone.named_parameters() if p.requires_grad]
    assert trainable and (finetune == "full" or all("lora" in n for n in trainable))
    assert not torch.allclose(before, rm.features(test.select(range(4)))[0])
    after = rm.score(test.prompts[:4], test.chosen[:4]).mean
    rm.save_pretrained(tmp_path)
    loaded = auq.RewardModel.from_pretrained(tmp_path)
    torch.testing.assert_close(
        loaded.score(test.prompts[:4], test.chosen[:4]).mean, after, rtol=1e-4, atol=1e-5
    )


def test_frozen_fit_leaves_backbone_untouched(tiny_bert_dir, builtin_small):
    train, _ = builtin_small
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2)
    state = {k: v.clone() for k, v in rm.backbone.state_dict().items()}
    rm.fit(train, epochs=1, progress=False)
    assert all(torch.equal(v, rm.backbone.state_dict()[k]) for k, v in state.items())


def test_conversational_rows_use_the_chat_template(tiny_gpt2_dir):
    rows = [
        {
            "prompt": [{"role": "user", "content": f"question {i}"}],
            "chosen": [{"role": "assistant", "content": f"a helpful answer {i}"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
        for i in range(12)
    ]
    ds = PreferenceDataset.from_records(rows)
    rm = auq.RewardModel.from_backbone(tiny_gpt2_dir, n_members=2)
    rm.fit(ds, epochs=1, progress=False)
    pp = rm.predict(ds)
    assert pp.margin_samples.shape == (2, 12)
    text = rm.backbone.tokenizer.decode(
        rm.backbone.tokenize(ds.prompts[:1], ds.chosen[:1]).input_ids[0]
    )
    assert text.startswith("<|user|>question 0<|end|><|assistant|>")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"uq": "bogus"},
            ValueError,
            "uq='bogus' is not supported; valid choices: 'heads', 'lora'",
        ),
        ({"uq": "lora", "n_members": 1}, ValueError, "n_members must be an integer >= 2"),
        ({"uq": "laplace", "hidden_size": 4}, ValueError, "hidden_size apply to ensemble heads"),
        ({"uq": "partial", "finetune": "full"}, ValueError, "does not combine with uq='partial'"),
        ({"n_members": 0}, ValueError, "n_members must be an integer >= 1"),
        ({"finetune": "half"}, ValueError, "finetune='half' is not supported; valid choices"),
        ({"pooling": "max"}, ValueError, "pooling='max' is not supported"),
    ],
)
def test_bad_options_fail_early(tiny_bert_dir, kwargs, error, message):
    with pytest.raises(error, match=message):
        auq.RewardModel.from_backbone(tiny_bert_dir, **kwargs)


def test_fit_rejects_non_datasets_and_unknown_options(tiny_bert_dir, builtin_small):
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2)
    with pytest.raises(TypeError, match="train_dataset.*int"):
        rm.fit(42)
    with pytest.raises(TypeError, match="unknown training option.*epoch"):
        rm.fit(builtin_small[0], epoch=3)


def test_from_pretrained_on_a_plain_directory_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no auq_config.json.*from_backbone"):
        auq.RewardModel.from_pretrained(tmp_path)


def test_device_map_is_passed_through_and_excludes_device(tiny_gpt2_dir):
    rm = auq.RewardModel.from_backbone(tiny_gpt2_dir, n_members=2, device_map={"": "cpu"})
    plain = auq.RewardModel.from_backbone(tiny_gpt2_dir, n_members=2)
    for model in (rm, plain):
        model.head.fitted_.fill_(True)
    torch.testing.assert_close(
        rm.score("hi", [" a", " b"]).mean, plain.score("hi", [" a", " b"]).mean
    )
    with pytest.raises(ValueError, match="either device='cpu' or device_map=.*not both"):
        auq.RewardModel.from_backbone(tiny_gpt2_dir, device="cpu", device_map="auto")


def test_backbones_use_sdpa_attention(tiny_gpt2_dir, tiny_bert_dir):
    for path in (tiny_gpt2_dir, tiny_bert_dir):
        rm = auq.RewardModel.from_backbone(path, n_members=2)
        assert rm.backbone.model.config._attn_implementation == "sdpa"
