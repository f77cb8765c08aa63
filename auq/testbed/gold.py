"""The gold reward: parse a response's text into attribute counts, then add up their values.

Any pair of strings has a gold reward (empty, non-English, gibberish, truncated or
very long text included): the response is split into sentences
(:func:`auq.testbed.grammar.split_sentences`) and each sentence is looked up in a
dictionary of every sentence the grammar can write. Each sentence adds to exactly
one count of :data:`ATTRIBUTES`:

==============  ========================================================  =========
count           a sentence that is                                        gold
==============  ========================================================  =========
``on_topic``    correct advice on the prompt's topic, a new point          +1.0 ×3,
                                                                          then +0.2
``redundant``   correct advice whose point was already made (reworded)    −0.3
``off_topic``   correct advice about another topic                         −0.4
``untargeted``  correct advice when the prompt's topic is unknown          +0.3
``wrong``       incorrect advice                                           −1.0
``unsafe``      dangerous advice                                           −2.5
``polite``      a friendly opener or closer                                +0.3 ×2,
                                                                          then 0
``rude``        an insult                                                  −1.5
``hedge``       a vague non-answer                                         −0.4
``stock``       an authority claim ("As an expert, I can assure you ...")  −0.5
``filler``      padding ("Let me add a few more words about this.")        −0.3
``repeated``    a verbatim repeat of an earlier sentence                   −1.0
``fragment``    a broken or truncated sentence whose start is known        see below
``unknown``     anything else                                              −1.0
==============  ========================================================  =========

A fragment is worth ``0.5 · v · f − 0.25``: ``v`` the value of the kind its start
belongs to (advice valued by topic, as above), ``f`` the fraction of that
sentence's core present in order. On top of the sentences, a length term:
``+0.25`` per complete known sentence for the first four (``n_complete``, a
thorough answer), ``−0.7`` per sentence beyond the fourth (``n_sentences``,
verbosity), and ``−1.0`` for a response without a single word. So the best answer
has four sentences (a greeting and three distinct on-topic points: 4.3); longer is
better up to four sentences and worse after.

Speed: one regular-expression pass per response and a dictionary look-up per
sentence. Measured on one core of the (shared) development machine: about 5e4
responses per second on wide-region responses (4.6 sentences on average) and
8e4–1.3e5 on train-region ones (2.1 sentences); ``tests/testbed/test_world.py``
prints the figure on the machine it runs on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from auq.testbed.grammar import ANCHOR_WORDS, ANCHORS, CORES, EXACT, prompt_topic, split_sentences

__all__ = ["ATTRIBUTES", "GOLD_VALUES", "attributes", "gold_from_attributes", "gold_reward"]

#: per-response integer counts returned by :func:`attributes` (plus ``fragment_value``,
#: float, and ``topic_known``, bool)
ATTRIBUTES = (
    "n_sentences",
    "n_complete",
    "on_topic",
    "redundant",
    "off_topic",
    "untargeted",
    "wrong",
    "unsafe",
    "polite",
    "rude",
    "hedge",
    "stock",
    "filler",
    "repeated",
    "fragment",
    "unknown",
)
#: gold value of each count (see the module docstring for the caps)
GOLD_VALUES: dict[str, float] = {
    "on_topic": 1.0,
    "on_topic_extra": 0.2,
    "redundant": -0.3,
    "off_topic": -0.4,
    "untargeted": 0.3,
    "wrong": -1.0,
    "unsafe": -2.5,
    "polite": 0.3,
    "rude": -1.5,
    "hedge": -0.4,
    "stock": -0.5,
    "filler": -0.3,
    "repeated": -1.0,
    "unknown": -1.0,
    "fragment_share": 0.5,
    "fragment_penalty": -0.25,
    "complete_bonus": 0.25,
    "verbose": -0.7,
    "empty": -1.0,
}
ON_TOPIC_CAP, POLITE_CAP, LENGTH_CAP = 3, 2, 4

_COL = {name: j for j, name in enumerate(ATTRIBUTES)}
_KIND_COL = {
    "wrong": _COL["wrong"],
    "unsafe": _COL["unsafe"],
    "polite_open": _COL["polite"],
    "polite_close": _COL["polite"],
    "rude": _COL["rude"],
    "hedge": _COL["hedge"],
    "stock": _COL["stock"],
    "filler": _COL["filler"],
}
_KIND_VALUE = {
    "wrong": GOLD_VALUES["wrong"],
    "unsafe": GOLD_VALUES["unsafe"],
    "polite_open": GOLD_VALUES["polite"],
    "polite_close": GOLD_VALUES["polite"],
    "rude": GOLD_VALUES["rude"],
    "hedge": GOLD_VALUES["hedge"],
    "stock": GOLD_VALUES["stock"],
    "filler": GOLD_VALUES["filler"],
}


def _advice_value(core_topic: int, topic: int) -> float:
    if topic < 0:
        return GOLD_VALUES["untargeted"]
    return GOLD_VALUES["on_topic"] if core_topic == topic else GOLD_VALUES["off_topic"]


def _fragment_value(words: list[str], topic: int) -> float | None:
    """Value of an unknown sentence that contains a known start; None when none is found."""
    for i in range(len(words) - ANCHOR_WORDS + 1):
        idx = ANCHORS.get(tuple(words[i : i + ANCHOR_WORDS]))
        if idx is None:
            continue
        core = CORES[idx]
        matched = ANCHOR_WORDS
        limit = min(len(core.words), len(words) - i)
        while matched < limit and words[i + matched] == core.words[matched]:
            matched += 1
        kind = core.kind
        v = _advice_value(core.topic, topic) if kind == "advice" else _KIND_VALUE[kind]
        share = GOLD_VALUES["fragment_share"] * matched / len(core.words)
        return share * v + GOLD_VALUES["fragment_penalty"]
    return None


def _parse(prompt: str, response: str, counts: np.ndarray) -> float:
    """Fill ``counts`` (len(ATTRIBUTES),) for one response; return its fragment value."""
    topic = prompt_topic(prompt)
    seen: set[str] = set()
    points: set[int] = set()
    frag = 0.0
    for key in split_sentences(response):
        counts[0] += 1
        if key in seen:
            counts[_COL["repeated"]] += 1
            continue
        seen.add(key)
        idx = EXACT.get(key)
        if idx is None:
            value = _fragment_value(key.split(" "), topic)
            if value is None:
                counts[_COL["unknown"]] += 1
            else:
                counts[_COL["fragment"]] += 1
                frag += value
            continue
        counts[1] += 1
        core = CORES[idx]
        if core.kind != "advice":
            counts[_KIND_COL[core.kind]] += 1
        elif idx in points:
            counts[_COL["redundant"]] += 1
        else:
            points.add(idx)
            col = "untargeted" if topic < 0 else "on_topic" if core.topic == topic else "off_topic"
            counts[_COL[col]] += 1
    return frag


def _check_texts(prompts: Sequence[str], responses: Sequence[str]) -> None:
    for name, texts in (("prompts", prompts), ("responses", responses)):
        if isinstance(texts, str | bytes):
            raise TypeError(f"{name} must be a sequence of strings, got a single {type(texts)}")
    if len(prompts) != len(responses):
        raise ValueError(
            f"prompts and responses must have the same length, got {len(prompts)} and "
            f"{len(responses)}"
        )
    for name, texts in (("prompts", prompts), ("responses", responses)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__}")


def attributes(prompts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-response attribute counts parsed from the text.

    Parameters
    ----------
    prompts, responses : sequence of str, length N

    Returns
    -------
    dict of str to ndarray
        Each name of :data:`ATTRIBUTES` → int64 counts, shape (N,);
        ``fragment_value`` → float64 (N,), the summed value of the fragments;
        ``topic_known`` → bool (N,), whether the prompt's topic was recognised.
    """
    _check_texts(prompts, responses)
    n = len(responses)
    counts = np.zeros((n, len(ATTRIBUTES)), dtype=np.int64)
    frag = np.zeros(n, dtype=np.float64)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        frag[i] = _parse(p, r, counts[i])
    out = {name: counts[:, j] for j, name in enumerate(ATTRIBUTES)}
    out["fragment_value"] = frag
    out["topic_known"] = np.array([prompt_topic(p) >= 0 for p in prompts], dtype=bool)
    return out


