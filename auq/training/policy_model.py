"""The policy a trainer optimises: loading by name or path, an optional PEFT LoRA, saving."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["frozen_copy", "load_policy", "save_policy", "wrap_peft"]


def load_policy(model: Any, tokenizer: Any = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from a causal LM and its tokenizer, or from a name / directory.

    Parameters
    ----------
    model : str, PathLike or transformers causal LM
        A directory or hub name is loaded with ``AutoModelForCausalLM.from_pretrained``.
    tokenizer : tokenizer, str or None
        Default: loaded from ``model`` when that is a name or directory.

    Raises
    ------
    ValueError
        A model object without a tokenizer, or a model that cannot generate.
    """
    if isinstance(model, str | Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = str(model)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source)
    elif tokenizer is None:
        raise ValueError("tokenizer is required when model is a model object (not a name or path)")
    if isinstance(tokenizer, str | Path):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    if not isinstance(model, nn.Module) or not callable(getattr(model, "generate", None)):
        raise ValueError(
            "model must be a causal language model (AutoModelForCausalLM), got "
            f"{type(model).__name__}"
        )
    return model, tokenizer


def wrap_peft(model: nn.Module, peft_config: Any) -> nn.Module:
    """``model`` with LoRA adapters from ``peft_config`` (a ``peft.LoraConfig`` or its dict).

    Only the adapters train; with adapters switched off the model is its own
    reference policy.
    """
    if peft_config is None:
        return model
    from peft import LoraConfig, get_peft_model

    if isinstance(peft_config, dict):
        options = {"task_type": "CAUSAL_LM", **peft_config}
        try:
            peft_config = LoraConfig(**options)
        except TypeError as err:
            raise ValueError(f"peft_config: {err}") from None
    return get_peft_model(model, peft_config)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A detached, frozen, eval-mode copy (the reference policy of a full fine-tune)."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def save_policy(model: nn.Module, tokenizer: Any, directory: str | Path) -> Path:
    """``save_pretrained`` of the policy (safetensors; only the adapters for PEFT) and tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory
