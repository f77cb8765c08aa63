"""Backbone.from_pretrained: options passed through, safetensors only, limits, quiet, errors."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import transformers
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaModel,
)
from transformers.utils import logging as hf_logging

from auq.backbone import Backbone
from auq.scoring.loading import BackboneLoadError


def _bert_config(tok, **kw):
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    return BertConfig(vocab_size=tok.vocab_size, intermediate_size=64, **small, **kw)


@pytest.fixture(scope="module")
def bert_tok(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


# -- options ---------------------------------------------------------------------------------
def test_loading_options_reach_model_and_tokenizer(tiny_gpt2_dir, monkeypatch):
    seen = {}
    for auto in (transformers.AutoModel, transformers.AutoTokenizer):
        original = auto.from_pretrained

        def recording(name, *, _original=original, _key=auto.__name__, **kwargs):
            seen[_key] = kwargs
            return _original(name, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", recording)
    bb = Backbone.from_pretrained(
        tiny_gpt2_dir,
        revision="main",
        trust_remote_code=False,
        attn_implementation="eager",
        device_map="cpu",
    )
    assert bb.model.config._attn_implementation == "eager"
    assert seen["AutoTokenizer"] == {"revision": "main", "trust_remote_code": False}
    model_kwargs = seen["AutoModel"]
    assert model_kwargs["use_safetensors"] is True and model_kwargs["dtype"] == torch.float32
    assert {k: model_kwargs[k] for k in ("revision", "trust_remote_code", "device_map")} == {
        "revision": "main",
        "trust_remote_code": False,
        "device_map": "cpu",
    }


def test_an_option_naming_a_config_attribute_overrides_it(tiny_bert_dir):
    bb = Backbone.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.25)
    assert bb.model.config.hidden_dropout_prob == 0.25


def test_unknown_options_are_refused_with_the_valid_ones(tiny_bert_dir):
    with pytest.raises(
        TypeError,
        match=r"unknown loading option\(s\) 'revison'; valid options: 'revision', "
        r"'trust_remote_code', 'attn_implementation', 'device_map', 'dtype' or an attribute "
        r"of the bert config",
    ):
        Backbone.from_pretrained(tiny_bert_dir, revison="main")


def test_dtype_is_passed_through(tiny_bert_dir):
    bb = Backbone.from_pretrained(tiny_bert_dir, dtype=torch.bfloat16)
    assert next(bb.model.parameters()).dtype == torch.bfloat16
    assert next(Backbone.from_pretrained(tiny_bert_dir).parameters()).dtype == torch.float32


# -- safetensors only, and what is missing ---------------------------------------------------
def test_pickle_only_weights_are_refused_with_a_way_to_convert(tmp_path, bert_tok):
    model = BertModel(_bert_config(bert_tok))
    model.config.save_pretrained(tmp_path)
    bert_tok.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(BackboneLoadError) as info:
        Backbone.from_pretrained(tmp_path)
    message = str(info.value)
    assert f"{tmp_path} holds its weights only in pickle-based files (pytorch_model.bin)" in message
    assert "auq loads safetensors only" in message and "Convert the checkpoint" in message
    assert "use_safetensors" not in message


def test_a_directory_without_weights_is_named(tmp_path, bert_tok):
    _bert_config(bert_tok).save_pretrained(tmp_path)
    with pytest.raises(BackboneLoadError, match=f"{tmp_path} has no model weights"):
        Backbone.from_pretrained(tmp_path)


def test_a_directory_without_config_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(OSError, match="the directory has no config.json; give a directory"):
        Backbone.from_pretrained(tmp_path)


def test_missing_backbone_error_names_the_path(tmp_path):
    with pytest.raises(
        OSError,
        match=f"could not load a Hugging Face model from '{tmp_path / 'nope'}': no such local "
        "directory.*HF_HUB_OFFLINE=1",
    ):
        Backbone.from_pretrained(tmp_path / "nope")


def test_missing_tokenizer_is_named(tmp_path, tiny_bert_dir):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert_dir / name, tmp_path / name)
    with pytest.raises(
        OSError, match="could not load a tokenizer from .*no tokenizer files.*save_pretrained"
    ):
        Backbone.from_pretrained(tmp_path)


def test_weights_missing_from_the_checkpoint_are_warned_about(tmp_path, bert_tok):
    BertModel(_bert_config(bert_tok), add_pooling_layer=False).save_pretrained(tmp_path)
    bert_tok.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"2 weight\(s\) of BertModel are not in the checkpoint "
                      r"and start random: pooler.dense.bias, pooler.dense.weight"):  # fmt: skip
        Backbone.from_pretrained(tmp_path)


# -- position limits -------------------------------------------------------------------------
def test_bert_max_length_is_its_position_limit(tiny_bert_dir):
    bb = Backbone.from_pretrained(tiny_bert_dir, max_length=256)  # the whole table is usable
    with torch.no_grad():
        bb.model(input_ids=torch.ones(1, 256, dtype=torch.long))
    with pytest.raises(
        ValueError,
        match=r"max_length=257 is longer than the backbone's position limit of 256 tokens "
        r"\(bert: config.max_position_embeddings=256\); use max_length <= 256",
    ):
        Backbone.from_pretrained(tiny_bert_dir, max_length=257)


def test_roberta_positions_start_after_the_padding_index(bert_tok):
    config = RobertaConfig(
        vocab_size=bert_tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=1,
    )
    model = RobertaModel(config).eval()
    Backbone(model, bert_tok, max_length=38)
    with torch.no_grad():
        model(input_ids=torch.full((1, 38), 5))  # 38 tokens fit
        with pytest.raises((IndexError, RuntimeError), match="out of"):
            model(input_ids=torch.full((1, 39), 5))  # 39 do not
    with pytest.raises(ValueError, match=r"position limit of 38 tokens \(roberta: .*=40 minus 2"):
        Backbone(model, bert_tok, max_length=39)


# -- quiet loads -----------------------------------------------------------------------------
@pytest.fixture
def noisy_checkpoint(tmp_path, bert_tok):
    """A two-label classifier: loading it as AutoModel reports unexpected keys."""
    BertForSequenceClassification(_bert_config(bert_tok, num_labels=2)).save_pretrained(tmp_path)
    bert_tok.save_pretrained(tmp_path)
    return tmp_path


def test_loads_are_quiet_unless_auq_logs_at_debug(noisy_checkpoint, capsys, caplog):
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    Backbone.from_pretrained(noisy_checkpoint)
    assert "Loading weights" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.name.startswith("transformers")]
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == (verbosity, bars)
    auq_logger = logging.getLogger("auq")
    level = auq_logger.level
    auq_logger.setLevel(logging.DEBUG)
    try:
        Backbone.from_pretrained(noisy_checkpoint)
    finally:
        auq_logger.setLevel(level)
    assert "Loading weights" in capsys.readouterr().err
    assert any("UNEXPECTED" in r.getMessage() for r in caplog.records)


# -- reward checkpoints --------------------------------------------------------------------------
def test_reward_checkpoints_take_only_auto_pooling(tiny_trl_checkpoint_dir):
    with pytest.raises(ValueError, match="pooling='mean' does not apply to a reward checkpoint"):
        Backbone.from_pretrained(tiny_trl_checkpoint_dir, pooling="mean")


def test_a_reward_checkpoint_without_pad_token_id_gets_one(tmp_path, tiny_gpt2_dir):
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tok.pad_token = None
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, num_labels=1)
    assert config.pad_token_id is None
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    bb = Backbone.from_pretrained(tmp_path, max_length=64)
    assert bb.model.config.pad_token_id == tok.eos_token_id == bb.tokenizer.pad_token_id
    prompts = ["How do I cook rice?", "hi"]
    responses = [" Rinse it, then simmer covered.", " hello" + tok.eos_token]
    tokens = bb.tokenize(prompts, responses)
    batched = bb.score_layer(bb.encode(tokens))[:, 0]  # one right-padded batch
    with torch.no_grad():
        alone = [bb.model(input_ids=torch.tensor([ids])).logits[0, 0] for ids in tokens.input_ids]
    torch.testing.assert_close(batched, torch.stack(alone))


def test_a_tokenizer_with_nothing_to_pad_with_is_refused(bert_tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"a": 0, "b": 1}))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    model = BertModel(_bert_config(bert_tok))
    with pytest.raises(ValueError, match="has no pad, EOS or unknown token to pad batches with"):
        Backbone(model, tok)
