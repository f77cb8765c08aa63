"""Planning prefix sharing on token ids: common prefixes, caps, budgets, splits."""

from __future__ import annotations

import numpy as np

from auq.scoring import TokenizedTexts, prompt_groups
from auq.scoring.prefix import plan_prefix_groups, prefix_batches, split_prefix_batch

P = [5, 6, 7, 8, 9, 10]
IDS = [
    [*P, 1, 2],  # group 0
    [*P, 1, 3, 4],  # group 0: shares P + [1]
    [*P[:4], 99, 1],  # group 0, but a different token at 4 (a BPE merge across the boundary)
    [3, 3, 3],  # group 1, alone
    [*P, 20],  # group 2
    [*P],  # group 2: its last token is where its features are read
]


def plan(groups, min_prefix_tokens=2, reads=None):
    tok = TokenizedTexts(input_ids=IDS, token_type_ids=None)
    reads = tok.lengths - 1 if reads is None else np.asarray(reads)
    return tok, plan_prefix_groups(
        tok, np.asarray(groups), reads, min_prefix_tokens=min_prefix_tokens
    )


def test_shared_prefix_is_the_common_token_prefix_capped_before_reads():
    _, p = plan([0, 0, 0, 1, 2, 2])
    assert [g.tolist() for g in p.items] == [[0, 1, 2], [4, 5]]
    assert p.prefix_lengths.tolist() == [4, 5]  # group 0: the merge at 4; group 2: read at 5
    assert p.unshared.tolist() == [3]


def test_short_prefixes_and_singletons_are_scored_unshared():
    _, p = plan([0, 0, 0, 1, 2, 2], min_prefix_tokens=5)
    assert [g.tolist() for g in p.items] == [[4, 5]]
    assert p.unshared.tolist() == [0, 1, 2, 3]
    _, p = plan([0, 1, 2, 3, 4, 5])
    assert p.items == [] and p.unshared.tolist() == list(range(6))


def test_budget_cuts_large_groups_into_parts_and_splits_halve():
    tok = TokenizedTexts(input_ids=[[*P, i] for i in range(10)], token_type_ids=None)
    p = plan_prefix_groups(tok, np.zeros(10, dtype=int), tok.lengths - 1, min_prefix_tokens=2)
    batches = prefix_batches(tok, p, max_tokens=30)
    items = np.concatenate([np.concatenate(g) for g, _ in batches])
    assert sorted(items.tolist()) == list(range(10)) and len(batches) > 1
    groups, lengths = batches[0]
    halves = split_prefix_batch(groups, lengths)
    assert sum(len(np.concatenate(g)) for g, _ in halves) == len(np.concatenate(groups))
    assert split_prefix_batch([np.array([3])], [6]) == []


def test_prompt_groups_label_equal_prompts_equally():
    chat = [{"role": "user", "content": "hi"}]
    labels = prompt_groups(["a", "b", "a", chat, [dict(chat[0])]])
    assert labels.tolist() == [0, 1, 0, 2, 2]
