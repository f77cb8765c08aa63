"""Counts of what the scoring engine cut to fit ``max_length``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TruncationStats", "TruncationWarning"]


class TruncationWarning(UserWarning):
    """Texts were cut to fit ``max_length`` (the counts are in the prediction's ``truncation``).

    A category of its own, so that a caller who reports the counts itself (``auq score``
    sums them over chunks) can silence the per-call warning with
    ``warnings.simplefilter("ignore", TruncationWarning)``.
    """


@dataclass
class TruncationStats:
    """How many (prompt, response) items were cut to fit ``max_length`` (see :mod:`auq.scoring`).

    The counts describe the whole scoring call that produced a prediction; a selection
    ``pred[idx]`` keeps them unchanged.
    """

    n_items: int = 0
    n_prompt_truncated: int = 0
    n_response_truncated: int = 0

    def __str__(self) -> str:
        return (
            f"{self.n_prompt_truncated}/{self.n_items} prompts and "
            f"{self.n_response_truncated}/{self.n_items} responses truncated"
        )

    @property
    def any(self) -> bool:
        """Whether anything was truncated."""
        return self.n_prompt_truncated > 0 or self.n_response_truncated > 0
