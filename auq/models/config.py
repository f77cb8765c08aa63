"""What a reward model is made of: its config, and building its uncertainty layer.

:class:`RewardModelConfig` is stored as ``auq_config.json``; :func:`build_layers`
turns a config plus a loaded plain backbone into the (backbone, head) pair of the
chosen ``uq`` method — used both by ``RewardModel.from_backbone`` and by
``RewardModel.from_pretrained``. Every option is checked here, before anything
heavy happens, against the options the head or member class really takes.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from auq.backbone import Backbone
from auq.heads.base import PreferenceHead, head_class
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
BAYESIAN_METHODS = ("laplace", "pyro")  # posterior draws instead of members
FINETUNE_CHOICES = ("frozen", "full", "lora")
DTYPE_CHOICES = ("float32", "float16", "bfloat16", "float64")

#: the head class on top of each method (backbone-level ensembles put linear members on top)
HEAD_CLASS = {
    "heads": "EnsembleHead",
    "laplace": "LaplaceHead",
    "pyro": "PyroHead",
    **dict.fromkeys(MEMBER_METHODS, "EnsembleHead"),
}
#: head options the reward model sets itself
_RESERVED_HEAD_OPTIONS = ("in_features", "n_members")


@dataclass
class RewardModelConfig:
    """Everything needed to rebuild a reward model (stored as ``auq_config.json``).

    Attributes
    ----------
    backbone : str
        Hub name or path of the backbone (``"backbone"`` inside a saved model).
    uq : str
        Uncertainty method, one of :data:`UQ_METHODS`.
    n_members : int or None
        K members of an ensemble (``"heads"``, ``"lora"``, ``"partial"``, ``"deep"``);
        None for the Bayesian heads (their draws: ``head["n_samples"]``) and MC dropout.
    n_passes : int or None
        T stochastic passes of ``"mc_dropout"``; None for every other method.
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
    dtype : str or None
        Backbone weight dtype (``"float32"``, ``"bfloat16"``, ...); restored on load.
    init_from_checkpoint : bool
        For a reward checkpoint: start the head from its score layer (ensemble members
        as copies of it, Bayesian heads with their prior centred on it).
    """

    backbone: str
    uq: str = "heads"
    n_members: int | None = 8
    n_passes: int | None = None
    pooling: str = "auto"
    max_length: int = 256
    finetune: str = "frozen"
    head: dict[str, Any] = field(default_factory=dict)
    members: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    dtype: str | None = None
    init_from_checkpoint: bool = True

    def __post_init__(self) -> None:
        check_choice("uq", self.uq, UQ_METHODS)
        check_choice("finetune", self.finetune, FINETUNE_CHOICES)
        if self.dtype is not None:
            check_choice("dtype", self.dtype, DTYPE_CHOICES)
        check_positive_int("max_length", self.max_length, minimum=4)
        if self.uq == "mc_dropout":
            if self.n_members is not None:
                raise ValueError(
                    "uq='mc_dropout' runs T stochastic passes, not members: "
                    "set n_passes=T (>= 2) instead of n_members"
                )
            check_positive_int("n_passes", self.n_passes, minimum=2)
        else:
            if self.n_passes is not None:
                raise ValueError(f"n_passes applies to uq='mc_dropout' only, not uq={self.uq!r}")
            if self.uq in BAYESIAN_METHODS:
                if self.n_members is not None:
                    raise ValueError(
                        f"uq={self.uq!r} draws posterior samples, it has no members: leave "
                        "n_members unset and give the number of draws as "
                        "head_options={'n_samples': S}"
                    )
            else:
                minimum = 2 if self.uq in MEMBER_METHODS else 1
                check_positive_int("n_members", self.n_members, minimum=minimum)
        if self.finetune != "frozen" and self.uq not in ("heads", "mc_dropout"):
            what = "its members" if self.uq in MEMBER_METHODS else "a last-layer posterior"
            raise ValueError(
                f"finetune={self.finetune!r} does not combine with uq={self.uq!r}, which trains "
                f"{what} on a fixed base; use finetune='frozen' (or uq='heads' / 'mc_dropout')"
            )
        if self.finetune != "lora" and self.lora:
            raise ValueError("lora_options apply to finetune='lora' only")
        if self.uq not in MEMBER_METHODS and self.members:
            raise ValueError(
                f"member_options apply to the backbone-level ensembles "
                f"({', '.join(MEMBER_METHODS)}), not uq={self.uq!r}; "
                "pass head options as head_options={...}"
            )
        reserved = sorted(set(self.head) & set(_RESERVED_HEAD_OPTIONS))
        if reserved:
            raise ValueError(
                f"head_options may not set {', '.join(reserved)}: the reward model sets them "
                "(n_members is a from_backbone argument)"
            )
        _check_keywords(
            f"head_options for uq={self.uq!r}",
            self.head,
            head_class(HEAD_CLASS[self.uq]).__init__,
            exclude=_RESERVED_HEAD_OPTIONS,
        )
        if self.uq in MEMBER_METHODS:
            from auq.members import MEMBER_REGISTRY

            _check_keywords(
                f"member_options for uq={self.uq!r}",
                self.members,
                MEMBER_REGISTRY[self.uq].build,
                exclude=("backbone", "n_members", "n_passes", "train_backbone"),
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict stored as ``auq_config.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RewardModelConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are refused with the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise ValueError(
                f"unknown config key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        return cls(**raw)


def _check_keywords(what: str, options: dict[str, Any], function, *, exclude=()) -> None:
    """Refuse keys ``function`` does not take, listing the ones it does."""
    params = inspect.signature(function).parameters
    accepted = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in exclude]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"{what}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(accepted))}"
        )


def build_layers(config: RewardModelConfig, backbone: Backbone) -> tuple[Backbone, PreferenceHead]:
    """The uncertainty layer of ``config`` on a loaded plain backbone: (backbone, head)."""
    d = backbone.hidden_size
    head_options = dict(config.head)
    cls = head_class(HEAD_CLASS[config.uq])
    if "seed" in inspect.signature(cls.__init__).parameters:
        head_options.setdefault("seed", config.seed)
    if config.uq in MEMBER_METHODS:
        from auq.members import MEMBER_REGISTRY

        options: dict[str, Any] = {"seed": config.seed, **config.members}
        if config.uq == "mc_dropout":  # what trains follows ``finetune``
            options.update(n_passes=config.n_passes, train_backbone=config.finetune != "frozen")
            k = 1  # the T passes share one head
        else:
            options["n_members"] = k = config.n_members
        backbone = MEMBER_REGISTRY[config.uq].build(backbone, **options)
        head = cls(d, n_members=k, **head_options)
    elif cls.__name__ == "EnsembleHead":
        head = cls(d, n_members=config.n_members, **head_options)
    else:
        head = cls(d, **head_options)
    if config.finetune == "lora":
        backbone.model = _add_lora(backbone.model, config.lora)
    return backbone, head


def _add_lora(model: nn.Module, lora: dict[str, Any]) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    try:
        lora_config = LoraConfig(**lora)
    except (TypeError, ValueError) as err:
        raise ValueError(f"lora_options: {err}") from None
    return get_peft_model(model, lora_config)
