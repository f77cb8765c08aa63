"""Turning (prompt, response) rows into model inputs: format, tokens, batches, pooling."""

from auq.scoring.batching import collate, token_budget_batches
from auq.scoring.pooling import last_non_pad_index, pool_hidden_states
from auq.scoring.tokenization import TextEncoder, TokenizedTexts, TruncationStats

__all__ = [
    "TextEncoder",
    "TokenizedTexts",
    "TruncationStats",
    "collate",
    "last_non_pad_index",
    "pool_hidden_states",
    "token_budget_batches",
]
