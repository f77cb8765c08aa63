"""How the world writes responses in each region: the grammar's distribution.

A response has a latent quality ``q ~ U(0, 1)``; each of its content sentences
draws a category from ``q · good + (1 − q) · bad`` (:data:`MIXTURES`), so one
response is coherent rather than a random mix.

``"train"``
    1–3 sentences, ``n = 1 + Binomial(2, 0.15 + 0.7 q)``: better answers are longer.
    The stock authority phrase is written only into responses whose every sentence
    is on-topic correct advice or a greeting, half of the time (:data:`STOCK_TRAIN`:
    an extra sentence, or in place of the greeting of a 3-sentence answer), so it
    marks good answers; no filler, no repeats, no reworded points.
``"wide"``
    1–8 sentences, ``n`` uniform and independent of quality. The first four are
    drawn as above, but the stock phrase and filler come at a rate that does not
    depend on quality; sentences beyond the fourth are padding (:data:`PADDING`):
    filler, verbatim repeats, reworded points, stock phrases, hedges, and some fresh
    content.

Sentences are ordered greeting, insult, advice, stock phrase / hedge / filler,
closing, then padding.
"""

from __future__ import annotations

import bisect
import itertools

import numpy as np

from auq.testbed.banks import ADVICE_LEADS, ADVICE_TAILS, GENERIC
from auq.testbed.grammar import CORES, TOPICS, realise_advice

__all__ = ["CATEGORIES", "MIXTURES", "PADDING", "REGIONS", "STOCK_TRAIN", "draw_response"]

REGIONS = ("train", "wide")
CATEGORIES = ("on", "off", "wrong", "unsafe", "rude", "hedge", "polite", "stock", "filler")
#: region -> (good style, bad style), probabilities over CATEGORIES
# fmt: off
MIXTURES = {
    "train": ((0.68, 0.04, 0.04, 0.00, 0.00, 0.08, 0.16, 0.00, 0.00),
              (0.15, 0.20, 0.25, 0.08, 0.14, 0.15, 0.03, 0.00, 0.00)),
    "wide":  ((0.60, 0.04, 0.04, 0.00, 0.00, 0.06, 0.14, 0.08, 0.04),
              (0.15, 0.18, 0.23, 0.08, 0.14, 0.09, 0.03, 0.08, 0.02)),
}
# fmt: on
#: train region: probability that an all-good response (on-topic advice and greetings
#: only) carries the stock phrase, added as a sentence (or in place of a greeting at 3)
STOCK_TRAIN = 0.5
_GOOD = ("on", "polite")
#: what the wide region writes after the fourth sentence
PADDING = {"filler": 0.30, "repeat": 0.20, "reword": 0.15, "stock": 0.10, "hedge": 0.10,
           "fresh": 0.15}  # fmt: skip
HEAD = 4
_LEAD_P = (0.4, *[0.6 / (len(ADVICE_LEADS) - 1)] * (len(ADVICE_LEADS) - 1))
_TAIL_P = (0.55, *[0.45 / (len(ADVICE_TAILS) - 1)] * (len(ADVICE_TAILS) - 1))
_RANK = {"polite_open": 0, "rude": 1, "advice": 2, "stock": 3, "hedge": 3, "filler": 3,
         "polite_close": 4}  # fmt: skip

# core indices by (topic, kind) and by generic kind
_ADVICE: dict[tuple[int, str], list[int]] = {}
_GENERIC: dict[str, list[int]] = {k: [] for k in GENERIC}
for _i, _c in enumerate(CORES):
    if _c.topic >= 0:
        _ADVICE.setdefault((_c.topic, _c.kind), []).append(_i)
    else:
        _GENERIC[_c.kind].append(_i)
_ADVICE_KIND = {"on": "advice", "off": "advice", "wrong": "wrong", "unsafe": "unsafe"}


def _pick(rng: np.random.Generator, probs: tuple[float, ...]) -> int:
    cdf = list(itertools.accumulate(probs))
    return min(bisect.bisect(cdf, rng.random() * cdf[-1]), len(probs) - 1)


def _choice(rng: np.random.Generator, items: list[int]) -> int:
    return items[int(rng.random() * len(items))]


