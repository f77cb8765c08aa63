"""Backbones: pooling, bucketed encoding == one-by-one, text format per kind, reward checkpoints."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from auq.backbone import Backbone

PROMPTS = ["how do i cook rice", "what is a good workout", "tell me about budgets", "hi"]
RESPONSES = ["rinse and simmer it", "run, then stretch for ten minutes", "track spending", "hello"]


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gpt2_dir"])
def test_bucketed_encoding_equals_unbatched(fixture, request):
    bb = Backbone.from_pretrained(request.getfixturevalue(fixture), max_length=64)
    tokens = bb.tokenize(PROMPTS, RESPONSES)
    batched = bb.encode(tokens, max_tokens=40)  # forces several micro-batches
    single = torch.cat([bb.features_of(tokens, [i]) for i in range(len(PROMPTS))])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    assert batched.shape == (4, bb.hidden_size)


def test_auto_pooling_per_architecture(tiny_bert_dir, tiny_gpt2_dir):
    assert Backbone.from_pretrained(tiny_bert_dir).pooling == "mean"
    gpt = Backbone.from_pretrained(tiny_gpt2_dir)
    assert gpt.pooling == "last" and not gpt.is_encoder
    assert gpt.tokenizer.pad_token_id is not None  # filled in for pad-less decoders


def test_last_token_pooling_matches_manual(tiny_gpt2_dir):
    bb = Backbone.from_pretrained(tiny_gpt2_dir)
    tokens = bb.tokenize(PROMPTS[:2], RESPONSES[:2])
    phi = bb.encode(tokens)
    model = AutoModel.from_pretrained(tiny_gpt2_dir).eval()
    for i, ids in enumerate(tokens.input_ids):
        with torch.no_grad():
            h = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        torch.testing.assert_close(phi[i], h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_trl_checkpoint_dir", "tiny_bert_trl_checkpoint_dir"])
def test_reward_checkpoint_features_feed_its_score_layer(fixture, request):
    path = request.getfixturevalue(fixture)
    bb = Backbone.from_pretrained(path)
    assert bb.is_reward_checkpoint
    tokens = bb.tokenize(PROMPTS, RESPONSES)
    phi = bb.encode(tokens)
    reward = bb.score_layer(phi).squeeze(-1)
    ref_model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    for i, ids in enumerate(tokens.input_ids):
        with torch.no_grad():
            kw = {"input_ids": torch.tensor([ids])}
            if tokens.token_type_ids is not None:
                kw["token_type_ids"] = torch.tensor([tokens.token_type_ids[i]])
            ref = ref_model(**kw).logits[0, 0]
        torch.testing.assert_close(reward[i], ref, rtol=1e-4, atol=1e-5)
    assert tok is not None


def test_text_format_per_backbone_kind(tiny_bert_dir, tiny_gpt2_dir, tiny_trl_checkpoint_dir):
    prompt, response = "how do i cook rice", " rinse it"
    bert = Backbone.from_pretrained(tiny_bert_dir)
    ref = bert.tokenizer(prompt, response)  # encoders: a sentence pair with segment ids
    out = bert.tokenize([prompt], [response])
    assert out.input_ids[0] == ref["input_ids"] and out.token_type_ids[0] == ref["token_type_ids"]
    gpt = Backbone.from_pretrained(tiny_gpt2_dir)  # decoders: one string, nothing appended
    assert (
        gpt.tokenize([prompt], [response]).input_ids[0]
        == gpt.tokenizer(prompt + response)["input_ids"]
    )
    reward = Backbone.from_pretrained(tiny_trl_checkpoint_dir)  # TRL: one string + EOS
    eos = reward.tokenizer.eos_token
    assert (
        reward.tokenize([prompt], [response]).input_ids[0]
        == reward.tokenizer(prompt + response + eos)["input_ids"]
    )
    assert reward.pooling == "checkpoint"


def test_bad_pooling_lists_choices(tiny_bert_dir):
    with pytest.raises(ValueError, match="pooling='max' is not supported; valid choices: 'auto'"):
        Backbone.from_pretrained(tiny_bert_dir, pooling="max")
