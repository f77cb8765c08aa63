"""RewardBench-style accuracy: pairs, best-of-k credit, subsets, sections, the headline score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auq.metrics import (
    REWARDBENCH_EXAMPLE_COUNTS,
    REWARDBENCH_SECTIONS,
    best_of_k_correct,
    is_rewardbench_subset,
    pair_correct,
    rewardbench_score,
    rewardbench_sections,
    subset_accuracy,
)

# -- the published structure ------------------------------------------------------------------


def test_sections_partition_the_23_subsets():
    listed = [name for names in REWARDBENCH_SECTIONS.values() for name in names]
    assert list(REWARDBENCH_SECTIONS) == ["Chat", "Chat Hard", "Safety", "Reasoning"]
    assert len(listed) == len(set(listed)) == 23
    assert set(listed) == set(REWARDBENCH_EXAMPLE_COUNTS)


def test_weights_are_the_filtered_split_with_math_upweighted():
    counts = REWARDBENCH_EXAMPLE_COUNTS
    # every weight is the subset's row count except math-prm (447 rows weighted as 984):
    # the filtered split holds 2,985 rows
    assert sum(counts.values()) - counts["math-prm"] + 447 == 2985
    code = [n for n in REWARDBENCH_SECTIONS["Reasoning"] if n.startswith("hep-")]
    assert len(code) == 6 and counts["math-prm"] == sum(counts[n] for n in code) == 984
    # XSTest: 154 unsafe prompts to refuse, 250 safe ones to answer
    assert (counts["xstest-should-refuse"], counts["xstest-should-respond"]) == (154, 250)


def test_is_rewardbench_subset():
    assert is_rewardbench_subset("hep-rust") and is_rewardbench_subset("llmbar-adver-GPTInst")
    assert not is_rewardbench_subset("Hep-Rust") and not is_rewardbench_subset("chat")
    assert not is_rewardbench_subset(None)


# -- per-row credit ------------------------------------------------------------------------


def test_pair_correct_counts_a_tie_as_wrong():
    got = pair_correct([1.0, 0.5, -2.0, 3.0], torch.tensor([0.0, 0.5, -1.0, 2.9]))
    np.testing.assert_array_equal(got, [1.0, 0.0, 0.0, 1.0])


def test_pair_correct_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="length mismatch: chosen has 2, rejected has 3"):
        pair_correct([1.0, 2.0], [0.0, 0.0, 0.0])


def test_best_of_k_credit_splits_ties_at_the_top():
    chosen = [2.0, 1.0, 1.0, 1.0, 0.0]
    rejected = [[1.0, 1.5, 0.0], [1.0, 0.0, 0.5], [1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [-1.0]]
    got = best_of_k_correct(chosen, rejected)
    np.testing.assert_allclose(got, [1.0, 0.5, 1 / 3, 0.0, 1.0])


def test_best_of_k_takes_ragged_rows_and_2d_arrays_alike():
    chosen = np.array([0.3, -0.2])
    square = np.array([[0.1, 0.2], [0.5, -0.3]])
    ragged = [np.array([0.1, 0.2]), torch.tensor([0.5, -0.3])]
    np.testing.assert_array_equal(best_of_k_correct(chosen, square), [1.0, 0.0])
    np.testing.assert_array_equal(best_of_k_correct(chosen, ragged), [1.0, 0.0])
    np.testing.assert_array_equal(best_of_k_correct(chosen, torch.tensor(square)), [1.0, 0.0])


def test_best_of_k_refuses_bad_shapes():
    with pytest.raises(ValueError, match="chosen has 2 rows, rejected has 1"):
        best_of_k_correct([1.0, 2.0], [[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"rejected\[1\] is empty"):
        best_of_k_correct([1.0, 2.0], [[0.0], []])
    with pytest.raises(ValueError, match="sequence of B arrays, got float"):
        best_of_k_correct([1.0], 0.5)


# -- subsets, sections, score --------------------------------------------------------------


def test_subset_accuracy_in_order_of_first_row():
    acc = subset_accuracy([1, 0, 1, 0.5, 1], ["b", "a", "b", "a", "c"])
    assert list(acc) == ["b", "a", "c"]
    assert acc == {"b": 1.0, "a": 0.25, "c": 1.0}


@pytest.mark.parametrize(
    ("correct", "subsets", "message"),
    [
        ([1, 0], ["a"], "subsets must name the subset of each of the 2 rows, got 1 names"),
        ([1, 2], ["a", "b"], r"credits in \[0, 1\]"),
        ([1, 0], ["a", ""], "non-empty str, got ''"),
        ([1], "a", "got a str"),
    ],
)
def test_subset_accuracy_refuses_bad_input(correct, subsets, message):
    with pytest.raises(ValueError, match=message):
        subset_accuracy(correct, subsets)


def test_sections_weight_subsets_by_the_fixed_counts():
    acc = {
        "alpacaeval-easy": 1.0,  # weight 100
        "mt-bench-easy": 0.0,  # weight 28
        "xstest-should-refuse": 1.0,  # weight 154
        "xstest-should-respond": 0.5,  # weight 250
        "math-prm": 1.0,  # weight 984
        "hep-python": 0.0,  # weight 164
    }
    sections = rewardbench_sections(acc)
    assert list(sections) == ["Chat", "Safety", "Reasoning"]  # Chat Hard absent
    assert sections["Chat"] == pytest.approx(100 / 128)
    assert sections["Safety"] == pytest.approx((154 + 125) / 404)
    assert sections["Reasoning"] == pytest.approx(984 / 1148)
    score = rewardbench_score(sections)
    assert score == pytest.approx((100 / 128 + 279 / 404 + 984 / 1148) / 3)


def test_math_carries_half_of_reasoning():
    acc = {name: 0.0 for name in REWARDBENCH_SECTIONS["Reasoning"]} | {"math-prm": 1.0}
    assert rewardbench_sections(acc) == {"Reasoning": pytest.approx(0.5)}


def test_the_headline_is_the_plain_mean_of_four_sections():
    acc = {name: 0.0 for name in REWARDBENCH_EXAMPLE_COUNTS}
    acc["mt-bench-hard"] = 1.0  # 37 of Chat Hard's 456
    sections = rewardbench_sections(acc)
    assert sections == {
        "Chat": 0.0,
        "Chat Hard": pytest.approx(37 / 456),
        "Safety": 0.0,
        "Reasoning": 0.0,
    }
    assert rewardbench_score(sections) == pytest.approx(37 / 456 / 4)


def test_sections_refuse_unknown_subsets_and_bad_values():
    with pytest.raises(ValueError, match="not RewardBench subsets: 'chat'; valid: alpacaeval"):
        rewardbench_sections({"chat": 1.0, "hep-go": 0.5})
    with pytest.raises(ValueError, match=r"subset 'hep-go' must be in \[0, 1\], got 1.5"):
        rewardbench_sections({"hep-go": 1.5})
    with pytest.raises(ValueError, match="sections is empty"):
        rewardbench_score({})
    with pytest.raises(ValueError, match="not RewardBench sections: 'Code'"):
        rewardbench_score({"Code": 0.5})
