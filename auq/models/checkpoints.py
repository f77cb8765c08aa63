"""Reward-model checkpoints: one directory of safetensors weights and JSON configs.

::

    my-rm/
      auq_config.json        RewardModelConfig (+ auq_version)
      backbone/              the backbone (save_pretrained: safetensors + tokenizer)
      head/                  head_config.json + head.safetensors
      members/               backbone-level ensembles' own weights (safetensors)
      calibrator.json        an attached calibrator, if any

Nothing is ever unpickled; a missing, damaged or inconsistent file raises
:class:`~auq.utils.io.CheckpointError` naming it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from auq.backbone import Backbone
from auq.heads.checkpoints import load_head, save_head
from auq.members.base import MemberBackbone
from auq.models.config import RewardModelConfig, build_layers
from auq.models.inputs import check_loading_options, dtype_name, torch_dtype
from auq.utils.io import CheckpointError, read_json, write_json
from auq.utils.metadata import package_version

if TYPE_CHECKING:
    from auq.models.reward_model import RewardModel

__all__ = [
    "CALIBRATOR_NAME",
    "CONFIG_NAME",
    "load_reward_model",
    "save_calibrator",
    "save_reward_model",
]

CONFIG_NAME = "auq_config.json"
CALIBRATOR_NAME = "calibrator.json"


def save_reward_model(
    model: RewardModel, save_directory: str | Path, *, save_backbone: bool
) -> None:
    """Write ``model`` into ``save_directory`` (see the module docstring for the layout)."""
    out = Path(save_directory)
    if not save_backbone and (model.backbone_trained or model.config.finetune != "frozen"):
        raise ValueError("a trained backbone must be saved: use save_backbone=True")
    out.mkdir(parents=True, exist_ok=True)
    weights = model.backbone.model
    config = model.config.to_dict()
    config["dtype"] = dtype_name(next(weights.parameters()).dtype)
    if save_backbone:
        if model.config.finetune == "lora":
            # adapters folded into a copy (same function); loading adds fresh identity
            # adapters on top, so training can go on in LoRA mode
            weights = copy.deepcopy(weights).merge_and_unload()
        weights.save_pretrained(out / "backbone", safe_serialization=True)
        model.backbone.tokenizer.save_pretrained(out / "backbone")
        config["backbone"] = "backbone"
    write_json(out / CONFIG_NAME, {**config, "auq_version": package_version()})
    save_head(model.head, out / "head")
    if isinstance(model.backbone, MemberBackbone):
        model.backbone.save_members(out / "members")
    if model.calibrator_ is not None:
        save_calibrator(model, out)


def save_calibrator(model: RewardModel, directory: str | Path) -> None:
    """Write ``model``'s attached calibrator as ``calibrator.json`` into ``directory``."""
    if model.calibrator_ is None:
        raise ValueError("no calibrator attached; call rm.calibrate(held_out_pairs) first")
    write_json(Path(directory) / CALIBRATOR_NAME, model.calibrator_.get_state())


def load_reward_model(
    cls: type[RewardModel],
    directory: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    loading: dict[str, Any] | None = None,
) -> RewardModel:
    """Rebuild a reward model written by :func:`save_reward_model` (on the CPU)."""
    loading = dict(loading or {})
    check_loading_options(loading)
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {CONFIG_NAME}; to start from a Hugging Face model or a "
            "TRL reward checkpoint use auq.RewardModel.from_backbone(name_or_path)"
        )
    raw = read_json(path, what="reward-model config", required=("backbone", "uq"))
    raw.pop("auq_version", None)
    try:
        config = RewardModelConfig.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    if dtype is not None:
        config.dtype = dtype_name(dtype)
    source = config.backbone
    if not Path(source).is_absolute() and (directory / source).is_dir():
        source = str(directory / source)
    backbone = Backbone.from_pretrained(
        source,
        pooling=config.pooling,
        max_length=config.max_length,
        dtype=torch_dtype(config.dtype),
        **loading,
    )
    backbone, fresh = build_layers(config, backbone)
    if isinstance(backbone, MemberBackbone):
        backbone.load_members(directory / "members")
    head = load_head(directory / "head")
    if head.get_config() != fresh.get_config():
        raise CheckpointError(
            f"{directory / 'head' / 'head_config.json'}: the head "
            f"{type(head).__name__}({head.get_config()}) does not match {CONFIG_NAME}, "
            f"which implies {type(fresh).__name__}({fresh.get_config()})"
        )
    model = cls(backbone, head, config).eval()
    model.backbone_trained = model.trains_backbone and head.is_fitted
    calibrator_path = directory / CALIBRATOR_NAME
    if calibrator_path.is_file():
        from auq.calibration import calibrator_from_state

        state = read_json(calibrator_path, what="calibrator state")
        try:
            model.calibrator_ = calibrator_from_state(state)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{calibrator_path}: {err}") from None
    return model
