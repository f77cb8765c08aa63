"""A seeded synthetic world with a known gold reward, for reward over-optimisation studies.

:class:`World` writes prompts and responses from an English grammar, scores any
text with its gold reward, and labels preference pairs by Bradley–Terry on the gold
reward with optional label flips. Its ``"train"`` region and ``"wide"`` region
differ by a built-in distribution shift (see :mod:`auq.testbed.world`).
:func:`reference_policy` is a tiny GPT-2 trained by SFT on the world's responses
and cached under the user's cache directory (:mod:`auq.testbed.policy`).
"""

from auq.testbed.gold import ATTRIBUTES, GOLD_VALUES
from auq.testbed.grammar import GRAMMAR_FINGERPRINT, TOPICS
from auq.testbed.labels import label_summary, noise_rate
from auq.testbed.policy import PolicyConfig, load_or_train_policy, reference_policy
from auq.testbed.world import DEFAULT_TEMPERATURE, REGIONS, World

__all__ = [
    "ATTRIBUTES",
    "DEFAULT_TEMPERATURE",
    "GOLD_VALUES",
    "GRAMMAR_FINGERPRINT",
    "REGIONS",
    "TOPICS",
    "PolicyConfig",
    "World",
    "label_summary",
    "load_or_train_policy",
    "noise_rate",
    "reference_policy",
]
