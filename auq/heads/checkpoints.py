"""Head checkpoints: ``head_config.json`` (class and options) + ``head.safetensors``."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from auq.heads.base import PreferenceHead, head_class
from auq.utils.io import CheckpointError, load_safetensors, read_json, write_json

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load_head", "save_head"]

CONFIG_NAME = "head_config.json"
WEIGHTS_NAME = "head.safetensors"


def save_head(head: PreferenceHead, directory: str | Path) -> None:
    """Write ``head_config.json`` and ``head.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / CONFIG_NAME, {"class": type(head).__name__, "config": head.get_config()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_NAME))


def load_head(directory: str | Path, *, device: torch.device | str = "cpu") -> PreferenceHead:
    """Rebuild a head written by :func:`save_head`.

    Raises
    ------
    CheckpointError
        Naming the file, when the config is missing, malformed or incomplete, the
        weights file is missing or damaged, or a tensor does not match the config.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    spec = read_json(config_path, what="head config", required=("class", "config"))
    try:
        cls = head_class(spec["class"])
    except ValueError as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    options = spec["config"]
    if not isinstance(options, dict):
        raise CheckpointError(f"{config_path}: 'config' must be a JSON object")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise CheckpointError(
            f"{config_path}: unknown {cls.__name__} option(s) {', '.join(unknown)}"
        )
    try:
        head = cls(**options)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: invalid {cls.__name__} options ({err})") from None
    weights_path = directory / WEIGHTS_NAME
    tensors = load_safetensors(weights_path)
    expected = head.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{weights_path}: tensors do not match {config_path.name} "
            f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})"
        )
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{weights_path}: tensor {name!r} has shape {tuple(value.shape)}, but "
                f"{config_path.name} implies {tuple(expected[name].shape)}"
            )
    head.load_state_dict(tensors)
    return head.to(device)
