"""RewardModel: options honoured or refused, one member-loss hook on every training path,
calibration made visible, truncation never silent, inputs of every kind, checkpoints."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import auq
from auq.utils.io import CheckpointError


@pytest.fixture(scope="module")
def small(builtin_small):
    train, test = builtin_small
    return train.select(range(40)), test.select(range(16))


# -- counts are called what they are; options a method cannot use are refused ----------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uq": "mc_dropout", "n_members": 4}, "runs T stochastic passes, not members"),
        ({"uq": "heads", "n_passes": 4}, "n_passes applies to uq='mc_dropout' only"),
        ({"uq": "laplace", "n_members": 4}, "draws posterior samples, it has no members"),
        ({"uq": "mc_dropout", "n_passes": 1}, "n_passes must be an integer >= 2"),
        ({"head_options": {"colour": 1}}, r"head_options for uq='heads': unknown option\(s\)"),
        ({"head_options": {"n_members": 3}}, "head_options may not set n_members"),
        ({"uq": "lora", "member_options": {"rank": 2}}, r"unknown option\(s\) rank; valid"),
        ({"member_options": {"r": 2}}, "member_options apply to the backbone-level ensembles"),
        ({"lora_options": {"r": 2}}, "lora_options apply to finetune='lora' only"),
        ({"dtype": "float8"}, "dtype='float8' is not supported; valid choices"),
        ({"revisionn": "main"}, r"unknown option\(s\) revisionn; Hugging Face loading options"),
    ],
)
def test_bad_options_are_refused_before_loading(tiny_bert_dir, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        auq.RewardModel.from_backbone(tiny_bert_dir, **kwargs)


def test_mc_dropout_counts_passes_and_reports_its_own_name(tiny_bert_dir, small):
    train, test = small
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, uq="mc_dropout", n_passes=3, max_length=64)
    assert rm.config.n_passes == 3 and rm.config.n_members is None
    rm.fit(train, epochs=1, batch_size=20, progress=False)
    pp = rm.predict(test)
    assert pp.margin_samples.shape[0] == 3 and pp.method == "mc_dropout"
    assert pp.chosen.method == "mc_dropout"
    assert "n_passes=3" in repr(rm)


@pytest.mark.parametrize("uq", ["laplace", "pyro"])
def test_training_options_a_bayesian_head_cannot_use_are_refused(uq, tiny_bert_dir, small):
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, uq=uq, max_length=64)
    with pytest.raises(ValueError, match=r"does not use the training option\(s\) epochs"):
        rm.fit(small[0], epochs=3)


# -- one member-loss hook on every training path ------------------------------------------
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_finetuned_reward_checkpoint_ends_with_members_that_disagree(
    finetune, tiny_trl_checkpoint_dir, small
):
    train, test = small
    rm = auq.RewardModel.from_backbone(
        tiny_trl_checkpoint_dir, n_members=3, finetune=finetune, max_length=64
    )
    assert float(rm.score(test.prompts[:4], test.chosen[:4]).var.max()) < 1e-10
    rm.fit(train, epochs=2, batch_size=8, lr=1e-3, progress=False)
    assert rm.head.uses_bootstrap
    assert float(rm.score(test.prompts, test.chosen).var.mean()) > 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [{"finetune": "full"}, {"uq": "lora", "member_options": {"r": 2}}, {}],
    ids=["finetune", "lora-members", "frozen"],
)
def test_anchoring_reaches_every_training_path_and_is_reported_apart(tiny_bert_dir, small, kwargs):
    train, _ = small
    options = {"n_members": 2, "max_length": 64, "anchor": 1.0, **kwargs}
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, **options)
    rm.fit(train, epochs=1, batch_size=20, progress=False)
    assert rm.history_.train_penalty and rm.history_.train_penalty[0] >= 0
    assert rm.history_.train_loss[0] > 0


def test_finetuning_encodes_a_bounded_sample_before_training(tiny_bert_dir, builtin_small):
    from auq.models.finetune import STANDARDIZATION_SAMPLE

    train = builtin_small[0].select(range(100))
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, finetune="full", max_length=64)
    rows = []
    handle = rm.backbone.model.register_forward_hook(
        lambda module, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    rm.fit(train, epochs=1, batch_size=25, progress=False)
    handle.remove()
    # one epoch over the 2B texts, plus a bounded sample encoded before training (feature
    # standardisation) and after it (member offsets) — never an extra full pass
    sample = min(2 * len(train), STANDARDIZATION_SAMPLE)
    assert sum(rows) == 2 * len(train) + 2 * sample


# -- warm_start: scikit-learn's semantics -------------------------------------------------
def test_second_frozen_fit_starts_from_scratch(tiny_bert_dir, small):
    train, test = small
    first = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, max_length=64)
    first.fit(test, epochs=2, progress=False).fit(train, epochs=2, progress=False)
    fresh = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, max_length=64)
    fresh.fit(train, epochs=2, progress=False)
    torch.testing.assert_close(first.predict(test).margin_mean, fresh.predict(test).margin_mean)
    first.fit(train, epochs=2, progress=False, warm_start=True)
    assert not torch.allclose(first.predict(test).margin_mean, fresh.predict(test).margin_mean)


def test_trained_backbone_cannot_restart_in_place(tiny_bert_dir, small):
    train, _ = small
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, finetune="full", max_length=64)
    rm.fit(train, epochs=1, batch_size=20, progress=False)
    with pytest.raises(RuntimeError, match="backbone has already trained.*warm_start=True"):
        rm.fit(train, epochs=1, progress=False)
    rm.fit(train, epochs=1, batch_size=20, progress=False, warm_start=True)


# -- calibration is visible in the prediction ---------------------------------------------
def test_predict_says_whether_prob_is_calibrated(tiny_bert_dir, small):
    train, test = small
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, max_length=64)
    rm.fit(train, epochs=1, progress=False)
    raw = rm.predict(test)
    assert raw.calibrator is None
    with pytest.raises(ValueError, match="calibrated=True needs a calibrator"):
        rm.predict(test, calibrated=True)
    rm.calibrate(test, method="platt")
    calibrated = rm.predict(test)
    assert calibrated.calibrator == "platt" and "platt" in repr(calibrated)
    assert rm.predict(test, calibrated=False).calibrator is None
    torch.testing.assert_close(calibrated.margin_mean, raw.margin_mean)
    assert torch.allclose(torch.as_tensor(rm.predict_proba(test)), calibrated.prob)


# -- inputs ----------------------------------------------------------------------------
def test_truncation_warns_with_counts_and_is_exposed(tiny_bert_dir, small):
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, max_length=16)
    with pytest.warns(UserWarning, match="truncated to fit max_length=16"):
        rm.fit(small[0], epochs=1, progress=False)
    long = "word " * 40
    with pytest.warns(UserWarning, match=r"responses truncated to fit max_length=16"):
        rp = rm.score("a question", [long, "short"])
    assert rp.truncation.n_response_truncated == 1 and rp.truncation.n_items == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rm.score("a question", "short").truncation.n_response_truncated == 0


@pytest.mark.parametrize(
    ("prompts", "responses", "error", "message"),
    [
        ("q", [], ValueError, "score needs at least one"),
        ("q", ["fine", 3], TypeError, r"responses\[1\] must be a str or a list of .* got int"),
        (["q", None], ["a", "b"], TypeError, r"prompts\[1\] must be a str .* got NoneType"),
        (["q", "r"], ["a"], ValueError, "same length, got 2 and 1"),
        ("q", 5, TypeError, "responses must be a str or a sequence of texts, got int"),
    ],
)
def test_score_inputs_are_checked(tiny_bert_dir, prompts, responses, error, message):
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2)  # checked before scoring
    with pytest.raises(error, match=message):
        rm.score(prompts, responses)


def test_fit_and_predict_take_dataframes_and_hf_datasets(tiny_bert_dir, small):
    datasets = pytest.importorskip("datasets")
    train, test = small
    frame = train.to_pandas()
    hf = datasets.Dataset.from_list(test.to_records())
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, max_length=64)
    rm.fit(frame, eval_dataset=hf, epochs=1, progress=False)
    torch.testing.assert_close(rm.predict(hf).margin_mean, rm.predict(test).margin_mean)


# -- checkpoints -----------------------------------------------------------------------
def test_dtype_is_saved_and_restored(tiny_bert_dir, small, tmp_path):
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, dtype=torch.float64)
    rm.fit(small[0], epochs=1, progress=False)
    rm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "auq_config.json").read_text())["dtype"] == "float64"
    loaded = auq.RewardModel.from_pretrained(tmp_path)
    assert next(loaded.backbone.model.parameters()).dtype == torch.float64
    as32 = auq.RewardModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert next(as32.backbone.model.parameters()).dtype == torch.float32


def test_damaged_model_directory_names_the_file(tiny_bert_dir, small, tmp_path):
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2).fit(small[0], epochs=1)
    rm.save_pretrained(tmp_path)
    config = tmp_path / "auq_config.json"
    good = config.read_text()
    config.write_text(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"auq_config\.json: reward-model config is not"):
        auq.RewardModel.from_pretrained(tmp_path)
    config.write_text(json.dumps({**json.loads(good), "colour": "red"}))
    with pytest.raises(CheckpointError, match=r"auq_config\.json: unknown config key\(s\) colour"):
        auq.RewardModel.from_pretrained(tmp_path)
    config.write_text(json.dumps({**json.loads(good), "n_members": 3}))
    with pytest.raises(CheckpointError, match=r"head_config\.json: the head .* does not match"):
        auq.RewardModel.from_pretrained(tmp_path)
    config.write_text(good)
    (tmp_path / "calibrator.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"calibrator\.json: calibrator state is not"):
        auq.RewardModel.from_pretrained(tmp_path)


def test_repr_is_a_summary_not_the_module_tree(tiny_bert_dir):
    text = repr(auq.RewardModel.from_backbone(tiny_bert_dir, n_members=3))
    assert text.startswith("RewardModel(") and "uq='heads'" in text and "n_members=3" in text
    assert "Linear(" not in text and "\n" not in text
