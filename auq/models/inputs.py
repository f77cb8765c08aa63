"""Checks and conversions of what users hand a reward model: texts, dtypes, loading options."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from auq.scoring.loading import LOAD_OPTIONS
from auq.types import RewardPrediction, TruncationStats, TruncationWarning
from auq.utils.console import warn_user

__all__ = [
    "check_loading_options",
    "check_placement",
    "check_texts",
    "dtype_name",
    "numeric_column",
    "relabel",
    "torch_dtype",
    "warn_truncation",
]


def check_loading_options(loading: dict[str, Any]) -> None:
    unknown = sorted(set(loading) - set(LOAD_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)}; Hugging Face loading options passed "
            f"through are: {', '.join(LOAD_OPTIONS)}"
        )


def check_placement(device: Any, loading: dict[str, Any]) -> None:
    """``device`` and ``device_map`` place the model two ways: refuse both at once."""
    if device is not None and loading.get("device_map") is not None:
        raise ValueError(
            f"give either device={device!r} or device_map={loading['device_map']!r}, not both: "
            "device_map spreads the model over devices itself"
        )


def dtype_name(dtype: torch.dtype | str | None) -> str | None:
    """``torch.bfloat16`` or ``"torch.bfloat16"`` → ``"bfloat16"`` (None stays None)."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def torch_dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


def _is_text(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list | tuple) and all(isinstance(m, dict) for m in value)


def check_texts(prompts: Any, responses: Any) -> tuple[list, list]:
    """Validate ``score`` inputs: N texts (str or message lists), one prompt broadcast."""
    if isinstance(responses, str):
        responses = [responses]
    if not isinstance(responses, Sequence) or isinstance(responses, bytes):
        raise TypeError(
            f"responses must be a str or a sequence of texts, got {type(responses).__name__}"
        )
    responses = list(responses)
    single_prompt = isinstance(prompts, str) or (
        isinstance(prompts, list | tuple) and len(prompts) > 0 and isinstance(prompts[0], dict)
    )
    if single_prompt:
        prompts = [prompts] * len(responses)
    elif not isinstance(prompts, Sequence):
        raise TypeError(
            f"prompts must be a str or a sequence of texts, got {type(prompts).__name__}"
        )
    prompts = list(prompts)
    if len(prompts) != len(responses):
        raise ValueError(
            f"prompts and responses must have the same length, got {len(prompts)} "
            f"and {len(responses)}"
        )
    if not responses:
        raise ValueError("score needs at least one (prompt, response) pair; got 0")
    for name, items in (("prompts", prompts), ("responses", responses)):
        for i, item in enumerate(items):
            if not _is_text(item):
                raise TypeError(
                    f"{name}[{i}] must be a str or a list of {{'role', 'content'}} messages, "
                    f"got {type(item).__name__}"
                )
    return prompts, responses


def warn_truncation(stats: TruncationStats, max_length: int) -> None:
    if stats.n_prompt_truncated or stats.n_response_truncated:
        message = (
            f"{stats} to fit max_length={max_length} tokens (counts in the prediction's "
            "`truncation`); raise max_length to score the texts whole"
        )
        warn_user(message, TruncationWarning)


def relabel(pred: RewardPrediction | None, method: str) -> RewardPrediction | None:
    return None if pred is None else dataclasses.replace(pred, method=method)


def numeric_column(values) -> Tensor | None:
    return None if values is None else torch.as_tensor(values, dtype=torch.float32)
