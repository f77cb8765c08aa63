"""The text format per backbone kind, conversational rows, and the truncation policy."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from auq.data.validation import PreferenceDataError
from auq.scoring import TextEncoder

CONV_PROMPT = [{"role": "user", "content": "How do I cook rice?"}]
CONV_RESPONSE = [{"role": "assistant", "content": "Rinse the rice and simmer it covered."}]


@pytest.fixture(scope="module")
def bert_tok(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def gpt2_tok(tiny_gpt2_dir):
    return AutoTokenizer.from_pretrained(tiny_gpt2_dir)  # byte-level BPE with a chat template


# -- plain-text rows ---------------------------------------------------------------------
def test_pair_encoding_matches_the_tokenizer_when_nothing_is_cut(bert_tok):
    enc = TextEncoder(bert_tok, max_length=64, pair_encoding=True)
    out = enc.encode(["how do i cook rice", "how do i cook rice"], ["rinse it", "simmer it"])
    for i, response in enumerate(["rinse it", "simmer it"]):
        ref = bert_tok("how do i cook rice", response)
        assert out.input_ids[i] == ref["input_ids"]
        assert out.token_type_ids[i] == ref["token_type_ids"]
    assert out.stats.n_prompt_truncated == out.stats.n_response_truncated == 0


@pytest.mark.parametrize("tok_name", ["gpt2_tok", "llama_tokenizer", "bert_tok"])
def test_joined_rows_tokenise_the_joined_string(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    prompts = ["How do I cook r", "What is the best way to learn", "hi"]
    responses = ["ice so that it is fluffy?", " a new programming language?", " there"]
    out = TextEncoder(tok, max_length=64).encode(prompts, responses)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        assert out.input_ids[i] == tok(p + r)["input_ids"]
    # the boundary matters: "r" + "ice" is not tokenised as "r", "ice"
    apart = tok(prompts[0])["input_ids"] + tok(responses[0], add_special_tokens=False)["input_ids"]
    assert out.input_ids[0] != apart
    assert out.token_type_ids is None


@pytest.mark.parametrize("tok_name", ["gpt2_tok", "llama_tokenizer"])
def test_append_eos_follows_trl(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    eos = tok.eos_token
    enc = TextEncoder(tok, max_length=64, append_eos=True)
    responses = [" simmer it", " simmer it" + eos, " simmer it" + eos + eos, ""]
    out = enc.encode(["Cook rice?"] * 4, responses)
    for i, r in enumerate(responses):
        text = "Cook rice?" + (r if r.endswith(eos) else r + eos)
        assert out.input_ids[i] == tok(text)["input_ids"]
    assert out.input_ids[0] == out.input_ids[1]  # never doubled
    assert out.input_ids[2][-2:] == [tok.eos_token_id] * 2
    assert enc.eos_token == eos


def test_append_eos_needs_a_joined_string(bert_tok):
    with pytest.raises(ValueError, match="append_eos=True needs pair_encoding=False"):
        TextEncoder(bert_tok, max_length=64, pair_encoding=True, append_eos=True)


def test_pre_rendered_rows_get_no_special_tokens(llama_tokenizer):
    enc = TextEncoder(llama_tokenizer, max_length=64, append_eos=True)
    out = enc.encode(["<s>[user] hi</s>"], ["[assistant] hello</s>"], add_special_tokens=False)
    text = "<s>[user] hi</s>[assistant] hello</s>"
    assert out.input_ids[0] == llama_tokenizer(text, add_special_tokens=False)["input_ids"]


# -- conversational rows -------------------------------------------------------------------
@pytest.mark.parametrize("tok_name", ["gpt2_tok", "llama_tokenizer"])
def test_chat_rows_are_the_chat_template_tokenised(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    second = [{"role": "assistant", "content": "no"}]
    out = TextEncoder(tok, max_length=64, append_eos=True).encode(
        [CONV_PROMPT, CONV_PROMPT], [CONV_RESPONSE, second]
    )
    for i, response in enumerate([CONV_RESPONSE, second]):
        ref = tok.apply_chat_template(CONV_PROMPT + response, tokenize=True, return_dict=True)
        assert out.input_ids[i] == ref["input_ids"]


def test_each_distinct_prompt_is_rendered_once(gpt2_tok):
    tok = copy.deepcopy(gpt2_tok)
    calls = []
    original = tok.apply_chat_template

    def counting(messages, **kwargs):
        calls.append(kwargs.get("add_generation_prompt", False))
        return original(messages, **kwargs)

    tok.apply_chat_template = counting
    TextEncoder(tok, max_length=64).encode([CONV_PROMPT] * 5, [CONV_RESPONSE] * 5)
    assert calls.count(True) == 1  # the prompt, for the boundary
    assert calls.count(False) == 5  # each whole conversation


def test_chat_rows_without_a_template_keep_the_special_tokens(bert_tok, llama_tokenizer):
    prompt_text, response_text = "user: How do I cook rice?\n", "assistant: Rinse it.\n"
    response = [{"role": "assistant", "content": "Rinse it."}]
    pair = TextEncoder(bert_tok, max_length=64, pair_encoding=True)
    out = pair.encode([CONV_PROMPT], [response])
    assert out.input_ids[0] == bert_tok(prompt_text, response_text)["input_ids"]
    assert out.input_ids[0][0] == bert_tok.cls_token_id
    assert out.input_ids[0][-1] == bert_tok.sep_token_id
    plain_llama = copy.deepcopy(llama_tokenizer)
    plain_llama.chat_template = None
    out = TextEncoder(plain_llama, max_length=64).encode([CONV_PROMPT], [response])
    assert out.input_ids[0] == plain_llama(prompt_text + response_text)["input_ids"]
    assert out.input_ids[0][0] == plain_llama.bos_token_id


def test_mixed_row_kinds_are_refused_with_the_row(gpt2_tok):
    enc = TextEncoder(gpt2_tok, max_length=64)
    with pytest.raises(TypeError, match=r"row 1: prompt and response must both be str or both"):
        enc.encode(["a", "b"], [" c", CONV_RESPONSE])
    with pytest.raises(TypeError, match=r"row 0: .* got int and str"):
        enc.encode([3], ["x"])


def test_malformed_messages_name_the_row(gpt2_tok):
    enc = TextEncoder(gpt2_tok, max_length=64)
    bad = [{"role": "assistant", "content": "   "}]
    with pytest.raises(PreferenceDataError, match=r"row 1, response: empty text in message 0"):
        enc.encode([CONV_PROMPT, CONV_PROMPT], [CONV_RESPONSE, bad])
    with pytest.raises(PreferenceDataError, match=r"row 0, prompt: .*unknown role 'robot'"):
        enc.encode([[{"role": "robot", "content": "hi"}]], [CONV_RESPONSE])


# -- truncation ------------------------------------------------------------------------------
def test_pair_truncation_keeps_prompt_end_and_response_start(bert_tok):
    enc = TextEncoder(bert_tok, max_length=12, pair_encoding=True, min_prompt_tokens=3)
    prompt = "one two three four five six seven"
    response = "alpha beta gamma delta epsilon zeta eta theta"
    out = enc.encode([prompt], [response])
    assert len(out.input_ids[0]) == 12
    text = bert_tok.decode(out.input_ids[0])
    assert text.startswith("[CLS] five six seven [SEP] alpha beta")
    assert "theta" not in text
    assert out.stats.n_prompt_truncated == 1 and out.stats.n_response_truncated == 1
    assert "1/1 prompts" in str(out.stats)


def test_joined_truncation_keeps_specials_and_eos(llama_tokenizer):
    tok = llama_tokenizer
    enc = TextEncoder(tok, max_length=10, append_eos=True, min_prompt_tokens=2)
    prompt = "Write small programs every day and read"
    response = " other people's code carefully and simmer covered"
    out = enc.encode([prompt, "hi"], [response, " there"])
    ids = out.input_ids[0]
    assert len(ids) == 10
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    text = tok.decode(ids[1:-1])
    assert text.startswith("and read other")  # the prompt's end
    assert "covered" not in text  # the response's end is cut
    assert out.input_ids[1] == tok("hi there" + tok.eos_token)["input_ids"]
    assert (out.stats.n_items, out.stats.n_prompt_truncated) == (2, 1)
    assert out.stats.n_response_truncated == 1


def test_short_response_is_kept_whole_and_prompt_cut_from_the_left(bert_tok):
    enc = TextEncoder(bert_tok, max_length=10)
    out = enc.encode(["one two three four five six seven eight nine ten"], [" yes"])
    text = bert_tok.decode(out.input_ids[0])
    assert text.startswith("[CLS] four") and text.endswith("ten yes [SEP]")
    assert len(out.input_ids[0]) == 10
    assert out.stats.n_response_truncated == 0 and out.stats.n_prompt_truncated == 1


def test_a_row_of_exactly_max_length_is_not_cut(gpt2_tok):
    text_ids = gpt2_tok("How do I cook rice so that it is fluffy?")["input_ids"]
    enc = TextEncoder(gpt2_tok, max_length=len(text_ids))
    out = enc.encode(["How do I cook rice"], [" so that it is fluffy?"])
    assert out.input_ids[0] == text_ids
    assert out.stats.n_prompt_truncated == out.stats.n_response_truncated == 0


# -- bad options -------------------------------------------------------------------------------
def test_length_mismatch_is_reported(bert_tok):
    enc = TextEncoder(bert_tok, max_length=16, pair_encoding=True)
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        enc.encode(["a", "b"], ["c"])


def test_tiny_max_length_is_refused(bert_tok):
    with pytest.raises(ValueError, match="max_length must be an integer >= 4, got 2"):
        TextEncoder(bert_tok, max_length=2)


def test_a_tokenizer_without_a_fast_backend_is_refused():
    class SlowTokenizer:
        eos_token = None

    with pytest.raises(TypeError, match="SlowTokenizer has no fast .Rust. backend"):
        TextEncoder(SlowTokenizer(), max_length=16)


def test_joined_truncation_keeps_one_window_around_the_boundary(llama_tokenizer):
    """Random rows: a cut row is BOS + one contiguous window of the text's tokens + EOS."""
    import random

    tok = llama_tokenizer
    rng = random.Random(0)
    words = "how do i cook rice so that it is fluffy and not sticky rinse the water".split()
    prompts = [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(200)]
    responses = [" " + " ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(200)]
    max_length = 24
    out = TextEncoder(tok, max_length=max_length, append_eos=True).encode(prompts, responses)
    n_cut = 0
    for ids, p, r in zip(out.input_ids, prompts, responses, strict=True):
        whole = tok(p + r + tok.eos_token)["input_ids"]
        if len(whole) <= max_length:
            assert ids == whole
            continue
        n_cut += 1
        assert len(ids) == max_length
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        text, window = whole[1:-1], ids[1:-1]
        starts = [i for i in range(len(text)) if text[i : i + len(window)] == window]
        assert starts, "the kept tokens are not one window of the text"
        n_prompt = len(tok(p, add_special_tokens=False)["input_ids"])
        assert min(starts) <= n_prompt  # the window reaches into the response ...
        assert min(starts) + len(window) >= min(n_prompt, len(text))  # ... from the prompt
    stats = out.stats
    assert n_cut > 50
    assert max(stats.n_prompt_truncated, stats.n_response_truncated) <= n_cut
    assert stats.n_prompt_truncated + stats.n_response_truncated >= n_cut
