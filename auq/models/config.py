"""What a reward model is made of: its config, and building its uncertainty layer.

:class:`RewardModelConfig` is stored as ``auq_config.json``; :func:`build_layers`
turns a config plus a loaded plain backbone into the (backbone, head) pair of the
chosen ``uq`` method — used both by ``RewardModel.from_backbone`` and by
``RewardModel.from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from auq.backbone import Backbone
from auq.heads.base import PreferenceHead
from auq.heads.ensemble import EnsembleHead
from auq.utils.validation import check_choice, check_positive_int

__all__ = [
    "FEATURE_HEAD_METHODS",
    "FINETUNE_CHOICES",
    "MEMBER_METHODS",
    "UQ_METHODS",
    "RewardModelConfig",
    "build_layers",
]

UQ_METHODS = ("heads", "lora", "partial", "deep", "mc_dropout", "laplace", "pyro")
FEATURE_HEAD_METHODS = ("heads", "laplace", "pyro")  # last-layer methods on one backbone
MEMBER_METHODS = ("lora", "partial", "deep", "mc_dropout")  # backbone-level ensembles
FINETUNE_CHOICES = ("frozen", "full", "lora")


@dataclass
class RewardModelConfig:
    """Everything needed to rebuild a reward model (stored as ``auq_config.json``).

    Attributes
    ----------
    backbone : str
        Hub name or path of the backbone (``"backbone"`` inside a saved model).
    uq : str
        Uncertainty method, one of :data:`UQ_METHODS`.
    n_members : int
        K members (ensembles) or T passes (``"mc_dropout"``).
    pooling, max_length
        See :class:`~auq.backbone.Backbone`.
    finetune : {"frozen", "full", "lora"}
        What of the plain backbone trains with the heads.
    head : dict
        Keyword options of the head class (``EnsembleHead``, ``LaplaceHead``, ``PyroHead``).
    members : dict
        Keyword options of the backbone-level ensemble (``uq`` in :data:`MEMBER_METHODS`).
    lora : dict
        PEFT ``LoraConfig`` options for ``finetune="lora"``.
    seed : int
    """

    backbone: str
    uq: str = "heads"
    n_members: int = 8
    pooling: str = "auto"
    max_length: int = 256
    finetune: str = "frozen"
    head: dict[str, Any] = field(default_factory=dict)
    members: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("uq", self.uq, UQ_METHODS)
        check_choice("finetune", self.finetune, FINETUNE_CHOICES)
        minimum = 2 if self.uq in MEMBER_METHODS else 1
        check_positive_int("n_members", self.n_members, minimum=minimum)
        check_positive_int("max_length", self.max_length, minimum=4)
        if self.finetune != "frozen" and self.uq not in ("heads", "mc_dropout"):
            what = "its members" if self.uq in MEMBER_METHODS else "a last-layer posterior"
            raise ValueError(
                f"finetune={self.finetune!r} does not combine with uq={self.uq!r}, which trains "
                f"{what} on a fixed base; use finetune='frozen' (or uq='heads' / 'mc_dropout')"
            )


def build_layers(config: RewardModelConfig, backbone: Backbone) -> tuple[Backbone, PreferenceHead]:
    """The uncertainty layer of ``config`` on a loaded plain backbone: (backbone, head)."""
    d = backbone.hidden_size
    if config.uq in MEMBER_METHODS:
        from auq.members import MEMBER_REGISTRY

        backbone = MEMBER_REGISTRY[config.uq].build(
            backbone, n_members=config.n_members, **_member_options(config)
        )
        k = 1 if config.uq == "mc_dropout" else config.n_members  # T passes share one head
        head = EnsembleHead(d, n_members=k, **config.head)
    elif config.uq == "heads":
        head = EnsembleHead(d, n_members=config.n_members, **config.head)
    elif config.uq == "laplace":
        from auq.heads.laplace import LaplaceHead

        head = LaplaceHead(d, **config.head)
    else:
        from auq.heads.pyro_head import PyroHead

        head = PyroHead(d, **config.head)
    if config.finetune == "lora":
        backbone.model = _add_lora(backbone.model, config.lora)
    return backbone, head


def _member_options(config: RewardModelConfig) -> dict[str, Any]:
    options = {"seed": config.seed, **config.members}
    if config.uq == "mc_dropout":  # what trains follows ``finetune``
        options["train_backbone"] = config.finetune != "frozen"
    return options


def _add_lora(model: nn.Module, lora: dict[str, Any]) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(**lora))