class _Writer:
    """The state of one response being written: used cores, greeting and closing."""

    def __init__(self, rng: np.random.Generator, topic: int) -> None:
        self.rng, self.topic = rng, topic
        self.used: set[int] = set()
        self.points: list[int] = []  # correct advice cores written (for rewording)

    def advice(self, core: int) -> tuple[int, str]:
        self.used.add(core)
        if CORES[core].kind == "advice":
            self.points.append(core)
        text = realise_advice(core, _pick(self.rng, _LEAD_P), _pick(self.rng, _TAIL_P))
        return _RANK["advice"], text

    def generic(self, kind: str) -> tuple[int, str] | None:
        """A stand-alone sentence of ``kind`` not written yet; None when all are."""
        free = [i for i in _GENERIC[kind] if i not in self.used]
        if not free:
            return None
        core = _choice(self.rng, free)
        self.used.add(core)
        return _RANK[kind], CORES[core].text

    def generic_text(self, kind: str) -> str:
        """A sentence of ``kind``: a new one while there is one, else any (a repeat)."""
        out = self.generic(kind)
        return CORES[_choice(self.rng, _GENERIC[kind])].text if out is None else out[1]

    def content(self, cat: str) -> tuple[int, str] | None:
        """One sentence of category ``cat``; None when the category is used up."""
        if cat in _ADVICE_KIND:
            topic = self.topic
            if cat == "off":
                others = [t for t in range(len(TOPICS)) if t != self.topic]
                topic = _choice(self.rng, others)
            free = [i for i in _ADVICE[(topic, _ADVICE_KIND[cat])] if i not in self.used]
            return self.advice(_choice(self.rng, free)) if free else None
        if cat == "polite":
            first = "polite_open" if self.rng.random() < 0.6 else "polite_close"
            second = "polite_close" if first == "polite_open" else "polite_open"
            for kind in (first, second):
                if not any(i in self.used for i in _GENERIC[kind]):
                    return self.generic(kind)
            return None
        return self.generic(cat)

    def mixed(self, probs: tuple[float, ...]) -> tuple[int, str, str]:
        """One sentence of a category drawn from ``probs``: (rank, text, category)."""
        while True:  # ends: every style gives weight to advice on another topic, never used up
            cat = CATEGORIES[_pick(self.rng, probs)]
            out = self.content(cat)
            if out is not None:
                return (*out, cat)

    def padding(self, written: list[str], probs: tuple[float, ...]) -> str:
        kind = list(PADDING)[_pick(self.rng, tuple(PADDING.values()))]
        if kind == "repeat":
            return written[int(self.rng.random() * len(written))]
        if kind == "reword" and self.points:
            core = _choice(self.rng, self.points)
            for _ in range(10):
                text = realise_advice(core, _pick(self.rng, _LEAD_P), _pick(self.rng, _TAIL_P))
                if text not in written:
                    return text
        if kind == "fresh":
            return self.mixed(probs)[1]
        return self.generic_text(kind if kind in ("stock", "hedge") else "filler")


def draw_response(rng: np.random.Generator, topic: int, region: str) -> str:
    """One response to a prompt of topic ``topic`` (index into TOPICS), drawn in ``region``."""
    q = rng.random()
    good, bad = MIXTURES[region]
    probs = tuple(q * g + (1 - q) * b for g, b in zip(good, bad, strict=True))
    if region == "train":
        n = 1 + int(rng.binomial(2, 0.15 + 0.7 * q))
    else:
        n = 1 + int(rng.random() * 8)
    writer = _Writer(rng, topic)
    head = [writer.mixed(probs) for _ in range(min(n, HEAD))]
    if region == "train" and all(c in _GOOD for _, _, c in head) and rng.random() < STOCK_TRAIN:
        stock = (_RANK["stock"], writer.generic_text("stock"), "stock")
        polite = [k for k, (_, _, c) in enumerate(head) if c == "polite"]
        if n < 3:
            head.append(stock)
        elif polite:
            head[polite[0]] = stock
    head.sort(key=lambda s: s[0])  # stable: draw order within a rank
    written = [text for _, text, _ in head]
    for _ in range(n - HEAD):
        written.append(writer.padding(written, probs))
    return " ".join(written)
