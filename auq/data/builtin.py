"""A built-in synthetic preference set whose gold reward is known exactly.

The world
---------
Users ask templated questions ("How do I {task}?") about one of eight
in-distribution topics (:data:`BUILTIN_TOPICS`) or, with ``domain="ood"``, one of
four out-of-distribution topics (:data:`OOD_TOPICS`) whose topical vocabulary is
disjoint from the in-distribution one. A response is 1–4 sentences drawn from
phrase banks; it has a latent quality q ~ U(0, 1) that mixes a "good" and a "bad"
style, so responses are coherent rather than random. Every sentence carries
exactly one attribute:

================  ====================================================  ==========
attribute         example                                               gold value
================  ====================================================  ==========
helpful           specific, correct advice on the *prompt's* topic        +1.5
helpful, off      the same kind of advice about *another* topic           −0.3
wrong             factually wrong or unsafe advice                        −1.5
polite            "Great question, I am happy to help."                   +0.4
rude              "Honestly, that is a pretty silly question."            −1.2
vague             "It really depends on a lot of different factors."      −0.6
================  ====================================================  ==========

The helpful values are a base of ``+0.6`` plus a topic-match term of ``±0.9``
(``+`` when the advice's topic is the prompt's topic). The gold reward is

    gold_reward(prompt, response) = mean of the sentence values + 0.1 · n_sentences

so it is additive in the response's attributes (the mean matches the mean pooling
of sentence encoders) plus the topic-match term and a mild length effect. It is
computed from the text alone: :func:`gold_reward` splits the response into
sentences and looks each up in the banks (an unknown sentence is worth 0; an
unknown prompt topic turns the topic term off, so off-topic advice is worth +0.6).

Label noise
-----------
Each prompt gets two different responses a, b with different gold rewards; the
label is sampled from Bradley–Terry, ``P(a ≻ b) = σ((g_a − g_b) / T)`` with
``T = LABEL_TEMPERATURE`` (0.33), and the sampled winner goes to ``chosen``. At this
temperature the *gold ceiling* — the accuracy of the gold reward itself against
the sampled labels (:func:`gold_ceiling`) — is about 0.88 (0.87–0.89 over seeds at
N = 2000), close to the expected Bayes accuracy :func:`bayes_accuracy`. Per-row
``gold_chosen`` / ``gold_rejected``, ``gold_prob`` (the gold P(chosen ≻ rejected)
the label was drawn from) and the prompt's ``topic`` are kept as extra columns.

Learnability (measured once, seeds 0–2): a logistic-regression head on the mean-pooled
features of the frozen all-MiniLM-L6-v2 encoder (prompt and response as a text pair),
trained on 1,600 pairs, reaches 0.79–0.82 held-out accuracy against a gold ceiling of
0.86–0.87 on the same rows, and 0.55–0.60 on ``domain="ood"`` data — a deliberate
shift for OOD tests.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from functools import lru_cache

import numpy as np

from auq.data.dataset import PreferenceDataset
from auq.utils.validation import check_choice, check_positive_int

__all__ = [
    "BUILTIN_TOPICS",
    "GOLD_VALUES",
    "LABEL_TEMPERATURE",
    "OOD_TOPICS",
    "bayes_accuracy",
    "gold_ceiling",
    "gold_reward",
    "load_builtin_preferences",
]

LABEL_TEMPERATURE = 0.33
LENGTH_BONUS = 0.1
HELPFUL_BASE, TOPIC_MATCH = 0.6, 0.9
GOLD_VALUES = {
    "helpful": HELPFUL_BASE + TOPIC_MATCH,
    "helpful_off": HELPFUL_BASE - TOPIC_MATCH,
    "wrong": -1.5,
    "polite": 0.4,
    "rude": -1.2,
    "vague": -0.6,
}

PROMPT_TEMPLATES = (
    "How do I {}?",
    "What is the best way to {}?",
    "Any tips on how to {}?",
    "Could you explain how to {}?",
    "I would like to {}, where should I start?",
)

GENERIC = {
    "polite": (
        "Great question, I am happy to help.",
        "Thanks for asking, here is what I would suggest.",
        "I hope this helps, and good luck!",
        "Glad you asked about this.",
        "That is a really thoughtful thing to ask.",
    ),
    "rude": (
        "Honestly, that is a pretty silly question.",
        "Just look it up yourself next time.",
        "I can't believe you don't know this already.",
        "Stop wasting my time with questions like this.",
        "Whatever, figure it out on your own.",
    ),
    "vague": (
        "It really depends on a lot of different factors.",
        "There is no single right answer here.",
        "Everyone is different, so it is hard to say.",
        "You could try a few things and see what happens.",
        "Some people do it one way and some do it another way.",
    ),
}

# topic -> (tasks, helpful advice, wrong or unsafe advice)
# fmt: off
_TOPIC_BANKS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "cooking": (
        ("cook fluffy rice", "make a tender omelette", "keep pasta from sticking",
         "season a cast iron skillet"),
        ("Rinse the rice first and simmer it covered with a measured amount of water.",
         "Whisk the eggs well and cook them gently over low heat with butter.",
         "Boil pasta in plenty of salted water and stir it during the first minute.",
         "Rub a thin layer of oil into the skillet and bake it upside down for an hour.",
         "Taste the dish as you cook and adjust the seasoning near the end."),
        ("Leave raw chicken on the counter overnight so it marinates faster.",
         "Pour water onto a grease fire to put it out quickly.",
         "Put the cast iron skillet in the dishwasher and let it soak for days."),
    ),
    "travel": (
        ("pack light for a two week trip", "find cheap flights", "beat jet lag",
         "choose a good hotel in a new city"),
        ("Roll your clothes and pick outfits that mix and match so everything fits in a "
         "carry-on bag.",
         "Compare fares on several booking sites and fly midweek when tickets are cheaper.",
         "Switch to the local time zone right away and get daylight on your first morning.",
         "Read recent guest reviews and check how close the hotel is to public transport.",
         "Keep digital copies of your passport and travel insurance documents."),
        ("Leave your passport at home because border guards rarely check it.",
         "Book the first flight you see since comparing fares never saves money.",
         "Carry all your cash in an open back pocket so it is easy to reach."),
    ),
    "programming": (
        ("debug a crashing Python script", "write cleaner functions",
         "learn version control with git", "speed up a slow database query"),
        ("Read the full traceback and reproduce the crash with the smallest possible input.",
         "Keep each function short, give it a descriptive name and make it do one thing.",
         "Commit focused changes often with clear messages and use a branch for each feature.",
         "Add an index on the columns you filter by and inspect the query plan.",
         "Write unit tests for the tricky cases before you refactor the code."),
        ("Wrap every function in a bare except clause so errors silently disappear.",
         "Store user passwords in plain text so they are easy to recover.",
         "Force push to the main branch whenever a merge conflict appears."),
    ),
    "fitness": (
        ("start running as a beginner", "build muscle without a gym",
         "improve my flexibility", "stay motivated to exercise"),
        ("Begin with short run and walk intervals three times a week and add distance slowly.",
         "Do push-ups, squats and lunges with good form and add repetitions every week.",
         "Stretch gently after each workout and hold every stretch for thirty seconds.",
         "Schedule your workouts like appointments and track your progress in a journal.",
         "Warm up for five minutes before training and rest between hard sessions."),
        ("Skip warming up entirely and push through sharp joint pain.",
         "Train the same muscles to exhaustion every single day without rest.",
         "Stop drinking water during workouts to burn more fat."),
    ),
    "gardening": (
        ("grow tomatoes on a balcony", "keep houseplants alive", "start a compost pile",
         "get rid of aphids naturally"),
        ("Plant tomatoes in a large pot with rich soil and give them six hours of sun.",
         "Water houseplants only when the top inch of soil feels dry.",
         "Layer green kitchen scraps with dry leaves and turn the compost pile weekly.",
         "Spray aphids off with a jet of water or release ladybugs onto the plants.",
         "Mulch around your seedlings to keep the soil moist and suppress weeds."),
        ("Water your cactus every hour so the soil never dries out.",
         "Spray strong weed killer on your vegetables right before harvest.",
         "Throw meat and plastic bags into the compost to speed it up."),
    ),
    "finance": (
        ("build an emergency fund", "start investing with little money",
         "pay off credit card debt", "make a monthly budget"),
        ("Set up an automatic transfer into a savings account every payday.",
         "Buy a low-cost index fund regularly instead of picking individual stocks.",
         "Pay off the card with the highest interest rate first and pay minimums on the rest.",
         "List your income and fixed expenses, then give every remaining dollar a purpose.",
         "Keep three to six months of expenses in cash for emergencies."),
        ("Put all your savings into a single stock a stranger recommended online.",
         "Take out a payday loan to cover your credit card payments.",
         "Ignore your bills until the collectors call because they usually forget."),
    ),
    "music": (
        ("learn guitar chords faster", "practice piano effectively",
         "improve my singing voice", "write my first song"),
        ("Practice switching between two chords slowly with a metronome until it is smooth.",
         "Split piano practice into short focused sessions and play hands separately first.",
         "Warm up your voice with humming and breathe from your diaphragm.",
         "Start with a simple chord progression and hum melodies over it until one sticks.",
         "Record yourself playing and listen back to spot mistakes in your timing."),
        ("Press the guitar strings as hard as you can until your fingers bleed.",
         "Scream at full volume for hours to strengthen your vocal cords.",
         "Never use a metronome because keeping time is unimportant."),
    ),
    "home repair": (
        ("fix a leaking faucet", "patch a hole in drywall", "unclog a bathroom drain",
         "fix a squeaky door"),
        ("Shut off the water supply, then replace the worn washer inside the faucet.",
         "Cover the hole with a mesh patch, spread joint compound and sand it smooth.",
         "Pull hair out of the drain with a plastic snake before trying chemical cleaners.",
         "Spray the door hinges with a little lubricant and swing the door a few times.",
         "Turn off the breaker before touching any electrical outlet or light fixture."),
        ("Work on live electrical wires without switching off the power.",
         "Mix bleach and drain cleaner together for a stronger effect.",
         "Tighten the faucet nut with all your strength until something cracks."),
    ),
    # --- out of distribution: vocabulary disjoint from the topics above ---------------
    "astronomy": (
        ("locate Saturn with a telescope", "photograph the Milky Way",
         "identify constellations", "watch a meteor shower"),
        ("Locate Saturn along the ecliptic with a planetarium chart and observe it at modest "
         "magnification.",
         "Use a wide lens, a sturdy tripod and long exposures far from urban glare.",
         "Memorise bright anchor constellations such as Orion, then star-hop to their neighbours.",
         "Lie back after midnight, let your eyes adapt to darkness and scan the whole sky.",
         "Let the telescope acclimatise outdoors so planetary images remain steady."),
        ("Stare directly at the solar disc through binoculars to see sunspots.",
         "Assume every bright dot near the Moon is a comet.",
         "Hunt faint galaxies when the Moon is brightest because moonlight helps."),
    ),
    "law": (
        ("review a rental lease before signing", "file a small claims lawsuit",
         "draft a valid will", "respond to a jury summons"),
        ("Review each provision of the lease, note the deposit terms and ask the landlord about "
         "unclear wording.",
         "Gather contracts, receipts and correspondence as evidence before filing at the "
         "courthouse.",
         "Sign the will in front of two witnesses and lodge the original with a notary.",
         "Return the juror questionnaire promptly and request a deferral if attendance is "
         "impossible.",
         "Consult a licensed attorney when the dispute involves significant sums."),
        ("Sign the lease unread since landlords never cheat tenants.",
         "Disregard the summons altogether because courts never enforce attendance.",
         "Scribble the will on a napkin without witnesses and hide it."),
    ),
    "medicine": (
        ("lower my blood pressure", "treat a mild fever", "manage seasonal allergies",
         "take antibiotics correctly"),
        ("Cut back on sodium, limit alcohol and measure your blood pressure with a cuff.",
         "Sip fluids, take an appropriate dose of paracetamol and see a physician if it "
         "persists.",
         "Use an antihistamine and keep pollen outside by closing windows on windy afternoons.",
         "Finish the entire prescribed antibiotic course even after symptoms subside.",
         "Ask a pharmacist about interactions before combining medications."),
        ("Quit antibiotics as soon as symptoms fade and hoard leftover pills.",
         "Double the fever medication dose to heal twice as fast.",
         "Share prescription pills with relatives who have similar symptoms."),
    ),
    "sailing": (
        ("tie a bowline knot", "tack a dinghy", "interpret nautical charts",
         "prepare for a squall at sea"),
        ("Twist a loop, pass the rope tail up through it, around the standing part and back.",
         "Steer up into the wind, ease the jib sheet and let the bow pivot across.",
         "Verify depth soundings, buoys and hazards marked on the chart before departure.",
         "Reef the mainsail early, clip on harnesses and secure loose gear on deck.",
         "Keep a lookout astern and watch for darkening gusts on the horizon."),
        ("Sail offshore alone without lifejackets when a storm is forecast.",
         "Anchor in a narrow shipping channel after dark to conserve fuel.",
         "Disregard the tide tables because currents seldom matter."),
    ),
}
# fmt: on
BUILTIN_TOPICS = (
    "cooking",
    "travel",
    "programming",
    "fitness",
    "gardening",
    "finance",
    "music",
    "home repair",
)  # fmt: skip
OOD_TOPICS = ("astronomy", "law", "medicine", "sailing")

# sentence -> (attribute, topic or None)
_SENTENCE_INFO: dict[str, tuple[str, str | None]] = {
    s: (attr, None) for attr, bank in GENERIC.items() for s in bank
}
_TASK_TOPIC: dict[str, str] = {}
for _topic, (_tasks, _helpful, _wrong) in _TOPIC_BANKS.items():
    _SENTENCE_INFO.update({s: ("helpful", _topic) for s in _helpful})
    _SENTENCE_INFO.update({s: ("wrong", _topic) for s in _wrong})
    _TASK_TOPIC.update(dict.fromkeys(_tasks, _topic))
_SPLIT = re.compile(r"(?<=[.!?])\s+")
# Sentence categories; a response with latent quality q in [0, 1] draws each sentence's
# category from q * _GOOD_STYLE + (1 - q) * _BAD_STYLE (coherent, not random, responses).
_CATEGORIES = ("on", "off", "wrong", "polite", "rude", "vague")
_GOOD_STYLE = (0.55, 0.05, 0.05, 0.22, 0.03, 0.10)
_BAD_STYLE = (0.12, 0.20, 0.25, 0.05, 0.18, 0.20)
_ORDER = {"polite": 0, "rude": 0, "on": 1, "off": 1, "wrong": 1, "vague": 2}


@lru_cache(maxsize=4096)
def _prompt_topic(prompt: str) -> str | None:
    return next((t for task, t in _TASK_TOPIC.items() if task in prompt), None)


def gold_reward(prompt: str, response: str) -> float:
    """Gold reward of ``response`` to ``prompt``, from the text alone.

    ``mean(sentence values) + 0.1 · n_sentences`` with the sentence values of
    :data:`GOLD_VALUES`; see the module docstring. Sentences are split after
    ``.``, ``!`` or ``?``; unknown sentences count 0.
    """
    topic = _prompt_topic(prompt)
    sentences = [s for s in _SPLIT.split(response.strip()) if s]
    if not sentences:
        return 0.0
    total = 0.0
    for s in sentences:
        attr, s_topic = _SENTENCE_INFO.get(s, (None, None))
        if attr == "helpful":
            match = 0.0 if topic is None else (1.0 if s_topic == topic else -1.0)
            total += HELPFUL_BASE + TOPIC_MATCH * match
        elif attr is not None:
            total += GOLD_VALUES[attr]
    return total / len(sentences) + LENGTH_BONUS * len(sentences)


def _response(topic: str, topics: tuple[str, ...], u: list[float]) -> str:
    """Assemble one response from uniforms ``u`` of shape (13,)."""
    n, q = 1 + int(u[0] * 4), (u[0] * 4) % 1.0  # length 1-4 and quality from one uniform
    probs = [q * g + (1 - q) * b for g, b in zip(_GOOD_STYLE, _BAD_STYLE, strict=True)]
    cdf = list(itertools.accumulate(probs))
    parts: list[tuple[int, str]] = []
    for k in range(n):
        cat = _CATEGORIES[bisect.bisect(cdf, u[1 + 3 * k] * cdf[-1])]
        if cat in GENERIC:
            bank = GENERIC[cat]
        else:
            t = topic
            if cat == "off":
                others = [x for x in topics if x != topic]
                t = others[int(u[3 + 3 * k] * len(others))]
            bank = _TOPIC_BANKS[t][2 if cat == "wrong" else 1]
        used = {s for _, s in parts}
        free = [s for s in bank if s not in used]  # no repeated sentence
        if free:
            parts.append((_ORDER[cat], free[int(u[2 + 3 * k] * len(free))]))
    parts.sort(key=lambda p: p[0])  # greeting first, then advice, hedges last
    return " ".join(s for _, s in parts)


def load_builtin_preferences(
    n_pairs: int = 2000,
    *,
    seed: int = 0,
    domain: str = "in",
    temperature: float = LABEL_TEMPERATURE,
) -> PreferenceDataset:
    """Sample the built-in synthetic preference set.

    Parameters
    ----------
    n_pairs : int
        Number of pairs N.
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives the same data.
    domain : {"in", "ood"}
        ``"in"``: prompts about :data:`BUILTIN_TOPICS`; ``"ood"``: about
        :data:`OOD_TOPICS` (off-topic advice then comes from the OOD topics too).
    temperature : float
        Bradley–Terry label temperature T; lower is less label noise.

    Returns
    -------
    PreferenceDataset
        N plain-text pairs with extra columns ``gold_chosen``, ``gold_rejected``
        (floats), ``gold_prob`` (the gold model's P(chosen ≻ rejected), from which
        the label was sampled) and ``topic`` (the prompt's topic).
    """
    check_positive_int("n_pairs", n_pairs)
    check_choice("domain", domain, ("in", "ood"))
    if not isinstance(temperature, int | float) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    topics = BUILTIN_TOPICS if domain == "in" else OOD_TOPICS
    rng = np.random.default_rng(seed if domain == "in" else (seed, 1))
    topic_idx = rng.integers(len(topics), size=n_pairs).tolist()
    template_idx = rng.integers(len(PROMPT_TEMPLATES), size=n_pairs).tolist()
    task_u, label_u = rng.random(n_pairs).tolist(), rng.random(n_pairs).tolist()
    u = rng.random((n_pairs, 2, 13)).tolist()
    names = ("prompt", "chosen", "rejected", "gold_chosen", "gold_rejected", "gold_prob", "topic")
    cols: dict[str, list] = {c: [] for c in names}
    for i in range(n_pairs):
        topic = topics[topic_idx[i]]
        tasks = _TOPIC_BANKS[topic][0]
        prompt = PROMPT_TEMPLATES[template_idx[i]].format(tasks[int(task_u[i] * len(tasks))])
        a, b = _response(topic, topics, u[i][0]), _response(topic, topics, u[i][1])
        ga, gb = gold_reward(prompt, a), gold_reward(prompt, b)
        while a == b or abs(ga - gb) < 1e-6:  # redraw b until the pair is informative
            b = _response(topic, topics, rng.random(13).tolist())
            gb = gold_reward(prompt, b)
        p = 1.0 / (1.0 + math.exp(-(ga - gb) / temperature))
        if label_u[i] >= p:
            a, b, ga, gb, p = b, a, gb, ga, 1.0 - p  # b won the Bradley–Terry draw
        for c, v in zip(cols, (prompt, a, b, ga, gb, p, topic), strict=True):
            cols[c].append(v)
    return PreferenceDataset.from_dict(cols)


def _gold_margins(dataset: PreferenceDataset) -> np.ndarray:
    missing = {"gold_chosen", "gold_rejected"} - set(dataset.columns)
    if missing:
        raise ValueError(f"dataset lacks gold columns {sorted(missing)}; use the built-in set")
    chosen = np.asarray(dataset.column("gold_chosen"), dtype=np.float64)
    return chosen - np.asarray(dataset.column("gold_rejected"), dtype=np.float64)


def gold_ceiling(dataset: PreferenceDataset) -> float:
    """Fraction of rows whose ``gold_chosen > gold_rejected``: the gold reward's accuracy."""
    return float(np.mean(_gold_margins(dataset) > 0))


def bayes_accuracy(dataset: PreferenceDataset, *, temperature: float | None = None) -> float:
    """Expected accuracy ``E[max(p, 1 − p)]`` of the gold model.

    ``p`` is the stored ``gold_prob`` column, or ``σ(Δ_gold / temperature)`` when a
    temperature is given. No model can beat this in expectation.
    """
    if temperature is None:
        if "gold_prob" not in dataset.columns:
            raise ValueError("dataset lacks a 'gold_prob' column; pass temperature=")
        p = np.asarray(dataset.column("gold_prob"), dtype=np.float64)
    else:
        p = 1.0 / (1.0 + np.exp(-_gold_margins(dataset) / temperature))
    return float(np.mean(np.maximum(p, 1.0 - p)))
