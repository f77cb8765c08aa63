"""The scoring engine and its parts: texts → tokens → micro-batches → features.

* :mod:`~auq.scoring.tokenization` — the text format per backbone kind, truncation;
* :mod:`~auq.scoring.batching` — token-budget length buckets, vectorised collation;
* :mod:`~auq.scoring.engine` — the engine: inference mode, autocast, out-of-memory
  back-off, results in the caller's order (:class:`ScoringOptions`, :class:`ScoringStats`);
* :mod:`~auq.scoring.prefix` — a prompt shared by n responses runs once;
* :mod:`~auq.scoring.cache` — features of texts a frozen backbone already encoded;
* :mod:`~auq.scoring.distributed` — data-parallel scoring under ``torchrun`` / ``accelerate``;
* :mod:`~auq.scoring.sources`, :mod:`~auq.scoring.sinks`, :mod:`~auq.scoring.stream` — a data
  set streamed through a model in chunks, resumable (``auq score``);
* :mod:`~auq.scoring.pooling`, :mod:`~auq.scoring.loading` — reading features, loading models.
"""

from auq.scoring.batching import collate, token_budget_batches
from auq.scoring.cache import FeatureCache
from auq.scoring.engine import OutOfMemoryError, ScoringOptions, ScoringStats
from auq.scoring.pooling import last_non_pad_index, pool_hidden_states
from auq.scoring.prefix import prompt_groups
from auq.scoring.tokenization import TextEncoder, TokenizedTexts, TruncationStats

__all__ = [
    "FeatureCache",
    "OutOfMemoryError",
    "ScoringOptions",
    "ScoringStats",
    "TextEncoder",
    "TokenizedTexts",
    "TruncationStats",
    "collate",
    "last_non_pad_index",
    "pool_hidden_states",
    "prompt_groups",
    "token_budget_batches",
]
