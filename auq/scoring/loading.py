"""Loading Hugging Face models for scoring: options, safetensors-only weights, quiet logs, limits.

* :data:`LOAD_OPTIONS` — the Hugging Face loading options auq passes through (to
  the config, the model and, where they apply, the tokenizer); an option naming a
  config attribute overrides it (as in Hugging Face); anything else is refused by
  :func:`check_load_options` with the valid names listed.
* Weights load from safetensors only (``use_safetensors=True``): a local directory
  holding only pickle-based weights is refused by :func:`check_local_weights` with
  a way to convert it, never a suggestion to switch safe loading off.
* :func:`quiet_transformers` silences transformers' logging and progress bars
  ("Loading weights", load reports) during auq's loads unless the ``auq`` logger
  is at DEBUG; the previous settings are restored afterwards.
* :func:`position_limit` — the longest sequence a model's position embeddings take.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from auq.utils.console import get_logger

__all__ = [
    "LOAD_OPTIONS",
    "TOKENIZER_OPTIONS",
    "BackboneLoadError",
    "check_load_options",
    "check_local_weights",
    "position_limit",
    "quiet_transformers",
]

#: options passed to ``from_pretrained`` of the config and the model
LOAD_OPTIONS = ("revision", "trust_remote_code", "attn_implementation", "device_map")
#: the subset that also applies to the tokenizer
TOKENIZER_OPTIONS = ("revision", "trust_remote_code")

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class BackboneLoadError(OSError):
    """A backbone could not be loaded; the message names the path and what to do."""


def check_load_options(options: Mapping[str, Any], config: Any = None) -> tuple[dict, dict]:
    """Split keyword options into loading options and config overrides; refuse the rest.

    Parameters
    ----------
    options : mapping
        Keyword options given to ``Backbone.from_pretrained``.
    config : PretrainedConfig, optional
        The loaded config: an option naming one of its attributes overrides it (as
        Hugging Face's ``from_pretrained(..., attr=value)`` does).

    Returns
    -------
    (loading, overrides) : dicts

    Raises
    ------
    TypeError
        Naming the unknown options and listing the valid ones.
    """
    loading = {k: v for k, v in options.items() if k in LOAD_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in LOAD_OPTIONS}
    overrides = {k: v for k, v in rest.items() if config is not None and hasattr(config, k)}
    unknown = sorted(set(rest) - set(overrides))
    if unknown:
        listed = ", ".join(repr(k) for k in unknown)
        valid = ", ".join(repr(k) for k in (*LOAD_OPTIONS, "dtype"))
        what = f" or an attribute of the {config.model_type} config" if config is not None else ""
        raise TypeError(f"unknown loading option(s) {listed}; valid options: {valid}{what}")
    return loading, overrides


def check_local_weights(name_or_path: str) -> None:
    """Refuse a local directory whose weights are not in safetensors files.

    Hub names (not local directories) are left to the loader.

    Raises
    ------
    BackboneLoadError
        The directory has pickle-based weights only (how to convert them is
        in the message), or no weights at all.
    """
    directory = Path(name_or_path)
    if not directory.is_dir():
        return
    files = [p for p in directory.iterdir() if p.is_file()]
    if any(p.name.endswith(".safetensors") for p in files):
        return
    pickles = sorted(p.name for p in files if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise BackboneLoadError(
            f"{directory} holds its weights only in pickle-based files "
            f"({', '.join(pickles)}); auq loads safetensors only (loading a pickle can run "
            "code). Convert the checkpoint once, where you trust its source: "
            f"`transformers.AutoModel.from_pretrained({str(directory)!r})"
            ".save_pretrained('converted')` writes model.safetensors (use "
            "AutoModelForSequenceClassification for a reward model), then copy the tokenizer "
            "files next to it (`AutoTokenizer.from_pretrained(...).save_pretrained('converted')`) "
            "and load 'converted'"
        )
    raise BackboneLoadError(
        f"{directory} has no model weights (model.safetensors or "
        "model.safetensors.index.json); give the directory a model was saved to with "
        "save_pretrained(..., safe_serialization=True)"
    )


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' logs and progress bars unless the ``auq`` logger is at DEBUG."""
    if get_logger().isEnabledFor(logging.DEBUG):
        yield
        return
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hub_bars_off = are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # also the hub's bars
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if hub_bars_off:
            disable_progress_bars()
        else:
            enable_progress_bars()


def position_limit(model: nn.Module) -> tuple[int, str] | None:
    """The longest input a model's position embeddings take, and where the number comes from.

    ``max_position_embeddings`` (or GPT-2's ``n_positions``) of the text config;
    RoBERTa-style embeddings, whose positions start after the padding index, take
    ``padding_idx + 1`` fewer. None when the config states no limit.

    Returns
    -------
    (limit, description) or None
    """
    config = model.config.get_text_config()
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            break
    else:
        return None
    where = f"config.{attr}={value}"
    for name, module in model.named_modules():
        if (
            name.endswith("position_embeddings")
            and isinstance(module, nn.Embedding)
            and module.padding_idx is not None
        ):
            offset = module.padding_idx + 1
            return value - offset, f"{where} minus {offset} (positions start after padding_idx)"
    return value, where
