"""Preference pairs to token ids for DPO: plain and chat rows, truncation, inputs, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from auq.data import PreferenceDataError, PreferenceDataset
from auq.testbed.tokenizer import build_tokenizer
from auq.training.logprobs import collate_sequences, sequence_logps
from auq.training.losses import dpo_loss
from auq.training.policy_data import TokenizedPairs, tokenize_pairs, tokenize_responses
from auq.types import TruncationWarning

#: assistant turns end with the EOS token; the generation prompt is "assistant:"
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "assistant: {{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['role'] }}: {{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

ROWS = [
    {"prompt": "How do I cook rice?", "chosen": " Rinse it well.", "rejected": " Boil it."},
    {
        "prompt": "How do I learn a language?",
        "chosen": " Read code every day.",
        "rejected": " I am not sure.",
    },
]

CHAT_ROWS = [
    {
        "prompt": [{"role": "user", "content": r["prompt"]}],
        "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
        "rejected": [{"role": "assistant", "content": r["rejected"].strip()}],
    }
    for r in ROWS
]


@pytest.fixture(scope="module")
def tok():
    corpus = [
        "system user assistant: How do I cook rice? Rinse it well. Boil it slowly.",
        "How do I learn a language? Read code every day. I am not sure, maybe.",
        "one two three four five six seven eight nine ten",
    ]
    return build_tokenizer(corpus)


@pytest.fixture
def chat_tok(tok):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = CHAT_TEMPLATE
    return t


def ids(tok, text, special=False):
    return tok(text, add_special_tokens=special)["input_ids"]


def quiet(fn, *args, **kwargs):
    """Call ``fn`` and fail on any warning (nothing was truncated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_plain_rows(tok):
    out = quiet(tokenize_pairs, ROWS, tok)
    assert isinstance(out, TokenizedPairs) and len(out) == out.n_pairs == 2
    eos, bos = tok.eos_token_id, tok.bos_token_id
    for i, row in enumerate(ROWS):
        assert out.prompt_ids[i] == ids(tok, row["prompt"], special=True)
        assert out.prompt_ids[i][0] == bos  # the tokenizer's BOS, as it adds one
        assert out.chosen_ids[i] == [*ids(tok, row["chosen"]), eos]
        assert out.rejected_ids[i] == [*ids(tok, row["rejected"]), eos]
    assert out.rows == [0, 1]
    assert (out.n_truncated_prompts, out.n_truncated_responses) == (0, 0)
    assert out.weight is None and out.margin is None


def test_response_that_ends_with_eos_gets_no_second_one(tok):
    rows = [{**ROWS[0], "chosen": ROWS[0]["chosen"] + tok.eos_token}]
    out = tokenize_pairs(rows, tok)
    assert out.chosen_ids[0] == [*ids(tok, ROWS[0]["chosen"]), tok.eos_token_id]


def test_chat_rows(chat_tok):
    out = quiet(tokenize_pairs, CHAT_ROWS, chat_tok)
    eos = chat_tok.eos_token_id
    for i, row in enumerate(CHAT_ROWS):
        prompt = chat_tok.apply_chat_template(
            row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert out.prompt_ids[i] == prompt
        for col, got in (("chosen", out.chosen_ids[i]), ("rejected", out.rejected_ids[i])):
            whole = chat_tok.apply_chat_template(
                row["prompt"] + row[col], tokenize=True, return_dict=False
            )
            assert out.prompt_ids[i] + got == whole  # the template's continuation
            assert got == [*ids(chat_tok, " " + row[col][0]["content"]), eos]
    # no BOS: the template writes its own special tokens
    assert out.prompt_ids[0][0] != chat_tok.bos_token_id


def test_chat_template_that_renders_the_prompt_differently_warns(chat_tok):
    # the generation prompt ends with a space the conversation does not have there
    chat_tok.chat_template = CHAT_TEMPLATE.replace(
        "assistant:{% endif %}", "assistant: {% endif %}"
    )
    with pytest.warns(UserWarning, match=r"for 2 of 2 rows the chat template renders the prompt"):
        out = tokenize_pairs(CHAT_ROWS, chat_tok)
    alone = chat_tok.apply_chat_template(
        CHAT_ROWS[0]["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert out.prompt_ids[0] == alone[:-1]  # cut to the shared tokens
    whole = chat_tok.apply_chat_template(
        CHAT_ROWS[0]["prompt"] + CHAT_ROWS[0]["chosen"], tokenize=True, return_dict=False
    )
    assert out.prompt_ids[0] + out.chosen_ids[0] == whole


def test_chat_rows_without_template(tok):
    with pytest.raises(
        ValueError,
        match=r"conversational rows \(lists of messages\) need a tokenizer with a chat_template",
    ):
        tokenize_pairs(CHAT_ROWS, tok)


def test_truncation_keeps_prompt_end_and_response_start(tok):
    words = " one two three four five six seven eight nine ten"
    rows = [
        {"prompt": "one two three four five six", "chosen": words, "rejected": " two"},
        {"prompt": "one", "chosen": " two", "rejected": " three"},
    ]
    with pytest.warns(
        TruncationWarning,
        match=r"tokenize_pairs: 1 of 2 prompts cut to their last tokens and 1 of 4 responses cut "
        r"at their end to fit max_prompt_length=4, max_length=8",
    ):
        out = tokenize_pairs(rows, tok, max_length=8, max_prompt_length=4)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    full_prompt = ids(tok, rows[0]["prompt"], special=True)  # bos + 6 words
    assert out.prompt_ids[0] == [bos, *full_prompt[-3:]]  # BOS kept, then the last 3 tokens
    assert out.chosen_ids[0] == ids(tok, words)[:4]  # 8 − 4 tokens, from the start
    assert out.rejected_ids[0] == [*ids(tok, " two"), eos]  # fits: untouched
    # the second pair: prompt [bos, one] leaves 6 for each response — nothing cut
    assert out.prompt_ids[1] == ids(tok, "one", special=True)
    assert (out.n_truncated_prompts, out.n_truncated_responses) == (1, 1)
    for p, c, r in zip(out.prompt_ids, out.chosen_ids, out.rejected_ids, strict=True):
        assert len(p) <= 4 and len(p) + len(c) <= 8 and len(p) + len(r) <= 8


def test_truncated_response_is_counted(tok):
    rows = [{"prompt": "one two", "chosen": " three four five six", "rejected": " seven"}]
    with pytest.warns(TruncationWarning, match=r"0 of 1 prompts .* 1 of 2 responses"):
        out = tokenize_pairs(rows, tok, max_length=5, max_prompt_length=3)
    assert out.n_truncated_prompts == 0 and out.n_truncated_responses == 1
    assert out.chosen_ids[0] == ids(tok, " three four")


def test_missing_column_names_it_and_the_required_ones(tok):
    rows = [{"prompt": "How?", "chosen": " So."}]
    with pytest.raises(
        PreferenceDataError,
        match=r"missing required column 'rejected'; columns present: 'prompt', 'chosen'; "
        r"tokenize_pairs needs TRL's preference columns 'prompt', 'chosen', 'rejected'",
    ):
        tokenize_pairs(rows, tok)


def test_bad_row_names_row_and_field(tok):
    rows = [ROWS[0], {"prompt": "How?", "chosen": "   ", "rejected": " No."}]
    with pytest.raises(PreferenceDataError, match=r"row 1, field 'chosen': empty text"):
        tokenize_pairs(rows, tok)


@pytest.mark.parametrize(
    ("max_length", "max_prompt_length", "message"),
    [
        (8, 8, r"max_prompt_length=8 must be < max_length=8"),
        (8, 12, r"max_prompt_length=12 must be < max_length=8"),
        (1, 1, r"max_length must be an integer >= 2, got 1"),
        (8, 0, r"max_prompt_length must be an integer >= 1, got 0"),
        (8.0, 4, r"max_length must be an integer >= 2, got 8.0"),
    ],
)
def test_bad_lengths(tok, max_length, max_prompt_length, message):
    with pytest.raises(ValueError, match=message):
        tokenize_pairs(ROWS, tok, max_length=max_length, max_prompt_length=max_prompt_length)


def test_every_accepted_input_gives_the_same_ids(tok):
    expected = tokenize_pairs(ROWS, tok)
    inputs = [PreferenceDataset.from_records(ROWS), {k: [r[k] for r in ROWS] for k in ROWS[0]}]
    pd = pytest.importorskip("pandas")
    inputs.append(pd.DataFrame(ROWS))
    datasets = pytest.importorskip("datasets")
    inputs.append(datasets.Dataset.from_list(ROWS))
    for value in inputs:
        got = tokenize_pairs(value, tok)
        assert (got.prompt_ids, got.chosen_ids, got.rejected_ids) == (
            expected.prompt_ids,
            expected.chosen_ids,
            expected.rejected_ids,
        ), type(value)


def test_skipped_rows_keep_original_indices_and_weights(tok):
    rows = [
        {**ROWS[0], "weight": 2.0, "margin": 1.0},
        {"prompt": "How?", "chosen": "", "rejected": " No.", "weight": 1.0, "margin": 0.0},
        {**ROWS[1], "weight": 0.5, "margin": -1.0},
    ]
    with pytest.warns(UserWarning, match="skipped 1 of 3 rows"):
        out = tokenize_pairs(rows, tok, on_error="skip")
    assert out.rows == [0, 2] and out.n_pairs == 2
    np.testing.assert_array_equal(out.weight, [2.0, 0.5])
    np.testing.assert_array_equal(out.margin, [1.0, -1.0])
    assert out.chosen_ids[1] == [*ids(tok, ROWS[1]["chosen"]), tok.eos_token_id]


def test_tokenize_responses_plain_and_chat(tok, chat_tok):
    prompts = [r["prompt"] for r in ROWS]
    responses = [r["chosen"] for r in ROWS]
    p_ids, r_ids = quiet(tokenize_responses, tok, prompts, responses)
    pairs = tokenize_pairs(ROWS, tok)
    assert p_ids == pairs.prompt_ids and r_ids == pairs.chosen_ids
    # a response cut at max_new_tokens gets no EOS
    _, r_ids = tokenize_responses(tok, prompts, responses, append_eos=[True, False])
    assert r_ids[0][-1] == tok.eos_token_id and r_ids[1] == ids(tok, responses[1])
    _, r_ids = tokenize_responses(tok, prompts, responses, append_eos=False)
    assert r_ids == [ids(tok, t) for t in responses]
    # chat prompts: the template's generation prompt, as HFGenerator renders it
    chats = [r["prompt"] for r in CHAT_ROWS]
    p_ids, _ = tokenize_responses(chat_tok, chats, responses)
    assert p_ids == tokenize_pairs(CHAT_ROWS, chat_tok).prompt_ids
    with pytest.warns(TruncationWarning, match=r"tokenize_responses: 0 of 2 prompts .* 2 of 2"):
        p_ids, r_ids = tokenize_responses(
            tok, prompts, responses, max_length=9, max_prompt_length=8
        )
    assert all(len(p) + len(r) <= 9 for p, r in zip(p_ids, r_ids, strict=True))


def test_tokenize_responses_errors(tok):
    with pytest.raises(ValueError, match=r"prompts has 2 items but responses has 1"):
        tokenize_responses(tok, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match=r"append_eos has 1 flags but there are 2 responses"):
        tokenize_responses(tok, ["a", "b"], ["c", "d"], append_eos=[True])
    with pytest.raises(TypeError, match=r"responses\[1\] must be a str, got int"):
        tokenize_responses(tok, ["a", "b"], ["c", 3])
    with pytest.raises(ValueError, match="max_length and max_prompt_length go together"):
        tokenize_responses(tok, ["a"], ["b"], max_length=8)
    with pytest.raises(ValueError, match="need a tokenizer with a chat_template"):
        tokenize_responses(tok, [[{"role": "user", "content": "a"}]], ["b"])


def test_pairs_feed_a_dpo_step(tok):
    """tokenize → collate → log-probs under a tiny GPT-2 → a finite DPO loss and gradient."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2))
    pairs = tokenize_pairs(ROWS, tok)
    pad = tok.pad_token_id
    chosen = collate_sequences(pairs.prompt_ids, pairs.chosen_ids, pad_token_id=pad)
    rejected = collate_sequences(pairs.prompt_ids, pairs.rejected_ids, pad_token_id=pad)
    assert chosen.n_response_tokens.tolist() == [len(c) for c in pairs.chosen_ids]
    pc, pr = sequence_logps(model, chosen), sequence_logps(model, rejected)
    loss = dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1)
    torch.testing.assert_close(loss, torch.full((2,), float(np.log(2.0))))  # policy == reference
    loss.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
