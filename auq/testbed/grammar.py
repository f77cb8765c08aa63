"""The testbed grammar: kinds of sentence, how they are written and how text is read back.

Writing
    A prompt is a template over a task of one topic (:func:`make_prompt`). An advice
    sentence is ``lead + core + tail + "."`` (:func:`realise_advice`); the other kinds
    are stand-alone sentences (:data:`auq.testbed.banks.GENERIC`).

Reading
    Text is read in *normalised words*: lower case, every run of characters other
    than ``a-z`` / ``0-9`` is a word break (so ``"First , rinse"`` and ``"first,
    rinse"`` read the same, and any spacing a tokenizer adds is harmless). A
    response is split into sentences at ``.``, ``!`` and ``?``
    (:func:`split_sentences`). A sentence is *known* when its normalised words are
    exactly those of a sentence the grammar can write (:data:`EXACT`, every lead ×
    core × tail, plus the stand-alone sentences); an unknown sentence is a
    *fragment* of the first core whose first three words (:data:`ANCHORS`) it
    contains — a truncated or spliced sentence — or else unknown.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache

from auq.testbed.banks import (
    ADVICE_LEADS,
    ADVICE_TAILS,
    GENERIC,
    PROMPT_TEMPLATES,
    TOPIC_BANKS,
    TRAIN_TEMPLATES,
)

__all__ = [
    "ADVICE_KINDS",
    "ANCHORS",
    "CORES",
    "EXACT",
    "GENERIC_KINDS",
    "GRAMMAR_FINGERPRINT",
    "TOPICS",
    "Core",
    "make_prompt",
    "normalise",
    "prompt_topic",
    "realise_advice",
    "split_sentences",
]

TOPICS: tuple[str, ...] = tuple(TOPIC_BANKS)
#: advice kinds, in the order of the banks after the tasks
ADVICE_KINDS = ("advice", "wrong", "unsafe")
GENERIC_KINDS: tuple[str, ...] = tuple(GENERIC)
ANCHOR_WORDS = 3

_WORD = re.compile(r"[a-z0-9]+")
_TERMINATOR = re.compile(r"[.!?]")
_NOT_WORD = re.compile(r"[^a-z0-9.!?]+")


@dataclass(frozen=True)
class Core:
    """One thing a sentence can say.

    Attributes
    ----------
    kind : str
        One of :data:`ADVICE_KINDS` or :data:`GENERIC_KINDS`.
    topic : int
        Index into :data:`TOPICS` of an advice core; -1 for a stand-alone sentence.
    text : str
        The core clause (advice) or the whole sentence (stand-alone kinds).
    words : tuple of str
        The normalised words of ``text``.
    """

    kind: str
    topic: int
    text: str
    words: tuple[str, ...]


def normalise(text: str) -> list[str]:
    """Normalised words of ``text``: lower case, split at anything but ``a-z0-9``."""
    return _WORD.findall(text.lower())


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` as normalised words joined by single spaces.

    The text is cut at every ``.``, ``!`` and ``?``; the last piece need not end in
    one (a truncated sentence). Pieces without a word are dropped.
    """
    spaced = _NOT_WORD.sub(" ", text.lower())  # only words, spaces and terminators left
    return [k for k in (p.strip() for p in _TERMINATOR.split(spaced)) if k]


def _build() -> tuple[list[Core], dict[str, int], dict[tuple[str, ...], int]]:
    cores: list[Core] = []
    for t, (_tasks, *banks) in enumerate(TOPIC_BANKS.values()):
        for kind, bank in zip(ADVICE_KINDS, banks, strict=True):
            cores += [Core(kind, t, c, tuple(normalise(c))) for c in bank]
    for kind, bank in GENERIC.items():
        cores += [Core(kind, -1, s, tuple(normalise(s))) for s in bank]
    exact: dict[str, int] = {}
    lead_words = [normalise(x) for x in ADVICE_LEADS]
    tail_words = [normalise(x) for x in ADVICE_TAILS]

    def add(key: str, i: int) -> None:
        if exact.setdefault(key, i) != i:
            raise RuntimeError(f"grammar bug: {key!r} is two different sentences")

    anchors: dict[tuple[str, ...], int] = {}
    for i, core in enumerate(cores):
        if core.kind in ADVICE_KINDS:
            for lw in lead_words:
                for tw in tail_words:
                    add(" ".join([*lw, *core.words, *tw]), i)
        else:
            add(" ".join(core.words), i)
        anchor = core.words[:ANCHOR_WORDS]
        if anchors.setdefault(anchor, i) != i:
            raise RuntimeError(f"grammar bug: anchor {anchor!r} starts two sentences")
    return cores, exact, anchors


CORES, EXACT, ANCHORS = _build()
_TASKS: list[tuple[str, int]] = [
    (" " + " ".join(normalise(task)) + " ", t)
    for t, (tasks, *_banks) in enumerate(TOPIC_BANKS.values())
    for task in tasks
]


@lru_cache(maxsize=1 << 16)
def prompt_topic(prompt: str) -> int:
    """Index into :data:`TOPICS` of the first task found in ``prompt``; -1 when none is."""
    padded = " " + " ".join(normalise(prompt)) + " "
    return next((t for task, t in _TASKS if task in padded), -1)


def make_prompt(template: int, topic: int, task: int) -> str:
    """The prompt of template ``template`` over task ``task`` of topic ``topic``."""
    tasks = TOPIC_BANKS[TOPICS[topic]][0]
    return PROMPT_TEMPLATES[template].format(tasks[task])


def realise_advice(core: int, lead: int, tail: int) -> str:
    """``ADVICE_LEADS[lead] + core + ADVICE_TAILS[tail] + "."``, capitalised."""
    text = ADVICE_LEADS[lead] + CORES[core].text + ADVICE_TAILS[tail] + "."
    return text[0].upper() + text[1:]


def _fingerprint() -> str:
    blob = json.dumps(
        [PROMPT_TEMPLATES, TRAIN_TEMPLATES, ADVICE_LEADS, ADVICE_TAILS, GENERIC, TOPIC_BANKS],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


#: SHA-256 of every bank and template: changes whenever the grammar's text does
GRAMMAR_FINGERPRINT = _fingerprint()
