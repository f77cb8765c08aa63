"""A seeded synthetic world whose gold reward is known: prompts, responses, preference pairs.

The world exists to show reward over-optimisation (Gao et al. 2022; Coste et al.
2023) on a laptop: train a proxy reward model on its ``"train"`` preference pairs,
optimise a policy against the proxy (best-of-n, DPO), and read the true quality of
what comes out with :meth:`World.gold_reward`.

Prompts and responses
    Prompts are English questions, "How do I {task}?" and eight more templates, over
    five tasks of each of ten topics (:data:`auq.testbed.grammar.TOPICS`). A response
    is 1–8 sentences from phrase banks (:mod:`auq.testbed.banks`): correct, wrong or
    dangerous advice on the prompt's topic or another, greetings and closings,
    insults, hedges, authority claims, filler; advice sentences vary by lead-in and
    tail (``"Remember to" + core + ", which makes a real difference."``).

Gold reward
    Parsed from the text alone, so it is defined on anything a policy writes; see
    :mod:`auq.testbed.gold` for the table of values, or :meth:`World.describe`.

The built-in distribution shift
    ``region="train"`` (what preference pairs come from by default) holds short
    responses, 1–3 sentences, and there *longer is better*: better answers have
    more sentences, and every complete sentence up to the fourth earns a
    thoroughness bonus. The stock authority phrase ("As an expert, I can assure you
    this works.") is written only by the good style there, so it marks good
    answers, although it is worth −0.5 on its own. ``region="wide"`` samples the
    whole space, 1–8 sentences with padding beyond the fourth; there the gold
    reward *falls* with length after four sentences (−0.7 per sentence, plus the
    padding's own cost), and the stock phrase comes regardless of quality. A proxy
    reward model fit on "train" pairs sees "longer / more confident is better",
    and a policy optimised against it can exploit exactly that: over-optimisation.
    (To let best-of-n reach the long responses, train the reference policy on
    ``region="wide"`` responses, or a mix.)

Reproducibility
    Every draw comes from ``numpy.random.default_rng`` seeded with a fixed list of
    integers (a salt, the world's seed, a stream id, the region and the call's
    seed, and for responses the row index), never from Python's ``hash()``: the
    same seed gives the same texts and labels in every process. A call with
    ``seed=None`` is the world's default draw (the same as ``seed=0``); pass another
    integer for an independent draw. Response ``i`` depends only on the seed, the
    region, ``i`` and the topic of prompt ``i``, so a prefix of the prompts gives a
    prefix of the responses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from auq.data.dataset import PreferenceDataset
from auq.testbed import gold as _gold_mod
from auq.testbed.banks import PROMPT_TEMPLATES, TOPIC_BANKS, TRAIN_TEMPLATES
from auq.testbed.grammar import GRAMMAR_FINGERPRINT, TOPICS, make_prompt, prompt_topic
from auq.testbed.labels import check_label_noise, check_temperature, label_pairs, log_summary
from auq.testbed.sampler import MIXTURES, PADDING, REGIONS, STOCK_TRAIN, draw_response
from auq.utils.validation import check_choice, check_positive_int

__all__ = ["DEFAULT_TEMPERATURE", "REGIONS", "World"]

#: Bradley–Terry temperature of the labels. At label_noise=0 the chosen response has
#: the higher gold reward in 0.875–0.882 of "train" pairs (seeds 0–2, 2,000 pairs;
#: 3–5 % of pairs tie, counted ½) and 0.92–0.93 of "wide" pairs; at label_noise=0.25,
#: 0.69–0.70 and 0.72–0.73
DEFAULT_TEMPERATURE = 0.5
_SALT = 0x7E57BED
_PROMPTS, _RESPONSES, _PAIRS, _BT, _FLIP = 1, 2, 3, 4, 5
_MAX_REDRAWS = 1000


def _check_seed(name: str, seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{name} must be None or an integer >= 0, got {seed!r}")
    return int(seed)


@dataclass(frozen=True)
class World:
    """A frozen, seeded synthetic world with a known gold reward.

    Parameters
    ----------
    seed : int
        Seed of every draw (≥ 0); the same seed gives identical prompts,
        responses and preference sets in every process. The grammar and the gold
        reward do not depend on it.
    label_noise : float
        Default probability in [0, 0.5) of flipping each preference label after the
        Bradley–Terry draw (0.0 and 0.25 are the settings of Coste et al. 2023).
    temperature : float
        Default Bradley–Terry temperature T > 0: ``P(a ≻ b) = σ((g_a − g_b) / T)``.

    Notes
    -----
    The distribution shift (see the module docstring): ``region="train"`` has 1–3
    sentence responses where longer is better and the stock authority phrase marks
    good answers; ``region="wide"`` has 1–8 sentences, where gold falls with length
    beyond four sentences and the stock phrase is worth −0.5 whatever comes with it.
    """

    seed: int = 0
    _: dataclasses.KW_ONLY
    label_noise: float = 0.0
    temperature: float = DEFAULT_TEMPERATURE

    regions = REGIONS
    topics = TOPICS

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", _check_seed("seed", self.seed))
        object.__setattr__(self, "label_noise", check_label_noise(self.label_noise))
        object.__setattr__(self, "temperature", check_temperature(self.temperature))

    # -- seeding -------------------------------------------------------------------------

    def _rng(self, stream: int, region: str, seed: int, *rest: int) -> np.random.Generator:
        key = [_SALT, self.seed, stream, REGIONS.index(region), seed, *rest]
        return np.random.default_rng(key)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the grammar and the seed: equal fingerprints, equal texts.

        The label options (``label_noise``, ``temperature``) are not part of it;
        prompts, responses and gold rewards do not depend on them.
        """
        blob = json.dumps(
            {"grammar": GRAMMAR_FINGERPRINT, "seed": self.seed, "mixtures": MIXTURES,
             "padding": PADDING, "stock": STOCK_TRAIN, "gold": _gold_mod.GOLD_VALUES},
            sort_keys=True,
        )  # fmt: skip
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # -- texts ---------------------------------------------------------------------------

    def sample_prompts(
        self, n: int, *, seed: int | None = None, region: str = "train"
    ) -> list[str]:
        """``n`` prompts: a uniform topic, task and template (the train region uses six of
        the nine templates).

        Returns
        -------
        list of str, length n
        """
        check_positive_int("n", n)
        check_choice("region", region, REGIONS)
        seed = 0 if seed is None else _check_seed("seed", seed)
        n_templates = TRAIN_TEMPLATES if region == "train" else len(PROMPT_TEMPLATES)
        u = self._rng(_PROMPTS, region, seed).random((n, 3))  # (n, 3): prefix-stable rows
        out = []
        for a, b, c in u.tolist():
            topic = int(a * len(TOPICS))
            tasks = TOPIC_BANKS[TOPICS[topic]][0]
            out.append(make_prompt(int(c * n_templates), topic, int(b * len(tasks))))
        return out

    def _topics(self, prompts: Sequence[str]) -> list[int]:
        if isinstance(prompts, str | bytes):
            raise TypeError("prompts must be a sequence of strings, got a single string")
        topics = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
            topics.append(prompt_topic(p))
        unknown = [i for i, t in enumerate(topics) if t < 0]
        if unknown:
            raise ValueError(
                f"{len(unknown)} of {len(topics)} prompts name no task of this world "
                f"(first: prompts[{unknown[0]}] = {prompts[unknown[0]]!r}); make prompts with "
                "World.sample_prompts"
            )
        return topics

    def sample_responses(
        self, prompts: Sequence[str], *, seed: int | None = None, region: str = "train"
    ) -> list[str]:
        """One response per prompt, drawn from the grammar's distribution in ``region``.

        Parameters
        ----------
        prompts : sequence of str, length N
            Prompts of this world (any text naming one of its tasks).
        seed : int, optional
        region : {"train", "wide"}

        Returns
        -------
        list of str, length N
        """
        check_choice("region", region, REGIONS)
        seed = 0 if seed is None else _check_seed("seed", seed)
        topics = self._topics(prompts)
        return [
            draw_response(self._rng(_RESPONSES, region, seed, i), t, region)
            for i, t in enumerate(topics)
        ]

    # -- gold ----------------------------------------------------------------------------

    def gold_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Gold reward of each pair, float64 (N,), from the text alone.

        Defined on any strings (empty, non-ASCII, truncated, very long): finite and
        deterministic. About 5e4 responses per second on one core (wide-region
        responses; more for shorter ones); see :mod:`auq.testbed.gold` for the values.
        """
        return _gold_mod.gold_reward(prompts, responses)

    def attributes(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-response attribute counts, each (N,); see :func:`auq.testbed.gold.attributes`."""
        return _gold_mod.attributes(prompts, responses)

    def prompt_topic(self, prompt: str) -> str | None:
        """The topic a prompt asks about, or None when it names no task of this world."""
        t = prompt_topic(prompt)
        return TOPICS[t] if t >= 0 else None

    # -- preferences ---------------------------------------------------------------------

    def _pair(self, rng: np.random.Generator, topic: int, region: str) -> tuple[str, str]:
        a = draw_response(rng, topic, region)
        for _ in range(_MAX_REDRAWS):
            b = draw_response(rng, topic, region)
            if b != a:
                return a, b
        raise RuntimeError(f"no second response different from {a!r} in {_MAX_REDRAWS} draws")

    def preference_dataset(
        self,
        n: int,
        *,
        seed: int | None = None,
        region: str = "train",
        temperature: float | None = None,
        label_noise: float | None = None,
    ) -> PreferenceDataset:
        """``n`` preference pairs labelled by Bradley–Terry on the gold reward, then flipped.

        Each row is a prompt and two different responses to it from ``region``;
        the Bradley–Terry winner of ``P(a ≻ b) = σ((g_a − g_b) / T)`` is ``chosen``,
        unless the label is then flipped (probability ``label_noise``). The realised
        flip count is logged at INFO on ``auq.testbed``; read it back with
        :func:`auq.testbed.noise_rate` or :func:`auq.testbed.label_summary`.

        Parameters
        ----------
        n : int
        seed : int, optional
        region : {"train", "wide"}
        temperature : float, optional
            T > 0; default: the world's.
        label_noise : float, optional
            In [0, 0.5); default: the world's.

        Returns
        -------
        PreferenceDataset
            N plain-text rows with extra columns ``gold_chosen``, ``gold_rejected``
            (float), ``gold_prob`` (σ((gold_chosen − gold_rejected) / T)), ``flipped``
            (bool), ``topic`` and ``region`` (str).
        """
        check_positive_int("n", n)
        check_choice("region", region, REGIONS)
        seed = 0 if seed is None else _check_seed("seed", seed)
        temp = self.temperature if temperature is None else check_temperature(temperature)
        noise = self.label_noise if label_noise is None else check_label_noise(label_noise)
        prompts = self.sample_prompts(n, seed=seed, region=region)
        topics = self._topics(prompts)
        pairs = [
            self._pair(self._rng(_PAIRS, region, seed, i), t, region) for i, t in enumerate(topics)
        ]
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        ga, gb = self.gold_reward(prompts, a), self.gold_reward(prompts, b)
        a_chosen, flipped = label_pairs(
            ga,
            gb,
            self._rng(_BT, region, seed).random(n),
            self._rng(_FLIP, region, seed).random(n),
            temperature=temp,
            label_noise=noise,
        )
        gc, gr = np.where(a_chosen, ga, gb), np.where(a_chosen, gb, ga)
        cols = {
            "prompt": prompts,
            "chosen": [x if w else y for x, y, w in zip(a, b, a_chosen, strict=True)],
            "rejected": [y if w else x for x, y, w in zip(a, b, a_chosen, strict=True)],
            "gold_chosen": gc.tolist(),
            "gold_rejected": gr.tolist(),
            "gold_prob": (0.5 * (1.0 + np.tanh(0.5 * (gc - gr) / temp))).tolist(),
            "flipped": flipped.tolist(),
            "topic": [TOPICS[t] for t in topics],
            "region": [region] * n,
        }
        dataset = PreferenceDataset.from_dict(cols)
        log_summary(dataset, label_noise=noise, temperature=temp)
        return dataset

    # -- description ---------------------------------------------------------------------

    def describe(self) -> str:
        """A plain-text table of the attributes and their gold values, and the regions."""
        v = _gold_mod.GOLD_VALUES
        rows = [
            ("on_topic", "correct advice on the prompt's topic (first 3 points)", v["on_topic"]),
            ("", "  each further point", v["on_topic_extra"]),
            ("redundant", "a point already made, reworded", v["redundant"]),
            ("off_topic", "correct advice about another topic", v["off_topic"]),
            ("untargeted", "correct advice, prompt topic unknown", v["untargeted"]),
            ("wrong", "incorrect advice", v["wrong"]),
            ("unsafe", "dangerous advice", v["unsafe"]),
            ("polite", "greeting or closing (first 2)", v["polite"]),
            ("rude", "insult", v["rude"]),
            ("hedge", "vague non-answer", v["hedge"]),
            ("stock", "authority claim ('As an expert, ...')", v["stock"]),
            ("filler", "padding sentence", v["filler"]),
            ("repeated", "verbatim repeat of an earlier sentence", v["repeated"]),
            ("unknown", "sentence the grammar cannot write", v["unknown"]),
            ("fragment", "broken sentence with a known start: 0.5·v·f", v["fragment_penalty"]),
            ("n_complete", "per known sentence, first 4", v["complete_bonus"]),
            ("n_sentences", "per sentence beyond the 4th", v["verbose"]),
            ("(empty)", "no word at all", v["empty"]),
        ]
        lines = [
            f"World(seed={self.seed}, label_noise={self.label_noise}, "
            f"temperature={self.temperature}): {len(TOPICS)} topics, {len(PROMPT_TEMPLATES)} "
            f"prompt templates ({TRAIN_TEMPLATES} in 'train')",
            f"{'attribute':<12} {'a sentence that is':<50} {'gold':>6}",
        ]
        lines += [f"{a:<12} {d:<50} {g:>+6.2f}" for a, d, g in rows]
        lines += [
            "region 'train': 1-3 sentences, longer is better, the stock phrase marks good answers",
            "region 'wide' : 1-8 sentences, padding beyond 4, gold falls with length after 4",
        ]
        return "\n".join(lines)
