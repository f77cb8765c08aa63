"""Turning (prompt, response) texts into model inputs: tokenisation and length-bucketed batches."""

from auq.scoring.batching import (
    TextEncoder,
    TokenizedTexts,
    TruncationStats,
    collate,
    token_budget_batches,
)

__all__ = ["TextEncoder", "TokenizedTexts", "TruncationStats", "collate", "token_budget_batches"]