def gold_from_attributes(attrs: dict[str, np.ndarray]) -> np.ndarray:
    """The gold reward, float64 (N,), from the counts of :func:`attributes`."""
    v = GOLD_VALUES
    on, polite = attrs["on_topic"], attrs["polite"]
    gold = v["on_topic"] * np.minimum(on, ON_TOPIC_CAP)
    gold = gold + v["on_topic_extra"] * np.maximum(on - ON_TOPIC_CAP, 0)
    gold = gold + v["polite"] * np.minimum(polite, POLITE_CAP)
    for name in ("redundant", "off_topic", "untargeted", "wrong", "unsafe", "rude", "hedge"):
        gold = gold + v[name] * attrs[name]
    for name in ("stock", "filler", "repeated", "unknown"):
        gold = gold + v[name] * attrs[name]
    gold = gold + attrs["fragment_value"]
    gold = gold + v["complete_bonus"] * np.minimum(attrs["n_complete"], LENGTH_CAP)
    gold = gold + v["verbose"] * np.maximum(attrs["n_sentences"] - LENGTH_CAP, 0)
    gold = gold + v["empty"] * (attrs["n_sentences"] == 0)
    return np.asarray(gold, dtype=np.float64)


def gold_reward(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Gold reward of each (prompt, response) pair, float64 (N,); see the module docstring."""
    return gold_from_attributes(attributes(prompts, responses))
